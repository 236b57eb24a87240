#!/usr/bin/env python3
"""Regenerates the Hugging Face reference data under tests/data/ (hf-tiny, hf-odd).

What it makes, for each of two small Mixtral checkpoints:
  * the checkpoint itself, written by transformers' own save_pretrained
    (config.json, generation_config.json, bf16 safetensors; hf-odd is sharded
    with model.safetensors.index.json, hf-tiny is one model.safetensors);
  * tokenizer.model, trained by tools/train-demo-tokenizer (vocab 512; NOT the
    real Mixtral tokenizer) and encoded with Debian's python3-sentencepiece;
  * expected.json: fp32 logits at every prompt position and the 12-token greedy
    continuation, computed by transformers' MixtralForCausalLM after loading the
    saved bf16 checkpoint back as float32 with eager attention.

Pinned versions (checked at run time; these are NOT CI dependencies, CI only
reads the committed outputs):
    python        3.11 (the pyenv python3 first on PATH, not /usr/bin/python3)
    torch         2.5.1   (PyPI wheel, run on the CPU only)
    transformers  4.46.3  (save_pretrained writes the Hugging Face names of docs/model-files.md:
                           model.layers.L.block_sparse_moe.experts.E.w1.weight ...)
    safetensors   0.8.0
Install:  pip install torch==2.5.1 transformers==4.46.3 safetensors==0.8.0
Also needed: Debian's sentencepiece (spm_train) and python3-sentencepiece.

Run from anywhere:  python3 tools/make-hf-reference.py
The outputs are deterministic: running it twice gives byte-identical files
(on the same kind of CPU; torch runs single-threaded with deterministic
algorithms, but a different CPU may change the last digits of some logits).

Weights: HF's default init (std 0.02) gives nearly uniform logits, which makes
greedy comparisons fragile, so every weight is re-drawn from a seeded
generator: embeddings N(0, 0.3^2), every Linear N(0, (1.5/sqrt(fan_in))^2),
RMSNorm weights 1 + 0.2 N(0,1); then the model is cast to bfloat16 and saved.
A seed is accepted only when, for every case, each greedy step's margin (best
minus second-best logit) is >= 1e-3 of that step's logit scale (max |logit|)
and each router decision (k-th vs (k+1)-th router logit at every MoE layer and
every position that feeds a recorded output) has a gap >= 1e-4, so that a
correct fp32 engine cannot flip a token or an expert; otherwise the next seed
is tried.
"""

import json
import math
import os
import shutil
import subprocess
import sys
import tempfile

PINNED = {"torch": "2.5.1", "transformers": "4.46.3", "safetensors": "0.8.0"}

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
DATA = os.path.join(ROOT, "tests", "data")
SYSTEM_PYTHON = "/usr/bin/python3"  # Debian's, with python3-sentencepiece

TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "Licensed under the Apache License, you may not use this file except in compliance.",
]
NEW_TOKENS = 12
RANDOM_PROMPT_LEN = 40
MIN_REL_MARGIN = 1e-3
MIN_ROUTER_GAP = 1e-4

CHECKPOINTS = [
    {
        "name": "hf-tiny",
        "base_seed": 1000,
        "shard": None,
        "config": dict(
            vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, num_local_experts=8,
            num_experts_per_tok=2, rope_theta=1e6, rms_norm_eps=1e-5,
            max_position_embeddings=256, sliding_window=None, tie_word_embeddings=False,
            bos_token_id=1, eos_token_id=2, hidden_act="silu",
        ),
    },
    {
        "name": "hf-odd",
        "base_seed": 2000,
        # Sharded like the real checkpoint (model-0000k-of-0000n + index.json).
        "shard": "500KB",
        "config": dict(
            vocab_size=512, hidden_size=96, intermediate_size=80, num_hidden_layers=3,
            num_attention_heads=6, num_key_value_heads=2, head_dim=16, num_local_experts=6,
            num_experts_per_tok=3, rope_theta=10000.0, rms_norm_eps=1e-6,
            max_position_embeddings=128, sliding_window=None, tie_word_embeddings=False,
            bos_token_id=1, eos_token_id=2, hidden_act="silu",
        ),
    },
]


def die(msg):
    sys.exit("make-hf-reference: " + msg)


def check_versions():
    import safetensors
    import torch
    import transformers

    got = {"torch": torch.__version__.split("+")[0],
           "transformers": transformers.__version__,
           "safetensors": safetensors.__version__}
    bad = [f"{k} {got[k]} (want {v})" for k, v in PINNED.items() if got[k] != v]
    if bad:
        die("wrong versions: " + ", ".join(bad) +
            "\n  pip install " + " ".join(f"{k}=={v}" for k, v in PINNED.items()))
    return got


# ---------------------------------------------------------------- tokenizer

