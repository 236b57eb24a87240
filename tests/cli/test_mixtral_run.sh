#!/bin/bash
# mixtral-run as a user types it: options, exit codes, messages, and the
# files it reads (real files, FIFOs, stdin).
#
#   test_mixtral_run.sh MIXTRAL_RUN DEMO_MODEL_DIR TRAINED_TOKENIZER HF_TINY_DIR [GGUF_FIXTURES]
set -u
run=$1 demo=$2 trained=$3 tiny=$4 gguf=${5:-}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
failures=0

fail() {
        echo "FAIL: $*" >&2
        failures=$((failures + 1))
}

# expect CODE NEEDLE -- COMMAND...: exit status CODE, NEEDLE in stdout+stderr
expect() {
        local code=$1 needle=$2
        shift 3
        local out
        out=$(timeout 20 "$@" 2>&1)
        local got=$?
        [ "$got" -eq "$code" ] || fail "$* exited $got, expected $code: $out"
        case "$out" in *"$needle"*) ;; *) fail "$*: output lacks '$needle': $out" ;; esac
}

# --- usage -------------------------------------------------------------------
expect 0 "--tokenize" -- "$run" --help
expect 0 "Exit status" -- "$run" -h
expect 0 "mixtral-run " -- "$run" --version
expect 2 "nothing to do" -- "$run"
expect 2 "unknown option '--frobnicate'" -- "$run" --frobnicate
expect 2 "needs an argument" -- "$run" --prompt
expect 2 "unexpected argument 'stray'" -- "$run" --tokenize -t "$trained" -p x stray
expect 2 "--tokenize needs a prompt" -- "$run" --tokenize -t "$trained"
expect 2 "--host-cache is for --device cuda" -- "$run" --model "$demo" --host-cache 1G -p x
expect 2 "either --shape or --synthetic" -- "$run" --make-demo "$tmp/x" --shape b1 --synthetic b1
# The KV cache's type and size: bad ones refused by name; f32 in a small pool runs.
expect 1 'KV type "f16": expected bf16 or f32' -- "$run" --model "$demo" --kv-type f16 -p x
expect 1 'KV memory "0.5%"' -- "$run" --model "$demo" --kv-memory 0.5% -p x
expect 1 "fewer than the 16 blocks" -- "$run" --model "$demo" --kv-memory 4K -p x
out=$("$run" --model "$demo" --kv-type f32 --kv-memory 1M -n 2 -p x 2>&1) || fail "--kv-type f32 --kv-memory 1M: $out"
# A budget below what a step needs is raised, and says so; "min" is that on purpose.
expect 0 "using those" -- "$run" --model "$demo" --expert-memory 1000 -n 2 -p x
out=$("$run" --model "$demo" --expert-memory min -n 2 -p x 2>&1) || fail "--expert-memory min: $out"
case "$out" in *"using those"*) fail "--expert-memory min was reported as raised: $out" ;; esac
expect 2 "need --tokenizer FILE or --model DIR" -- "$run" --tokenize -p x
expect 2 "excludes a conversation" -- "$run" --tokenize -t "$trained" -p x --chat y
expect 2 "--prompt and --prompt-file" -- "$run" --tokenize -t "$trained" -p x -f y
expect 2 "--system needs a conversation" -- "$run" --tokenize -t "$trained" -p x --system s
expect 2 "give only one" -- "$run" --tokenize --info -m "$demo" -p x
expect 2 "--info needs --model" -- "$run" --info
expect 2 "--seed: 'x' is not" -- "$run" --make-demo "$tmp/d" -t "$trained" --seed x

