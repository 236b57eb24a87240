"""GGUF files byte by byte, for the files no well-behaved writer would make.

A small serializer that writes whatever it is given (wrong counts, bad
types, overlapping offsets), a tiny valid Mixtral-shaped model with its own
vocabulary to start from, and one malformed variant per rule the loader
enforces (docs/model-files.md), each with the words its error must contain.
Pure Python (struct only): tests/model/make_gguf.py writes the variants for
tests/model/test_gguf.c, and tests/fuzz/make_seeds.py takes some as seeds.
"""
import copy
import struct

U8, I8, U16, I16, U32, I32, F32, BOOL, STRING, ARRAY, U64, I64, F64 = range(13)
GGML_F32, GGML_F16, GGML_Q4_0, GGML_Q4_1, GGML_Q8_0, GGML_BF16 = 0, 1, 2, 3, 8, 30

_FMT = {U8: "<B", I8: "<b", U16: "<H", I16: "<h", U32: "<I", I32: "<i", F32: "<f", BOOL: "<B",
        U64: "<Q", I64: "<q", F64: "<d"}


def gstr(x):
    """A GGUF string: u64 length, then the bytes."""
    b = x.encode() if isinstance(x, str) else x
    return struct.pack("<Q", len(b)) + b


def value(t, v):
    """The encoding of a scalar or string value of type t (no type tag)."""
    return gstr(v) if t == STRING else struct.pack(_FMT[t], v)


def array(t, items):
    """An array value: element type, count, the elements."""
    return struct.pack("<IQ", t, len(items)) + b"".join(value(t, x) for x in items)


class KV:
    def __init__(self, key, t, payload):
        self.key, self.t, self.payload = key, t, payload

    def encode(self):
        return gstr(self.key) + struct.pack("<I", self.t) + self.payload


def kv(key, t, v):
    return KV(key, t, value(t, v))


def kv_array(key, t, items):
    return KV(key, ARRAY, array(t, items))


class Tensor:
    """ne in ggml's order (ne[0] the row); offset None: placed after the
    previous; data None: nbytes of data that build leaves out."""

    def __init__(self, name, ne, ggml_type, data, offset=None, nbytes=None):
        self.name, self.ne, self.type, self.data, self.offset = name, list(ne), ggml_type, data, offset
        self.nbytes = len(data) if data is not None else nbytes


def build(kvs, tensors, version=3, alignment=32, n_tensors=None, n_kv=None, truncate=0, data=True):
    """The file's bytes (without the tensor data when data is False).
    Offsets not given are packed at the alignment; the data section starts
    at the next multiple of it."""
    out = bytearray(b"GGUF" + struct.pack("<IQQ", version,
                                          len(tensors) if n_tensors is None else n_tensors,
                                          len(kvs) if n_kv is None else n_kv))
    for x in kvs:
        out += x.encode()
    at = 0
    for t in tensors:
        if t.offset is None:
            t.offset = at
        at = max(at, t.offset + t.nbytes)
        at = (at + alignment - 1) // alignment * alignment
    for t in tensors:
        out += gstr(t.name) + struct.pack("<I", len(t.ne)) + b"".join(struct.pack("<Q", d) for d in t.ne)
        out += struct.pack("<IQ", t.type, t.offset)
    if tensors:
        out += bytes(-len(out) % alignment)
    if not data:
        return bytes(out)
    data = bytearray()
    for t in tensors:
        end = t.offset + len(t.data)
        if end > 1 << 30:  # an offset meant to be refused: no data for it
            continue
        if end > len(data):
            data += bytes(end - len(data))
        data[t.offset:end] = t.data
    out += data
    return bytes(out[:len(out) - truncate] if truncate else out)


# ---- a tiny valid model ----------------------------------------------------------

HIDDEN, FF, HEADS, KV_HEADS, EXPERTS = 8, 8, 2, 1, 2
HEAD_DIM = HIDDEN // HEADS
TOKENS = ["<unk>", "<s>", "</s>", "\u2581", "a", "b", "c", "\u2581a", "\u2581b", "ab", "bc", "\u2581ab"]
TYPES = [2, 3, 3] + [1] * (len(TOKENS) - 3)
SCORES = [0.0, 0.0, 0.0] + [-float(i) for i in range(1, len(TOKENS) - 2)]