def _varint(buf, i):
    v = s = 0
    while True:
        b = buf[i]
        i += 1
        v |= (b & 0x7F) << s
        s += 7
        if b < 0x80:
            return v, i


def _enc_varint(v):
    out = bytearray()
    while True:
        b = v & 0x7F
        v >>= 7
        if v:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _fields(buf):
    """Splits a protobuf message into (field, wiretype, raw bytes of the field)."""
    i, out = 0, []
    while i < len(buf):
        start = i
        key, i = _varint(buf, i)
        f, wt = key >> 3, key & 7
        if wt == 0:
            _, i = _varint(buf, i)
        elif wt == 1:
            i += 8
        elif wt == 5:
            i += 4
        elif wt == 2:
            n, i = _varint(buf, i)
            i += n
        else:
            die("tokenizer.model: unexpected protobuf wire type %d" % wt)
        out.append((f, wt, buf[start:i]))
    return out


def _ld(field, payload):
    return _enc_varint((field << 3) | 2) + _enc_varint(len(payload)) + payload


def normalise_tokenizer(raw):
    """spm_train records the input file and the output prefix (absolute, temporary
    paths) in TrainerSpec; replace them so the file does not depend on where it was
    made. ModelProto.trainer_spec = 2; TrainerSpec.input = 1, model_prefix = 2."""
    out = bytearray()
    for f, wt, chunk in _fields(raw):
        if f == 2 and wt == 2:
            _, j = _varint(chunk, 0)
            n, j = _varint(chunk, j)
            spec = bytearray()
            for g, gwt, sub in _fields(chunk[j:j + n]):
                if g == 1 and gwt == 2:
                    sub = _ld(1, b"tools/demo-tokenizer/corpus.txt")
                elif g == 2 and gwt == 2:
                    sub = _ld(2, b"tok")
                spec += sub
            chunk = _ld(2, bytes(spec))
        out += chunk
    return bytes(out)


def make_tokenizer(tmp):
    path = os.path.join(tmp, "tokenizer.model")
    subprocess.run([os.path.join(HERE, "train-demo-tokenizer"), path,
                    "--vocab_size=512", "--character_coverage=0.98"], check=True)
    with open(path, "rb") as f:
        data = normalise_tokenizer(f.read())
    with open(path, "wb") as f:
        f.write(data)
    return path


def spm(model, texts):
    """Vocab size and encodings by Debian's python3-sentencepiece (the reference)."""
    code = ("import json,sys,sentencepiece as s\n"
            "p=s.SentencePieceProcessor(model_file=sys.argv[1])\n"
            "t=json.load(sys.stdin)\n"
            "print(json.dumps({'n':p.vocab_size(),'bos':p.bos_id(),'eos':p.eos_id(),"
            "'ids':[p.encode(x) for x in t]}))\n")
    r = subprocess.run([SYSTEM_PYTHON, "-c", code, model], input=json.dumps(texts),
                       capture_output=True, text=True, check=True)
    return json.loads(r.stdout)


# ---------------------------------------------------------------- model

def reinit(model, seed):
    import torch

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("embed_tokens.weight"):
                p.normal_(0.0, 0.3, generator=g)
            elif name.endswith("norm.weight"):
                p.normal_(0.0, 1.0, generator=g).mul_(0.2).add_(1.0)
            elif p.dim() == 2:
                p.normal_(0.0, 1.5 / math.sqrt(p.shape[1]), generator=g)
            else:
                die("unexpected parameter " + name)


def build_checkpoint(spec, seed, outdir):
    import torch
    from transformers import MixtralConfig, MixtralForCausalLM

    torch.manual_seed(seed)
    model = MixtralForCausalLM(MixtralConfig(**spec["config"]))
    reinit(model, seed)
    model = model.to(torch.bfloat16)
    kw = {"max_shard_size": spec["shard"]} if spec["shard"] else {}
    model.save_pretrained(outdir, safe_serialization=True, **kw)


def fmt(x):
    return "%.9g" % x


