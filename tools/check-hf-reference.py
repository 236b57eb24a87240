#!/usr/bin/env python3
"""Independent check of tests/data/hf-*/expected.json: a pure-numpy Mixtral forward
pass written from docs/engine.md (tests/engine/reference_forward.py: no
torch, no transformers, no safetensors library), run in float64 on each
checkpoint and compared with the transformers logits and greedy ids recorded by
tools/make-hf-reference.py.

    python3 tools/check-hf-reference.py [tests/data/hf-tiny ...]

Needs only numpy. Exits non-zero if a relative L2 error exceeds 1e-4 or a greedy
id differs. Also checks that the checkpoint holds exactly the Mixtral tensor
names, each BF16 with the expected shape.
"""

import json
import os
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests", "engine"))
from reference_forward import forward, load_checkpoint  # noqa: E402


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


def check(ckdir):
    cfg, typed = load_checkpoint(ckdir)
    not_bf16 = sorted(k for k, (dtype, _) in typed.items() if dtype != "BF16")
    if not_bf16:
        sys.exit("%s: not BF16: %s" % (ckdir, not_bf16))
    w = {k: v for k, (_, v) in typed.items()}
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