def f32s(n, seed):
    """n deterministic small floats."""
    return struct.pack(f"<{n}f", *[(((i * 7 + seed * 13) % 17) - 8) / 32 for i in range(n)])


def base_kvs(vocab=True):
    kvs = [kv("general.architecture", STRING, "llama"),
           kv("llama.context_length", U32, 64), kv("llama.embedding_length", U32, HIDDEN),
           kv("llama.feed_forward_length", U32, FF), kv("llama.block_count", U32, 1),
           kv("llama.attention.head_count", U32, HEADS),
           kv("llama.attention.head_count_kv", U32, KV_HEADS),
           kv("llama.rope.dimension_count", U32, HEAD_DIM), kv("llama.rope.freq_base", F32, 10000.0),
           kv("llama.attention.layer_norm_rms_epsilon", F32, 1e-5),
           kv("llama.expert_count", U32, EXPERTS), kv("llama.expert_used_count", U32, 1),
           kv("llama.vocab_size", U32, len(TOKENS))]
    if vocab:
        kvs += [kv("tokenizer.ggml.model", STRING, "llama"),
                kv_array("tokenizer.ggml.tokens", STRING, TOKENS),
                kv_array("tokenizer.ggml.scores", F32, SCORES),
                kv_array("tokenizer.ggml.token_type", I32, TYPES),
                kv("tokenizer.ggml.bos_token_id", U32, 1), kv("tokenizer.ggml.eos_token_id", U32, 2),
                kv("tokenizer.ggml.unknown_token_id", U32, 0),
                kv("tokenizer.ggml.add_bos_token", BOOL, 1)]
    return kvs


def base_tensors(merged=True):
    """The tensors, with the same weights whether the experts are merged
    into *_exps tensors or stored one by one."""
    v = len(TOKENS)
    spec = [("token_embd.weight", [HIDDEN, v]), ("output_norm.weight", [HIDDEN]),
            ("output.weight", [HIDDEN, v]), ("blk.0.attn_norm.weight", [HIDDEN]),
            ("blk.0.attn_q.weight", [HIDDEN, HEADS * HEAD_DIM]),
            ("blk.0.attn_k.weight", [HIDDEN, KV_HEADS * HEAD_DIM]),
            ("blk.0.attn_v.weight", [HIDDEN, KV_HEADS * HEAD_DIM]),
            ("blk.0.attn_output.weight", [HEADS * HEAD_DIM, HIDDEN]),
            ("blk.0.ffn_norm.weight", [HIDDEN]), ("blk.0.ffn_gate_inp.weight", [HIDDEN, EXPERTS]),
            ("blk.0.ffn_gate_exps.weight", [HIDDEN, FF, EXPERTS]),
            ("blk.0.ffn_down_exps.weight", [FF, HIDDEN, EXPERTS]),
            ("blk.0.ffn_up_exps.weight", [HIDDEN, FF, EXPERTS])]
    out = []
    for i, (name, ne) in enumerate(spec):
        n = 1
        for d in ne:
            n *= d
        data = f32s(n, i)
        if merged or not name.endswith("_exps.weight"):
            out.append(Tensor(name, ne, GGML_F32, data))
            continue
        per = len(data) // EXPERTS  # ne[2] is the slowest: each expert a contiguous slice
        what = name[len("blk.0.ffn_"):-len("_exps.weight")]
        out += [Tensor(f"blk.0.ffn_{what}.{e}.weight", ne[:2], GGML_F32, data[e * per:(e + 1) * per])
                for e in range(EXPERTS)]
    return out


def base(**kw):
    return build(base_kvs(), base_tensors(), **kw)


# ---- one malformed file per rule ------------------------------------------------------