# --- tokenize ----------------------------------------------------------------
bos=$("$run" -t "$trained" --tokenize -p "") || fail "empty prompt"
[ "$bos" = "1" ] || fail "an empty prompt is BOS alone, got '$bos'"
direct=$("$run" -t "$trained" --tokenize -p "Hello world, ünïcödé 🙂")
case "$direct" in "1 "*) ;; *) fail "ids start with BOS: $direct" ;; esac
piped=$(printf 'Hello world, ünïcödé 🙂' | "$run" -t "$trained" --tokenize -f -)
[ "$direct" = "$piped" ] || fail "--prompt-file - differs from --prompt: $piped vs $direct"
printf 'Hello world, ünïcödé 🙂' >"$tmp/prompt.txt"
[ "$("$run" -t "$trained" --tokenize -f "$tmp/prompt.txt")" = "$direct" ] || fail "--prompt-file FILE"
# The model's own tokenizer, with weights never opened: a broken config
# beside it does not matter.
mkdir "$tmp/toko"
cp "$demo/tokenizer.model" "$tmp/toko/"
echo "{broken" >"$tmp/toko/config.json"
expect 0 "1 " -- "$run" -m "$tmp/toko" --tokenize -p "Hello"
expect 1 "no tokenizer.model or tokenizer.model.v1" -- "$run" -m "$tmp" --tokenize -p x
# Raw bytes, invalid UTF-8 included, are tokenized as the reference does.
printf 'a\377\376b\000c' >"$tmp/bytes"
expect 0 "1 " -- "$run" -t "$trained" --tokenize -f "$tmp/bytes"
mkfifo "$tmp/fifo"
expect 1 "not a regular file (a FIFO)" -- "$run" -t "$trained" --tokenize -f "$tmp/fifo"
expect 1 "No such file" -- "$run" -t "$tmp/none.model" --tokenize -p x
expect 1 "$tmp/prompt.txt: not a SentencePiece model" -- "$run" -t "$tmp/prompt.txt" --tokenize -p x

# --- conversations -----------------------------------------------------------
cat >"$tmp/conv.json" <<'EOF'
[{"role": "system", "content": "Be brief."},
 {"role": "user", "content": "What is 2+2?"},
 {"role": "assistant", "content": "4."},
 {"role": "user", "content": "And 3+3?"}]
EOF
a=$("$run" -t "$trained" --tokenize --messages "$tmp/conv.json")
cat >"$tmp/conv2.json" <<'EOF'
[{"role": "user", "content": "What is 2+2?"}, {"role": "assistant", "content": "4."}]
EOF
b=$("$run" -t "$trained" --tokenize --messages "$tmp/conv2.json" --system "Be brief." --chat "And 3+3?")
[ -n "$a" ] && [ "$a" = "$b" ] || fail "--messages vs --messages + --chat + --system: '$a' vs '$b'"
c=$("$run" -t "$trained" --tokenize --messages - <"$tmp/conv.json")
[ "$a" = "$c" ] || fail "--messages - (stdin)"
echo '[{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}]' >"$tmp/bad.json"
expect 1 "the last message must be from the user" -- "$run" -t "$trained" --tokenize --messages "$tmp/bad.json"
echo '[{"role": "robot", "content": "x"}]' >"$tmp/bad.json"
expect 1 "$tmp/bad.json: message 1 has role \"robot\"" -- "$run" -t "$trained" --tokenize --messages "$tmp/bad.json"
echo '[{"role": "user", "content": "x"' >"$tmp/bad.json"
expect 1 "$tmp/bad.json: not valid JSON" -- "$run" -t "$trained" --tokenize --messages "$tmp/bad.json"

# --- decode ------------------------------------------------------------------
ids=$("$run" -t "$trained" --tokenize -p "Hello world, ünïcödé 🙂" | cut -d' ' -f2-)
expect 0 "Hello world, ünïcödé 🙂" -- "$run" -t "$trained" --decode "$ids"
expect 1 "outside the vocabulary" -- "$run" -t "$trained" --decode "1 999999"
expect 1 "is not a token id" -- "$run" -t "$trained" --decode "1 x"

# --- model info --------------------------------------------------------------
expect 0 "layout: hugging-face" -- "$run" -m "$demo" --info
out=$("$run" -m "$demo" --info)
for line in "files: 2" "layers: 2" "experts: 8" "experts_per_token: 2" "head_dim: 16" \
        "tie_word_embeddings: false" "kv_cache_bytes_per_token: 256 (bf16)"; do
        grep -qF -- "$line" <<<"$out" || fail "--info lacks '$line'"
done
cp -r "$demo" "$tmp/broken"
truncate -s -100 "$tmp/broken/model-00002-of-00002.safetensors"
expect 1 "model-00002-of-00002.safetensors: tensor" -- "$run" -m "$tmp/broken" --info
expect 1 "no config.json (Hugging Face) or params.json" -- "$run" -m "$tmp" --info

# --- devices -----------------------------------------------------------------
expect 0 "cpu: " -- "$run" --devices
"$run" --devices | grep -q '^cuda' || fail "--devices says nothing about CUDA"

