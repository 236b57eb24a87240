"""An independent Mixtral forward pass in numpy (float64), written from docs/engine.md
section 2 alone: no torch, no transformers, no safetensors library, nothing of
the C engine. The reference for tools/check-hf-reference.py (against the
transformers fixtures) and tests/quant/check_forward.py (quantized models);
other checks (GGUF files) may use it too.

    cfg, w = load_checkpoint(DIR)       config.json + the safetensors files
    logits = forward(cfg, w, ids)       [len(ids), vocab]

Weights are a dict of Hugging Face names to float64 arrays; quantize_dequantize
rounds one through a ggml type with gguf-py (the reference quantizer, for the
types it has) for callers that want a quantized model's weights.
"""

import json
import os
import struct

import numpy as np

SAFETENSORS_DTYPES = {"BF16": "<u2", "F16": "<f2", "F32": "<f4"}


def to_float(raw, dtype):
    """Little-endian BF16, F16 or F32 bytes as float64, exactly."""
    if dtype == "BF16":
        u16 = np.frombuffer(raw, dtype="<u2")
        return (u16.astype(np.uint32) << 16).view(np.float32).astype(np.float64)
    return np.frombuffer(raw, dtype=SAFETENSORS_DTYPES[dtype]).astype(np.float64)


def read_safetensors(path):
    """Every tensor of a safetensors file: name -> (dtype, float64 array)."""
    with open(path, "rb") as f:
        raw = f.read()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n])
    base = 8 + n
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        if info["dtype"] not in SAFETENSORS_DTYPES:
            raise ValueError("%s: %s is %s (BF16, F16 or F32 only)" % (path, name, info["dtype"]))
        a, b = info["data_offsets"]
        out[name] = (info["dtype"], to_float(raw[base + a:base + b], info["dtype"]).reshape(info["shape"]))
    return out


def load_checkpoint(ckdir):
    """config.json and every tensor of a Hugging Face layout checkpoint:
    (cfg, {name: (dtype, float64 array)})."""
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


def quantize_dequantize(x, ggml_type):
    """x rounded through a ggml type by gguf-py's own quantizer, as float64."""
    from gguf import GGMLQuantizationType, quants  # only callers that quantize need it

    t = GGMLQuantizationType[ggml_type]
    q = quants.quantize(x.astype(np.float32), t)
    return np.asarray(quants.dequantize(q, t), dtype=np.float64).reshape(x.shape)


def rmsnorm(v, w, eps):
    return v / np.sqrt(np.mean(v * v, axis=-1, keepdims=True) + eps) * w


def silu(x):
    return x / (1.0 + np.exp(-x))


def forward(cfg, w, ids, router_gap=None):
    """Logits [T, vocab] for one sequence, as docs/engine.md writes it, literally.
    w maps Hugging Face names to float64 arrays. router_gap, a list, gets each
    position's narrowest margin between the router's k-th and (k+1)-th expert
    over the layers, in units of that router's logits' standard deviation:
    where it is small, any rounding may choose the other expert."""
    H, nh, kv = cfg["hidden_size"], cfg["num_attention_heads"], cfg["num_key_value_heads"]
    hd = cfg.get("head_dim") or H // nh
    eps, theta = cfg["rms_norm_eps"], cfg["rope_theta"]
    K = cfg["num_experts_per_tok"]
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

    gap = np.full(T, np.inf)
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
        ranked = -np.sort(-logits, axis=-1)
        if ranked.shape[1] > K:
            gap = np.minimum(gap, (ranked[:, K - 1] - ranked[:, K]) / logits.std(axis=-1))
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
    if router_gap is not None:
        router_gap[:] = gap.tolist()
    return rmsnorm(h, w["model.norm.weight"], eps) @ w["lm_head.weight"].T
