#!/usr/bin/env python3
"""The GGUF files tests/model/test_gguf.c reads, made independently of our
C code: gguf-py's GGUFWriter (the reference writer kept with llama.cpp),
numpy, and Python sentencepiece for the vocabularies.

  make_gguf.py OUTDIR --data DIR [--tokenizer NAME=MODEL]... [--stamp FILE]

writes into OUTDIR:

  CKPT-TYPE[-VARIANT].gguf   hf-tiny / hf-odd (DIR/hf-tiny, DIR/hf-odd) converted as
                             llama.cpp's converter converts Mixtral: q/k rows permuted
                             into its RoPE order, experts merged into 3-D *_exps tensors
                             (or per expert: -perexpert), norms in F32, matrices in TYPE
                             (F32, F16, BF16, Q8_0, Q4_0 quantized by gguf.quants; rows
                             that are not whole blocks stay F16, as llama.cpp does), GGUF
                             version 3 (or 2: -v2), the checkpoint's own vocabulary;
  CKPT-TYPE[-VARIANT].tsv    what each bound tensor must be: role, type, shape (rows x
                             columns), bytes, FNV-1a 64 of its bytes as the file has them;
  split/tiny-bf16-0000K-of-00003.gguf   a split set (gguf-py's split writer);
  tok-NAME.gguf              a small random model around tokenizer NAME's vocabulary;
  bad/NAME.gguf, bad/cases.tsv  one malformed file per rule (tests/model/gguf_raw.py):
                             file, the stage that must refuse it, words of the error;
  ok/*.gguf                  the raw writer's valid files (merged and per-expert, v2).

Runs with the project's venv (tools/install-deps), which also sees Debian's
python3-sentencepiece.
"""
import argparse
import json
import os
import struct
import sys

import numpy as np
import gguf
import sentencepiece as spm

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import gguf_raw  # noqa: E402

Q = gguf.GGMLQuantizationType
TYPES = {"f32": Q.F32, "f16": Q.F16, "bf16": Q.BF16, "q8_0": Q.Q8_0, "q4_0": Q.Q4_0}
FILE_TYPE = {Q.F32: 0, Q.F16: 1, Q.BF16: 32, Q.Q8_0: 7, Q.Q4_0: 2}


