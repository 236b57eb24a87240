"""Quantized models end to end: each checkpoint quantized by mx_model_quantize to
every file type, run by the engine on both paths (quant_forward.c), against the
independent numpy forward (tests/engine/reference_forward.py) of the same
quantized weights as gguf-py decodes them:

- logits within 1e-4 relative L2 on the f32 path, 5e-2 on the fast path,
  leaving out on the fast path the positions where the reference's router
  nearly ties (its k-th and next expert within a tenth of its logits' spread:
  rounding the activations by 2% may pick the other expert there, as it would
  in llama.cpp, and that position's logits then move by 10-25%); hf-tiny and
  hf-odd get more: their weights have a deliberately wide spread
  (tests/data/README.md) which amplifies any rounding of the activations
  (bf16 alone moves their logits by 1-2%, and numpy given the same int8
  rounding moves them as far as the engine does);
- greedy decoding through the KV cache: each step's logits as close to the
  reference's pass over the whole sequence, and the same token while the
  reference's margin between its two best exceeds twice that step's largest
  logit error;
- GGUF files in Q8_0 and Q4_0 (tests/model/make_gguf.py's, by gguf-py's
  quantizer, experts merged or one by one) as they are, the same way;
- the Q8_0 and Q4_0 tensors equal gguf-py's own quantization of the
  checkpoint's weights; each tensor has the type mx_ftype_tensor_type promises.

    check_forward.py QUANT_FORWARD CHECKPOINT...   (q256: a checkpoint made here
                                                    whose rows are whole 256-blocks;
                                                    FILE.gguf=CHECKPOINT: a GGUF file
                                                    of that checkpoint, as it is)

Run by meson with the project's venv. Exits 1 on a failure, 77 without gguf-py."""

import json
import os
import struct
import subprocess
import sys
import tempfile

from checks import fail, finish  # skips without gguf-py
import numpy as np
from gguf import GGMLQuantizationType, quants

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "engine"))
from reference_forward import forward, load_checkpoint, quantize_dequantize, to_float  # noqa: E402

FTYPES = ["none", "q8_0", "q4_0", "q4_k_m", "q5_k_m", "q6_k"]
TOLERANCE = {"f32": 1e-4, "fast": 5e-2}
FAST_TOLERANCE = {"hf-tiny": 0.35, "hf-odd": 0.15}
rng = np.random.default_rng(14)