def evaluate(ckdir, prompts, top_k):
    """Loads the saved bf16 checkpoint as fp32 (eager attention) and computes the cases."""
    import torch
    from transformers import MixtralForCausalLM

    model = MixtralForCausalLM.from_pretrained(ckdir, torch_dtype=torch.float32,
                                               attn_implementation="eager")
    model.eval()
    cases = []
    with torch.no_grad():
        for prompt in prompts:
            ids = torch.tensor([prompt], dtype=torch.long)
            logits = model(ids, attention_mask=torch.ones_like(ids)).logits[0].float()
            out = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False,
                                 max_new_tokens=NEW_TOKENS, min_new_tokens=0,
                                 eos_token_id=None, pad_token_id=0,
                                 output_logits=True, return_dict_in_generate=True)
            greedy = out.sequences[0, len(prompt):].tolist()
            if len(greedy) != NEW_TOKENS or len(out.logits) != NEW_TOKENS:
                die("greedy continuation has %d tokens, want %d" % (len(greedy), NEW_TOKENS))
            margins, rel = [], []
            for step, lg in enumerate(out.logits):
                row = lg[0].float()
                top = torch.topk(row, 2).values
                if int(torch.argmax(row)) != greedy[step]:
                    die("generate's token is not the argmax of its logits")
                m = float(top[0] - top[1])
                margins.append(m)
                rel.append(m / float(row.abs().max()))
            # No-cache cross-check over prompt + continuation; router gaps at every
            # position whose output is recorded (prompt and the first 11 new tokens).
            full = torch.tensor([prompt + greedy[:-1]], dtype=torch.long)
            fo = model(full, attention_mask=torch.ones_like(full), output_router_logits=True)
            recomputed = fo.logits[0, len(prompt) - 1:].argmax(-1).tolist()
            if recomputed != greedy:
                die("greedy ids differ between generate() and a full forward")
            gap = math.inf
            for rl in fo.router_logits:
                srt = torch.sort(rl.float(), dim=-1, descending=True).values
                gap = min(gap, float((srt[:, top_k - 1] - srt[:, top_k]).min()))
            cases.append({"prompt": prompt, "logits": logits, "greedy": greedy,
                          "min_margin": min(margins), "min_rel_margin": min(rel),
                          "min_router_gap": gap})
    return cases


def write_expected(path, generator, seed, cases):
    with open(path, "w") as f:
        f.write('{"generator": %s,\n "seed": %d,\n "cases": [\n'
                % (json.dumps(generator), seed))
        for ci, c in enumerate(cases):
            f.write('  {"prompt": %s,\n   "logits": [\n' % json.dumps(c["prompt"]))
            rows = c["logits"].tolist()
            for ri, row in enumerate(rows):
                f.write("    [" + ", ".join(fmt(v) for v in row) + "]" +
                        (",\n" if ri + 1 < len(rows) else "\n"))
            f.write('   ],\n   "greedy": %s,\n   "min_margin": %s,\n   "min_rel_margin": %s,\n'
                    '   "min_router_gap": %s}%s\n'
                    % (json.dumps(c["greedy"]), fmt(c["min_margin"]),
                       fmt(c["min_rel_margin"]), fmt(c["min_router_gap"]),
                       "," if ci + 1 < len(cases) else ""))
        f.write(" ]}\n")


def main():
    versions = check_versions()
    import torch
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    generator = ("tools/make-hf-reference.py: transformers %s MixtralForCausalLM, torch %s (CPU), "
                 "safetensors %s; bf16 checkpoint loaded as float32, eager attention"
                 % (versions["transformers"], versions["torch"], versions["safetensors"]))

    with tempfile.TemporaryDirectory() as tmp:
        tok = make_tokenizer(tmp)
        enc = spm(tok, TEXTS)
        if enc["n"] != 512 or enc["bos"] != 1 or enc["eos"] != 2:
            die("trained tokenizer has vocab %d bos %d eos %d, want 512 1 2"
                % (enc["n"], enc["bos"], enc["eos"]))
        g = torch.Generator().manual_seed(4242)
        rnd = torch.randint(3, 512, (RANDOM_PROMPT_LEN,), generator=g).tolist()
        prompts = [[1] + enc["ids"][0], [1] + enc["ids"][1], [1], rnd]

        for spec in CHECKPOINTS:
            top_k = spec["config"]["num_experts_per_tok"]
            for seed in range(spec["base_seed"], spec["base_seed"] + 100):
                ck = os.path.join(tmp, "%s-%d" % (spec["name"], seed))
                build_checkpoint(spec, seed, ck)
                cases = evaluate(ck, prompts, top_k)
                rel = min(c["min_rel_margin"] for c in cases)
                gap = min(c["min_router_gap"] for c in cases)
                print("%s seed %d: min greedy margin %.3g (relative %.3g), min router gap %.3g"
                      % (spec["name"], seed, min(c["min_margin"] for c in cases), rel, gap))
                if rel >= MIN_REL_MARGIN and gap >= MIN_ROUTER_GAP:
                    break
                shutil.rmtree(ck)
            else:
                die("no seed gave safe margins for " + spec["name"])

            dest = os.path.join(DATA, spec["name"])
            if os.path.isdir(dest):
                shutil.rmtree(dest)
            os.makedirs(dest)
            for fn in sorted(os.listdir(ck)):
                shutil.copyfile(os.path.join(ck, fn), os.path.join(dest, fn))
            shutil.copyfile(tok, os.path.join(dest, "tokenizer.model"))
            write_expected(os.path.join(dest, "expected.json"), generator, seed, cases)
            print("wrote", os.path.relpath(dest, ROOT), sorted(os.listdir(dest)))


if __name__ == "__main__":
    main()