def fnv64(b):
    h = 0xCBF29CE484222325
    for x in memoryview(b).cast("B"):
        h = ((h ^ x) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return h


# ---- reading safetensors (no safetensors package needed) -------------------------

def read_safetensors(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        data = f.read()
    out = {}
    for name, t in header.items():
        if name == "__metadata__":
            continue
        a, b = t["data_offsets"]
        dt = {"BF16": np.uint16, "F16": np.float16, "F32": np.float32}[t["dtype"]]
        arr = np.frombuffer(data[a:b], dtype=dt).reshape(t["shape"])
        out[name] = (t["dtype"], arr)
    return out


def read_checkpoint(d):
    index = os.path.join(d, "model.safetensors.index.json")
    files = sorted(set(json.load(open(index))["weight_map"].values())) if os.path.exists(index) \
        else ["model.safetensors"]
    tensors = {}
    for f in files:
        tensors.update(read_safetensors(os.path.join(d, f)))
    return json.load(open(os.path.join(d, "config.json"))), tensors


def as_f32(dtype, arr):
    if dtype == "BF16":
        return (arr.astype(np.uint32) << 16).view(np.float32)
    return arr.astype(np.float32)


# ---- the vocabulary, as SentencePiece reports it --------------------------------------

def _varint(b, i):
    v = s = 0
    while True:
        c = b[i]
        i += 1
        v |= (c & 0x7F) << s
        s += 7
        if not c & 0x80:
            return v, i


def proto_fields(b):
    """(field number, value) of a serialized protobuf message: ints for
    varints, bytes otherwise."""
    i = 0
    while i < len(b):
        tag, i = _varint(b, i)
        wt = tag & 7
        if wt == 0:
            v, i = _varint(b, i)
        elif wt in (1, 5):
            n = 8 if wt == 1 else 4
            v, i = b[i:i + n], i + n
        else:
            n, i = _varint(b, i)
            v, i = b[i:i + n], i + n
        yield tag >> 3, v


def piece_types(proto):
    """Each piece's type (ModelProto field 1, its field 3; NORMAL when
    absent): Python sentencepiece has no IsUserDefined."""
    return [next((x for n, x in proto_fields(v) if n == 3), 1) for num, v in proto_fields(proto) if num == 1]


def normalizer_flags(proto):
    """NormalizerSpec (field 3): add_dummy_prefix (3) and
    remove_extra_whitespaces (4), both true unless the model says not."""
    spec = next((v for n, v in proto_fields(proto) if n == 3), b"")
    flags = dict(proto_fields(spec))
    return bool(flags.get(3, 1)), bool(flags.get(4, 1))


def add_vocab(w, model_path):
    sp = spm.SentencePieceProcessor(model_file=model_path)
    proto = sp.serialized_model_proto()
    types = piece_types(proto)
    n = sp.get_piece_size()
    assert len(types) == n
    for i in range(n):  # the proto's types agree with SentencePiece's view
        assert sp.IsUnknown(i) == (types[i] == 2) and sp.IsControl(i) == (types[i] == 3)
        assert sp.IsUnused(i) == (types[i] == 5) and sp.IsByte(i) == (types[i] == 6)
    dummy, extra_ws = normalizer_flags(proto)
    w.add_tokenizer_model("llama")
    w.add_tokenizer_pre("default")
    w.add_token_list([sp.id_to_piece(i).encode() for i in range(n)])
    w.add_token_scores([sp.get_score(i) for i in range(n)])
    w.add_token_types(types)
    for fn, id_ in ((w.add_bos_token_id, sp.bos_id()), (w.add_eos_token_id, sp.eos_id()),
                    (w.add_unk_token_id, sp.unk_id()), (w.add_pad_token_id, sp.pad_id())):
        if id_ >= 0:
            fn(id_)
    w.add_add_bos_token(True)
    w.add_add_eos_token(False)
    w.add_add_space_prefix(dummy)
    w.add_remove_extra_whitespaces(extra_ws)
    return n


# ---- a checkpoint as llama.cpp's converter writes it -----------------------------------

def rope_permute(w, heads):
    """HF's half-split q/k rows into llama.cpp's interleaved order: within a
    head, row 2j takes HF row j and row 2j+1 HF row j + head_dim/2."""
    rows = w.shape[0]
    hd = rows // heads
    return w.reshape(heads, 2, hd // 2, -1).transpose(0, 2, 1, 3).reshape(rows, -1)


def stored(arr32, bf16_bits, qtype):
    """(ggml type, array for GGUFWriter) of a tensor in qtype, F16 when its
    rows are not whole blocks."""
    if arr32.ndim == 1:
        return Q.F32, arr32
    if qtype == Q.BF16:
        return Q.BF16, bf16_bits
    if qtype in (Q.Q8_0, Q.Q4_0) and arr32.shape[-1] % 32:
        qtype = Q.F16
    return qtype, gguf.quants.quantize(arr32, qtype)


class Manifest:
    def __init__(self):
        self.rows = []

    def add(self, role, qtype, arr, rows, cols):
        b = arr.tobytes()
        shape = f"{rows}x{cols}" if cols else f"{rows}"
        self.rows.append(f"{role}\t{qtype.name}\t{shape}\t{len(b)}\t{fnv64(b):016x}")

    def write(self, path):
        with open(path, "w") as f:
            f.write("\n".join(self.rows) + "\n")


def convert(ckpt_dir, out, qtype, merged=True, version=3, split=0):
    cfg, st = read_checkpoint(ckpt_dir)
    heads, kv_heads = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    head_dim = cfg.get("head_dim") or cfg["hidden_size"] // heads
    n_exp, n_layers = cfg["num_local_experts"], cfg["num_hidden_layers"]
    w = gguf.GGUFWriter(out, "llama", split_max_tensors=split)
    w.add_vocab_size(cfg["vocab_size"])
    w.add_context_length(cfg["max_position_embeddings"])
    w.add_embedding_length(cfg["hidden_size"])
    w.add_feed_forward_length(cfg["intermediate_size"])
    w.add_block_count(n_layers)
    w.add_head_count(heads)
    w.add_head_count_kv(kv_heads)
    if head_dim * heads != cfg["hidden_size"]:
        w.add_key_length(head_dim)
        w.add_value_length(head_dim)
    w.add_rope_dimension_count(head_dim)
    w.add_rope_freq_base(cfg["rope_theta"])
    w.add_layer_norm_rms_eps(cfg["rms_norm_eps"])
    w.add_expert_count(n_exp)
    w.add_expert_used_count(cfg["num_experts_per_tok"])
    w.add_file_type(FILE_TYPE[qtype])
    if qtype in (Q.Q8_0, Q.Q4_0):
        w.add_quantization_version(gguf.GGML_QUANT_VERSION)
    add_vocab(w, os.path.join(ckpt_dir, "tokenizer.model"))
    man = Manifest()

    def put(name, role, hf_name, permute_heads=0):
        dt, arr = st[hf_name]
        v = as_f32(dt, arr)
        bits = arr if dt == "BF16" else None
        if permute_heads:
            v = rope_permute(v, permute_heads)
            bits = rope_permute(bits, permute_heads) if bits is not None else None
        t, data = stored(v, bits, qtype)
        w.add_tensor(name, np.ascontiguousarray(data), raw_dtype=None if t in (Q.F32, Q.F16) else t)
        man.add(role, t, data, v.shape[0], v.shape[1] if v.ndim == 2 else 0)

    def put_experts(L, gg, role, wid):
        hf = [f"model.layers.{L}.block_sparse_moe.experts.{e}.{wid}.weight" for e in range(n_exp)]
        vs = [as_f32(*st[h]) for h in hf]
        if not merged:
            for e in range(n_exp):
                put(f"blk.{L}.ffn_{gg}.{e}.weight", f"{L}.{role}.{e}", hf[e])
            return
        bits = np.stack([st[h][1] for h in hf]) if st[hf[0]][0] == "BF16" else None
        t, data = stored(np.stack(vs), bits, qtype)
        w.add_tensor(f"blk.{L}.ffn_{gg}_exps.weight", np.ascontiguousarray(data),
                     raw_dtype=None if t in (Q.F32, Q.F16) else t)
        for e in range(n_exp):
            man.add(f"{L}.{role}.{e}", t, data[e], vs[e].shape[0], vs[e].shape[1])

    put("token_embd.weight", "embed", "model.embed_tokens.weight")
    put("output_norm.weight", "norm", "model.norm.weight")
    put("output.weight", "lm_head", "lm_head.weight")
    for L in range(n_layers):
        p = f"model.layers.{L}."
        put(f"blk.{L}.attn_norm.weight", f"{L}.attn_norm", p + "input_layernorm.weight")
        put(f"blk.{L}.attn_q.weight", f"{L}.wq", p + "self_attn.q_proj.weight", heads)
        put(f"blk.{L}.attn_k.weight", f"{L}.wk", p + "self_attn.k_proj.weight", kv_heads)
        put(f"blk.{L}.attn_v.weight", f"{L}.wv", p + "self_attn.v_proj.weight")
        put(f"blk.{L}.attn_output.weight", f"{L}.wo", p + "self_attn.o_proj.weight")
        put(f"blk.{L}.ffn_norm.weight", f"{L}.ffn_norm", p + "post_attention_layernorm.weight")
        put(f"blk.{L}.ffn_gate_inp.weight", f"{L}.router", p + "block_sparse_moe.gate.weight")
        put_experts(L, "gate", "w1", "w1")
        put_experts(L, "down", "w2", "w2")
        put_experts(L, "up", "w3", "w3")
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    if version != 3:
        with open(out, "r+b") as f:
            f.seek(4)
            f.write(struct.pack("<I", version))
    if not split:
        man.write(out[:-5] + ".tsv")


def tokenizer_model(path, out):
    """A small random model (F16, merged experts) with path's vocabulary."""
    rng = np.random.default_rng(7)
    w = gguf.GGUFWriter(out, "llama")
    n = add_vocab(w, path)
    h, f, e = 32, 32, 2
    for fn, v in ((w.add_vocab_size, n), (w.add_context_length, 64), (w.add_embedding_length, h),
                  (w.add_feed_forward_length, f), (w.add_block_count, 1), (w.add_head_count, 2),
                  (w.add_head_count_kv, 1), (w.add_rope_dimension_count, h // 2),
                  (w.add_expert_count, e), (w.add_expert_used_count, 1), (w.add_file_type, 1)):
        fn(v)
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(1e-5)

    def mat(*shape):
        return (rng.standard_normal(shape) * 0.1).astype(np.float16)

    w.add_tensor("token_embd.weight", mat(n, h))
    w.add_tensor("output_norm.weight", np.ones(h, np.float32))
    w.add_tensor("output.weight", mat(n, h))
    for name, arr in (("attn_norm", np.ones(h, np.float32)), ("attn_q", mat(h, h)), ("attn_k", mat(h // 2, h)),
                      ("attn_v", mat(h // 2, h)), ("attn_output", mat(h, h)), ("ffn_norm", np.ones(h, np.float32)),
                      ("ffn_gate_inp", mat(e, h)), ("ffn_gate_exps", mat(e, f, h)), ("ffn_down_exps", mat(e, h, f)),
                      ("ffn_up_exps", mat(e, f, h))):
        w.add_tensor(f"blk.0.{name}.weight", arr)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def write_safetensors(src, out, dtype):
    """src's checkpoint with every tensor in dtype (f32 or f16, rounded as
    numpy rounds): the safetensors twin of CKPT-DTYPE.gguf."""
    _, st = read_checkpoint(src)
    np_type, name = (np.float32, "F32") if dtype == "f32" else (np.float16, "F16")
    header, blobs, at = {}, [], 0
    for k in sorted(st):
        v = as_f32(*st[k]).astype(np_type)
        header[k] = {"dtype": name, "shape": list(v.shape), "data_offsets": [at, at + v.nbytes]}
        blobs.append(v.tobytes())
        at += v.nbytes
    h = json.dumps(header).encode()
    h += b" " * (-len(h) % 8)
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "model.safetensors"), "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h + b"".join(blobs))
    for f in ("config.json", "tokenizer.model"):
        with open(os.path.join(src, f), "rb") as i, open(os.path.join(out, f), "wb") as o:
            o.write(i.read())


def sparse_model(path):
    """Two layers of the real Mixtral's shape in BF16 (6 GiB): the header,
    then a hole where the data would be; opening it must not read it."""
    kvs, ts = gguf_raw.mixtral_shaped(layers=2)
    head = gguf_raw.build(kvs, ts, data=False)
    with open(path, "wb") as f:
        f.write(head)
        f.truncate(len(head) + sum(t.nbytes for t in ts) + 32 * len(ts))


def write(path, data):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)


def raw_files(out):
    cases = []
    for name, stage, needle, data in gguf_raw.bad_files():
        write(os.path.join(out, "bad", name + ".gguf"), data)
        cases.append((f"{name}.gguf", stage, needle))
    for name, parts, needle in (
            ("split-missing", gguf_raw.split_parts(2, drop=2), "part 2 of the 2 of this split set is missing"),
            ("split-no", gguf_raw.split_parts(2, no={1: 0}), "\"split.no\" should be 1"),
            ("split-count", gguf_raw.split_parts(2, count={1: 3}), "\"split.count\" should be 2")):
        for k, data in parts:
            write(os.path.join(out, "bad", name, f"m-{k:05d}-of-00002.gguf"), data)
        cases.append((f"{name}/m-00001-of-00002.gguf", "open", needle))
    with open(os.path.join(out, "bad", "cases.tsv"), "w") as f:
        f.write("".join(f"{a}\t{b}\t{c}\n" for a, b, c in cases))
    write(os.path.join(out, "ok", "raw.gguf"), gguf_raw.base())
    sparse_model(os.path.join(out, "sparse.gguf"))
    write(os.path.join(out, "ok", "raw-v2.gguf"), gguf_raw.base(version=2))
    write(os.path.join(out, "ok", "raw-perexpert.gguf"),
          gguf_raw.build(gguf_raw.base_kvs(), gguf_raw.base_tensors(merged=False)))
    write(os.path.join(out, "ok", "raw-align1.gguf"),
          gguf_raw.build(gguf_raw.base_kvs() + [gguf_raw.kv("general.alignment", gguf_raw.U32, 1)],
                         gguf_raw.base_tensors(), alignment=1))
    for k, data in gguf_raw.split_parts(3):
        write(os.path.join(out, "ok", "split", f"raw-{k:05d}-of-00003.gguf"), data)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("outdir")
    ap.add_argument("--data", required=True, help="tests/data (hf-tiny, hf-odd)")
    ap.add_argument("--tokenizer", action="append", default=[], metavar="NAME=MODEL",
                    help="a SentencePiece model whose vocabulary tok-NAME.gguf holds (skipped when absent)")
    ap.add_argument("--stamp", help="touched when everything is written")
    a = ap.parse_args()
    out = a.outdir
    os.makedirs(os.path.join(out, "split"), exist_ok=True)
    for ckpt, short in (("hf-tiny", "tiny"), ("hf-odd", "odd")):
        src = os.path.join(a.data, ckpt)
        for t in TYPES:
            convert(src, os.path.join(out, f"{short}-{t}.gguf"), TYPES[t])
        convert(src, os.path.join(out, f"{short}-bf16-perexpert-v2.gguf"), Q.BF16, merged=False, version=2)
        convert(src, os.path.join(out, f"{short}-q8_0-perexpert.gguf"), Q.Q8_0, merged=False)
        for t in ("f32", "f16"):
            write_safetensors(src, os.path.join(out, f"{short}-{t}.st"), t)
    convert(os.path.join(a.data, "hf-tiny"), os.path.join(out, "split", "tiny-bf16.gguf"), Q.BF16, split=8)
    for spec in a.tokenizer:
        name, path = spec.split("=", 1)
        if os.path.exists(path):
            tokenizer_model(path, os.path.join(out, f"tok-{name}.gguf"))
    raw_files(out)
    if a.stamp:
        open(a.stamp, "w").close()


if __name__ == "__main__":
    main()