# --- demo model --------------------------------------------------------------
expect 0 "wrote a demo model" -- "$run" --make-demo "$tmp/d1" -t "$trained" --seed 7
"$run" --make-demo "$tmp/d2" -t "$trained" --seed 7 2>/dev/null
"$run" --make-demo "$tmp/d3" -t "$trained" --seed 8 2>/dev/null
for f in config.json model-00001-of-00002.safetensors model-00002-of-00002.safetensors \
        model.safetensors.index.json tokenizer.model; do
        cmp -s "$tmp/d1/$f" "$tmp/d2/$f" || fail "the same seed gave a different $f"
done
cmp -s "$tmp/d1/model-00001-of-00002.safetensors" "$tmp/d3/model-00001-of-00002.safetensors" &&
        fail "a different seed gave the same weights"
expect 0 "layers: 2" -- "$run" -m "$tmp/d1" --info
expect 1 "No such file" -- "$run" --make-demo "$tmp/d4" -t "$tmp/none.model"

# --- generation ----------------------------------------------------------------
ids=$("$run" -m "$tiny" -p "Hello world" --temperature 0 -n 8 --print-ids) || fail "greedy --print-ids"
[ "$(wc -w <<<"$ids")" -eq 8 ] || fail "-n 8 gave '$ids'"
scalar=$("$run" -m "$tiny" -p "Hello world" --temperature 0 -n 8 --print-ids --threads 1 --simd scalar)
[ "$ids" = "$scalar" ] || fail "scalar single-threaded greedy differs: '$scalar' vs '$ids'"
a=$("$run" -m "$tiny" -p "Hello world" --seed 7 -n 12 --print-ids)
b=$("$run" -m "$tiny" -p "Hello world" --seed 7 -n 12 --print-ids)
c=$("$run" -m "$tiny" -p "Hello world" --seed 8 -n 12 --print-ids)
[ "$a" = "$b" ] || fail "the same seed gave '$a' and '$b'"
[ "$a" != "$c" ] || fail "seeds 7 and 8 gave the same ids"
text=$("$run" -m "$tiny" -p "Hello world" --temperature 0 -n 12)
[ "${#text}" -ge 6 ] || fail "greedy text too short: '$text'"
stop=${text:3:2}
before=${text%%"$stop"*}
cut=$("$run" -m "$tiny" -p "Hello world" --temperature 0 -n 12 --stop "$stop" --stop "zzz-never")
[ "$cut" = "$before" ] || fail "--stop '$stop': got '$cut', expected '$before' (of '$text')"
expect 0 "" -- "$run" -m "$tiny" --chat "Hi there" -n 4 --seed 1
expect 2 "temperature" -- "$run" -m "$tiny" -p x --temperature -1
expect 2 "top_p" -- "$run" -m "$tiny" -p x --top-p 0
expect 2 "--top-k: 'x' is not" -- "$run" -m "$tiny" -p x --top-k x
expect 2 "--simd: 'neon' is not" -- "$run" -m "$tiny" -p x --simd neon
expect 2 "--activations: 'int4' is not" -- "$run" -m "$tiny" -p x --activations int4
expect 2 "--quantize: 'q3_k' is not" -- "$run" -m "$tiny" -p x --quantize q3_k
expect 2 "--quantize and --expert-memory exclude each other" -- "$run" -m "$tiny" -p x --quantize q8_0 \
        --expert-memory 50%

# --- quantized as it loads: every instruction set gives the same tokens, on
# either path; --info counts the bytes of each type ------------------------------
for act in fast f32; do
        q=$("$run" -m "$tiny" -p "Hello world" --temperature 0 -n 8 --print-ids --quantize q4_0 --activations $act) ||
                fail "--quantize q4_0 --activations $act"
        [ "$(wc -w <<<"$q")" -eq 8 ] || fail "--quantize q4_0 -n 8 gave '$q'"
        qs=$("$run" -m "$tiny" -p "Hello world" --temperature 0 -n 8 --print-ids --quantize q4_0 --activations $act \
                --threads 1 --simd scalar)
        [ "$q" = "$qs" ] || fail "--quantize q4_0 --activations $act: scalar gave '$qs', auto '$q'"
