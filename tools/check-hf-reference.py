#!/usr/bin/env python3
"""Independent check of tests/data/hf-*/expected.json: a pure-numpy Mixtral forward
pass written from docs/engine.md (no torch, no transformers, no safetensors
library), run in float64 on each checkpoint and compared with the transformers
logits and greedy ids recorded by tools/make-hf-reference.py.

    python3 tools/check-hf-reference.py [tests/data/hf-tiny ...]

Needs only numpy. Exits non-zero if a relative L2 error exceeds 1e-4 or a greedy
id differs. Also checks that the checkpoint holds exactly the Mixtral tensor
names, each BF16 with the expected shape.
"""

import json
import os
import struct
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def read_safetensors(path):
    with open(path, "rb") as f:
        raw = f.read()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n])
    base = 8 + n
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        if info["dtype"] != "BF16":
            sys.exit("%s: %s is %s, want BF16" % (path, name, info["dtype"]))
        a, b = info["data_offsets"]
        u16 = np.frombuffer(raw[base + a:base + b], dtype="<u2")
        f32 = (u16.astype(np.uint32) << 16).view(np.float32)  # bf16 -> fp32 exactly
        out[name] = f32.reshape(info["shape"]).astype(np.float64)
    return out


def load(ckdir):
    cfg = json.load(open(os.path.join(ckdir, "config.json")))
    idx = os.path.join(ckdir, "model.safetensors.index.json")
    if os.path.exists(idx):
        files = sorted(set(json.load(open(idx))["weight_map"].values()))
    else:
        files = ["model.safetensors"]
    w = {}
    for fn in files:
        w.update(read_safetensors(os.path.join(ckdir, fn)))
    return cfg, w


def expected_names(cfg):
    H, V, F = cfg["hidden_size"], cfg["vocab_size"], cfg["intermediate_size"]
    nh, kv = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    hd = cfg.get("head_dim") or H // nh
    E = cfg["num_local_experts"]
    s = {"model.embed_tokens.weight": [V, H], "model.norm.weight": [H], "lm_head.weight": [V, H]}
    for L in range(cfg["num_hidden_layers"]):
        p = "model.layers.%d." % L
        s[p + "input_layernorm.weight"] = [H]
        s[p + "post_attention_layernorm.weight"] = [H]
        s[p + "self_attn.q_proj.weight"] = [nh * hd, H]
        s[p + "self_attn.k_proj.weight"] = [kv * hd, H]
        s[p + "self_attn.v_proj.weight"] = [kv * hd, H]
        s[p + "self_attn.o_proj.weight"] = [H, nh * hd]
        s[p + "block_sparse_moe.gate.weight"] = [E, H]
        for e in range(E):
            q = p + "block_sparse_moe.experts.%d." % e
            s[q + "w1.weight"] = [F, H]
            s[q + "w3.weight"] = [F, H]
            s[q + "w2.weight"] = [H, F]
    return s


def rmsnorm(v, w, eps):
    return v / np.sqrt(np.mean(v * v, axis=-1, keepdims=True) + eps) * w


def silu(x):
    return x / (1.0 + np.exp(-x))