def _set(kvs, key, t, v=None, payload=None):
    """kvs with key's value replaced (or appended), or removed when t is None."""
    out = [x for x in kvs if x.key != key]
    if t is not None:
        out.append(KV(key, t, payload if payload is not None else value(t, v)))
    return out


def _tensor(ts, name):
    return next(t for t in ts if t.name == name)


def _mut_tensors(fn, **kw):
    ts = base_tensors()
    fn(ts)
    return build(base_kvs(), ts, **kw)


def _mut_kvs(fn, **kw):
    return build(fn(base_kvs()), base_tensors(), **kw)


def _header(version=3, n_tensors=0, n_kv=0):
    return b"GGUF" + struct.pack("<IQQ", version, n_tensors, n_kv)


def bad_files():
    """(name, stage, needle, bytes): stage "open" when mx_model_open must
    refuse the file, "tokenizer" when it opens and its vocabulary must be
    refused."""
    K, T = _mut_kvs, _mut_tensors
    cases = [
        # the header
        ("magic", "open", "no \"GGUF\" magic", b"GGUX" + base()[4:]),
        ("version-1", "open", "version 1 is not supported", base(version=1)),
        ("version-4", "open", "unknown GGUF version 4", base(version=4)),
        ("big-endian", "open", "big-endian", base(version=3 << 24)),
        ("short-header", "open", "the file ends", b"GGUF\x03\x00\x00\x00\x01"),
        ("tensor-count", "open", "tensors cannot fit", base(n_tensors=1 << 40)),
        ("kv-count", "open", "metadata entries cannot fit", base(n_kv=1 << 40)),
        # metadata
        ("key-empty", "open", "the key is empty", K(lambda k: k + [kv("", U32, 1)])),
        ("key-length", "open", "the file ends", _header(n_kv=1) + struct.pack("<Q", 2**64 - 1) + b"x" * 32),
        ("key-control", "open", "not printable ASCII", K(lambda k: k + [kv("a\nb", U32, 1)])),
        ("value-type", "open", "unknown value type 13", K(lambda k: k + [KV("x.y", 13, b"\0" * 8)])),
        ("bool-2", "open", "boolean 2 is neither 0 nor 1", K(lambda k: k + [kv("x.flag", BOOL, 2)])),
        ("string-length", "open", "the file ends",
         _header(n_kv=1) + gstr("x.s") + struct.pack("<IQ", STRING, 2**63) + b"abc"),
        ("array-type", "open", "array of unknown value type 77",
         K(lambda k: k + [KV("x.a", ARRAY, struct.pack("<IQ", 77, 1) + b"\0" * 8)])),
        ("array-count", "open", "runs past the end",
         K(lambda k: k + [KV("x.a", ARRAY, struct.pack("<IQ", U32, 2**61))])),
        ("array-nested", "open", "arrays nested more than 4 deep",
         K(lambda k: k + [KV("x.a", ARRAY, struct.pack("<IQ", ARRAY, 1) * 6 + struct.pack("<IQ", U8, 0))])),
        ("key-twice", "open", "\"llama.block_count\": given twice",
         K(lambda k: k + [kv("llama.block_count", U32, 1)])),
        ("alignment-type", "open", "general.alignment\": type i32, must be u32",
         K(lambda k: k + [kv("general.alignment", I32, 32)])),
        ("alignment-13", "open", "13 is not a power of two", K(lambda k: k + [kv("general.alignment", U32, 13)])),
        ("alignment-0", "open", "0 is not a power of two", K(lambda k: k + [kv("general.alignment", U32, 0)])),
        ("alignment-huge", "open", "2147483648 is not a power of two from 1 to",
         K(lambda k: k + [kv("general.alignment", U32, 2**31)])),
        # tensor infos
        ("name-empty", "open", "tensor 0: the name is empty", T(lambda t: setattr(t[0], "name", ""))),
        ("name-long", "open", "longer than 63 bytes", T(lambda t: setattr(t[0], "name", "x" * 64))),
        ("name-control", "open", "not printable UTF-8", T(lambda t: setattr(t[0], "name", "a\x01b"))),
        ("name-utf8", "open", "not printable UTF-8", T(lambda t: setattr(t[0], "name", b"a\xffb"))),
        ("dims-5", "open", "\"token_embd.weight\": 5 dimensions", T(lambda t: setattr(t[0], "ne", [1, 1, 1, 1, 96]))),
        ("dims-0", "open", "\"token_embd.weight\": 0 dimensions", T(lambda t: setattr(t[0], "ne", []))),
        ("dim-zero", "open", "dimension 1 is 0", T(lambda t: setattr(t[0], "ne", [HIDDEN, 0]))),
        ("dim-negative", "open", "dimension 0 is 18446744073709551615",
         T(lambda t: setattr(t[0], "ne", [2**64 - 1, 1]))),
        ("size-overflow", "open", "its size overflows 64 bits",
         T(lambda t: setattr(t[0], "ne", [2**32, 2**32]))),
        ("size-pad-wrap", "open", "run past the end of the file",
         T(lambda t: setattr(t[0], "ne", [4, 2**30 - 1, 2**30 + 1]))),
        ("type-unknown", "open", "unknown ggml type 31", T(lambda t: setattr(t[0], "type", 31))),
        ("type-unsupported", "open", "ggml type Q4_1 is not supported",
         T(lambda t: setattr(t[0], "type", GGML_Q4_1))),
        ("row-blocks", "open", "rows of 8 weights are not whole Q8_0 blocks of 32",
         T(lambda t: setattr(t[0], "type", GGML_Q8_0))),
        ("offset-unaligned", "open", "data offset 4 is not a multiple of the alignment 32",
         T(lambda t: setattr(t[1], "offset", 4))),
        ("offset-huge", "open", "run past the end of the file",
         T(lambda t: setattr(t[-1], "offset", 2**64 - 32))),
        ("data-short", "open", "run past the end of the file", base(truncate=1)),
        ("overlap", "open", "overlaps tensor", T(lambda t: setattr(t[2], "offset", t[1].offset or 0))),
        ("name-twice", "open", "\"output.weight\": given twice",
         T(lambda t: setattr(t[0], "name", "output.weight"))),
        ("alignment-inconsistent", "open", "data offset 12 is not a multiple of the alignment 32",
         build(base_kvs(), [Tensor("a.weight", [3], GGML_F32, f32s(3, 0))] + base_tensors(), alignment=4)),
        # the model
        ("arch-missing", "open", "\"general.architecture\" is missing",
         K(lambda k: _set(k, "general.architecture", None))),
        ("arch-qwen2", "open", "architecture \"qwen2\" is not supported",
         K(lambda k: _set(k, "general.architecture", STRING, "qwen2"))),
        ("arch-not-string", "open", "general.architecture\": type u32, expected a string",
         K(lambda k: _set(k, "general.architecture", U32, 1))),
        ("no-experts", "open", "not a mixture-of-experts model",
         K(lambda k: _set(k, "llama.expert_count", None))),
        ("layers-missing", "open", "\"llama.block_count\" is missing",
         K(lambda k: _set(k, "llama.block_count", None))),
        ("heads-zero", "open", "\"llama.attention.head_count\" is 0, must be positive",
         K(lambda k: _set(k, "llama.attention.head_count", U32, 0))),
        ("hidden-string", "open", "\"llama.embedding_length\" is not an integer",
         K(lambda k: _set(k, "llama.embedding_length", STRING, "8"))),
        ("hidden-huge", "open", "\"llama.embedding_length\" is 18446744073709551615, more than",
         K(lambda k: _set(k, "llama.embedding_length", U64, 2**64 - 1))),
        ("eps-negative", "open", "\"llama.attention.layer_norm_rms_epsilon\" is -1, must be in (0,",
         K(lambda k: _set(k, "llama.attention.layer_norm_rms_epsilon", F32, -1.0))),
        ("rope-nan", "open", "\"llama.rope.freq_base\" is nan",
         K(lambda k: _set(k, "llama.rope.freq_base", F32, float("nan")))),
        ("gqa", "open", "2 attention heads are not a multiple of 3 key/value heads",
         K(lambda k: _set(k, "llama.attention.head_count_kv", U32, 3))),
        ("top-k", "open", "top-k of 3 experts, but only 2",
         K(lambda k: _set(k, "llama.expert_used_count", U32, 3))),
        ("rope-partial", "open", "partial RoPE is not supported",
         K(lambda k: _set(k, "llama.rope.dimension_count", U32, 2))),
        ("rope-scaling", "open", "RoPE scaling \"linear\" is not supported",
         K(lambda k: k + [kv("llama.rope.scaling.type", STRING, "linear")])),
        ("value-length", "open", "\"llama.attention.value_length\" is 8",
         K(lambda k: k + [kv("llama.attention.value_length", U32, 8)])),
        ("bos-outside", "open", "bos/eos token id outside the vocabulary of 12",
         K(lambda k: _set(k, "tokenizer.ggml.bos_token_id", U32, 12))),
        ("vocab-missing", "open", "\"llama.vocab_size\" is missing and",
         K(lambda k: [x for x in k if not x.key.startswith("tokenizer.") and x.key != "llama.vocab_size"])),
        ("split-single", "open", "\"split.count\" should be 1",
         K(lambda k: k + [kv("split.count", U16, 2)])),
        # the tensors the model needs
        ("tensor-missing", "open", "\"blk.0.attn_q.weight\" is missing",
         T(lambda t: t.remove(_tensor(t, "blk.0.attn_q.weight")))),
        ("tensor-shape", "open", "\"token_embd.weight\": shape [12, 4], but the config needs [12, 8]",
         T(lambda t: setattr(_tensor(t, "token_embd.weight"), "ne", [4, len(TOKENS)]) or
           setattr(_tensor(t, "token_embd.weight"), "data", f32s(4 * len(TOKENS), 0)))),
        ("tensor-unexpected", "open", "unexpected tensor \"blk.0.extra.weight\"",
         T(lambda t: t.append(Tensor("blk.0.extra.weight", [4], GGML_F32, f32s(4, 1))))),
        ("experts-count", "open", "\"blk.0.ffn_up_exps.weight\": 3 experts, but llama.expert_count is 2",
         T(lambda t: setattr(_tensor(t, "blk.0.ffn_up_exps.weight"), "ne", [HIDDEN, FF, 3]) or
           setattr(_tensor(t, "blk.0.ffn_up_exps.weight"), "data", f32s(HIDDEN * FF * 3, 2)))),
        ("experts-rank", "open", "\"blk.0.ffn_up_exps.weight\": 2 dimensions, expected 3",
         T(lambda t: setattr(_tensor(t, "blk.0.ffn_up_exps.weight"), "ne", [HIDDEN, FF * 2]))),
        ("experts-missing", "open", "tensor \"blk.0.ffn_down_exps.weight\" (or \"blk.0.ffn_down.0.weight\") is missing",
         T(lambda t: t.remove(_tensor(t, "blk.0.ffn_down_exps.weight")))),
        # the vocabulary
        ("tok-missing", "tokenizer", "no vocabulary (tokenizer.ggml.model is missing)",
         K(lambda k: _set(k, "tokenizer.ggml.model", None))),
        ("tok-gpt2", "tokenizer", "tokenizer \"gpt2\" is not supported",
         K(lambda k: _set(k, "tokenizer.ggml.model", STRING, "gpt2"))),
        ("tok-count", "tokenizer", "\"tokenizer.ggml.tokens\" has 11 entries, but the vocabulary 12",
         K(lambda k: _set(k, "tokenizer.ggml.tokens", ARRAY, payload=array(STRING, TOKENS[:-1])))),
        ("tok-not-strings", "tokenizer", "tokenizer.ggml.tokens\": an array of i32, expected an array of strings",
         K(lambda k: _set(k, "tokenizer.ggml.tokens", ARRAY, payload=array(I32, list(range(12)))))),
        ("scores-count", "tokenizer", "\"tokenizer.ggml.scores\" has 13 entries",
         K(lambda k: _set(k, "tokenizer.ggml.scores", ARRAY, payload=array(F32, SCORES + [0.0])))),
        ("scores-u8", "tokenizer", "tokenizer.ggml.scores\": an array of u8, expected an array of floats",
         K(lambda k: _set(k, "tokenizer.ggml.scores", ARRAY, payload=array(U8, [0] * 12)))),
        ("scores-missing", "tokenizer", "\"tokenizer.ggml.scores\" is missing",
         K(lambda k: _set(k, "tokenizer.ggml.scores", None))),
        ("types-f32", "tokenizer", "tokenizer.ggml.token_type\": an array of f32, expected an array of integers",
         K(lambda k: _set(k, "tokenizer.ggml.token_type", ARRAY, payload=array(F32, [1.0] * 12)))),
        ("types-count", "tokenizer", "\"tokenizer.ggml.token_type\" has 2 entries",
         K(lambda k: _set(k, "tokenizer.ggml.token_type", ARRAY, payload=array(I32, [2, 3])))),
        ("token-utf8", "tokenizer", "token 4 is not UTF-8 without NUL",
         K(lambda k: _set(k, "tokenizer.ggml.tokens", ARRAY,
                          payload=array(STRING, TOKENS[:4] + [b"\xc3"] + TOKENS[5:])))),
        ("token-nul", "tokenizer", "token 4 is not UTF-8 without NUL",
         K(lambda k: _set(k, "tokenizer.ggml.tokens", ARRAY,
                          payload=array(STRING, TOKENS[:4] + [b"a\0"] + TOKENS[5:])))),
        ("token-empty", "tokenizer", "piece 4 is empty",
         K(lambda k: _set(k, "tokenizer.ggml.tokens", ARRAY, payload=array(STRING, TOKENS[:4] + [""] + TOKENS[5:])))),
        ("token-twice", "tokenizer", "piece 5 (\"a\") is a duplicate",
         K(lambda k: _set(k, "tokenizer.ggml.tokens", ARRAY, payload=array(STRING, TOKENS[:5] + ["a"] + TOKENS[6:])))),
        ("token-type-9", "tokenizer", "piece 4 has unknown type 9",
         K(lambda k: _set(k, "tokenizer.ggml.token_type", ARRAY, payload=array(I32, TYPES[:4] + [9] + TYPES[5:])))),
        ("token-type-negative", "tokenizer", "piece 4 has unknown type 0",
         K(lambda k: _set(k, "tokenizer.ggml.token_type", ARRAY, payload=array(I64, TYPES[:4] + [-2**40] + TYPES[5:])))),
        ("score-nan", "tokenizer", "piece 3 has a non-finite score",
         K(lambda k: _set(k, "tokenizer.ggml.scores", ARRAY,
                          payload=array(F32, SCORES[:3] + [float("inf")] + SCORES[4:])))),
        ("no-unknown", "tokenizer", "the model has no unknown piece",
         K(lambda k: _set(_set(k, "tokenizer.ggml.token_type", ARRAY, payload=array(I32, [1] + TYPES[1:])),
                          "tokenizer.ggml.unknown_token_id", None))),
        ("two-unknown", "tokenizer", "two unknown pieces (0 and 4)",
         K(lambda k: _set(k, "tokenizer.ggml.token_type", ARRAY, payload=array(I32, TYPES[:4] + [2] + TYPES[5:])))),
        ("unk-disagrees", "tokenizer", "\"tokenizer.ggml.unknown_token_id\" is 3, but the unknown piece is 0",
         K(lambda k: _set(k, "tokenizer.ggml.unknown_token_id", U32, 3))),
        ("pad-negative", "tokenizer", "\"tokenizer.ggml.padding_token_id\" is not a token id below 12",
         K(lambda k: k + [kv("tokenizer.ggml.padding_token_id", I32, -1)])),
        ("byte-malformed", "tokenizer", "is \"<0x-1>\", not <0x00>..<0xFF>",
         K(lambda k: _set(_set(k, "tokenizer.ggml.tokens", ARRAY, payload=array(STRING, TOKENS[:4] + ["<0x-1>"] + TOKENS[5:])),
                          "tokenizer.ggml.token_type", ARRAY, payload=array(I32, TYPES[:4] + [6] + TYPES[5:])))),
        ("bytes-incomplete", "tokenizer", "byte_fallback is on but piece <0x00> is missing",
         K(lambda k: _set(_set(k, "tokenizer.ggml.tokens", ARRAY, payload=array(STRING, TOKENS[:4] + ["<0x41>"] + TOKENS[5:])),
                          "tokenizer.ggml.token_type", ARRAY, payload=array(I32, TYPES[:4] + [6] + TYPES[5:])))),
        ("charsmap", "tokenizer", "normalization rules",
         K(lambda k: k + [KV("tokenizer.ggml.precompiled_charsmap", ARRAY, array(U8, [1, 2, 3]))])),
        ("add-bos-u8", "tokenizer", "tokenizer.ggml.add_bos_token\": type u8, expected a bool",
         K(lambda k: _set(k, "tokenizer.ggml.add_bos_token", U8, 1))),
    ]
    names = [c[0] for c in cases]
    assert len(names) == len(set(names)), "bad file names must be unique"
    return cases


