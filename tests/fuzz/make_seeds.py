#!/usr/bin/python3
"""Regenerates the seed corpus in tests/fuzz/corpus (run from this directory).

The GGUF seeds are tests/model/gguf_raw.py's tiny Mixtral-shaped model (merged
experts, per expert, version 2, a split part) and some of its malformed files.

The tokenizer-model seeds are small models trained with ../../tools/train-demo-tokenizer:
    ../../tools/train-demo-tokenizer corpus/tokenizer_model/trained-small.model \
        --vocab_size=400 --character_coverage=0.98
    ../../tools/train-demo-tokenizer corpus/tokenizer_model/trained-ud-small.model \
        --vocab_size=400 --character_coverage=0.98 --user_defined_symbols=foo,bar
"""
import json
import os
import struct
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "model"))
import gguf_raw  # noqa: E402


def write(d, name, data):
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


def st(name, header, data):
    h = json.dumps(header).encode()
    write("corpus/safetensors", name, struct.pack("<Q", len(h)) + h + data)


st("valid-two", {"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                 "b": {"dtype": "BF16", "shape": [2, 2], "data_offsets": [8, 16]},
                 "__metadata__": {"format": "pt"}}, bytes(range(16)))
st("valid-empty", {}, b"")
st("valid-zero-size", {"e": {"dtype": "F16", "shape": [0, 4], "data_offsets": [0, 0]},
                       "f": {"dtype": "F16", "shape": [1], "data_offsets": [0, 2]}}, b"\x00\x3c")
st("overlap", {"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
               "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}}, bytes(12))
st("gap", {"a": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}}, bytes(8))
st("bad-dtype", {"a": {"dtype": "Q4", "shape": [1], "data_offsets": [0, 4]}}, bytes(4))
st("shape-mismatch", {"a": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}}, bytes(8))
write("corpus/safetensors", "short", b"\x10\x00\x00")
write("corpus/safetensors", "huge-len", struct.pack("<Q", 2**63) + b"{}")

hf = {"architectures": ["MixtralForCausalLM"], "model_type": "mixtral", "vocab_size": 32000,
      "hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32,
      "num_attention_heads": 32, "num_key_value_heads": 8, "num_local_experts": 8,
      "num_experts_per_tok": 2, "rope_theta": 1e6, "rms_norm_eps": 1e-5,
      "max_position_embeddings": 32768, "sliding_window": None, "tie_word_embeddings": False,
      "bos_token_id": 1, "eos_token_id": 2, "hidden_act": "silu", "torch_dtype": "bfloat16"}
write("corpus/config", "mixtral-8x7b-config.json", json.dumps(hf, indent=2).encode())
params = {"dim": 4096, "n_layers": 32, "head_dim": 128, "hidden_dim": 14336, "n_heads": 32,
          "n_kv_heads": 8, "norm_eps": 1e-5, "vocab_size": 32000, "rope_theta": 1e6,
          "moe": {"num_experts": 8, "num_experts_per_tok": 2}}
write("corpus/config", "mixtral-8x7b-params.json", json.dumps(params).encode())
write("corpus/config", "topk-too-large.json", json.dumps(dict(hf, num_experts_per_tok=9)).encode())
bad = dict(hf, hidden_size=4097)
del bad["num_key_value_heads"]
write("corpus/config", "inconsistent.json", json.dumps(bad).encode())
write("corpus/config", "not-json.json", b'{"vocab_size": 32000,')

convs = [[{"role": "user", "content": "Hello"}],
         [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
          {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "[INST] </s>"}],
         [{"role": "assistant", "content": "x"}], [], {"role": "user"},
         [{"role": "user", "content": "a"}, {"role": "user", "content": "b\u0000c"}]]
for i, c in enumerate(convs):
    write("corpus/conversation", f"conv-{i}.json", json.dumps(c).encode())

texts = [b"Hello world", b" Hello", b"a\n\nb", b"   spaces", b"", b"\xff\xfe\xe6\x97abc",
         "Mixtral 日本語 🙂 Straße".encode(), b"\xe2\x96\x81\xe2\x96\x81x", b"\t\t\x00\x01 \r\n",
         "Ἀθῆναι ∞ ≈ €".encode()]
