"""Our weight formats (engine/quant/) against gguf-py's, the reference reader and
writer maintained with llama.cpp:

- dequantization: every type, on random blocks (random bits, edge and extreme
  scales), equals gguf.quants.dequantize bit for bit (NaN where it gives NaN);
- quantization: F16, BF16, Q8_0 and Q4_0 equal gguf.quants.quantize byte for
  byte, on data chosen to hit their rounding edges (ties, zeros, huge and tiny
  values) and on many blocks of bf16 weights (where Q4_0 with a fused
  multiply-add, as gguf-py 0.17 computed it, would differ from llama-quantize); the K-quants (which gguf-py cannot make) stay within the bound
  engine/quant/quant.h states, and gguf-py reads them back to our values.

    check_gguf.py QUANT_TOOL      (tests/quant/quant_tool.c)

Run by meson with the project's venv (.venv, tools/install-deps). Exits 1 on a
mismatch, 77 (skip) without gguf-py."""

import subprocess
import sys
import warnings

from checks import fail, finish  # skips without gguf-py
import numpy as np
from gguf import GGMLQuantizationType as Q
from gguf import quants
from gguf.constants import GGML_QUANT_SIZES

# The edge cases overflow and make NaN on purpose.
warnings.filterwarnings("ignore", category=RuntimeWarning)
np.seterr(all="ignore")
TOOL = sys.argv[1]
TYPES = ["F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_K", "Q5_K", "Q6_K"]
# Our quant.h's mx_quant_bound, as a multiple of the largest magnitude of a
# block (32-weight formats) or super-block (K-quants).
BOUND = {"Q8_0": 1 / 127, "Q4_0": 1 / 8 + 1 / 256, "Q4_K": 2 / 15, "Q5_K": 2 / 31, "Q6_K": 2 / 63}
rng = np.random.default_rng(20261204)


def tool(mode, name, n, data):
    p = subprocess.run([TOOL, mode, name, str(n)], input=data.tobytes(), capture_output=True)
    if p.returncode != 0:
        sys.exit("quant-tool %s %s %d: %s" % (mode, name, n, p.stderr.decode()))
    return p.stdout


def same_floats(a, b):
    """Bit for bit, except that any NaN equals any NaN."""
    a, b = a.view(np.uint32), b.view(np.uint32)
    nan_a = np.isnan(a.view(np.float32))
    nan_b = np.isnan(b.view(np.float32))
    return bool(np.array_equal(nan_a, nan_b) and np.array_equal(a[~nan_a], b[~nan_b]))


def f16_bits(values):
    return np.asarray(values, dtype=np.float16).view(np.uint16)


def random_blocks(name, n_blocks):
    """Random block bytes; fp16 scales random but finite in most blocks, and
    drawn from the edges (zero, subnormal, the largest, infinity, NaN) in some."""
    qk, size = GGML_QUANT_SIZES[Q[name]]
    raw = rng.integers(0, 256, size=(n_blocks, size), dtype=np.uint8)
    if name in ("F32", "F16", "BF16"):
        return raw
    # Where each type keeps its fp16 scale(s), in bytes.
    offsets = {"Q8_0": [0], "Q4_0": [0], "Q4_K": [0, 2], "Q5_K": [0, 2], "Q6_K": [208]}[name]
    edges = f16_bits([0.0, -0.0, 6e-8, 1e-5, 6.1e-5, 1.0, 65504.0, -65504.0, np.inf, np.nan])
    for off in offsets:
        finite = f16_bits(rng.normal(0, 1, n_blocks).astype(np.float32) * 10.0 ** rng.integers(-6, 4, n_blocks))
        pick = rng.random(n_blocks) < 0.2
        d = np.where(pick, rng.choice(edges, n_blocks), finite).astype(np.uint16)
        raw[:, off:off + 2] = d.view(np.uint8).reshape(n_blocks, 2)
    return raw


def check_dequant(name):
    qk, size = GGML_QUANT_SIZES[Q[name]]
    n_blocks = 4096 if qk == 1 else 2048
    raw = random_blocks(name, n_blocks)
    ours = np.frombuffer(tool("dequant", name, n_blocks * qk, raw), dtype=np.float32)
    if name == "BF16":
        ref = quants.dequantize(raw.reshape(-1), Q.BF16).reshape(-1)
    else:
        ref = quants.dequantize(raw.reshape(-1) if qk > 1 else raw.reshape(-1), Q[name]).reshape(-1)
    ref = np.asarray(ref, dtype=np.float32)
    if ours.shape != ref.shape or not same_floats(ours, ref):
        bad = np.nonzero(ours.view(np.uint32) != ref.view(np.uint32))[0]
        fail("%s dequantize: %d of %d values differ from gguf-py, first at %d: ours %r, gguf %r"
             % (name, len(bad), ref.size, bad[0], ours[bad[0]], ref[bad[0]]))
    else:
        print("%s: dequantization equals gguf-py on %d values" % (name, ref.size))