def mixtral_shaped(layers):
    """Metadata and data-less tensors of the real Mixtral-8x7B's shape (BF16)."""
    h, f, v, e, hd = 4096, 14336, 32000, 8, 128
    kvs = [kv("general.architecture", STRING, "llama"), kv("llama.context_length", U32, 32768),
           kv("llama.embedding_length", U32, h), kv("llama.feed_forward_length", U32, f),
           kv("llama.block_count", U32, layers), kv("llama.attention.head_count", U32, 32),
           kv("llama.attention.head_count_kv", U32, 8), kv("llama.rope.freq_base", F32, 1e6),
           kv("llama.attention.layer_norm_rms_epsilon", F32, 1e-5), kv("llama.expert_count", U32, e),
           kv("llama.expert_used_count", U32, 2), kv("llama.vocab_size", U32, v)]
    spec = [("token_embd.weight", [h, v]), ("output_norm.weight", [h]), ("output.weight", [h, v])]
    for L in range(layers):
        spec += [(f"blk.{L}.attn_norm.weight", [h]), (f"blk.{L}.attn_q.weight", [h, h]),
                 (f"blk.{L}.attn_k.weight", [h, 8 * hd]), (f"blk.{L}.attn_v.weight", [h, 8 * hd]),
                 (f"blk.{L}.attn_output.weight", [h, h]), (f"blk.{L}.ffn_norm.weight", [h]),
                 (f"blk.{L}.ffn_gate_inp.weight", [h, e]), (f"blk.{L}.ffn_gate_exps.weight", [h, f, e]),
                 (f"blk.{L}.ffn_down_exps.weight", [f, h, e]), (f"blk.{L}.ffn_up_exps.weight", [h, f, e])]
    ts = []
    for name, ne in spec:
        n = 2
        for d in ne:
            n *= d
        ts.append(Tensor(name, ne, GGML_BF16, None, nbytes=n))
    return kvs, ts


def split_parts(n_parts, no=None, count=None, drop=None):
    """The base model as a split set of n_parts files (metadata in the
    first), with split.no / split.count overridden per part (dicts), and
    part `drop` (1-based) left out: [(part, bytes)]."""
    ts = base_tensors()
    per = (len(ts) + n_parts - 1) // n_parts
    out = []
    for k in range(n_parts):
        kvs = base_kvs() if k == 0 else []
        kvs += [kv("split.no", U16, (no or {}).get(k, k)),
                kv("split.count", U16, (count or {}).get(k, n_parts)),
                kv("split.tensors.count", I32, len(ts))]
        part = [copy.copy(t) for t in ts[k * per:(k + 1) * per]]
        for t in part:
            t.offset = None
        if drop != k + 1:
            out.append((k + 1, build(kvs, part)))
    return out