done
expect 0 "BF16 " -- "$run" -m "$tiny" --info
expect 2 "--threads: '0' is out of range" -- "$run" -m "$tiny" -p x --threads 0
expect 2 "needs the weights: --model DIR" -- "$run" -t "$trained" -p x
expect 1 "does not fit the context of 2" -- "$run" -m "$tiny" -p "Hello world" --ctx 2
expect 1 "device cuda:0: " -- "$run" -m "$tiny" -p x --device cuda
expect 1 "expected cpu, cuda or cuda:N" -- "$run" -m "$tiny" -p x --device tpu
expect 2 "exclude each other" -- "$run" -m "$tiny" --synthetic b1 --bench
expect 2 "--layers goes with --synthetic" -- "$run" -m "$tiny" --layers 2 --bench
expect 2 "--batch: '0' is out of range" -- "$run" -m "$tiny" --bench --batch 1,0
expect 2 "--batch and --depth go with --bench" -- "$run" -m "$tiny" -p x --depth 512
expect 1 "synthetic shape \"nope\"" -- "$run" --synthetic nope --info
info=$("$run" --synthetic mixtral-8x7b --info) || fail "--synthetic mixtral-8x7b --info"
case "$info" in *46.7*) ;; *) fail "--synthetic mixtral-8x7b --info shows no 46.7 B parameters: $info" ;; esac
bench=$("$run" -m "$tiny" --bench -n 4 --threads 1 --batch 1,3 --depth 300) || fail "--bench"
/usr/bin/python3 -c '
import json, sys
d = json.loads(sys.argv[1])
for k in ("prompt_tokens", "prefill_tokens_per_s", "decode_tokens_per_s", "weight_bytes_per_token",
          "achieved_GBps", "memcpy_GBps", "read_GBps", "fraction_of_bandwidth"):
    assert k in d, k
assert d["prompt_tokens"] == 512 and d["decode_tokens"] == 4 and d["decode_tokens_per_s"] > 0
assert d["decode_depth"] == 300, d["decode_depth"]
assert [b["batch"] for b in d["batches"]] == [1, 3], d["batches"]
for b in d["batches"]:
    assert b["tokens_per_s"] > 0 and b["weight_bytes_per_step"] > 0 and b["step_ms"] > 0, b
# Three sequences share the dense weights: a step reads less than three single steps.
assert d["batches"][1]["weight_bytes_per_step"] < 3 * d["batches"][0]["weight_bytes_per_step"]
' "$bench" || fail "--bench JSON: $bench"
# The synthetic b1 shape on the CPU, one layer: the same JSON.
bench=$("$run" --synthetic b1 --layers 1 --bench -n 2 --threads 1) || fail "--synthetic b1 --bench"
/usr/bin/python3 -c '
import json, sys
d = json.loads(sys.argv[1])
assert d["model"] == "synthetic:b1" and d["decode_tokens_per_s"] > 0, d
' "$bench" || fail "--synthetic --bench JSON: $bench"

# --- GGUF files (tests/model/make_gguf.py's conversions of hf-tiny) ------------------
if [ -n "$gguf" ] && [ -f "$gguf/tiny-bf16.gguf" ]; then
        g=$gguf/tiny-bf16.gguf
        out=$("$run" -m "$g" --info) || fail "--info on $g"
        for line in "layout: gguf" "files: 1" "layers: 2" "experts: 8" "head_dim: 16" "tie_word_embeddings: false"; do
                grep -qF -- "$line" <<<"$out" || fail "--info on $g lacks '$line'"
        done
        expect 0 "files: 3" -- "$run" -m "$gguf/split" --info
        expect 0 "Q8_0" -- "$run" -m "$gguf/tiny-q8_0.gguf" --info
        want=$("$run" -m "$tiny" -p "Hello world" --temperature 0 -n 8 --print-ids)
        got=$("$run" -m "$g" -p "Hello world" --temperature 0 -n 8 --print-ids) || fail "generation on $g"
        [ "$got" = "$want" ] || fail "$g: greedy ids '$got', the safetensors checkpoint's '$want'"
        got=$("$run" -m "$g" -p "Hello world" --temperature 0 -n 8 --print-ids --expert-memory 50%)
        [ "$got" = "$want" ] || fail "$g --expert-memory 50%: greedy ids '$got', expected '$want'"
        want=$("$run" -m "$tiny" --tokenize -p "Hello world, ünïcödé")
        [ "$("$run" -m "$g" --tokenize -p "Hello world, ünïcödé")" = "$want" ] || fail "--tokenize on $g"
        [ "$("$run" -t "$g" --tokenize -p "Hello world, ünïcödé")" = "$want" ] || fail "-t $g --tokenize"
        expect 0 "" -- "$run" -m "$g" --chat "Hi there" -n 4 --seed 1
        # Block formats compute as stored; their experts stream from the file.
        want=$("$run" -m "$gguf/tiny-q8_0.gguf" -p "Hello world" --temperature 0 -n 8 --print-ids) ||
                fail "generation on tiny-q8_0.gguf"
        got=$("$run" -m "$gguf/tiny-q8_0.gguf" -p "Hello world" --temperature 0 -n 8 --print-ids --expert-memory min)
        [ "$got" = "$want" ] || fail "tiny-q8_0.gguf --expert-memory min: greedy ids '$got', mapped '$want'"
        expect 1 "$gguf/bad/magic.gguf: not a GGUF file" -- "$run" -m "$gguf/bad/magic.gguf" --info
        expect 1 "$gguf/bad/tok-gpt2.gguf: tokenizer \"gpt2\" is not supported" -- \
                "$run" -m "$gguf/bad/tok-gpt2.gguf" -p x -n 1