def forward(cfg, w, ids):
    """Logits [T, vocab] for one sequence, as docs/engine.md writes it, literally."""
    H, nh, kv = cfg["hidden_size"], cfg["num_attention_heads"], cfg["num_key_value_heads"]
    hd = cfg.get("head_dim") or H // nh
    eps, theta = cfg["rms_norm_eps"], cfg["rope_theta"]
    E, K = cfg["num_local_experts"], cfg["num_experts_per_tok"]
    T = len(ids)
    h = w["model.embed_tokens.weight"][ids]  # [T, H]

    i = np.arange(hd // 2, dtype=np.float64)
    inv_freq = theta ** (-2.0 * i / hd)
    ang = np.arange(T, dtype=np.float64)[:, None] * inv_freq[None, :]  # [T, hd/2]
    cos, sin = np.cos(ang), np.sin(ang)

    def rope(x):  # x [T, n, hd], half-split
        x1, x2 = x[..., :hd // 2], x[..., hd // 2:]
        c, s = cos[:, None, :], sin[:, None, :]
        return np.concatenate([x1 * c - x2 * s, x2 * c + x1 * s], axis=-1)

    mask = np.triu(np.full((T, T), -np.inf), k=1)
    group = nh // kv
    for L in range(cfg["num_hidden_layers"]):
        p = "model.layers.%d." % L
        a = rmsnorm(h, w[p + "input_layernorm.weight"], eps)
        q = rope((a @ w[p + "self_attn.q_proj.weight"].T).reshape(T, nh, hd))
        k = rope((a @ w[p + "self_attn.k_proj.weight"].T).reshape(T, kv, hd))
        v = (a @ w[p + "self_attn.v_proj.weight"].T).reshape(T, kv, hd)
        att = np.empty((T, nh, hd))
        for qh in range(nh):
            kh = qh // group
            sc = q[:, qh, :] @ k[:, kh, :].T / np.sqrt(hd) + mask
            sc = np.exp(sc - sc.max(axis=-1, keepdims=True))
            sc /= sc.sum(axis=-1, keepdims=True)
            att[:, qh, :] = sc @ v[:, kh, :]
        x = h + att.reshape(T, nh * hd) @ w[p + "self_attn.o_proj.weight"].T

        m = rmsnorm(x, w[p + "post_attention_layernorm.weight"], eps)
        logits = m @ w[p + "block_sparse_moe.gate.weight"].T  # [T, E]
        pr = np.exp(logits - logits.max(axis=-1, keepdims=True))
        pr /= pr.sum(axis=-1, keepdims=True)
        out = np.zeros_like(x)
        for t in range(T):
            top = np.argsort(-pr[t], kind="stable")[:K]
            wt = pr[t, top] / pr[t, top].sum()
            for e, we in zip(top, wt):
                q_ = p + "block_sparse_moe.experts.%d." % e
                g = silu(w[q_ + "w1.weight"] @ m[t]) * (w[q_ + "w3.weight"] @ m[t])
                out[t] += we * (w[q_ + "w2.weight"] @ g)
        h = x + out
    return rmsnorm(h, w["model.norm.weight"], eps) @ w["lm_head.weight"].T


def check(ckdir):
    cfg, w = load(ckdir)
    want = expected_names(cfg)
    got = {k: list(v.shape) for k, v in w.items()}
    if got != want:
        missing = sorted(set(want) - set(got))
        extra = sorted(set(got) - set(want))
        bad = sorted(k for k in set(want) & set(got) if want[k] != got[k])
        sys.exit("%s: tensor set differs: missing %s extra %s wrong shape %s"
                 % (ckdir, missing, extra, bad))
    exp = json.load(open(os.path.join(ckdir, "expected.json")))
    worst, ok = 0.0, True
    for n, case in enumerate(exp["cases"]):
        prompt, greedy = case["prompt"], case["greedy"]
        ref = np.array(case["logits"], dtype=np.float64)
        mine = forward(cfg, w, prompt)
        err = np.linalg.norm(mine - ref) / np.linalg.norm(ref)
        row = max(np.linalg.norm(mine[t] - ref[t]) / np.linalg.norm(ref[t])
                  for t in range(len(prompt)))
        full = forward(cfg, w, prompt + greedy[:-1])
        ids = full[len(prompt) - 1:].argmax(-1).tolist()
        same = ids == greedy
        ok &= same and err < 1e-4
        worst = max(worst, row)
        print("%s case %d: %d tokens, rel L2 %.3g (worst position %.3g), greedy %s"
              % (os.path.relpath(ckdir, ROOT), n, len(prompt), err, row,
                 "same" if same else "DIFFERS %s vs %s" % (ids, greedy)))
    print("%s: %d tensors, names/shapes/BF16 ok; max relative L2 error %.3g"
          % (os.path.relpath(ckdir, ROOT), len(w), worst))
    return ok


def main():
    dirs = sys.argv[1:] or [os.path.join(ROOT, "tests", "data", d) for d in ("hf-tiny", "hf-odd")]
    ok = all([check(d) for d in dirs])
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