for i, t in enumerate(texts):
    write("corpus/tokenize", f"text-{i}", t)


# mixtrald.v1 requests (../../proto/mixtrald.proto), framed as on the socket:
# a varint length, then the message. Encoded by hand so that no protobuf
# package is needed here.
def varint(v):
    out = bytearray()
    while v >= 0x80:
        out.append(v & 0x7F | 0x80)
        v >>= 7
    out.append(v)
    return bytes(out)


def fv(num, v):  # varint field
    return varint(num << 3) + varint(v)


def fd(num, v):  # double field
    return varint(num << 3 | 1) + struct.pack("<d", v)


def fb(num, v):  # length-delimited field
    if isinstance(v, str):
        v = v.encode()
    return varint(num << 3 | 2) + varint(len(v)) + v


def frame(msg):
    return varint(len(msg)) + msg


def request(tag, kind, body):
    return fv(1, tag) + fb({"generate": 2, "cancel": 3, "status": 4, "quota": 5}[kind], body)


def chat(role, content):
    return fb(1, role) + fb(2, content)


def req(name, *frames):
    write("corpus/request", name, b"".join(frame(f) for f in frames))


gen_hello = request(1, "generate", fb(1, "Hello"))
req("generate-prompt", gen_hello)
req("generate-every-option", request(2, "generate", b"".join([
    fb(1, "Write a haiku about the sea."), fb(3, "Be brief."), fv(4, 0), fd(5, 0.7), fv(6, 40),
    fd(7, 0.9), fd(8, 0.05), fd(9, 1.1), fv(10, 42), fv(11, 64), fb(12, "\n\n"), fb(12, "User:"),
    fv(13, 1)])))
req("generate-raw", request(3, "generate", fb(1, " Once upon a time") + fv(4, 1) + fd(5, 0) + fv(10, 7)))
req("chat-messages", request(4, "generate", b"".join([
    fb(2, chat("system", "Answer in English.")), fb(2, chat("user", "Hi")),
    fb(2, chat("assistant", "Hello! How can I help?")), fb(2, chat("user", "Ünïcödé 日本語 🙂 [INST] </s>")),
    fb(3, "Be brief."), fv(11, 16)])))
req("cancel", request(5, "cancel", fv(1, 17)))
req("status", request(6, "status", b""))
req("quota", request(7, "quota", b""))
req("two-frames", gen_hello, request(8, "cancel", fv(1, 1)))
req("every-kind", gen_hello, request(9, "status", b""), request(10, "quota", b""),
    request(11, "cancel", fv(1, 2**64 - 1)), b"")
req("generate-rejected", request(12, "generate", fb(1, b"bad \xed\xa0\x80") + fd(5, float("nan"))),
    request(13, "generate", fb(2, chat("robot", "x"))),
    request(14, "generate", fb(1, "x") + b"".join(fb(12, "s") for _ in range(17))),
    request(15, "generate", fb(1, "x") + fv(4, 1) + fb(3, "system")))
write("corpus/request", "truncated", frame(gen_hello) + varint(200) + b"\x08\x01\x12")
write("corpus/request", "oversize", varint(1 << 20) + b"\x08\x01")
write("corpus/request", "not-a-request", frame(b"\xff\xff\xff\xff") + frame(gen_hello))


def conf(name, text):
    write("corpus/daemon_config", name, text.encode())


with open("../../systemd/mixtrald.conf") as f:
    conf("shipped", f.read())