else
        echo "no GGUF fixtures (tests/model/make_gguf.py needs the venv): GGUF not checked"
fi

# --save writes a GGUF that gives the same tokens; --perplexity and --kl-base
# against itself (KL 0, all top-1 equal); --logits is vocab float32s.
expect 0 "wrote $tmp/tiny.gguf" -- "$run" -m "$tiny" --save "$tmp/tiny.gguf"
want=$("$run" -m "$tiny" -p "Hello world" --temperature 0 -n 8 --print-ids)
got=$("$run" -m "$tmp/tiny.gguf" -p "Hello world" --temperature 0 -n 8 --print-ids) || fail "generation on --save's file"
[ "$got" = "$want" ] || fail "--save's GGUF: greedy ids '$got', the checkpoint's '$want'"
# --quantize with --save: the file holds the quantized weights and gives the
# tokens of quantizing at load, mapped or with its experts streamed.
expect 0 "wrote $tmp/q4.gguf" -- "$run" -m "$tiny" --quantize q4_0 --save "$tmp/q4.gguf"
expect 0 "Q4_0" -- "$run" -m "$tmp/q4.gguf" --info
want=$("$run" -m "$tiny" --quantize q4_0 -p "Hello world" --temperature 0 -n 8 --print-ids)
got=$("$run" -m "$tmp/q4.gguf" -p "Hello world" --temperature 0 -n 8 --print-ids) || fail "generation on q4.gguf"
[ "$got" = "$want" ] || fail "--quantize --save's GGUF: greedy ids '$got', quantized at load '$want'"
got=$("$run" -m "$tmp/q4.gguf" -p "Hello world" --temperature 0 -n 8 --print-ids --expert-memory min)
[ "$got" = "$want" ] || fail "q4.gguf --expert-memory min: greedy ids '$got', expected '$want'"
head -c 3000 "$(dirname "$0")/../../tools/demo-tokenizer/corpus.txt" >"$tmp/text.txt"
ppl=$("$run" -m "$tiny" --perplexity "$tmp/text.txt" --ctx 32 --kl-base "$tmp/tiny.gguf" 2>/dev/null) ||
        fail "--perplexity --kl-base"
python3 - "$ppl" <<'PY' || fail "--perplexity JSON: $ppl"
import json, math, sys
d = json.loads(sys.argv[1])
assert d["chunks"] >= 2 and d["scored_tokens"] > 0 and math.isfinite(d["perplexity"]) and d["perplexity"] > 1, d
assert d["kl_mean"] < 1e-9 and d["top1_agreement"] == 1 and abs(d["base_perplexity"] - d["perplexity"]) < 1e-9, d
PY
expect 1 "not one chunk" -- "$run" -m "$tiny" --perplexity "$tmp/text.txt" --ctx 100000
expect 2 "--kl-base goes with --perplexity" -- "$run" -m "$tiny" --kl-base "$tiny" -p x
"$run" -m "$tiny" -p "Hello" --logits "$tmp/logits.bin" -n 0 >"$tmp/out" || fail "--logits"
vocab=$("$run" -m "$tiny" --info | sed -n 's/^vocab_size: //p')
[ "$(stat -c %s "$tmp/logits.bin")" -eq $((vocab * 4)) ] || fail "--logits wrote $(stat -c %s "$tmp/logits.bin") bytes for a vocabulary of $vocab"
[ ! -s "$tmp/out" ] || fail "--logits with --max-tokens 0 generated: $(cat "$tmp/out")"

if [ "$failures" -gt 0 ]; then
        echo "$failures failure(s)" >&2
        exit 1
fi
echo "all mixtral-run checks passed"