def quant_data(n):
    """Rows that hit the quantizers' edges: normal, heavy-tailed, ties at .5
    steps, repeated extremes of both signs, zeros, huge, tiny and subnormal."""
    parts = [
        rng.normal(0, 1, n),
        rng.standard_t(2, n) * 0.02,
        rng.integers(-16, 17, n) * 0.5,             # many exact ties
        np.tile(np.array([1.0, -1.0] * 16), n // 32),  # the maximum at both signs
        np.zeros(n),
        rng.normal(0, 1, n) * 1e30,
        rng.normal(0, 1, n) * 1e-30,
        rng.normal(0, 1, n) * 1e-40,                # float32 subnormals
        rng.uniform(-70000, 70000, n),               # past fp16's range
    ]
    # Weights as checkpoints hold them (bf16 of a trained model's spread), many
    # blocks: Q4_0's step with and without a fused multiply-add differs in
    # about one block in a thousand of these.
    w = rng.normal(0, 0.02, 16 * n).astype(np.float32).view(np.uint32)
    w = (((w + 0x7FFF + ((w >> 16) & 1)) >> 16) << 16).astype(np.uint32).view(np.float32)
    return np.concatenate([p[:n] for p in parts] + [w]).astype(np.float32)


def check_quantize_exact(name):
    x = quant_data(32 * 512)
    ours = np.frombuffer(tool("quantize", name, x.size, x), dtype=np.uint8)
    if name == "BF16":
        ref = quants.quantize(x, Q.BF16)
    else:
        ref = quants.quantize(x, Q[name])
    ref = np.asarray(ref).view(np.uint8).reshape(-1)
    if not np.array_equal(ours, ref):
        _, size = GGML_QUANT_SIZES[Q[name]]
        bad = np.nonzero(ours != ref)[0]
        fail("%s quantize: %d of %d bytes differ from gguf-py, first in block %d"
             % (name, len(bad), ref.size, bad[0] // size))
    else:
        print("%s: quantization equals gguf-py on %d values" % (name, x.size))


def check_quantize_bound(name):
    qk, _ = GGML_QUANT_SIZES[Q[name]]
    # Weight-like rows at scales fp16 holds comfortably, and the shapes that
    # stress a fit: heavy tails, one outlier, a constant, offsets of one sign.
    n = 256 * 256
    parts = [
        rng.normal(0, 0.02, n),
        rng.standard_t(3, n) * 0.01,
        np.where(rng.random(n) < 0.01, 1.0, 0.01) * rng.normal(0, 1, n),
        np.full(n, 0.25),
        rng.uniform(0.5, 1.0, n),
        -rng.uniform(0.5, 1.0, n),
        rng.normal(0, 1, n) * 10.0 ** rng.integers(-2, 3, n // 256).repeat(256),
    ]
    x = np.concatenate(parts).astype(np.float32)
    q = np.frombuffer(tool("quantize", name, x.size, x), dtype=np.uint8)
    ours = np.frombuffer(tool("dequant", name, x.size, q), dtype=np.float32)
    ref = np.asarray(quants.dequantize(q, Q[name]), dtype=np.float32).reshape(-1)
    if not same_floats(ours, ref):
        fail("%s: gguf-py reads our blocks to other values" % name)
    blocks = x.reshape(-1, qk)
    err = np.abs(ours.reshape(-1, qk) - blocks)
    amax = np.abs(blocks).max(axis=1, keepdims=True)
    ratio = (err / np.where(amax > 0, amax, 1)).max()
    rms = np.sqrt((err ** 2).mean() / (blocks ** 2).mean())
    if ratio > BOUND[name]:
        worst = np.unravel_index(np.argmax(err / np.where(amax > 0, amax, 1)), err.shape)
        fail("%s: error %.4g of the block's largest magnitude (bound %.4g), block %d"
             % (name, ratio, BOUND[name], worst[0]))
    else:
        print("%s: worst error %.4f of amax (bound %.4f), relative RMS error %.4g"
              % (name, ratio, BOUND[name], rms))


for name in TYPES:
    check_dequant(name)
for name in ("F16", "BF16", "Q8_0", "Q4_0"):
    check_quantize_exact(name)
for name in ("Q8_0", "Q4_0", "Q4_K", "Q5_K", "Q6_K"):
    check_quantize_bound(name)
finish()