def write_q256(d):
    """A Mixtral whose every matrix row is whole 256-blocks: hidden 256, ffn 512,
    vocab 512, 2 layers, 4 heads of 64 over 2 KV heads, 8 experts, in BF16,
    weights spread like a trained model's (1 / sqrt(cols)). Every token goes
    to all 8 experts, so that the fast path's check measures its rounding, not
    which expert a near-tie picks (hf-tiny and hf-odd cover routing)."""
    H, F, V, L, E = 256, 512, 512, 2, 8
    cfg = {"architectures": ["MixtralForCausalLM"], "model_type": "mixtral", "hidden_act": "silu",
           "vocab_size": V, "hidden_size": H, "intermediate_size": F, "num_hidden_layers": L,
           "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 64, "num_local_experts": E,
           "num_experts_per_tok": 8, "max_position_embeddings": 256, "rope_theta": 1e6, "rms_norm_eps": 1e-5,
           "sliding_window": None, "tie_word_embeddings": False, "bos_token_id": 1, "eos_token_id": 2}
    shapes = {"model.embed_tokens.weight": [V, H], "model.norm.weight": [H], "lm_head.weight": [V, H]}
    for i in range(L):
        p = "model.layers.%d." % i
        shapes.update({p + "input_layernorm.weight": [H], p + "post_attention_layernorm.weight": [H],
                       p + "self_attn.q_proj.weight": [256, H], p + "self_attn.k_proj.weight": [128, H],
                       p + "self_attn.v_proj.weight": [128, H], p + "self_attn.o_proj.weight": [H, 256],
                       p + "block_sparse_moe.gate.weight": [E, H]})
        for e in range(E):
            q = p + "block_sparse_moe.experts.%d." % e
            shapes.update({q + "w1.weight": [F, H], q + "w3.weight": [F, H], q + "w2.weight": [H, F]})
    header, blobs, at = {}, [], 0
    for name, shape in shapes.items():
        if len(shape) == 1:
            x = 1 + 0.1 * rng.standard_normal(shape)
        else:
            x = rng.standard_normal(shape) / np.sqrt(shape[1])
        u = np.asarray(x, dtype=np.float32).view(np.uint32)
        b = ((u + 0x7fff + ((u >> 16) & 1)) >> 16).astype("<u2").tobytes()  # round to nearest even
        header[name] = {"dtype": "BF16", "shape": shape, "data_offsets": [at, at + len(b)]}
        blobs.append(b)
        at += len(b)
    h = json.dumps(header).encode()
    h += b" " * (-len(h) % 8)
    with open(os.path.join(d, "model.safetensors"), "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h + b"".join(blobs))
    json.dump(cfg, open(os.path.join(d, "config.json"), "w"))


def load_quantized(d):
    """The engine's tensors as gguf-py decodes them: name -> (type, float64)."""
    meta = json.load(open(os.path.join(d, "weights.json")))
    raw = open(os.path.join(d, "weights.bin"), "rb").read()
    w = {}
    for t in meta["tensors"]:
        b = raw[t["offset"]:t["offset"] + t["nbytes"]]
        if t["type"] in ("BF16", "F16", "F32"):
            x = to_float(b, t["type"])
        else:
            blocks = np.frombuffer(b, dtype=np.uint8).reshape(t["shape"][0], -1)
            x = np.asarray(quants.dequantize(blocks, GGMLQuantizationType[t["type"]]), dtype=np.float64)
        w[t["name"]] = (t["type"], x.reshape(t["shape"]))
    w.setdefault("lm_head.weight", w["model.embed_tokens.weight"])  # tied
    return w


def expected_type(name, ft, cfg, orig_type, cols):
    """mx_ftype_tensor_type's choice, restated (engine/model/quantize.c)."""
    if ft == "none" or "norm" in name or "gate." in name:
        return orig_type
    base = {"q8_0": "Q8_0", "q4_0": "Q4_0", "q4_k_m": "Q4_K", "q5_k_m": "Q5_K", "q6_k": "Q6_K"}[ft]
    n, eight, km = cfg["num_hidden_layers"], cfg["num_local_experts"] == 8, ft in ("q4_k_m", "q5_k_m")
    layer = int(name.split(".")[2]) if name.startswith("model.layers.") else 0
    more = layer < n // 8 or layer >= 7 * n // 8 or (layer - n // 8) % 3 == 2
    if name == "lm_head.weight":
        want = "Q8_0" if ft == "q8_0" else "Q6_K"
    elif "v_proj" in name:
        want = "Q8_0" if eight else "Q6_K" if km and more else base
    elif "k_proj" in name:
        want = "Q8_0" if eight else base
    elif "o_proj" in name:
        want = "Q5_K" if eight and ft == "q4_k_m" else base
    elif name.endswith("w2.weight"):
        want = "Q6_K" if km and more else base
    else:
        want = base
    block = 32 if want in ("Q8_0", "Q4_0") else 256
    if cols % block:
        want = "Q8_0"
    return want if cols % 32 == 0 else orig_type


def check_types(label, ft, cfg, orig, w):
    for name, (typ, x) in w.items():
        want = expected_type(name, ft, cfg, orig[name][0], x.shape[-1])
        if typ != want:
            fail("%s %s: %s is %s, expected %s" % (label, ft, name, typ, want))
        elif typ in ("Q8_0", "Q4_0") and not np.array_equal(quantize_dequantize(orig[name][1], typ), x):
            fail("%s %s: %s differs from gguf-py's own %s of the checkpoint" % (label, ft, name, typ))


def rel_l2(a, b):
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def within(label, what, got, ref, gap, path, tolerance):
    """Relative L2 error of got against ref, leaving out on the fast path the
    rows where the reference's router nearly tied; checked against tolerance."""
    clear = [i for i in range(len(ref)) if path == "f32" or gap[i] > 0.1]
    err = rel_l2(got[clear], ref[clear]) if clear else 0.0
    if err > tolerance:
        rows = [rel_l2(got[i], ref[i]) for i in range(len(ref))]
        fail("%s, %s path, %s: relative L2 error %.3g (at most %g); by position: %s; router gaps %s"
             % (label, path, what, err, tolerance, " ".join("%.3f" % r for r in rows),
                " ".join("%.2f" % g for g in gap)))
    return err


def check_path(label, cfg, w, d, path, prompts, tolerance):
    vocab = cfg["vocab_size"]
    ours = np.fromfile(os.path.join(d, "logits-%s.bin" % path), dtype=np.float32).reshape(-1, vocab)
    steps = np.fromfile(os.path.join(d, "steps-%s.bin" % path), dtype=np.float32).reshape(len(prompts), -1, vocab)
    greedy = [list(map(int, line.split())) for line in open(os.path.join(d, "greedy-%s.txt" % path))]
    row, worst, agreed = 0, 0.0, 0
    for i, (ids, gen) in enumerate(zip(prompts, greedy)):
        gap = []
        ref = forward(cfg, w, ids, gap)
        got = ours[row:row + len(ids)]
        row += len(ids)
        worst = max(worst, within(label, "%d tokens" % len(ids), got, ref, gap, path, tolerance))
        gap = []
        full = forward(cfg, w, ids + gen[:-1], gap)[len(ids) - 1:]
        within(label, "%d greedy steps" % len(gen), steps[i], full, gap[len(ids) - 1:], path, tolerance)
        for j, want_row in enumerate(full):
            top2 = np.sort(want_row)[-2:]
            if top2[1] - top2[0] <= 2 * float(np.abs(steps[i][j] - want_row).max()):
                break
            if gen[j] != int(np.argmax(want_row)):
                fail("%s, %s path: greedy token %d is %d, the reference's %d (margin %.3g)"
                     % (label, path, j, gen[j], int(np.argmax(want_row)), top2[1] - top2[0]))
                break
            agreed += 1
    return worst, agreed


def check(ckdir, label, model=None):
    """ckdir quantized to every file type; or, given model (a GGUF file of
    ckdir's weights in block formats), that file as it is."""
    cfg, orig = load_checkpoint(ckdir)
    hf_cfg = dict(cfg)
    prompts = [[1], [1] + rng.integers(3, cfg["vocab_size"], 11).tolist(),
               rng.integers(3, cfg["vocab_size"], 24).tolist()]
    with tempfile.TemporaryDirectory() as d:
        with open(os.path.join(d, "prompts.txt"), "w") as f:
            f.write("".join(" ".join(map(str, p)) + "\n" for p in prompts))
        for ft in FTYPES if model is None else ["none"]:
            p = subprocess.run([sys.argv[1], model or ckdir, ft, d, os.path.join(d, "prompts.txt")],
                               capture_output=True, text=True)
            if p.returncode != 0:
                fail("%s %s: quant-forward: %s%s" % (label, ft, p.stdout, p.stderr))
                continue
            typed = load_quantized(d)
            if model is None:
                check_types(label, ft, hf_cfg, orig, typed)
            else:
                ft = os.path.basename(model)
            w = {k: v for k, (_, v) in typed.items()}
            types = sorted(set(t for t, _ in typed.values()))
            name = "%s %s" % (label, ft)
            f32, s32 = check_path(name, hf_cfg, w, d, "f32", prompts, TOLERANCE["f32"])
            fast, sfast = check_path(name, hf_cfg, w, d, "fast", prompts, FAST_TOLERANCE.get(label, TOLERANCE["fast"]))
            print("%-8s %-7s %-24s f32 %.2g (%d greedy steps), fast %.2g (%d greedy steps)"
                  % (label, ft, "/".join(types), f32, s32, fast, sfast))


def main():
    for arg in sys.argv[2:]:
        if "=" in arg:  # FILE.gguf=CHECKPOINT: a GGUF of that checkpoint's weights
            model, ckdir = arg.split("=", 1)
            if not os.path.exists(model):
                fail("%s: missing (tests/model/make_gguf.py makes it)" % model)
                continue
            check(ckdir, os.path.basename(ckdir.rstrip("/")), model)
        elif arg == "q256":
            with tempfile.TemporaryDirectory() as ck:
                write_q256(ck)
                check(ck, "q256")
        else:
            check(arg, os.path.basename(arg.rstrip("/")))
    finish()


if __name__ == "__main__":
    main()