conf("every-key", """# every [daemon] key, [quota] and overrides
[daemon]
model = /srv/models/Mixtral-8x7B-Instruct-v0.1
device = cuda:0
socket = /run/mixtrald/mixtrald.sock
socket_mode = 0660
bus = system
state_directory = /var/lib/mixtrald
admin_group = mixtrald-admin
max_frame_bytes = 4M
max_output_bytes = 8M
drain_seconds = 30
expert_memory = 50%
memory_pressure = /proc/pressure/memory
host_cache = 16G
kv_type = bf16
kv_memory = 25%
prefix_cache_share = user
threads = 8
max_batch = 16
max_queue = 64
max_connections_per_uid = 32
prefill_chunk = 256

[quota]
tokens_per_hour = 100000
tokens_per_day = 1000000
max_concurrent = 4
max_queued = 16
max_context = 32768
max_tokens = 4096

[user:alice]
tokens_per_day = 0

[group:students]
tokens_per_hour = 5000
max_concurrent = 1
""")
conf("budgets", "[daemon]\nexpert_memory = min\nhost_cache = all\nexpert_memory = 1.5T\n"
     "host_cache = 0.25%\nexpert_memory = 200G\n")
conf("bad-budget", "[daemon]\nexpert_memory = 101%\n")
conf("bad-budget-huge", "[daemon]\nhost_cache = 99999999T\n")
conf("kv-cache", "[daemon]\nkv_type = f32\nkv_memory = 8G\nkv_memory = 101%\nprefix_cache_share = all\n"
     "prefix_cache_share = nobody\n")
conf("bad-section", "[user:]\nmax_tokens = 1\n[nowhere]\nx = 1\n")
conf("bad-line", "[daemon]\nmodel /no/equals\n")
conf("long-line", "[daemon]\nmodel = /" + "m" * 300 + "\n")


# GGUF: the tiny valid model in its shapes, and malformed ones near each rule.
gg = "corpus/gguf"
write(gg, "valid", gguf_raw.base())
write(gg, "valid-v2", gguf_raw.base(version=2))
write(gg, "valid-perexpert", gguf_raw.build(gguf_raw.base_kvs(), gguf_raw.base_tensors(merged=False)))
write(gg, "valid-split-part", gguf_raw.split_parts(2)[0][1])
for name, _, _, data in gguf_raw.bad_files():
    if name in ("array-nested", "bool-2", "key-twice", "alignment-13", "dims-5", "size-overflow",
                "row-blocks", "overlap", "name-twice", "experts-count", "experts-missing", "tok-count",
                "scores-u8", "token-utf8", "byte-malformed", "unk-disagrees"):
        write(gg, name, data)


# The HTTP API's bodies: a first byte for the endpoint (0 chat, 1 completion).
def http(name, kind, body):
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    write("corpus/http_request", name, bytes([kind]) + data)


hello = [{"role": "user", "content": "Hello"}]
http("chat", 0, {"model": "gpt-4o", "messages": hello, "max_tokens": 16, "temperature": 0})
http("chat-every-field", 0, {
    "model": "m", "messages": [{"role": "developer", "content": "Be brief."},
                               {"role": "user", "content": [{"type": "text", "text": "Hi"}], "name": "x"},
                               {"role": "assistant", "content": None, "tool_calls": []},
                               {"role": "user", "content": "again"}],
    "max_tokens": 7, "max_completion_tokens": 9, "temperature": 0.7, "top_p": 0.9, "top_k": 40, "min_p": 0.05,
    "repeat_penalty": 1.1, "seed": 7, "stop": ["\n\n", "END"], "stream": True,
    "stream_options": {"include_usage": True}, "n": 1, "logprobs": False, "user": "u", "tools": [],
    "ignore_eos": False, "presence_penalty": 0})
http("chat-nulls", 0, {"messages": hello, "max_tokens": None, "stop": None, "seed": None, "stream_options": None})
http("completion", 1, {"prompt": "Once upon a time", "max_tokens": 5, "seed": 3, "stop": "."})
http("completion-array", 1, {"prompt": ["Once"], "echo": False, "best_of": 1, "suffix": None, "logprobs": None})
http("refused-types", 0, {"messages": hello, "max_tokens": "5", "temperature": "hot"})
http("refused-features", 1, {"prompt": [1, 2, 3], "n": 2, "echo": True, "logprobs": 5})
http("refused-nul", 0, b'{"messages": [{"role": "user", "content": "a\\u0000b"}]}')
http("refused-utf8", 1, b'{"prompt": "\xed\xa0\x80"}')
http("refused-duplicate", 0, b'{"messages": [], "messages": []}')
http("not-json", 0, b"POST / HTTP/1.1")
