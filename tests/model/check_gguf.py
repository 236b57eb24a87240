#!/usr/bin/env python3
"""Reads a GGUF file our writer made with gguf-py's GGUFReader (the
reference reader kept with llama.cpp) and compares it with a reference
file made by tests/model/make_gguf.py from the same model:

  check_gguf.py OURS REFERENCE [--only-ours KEY]...

- every metadata key of either file is in the other with the same type and
  value (--only-ours names keys ours may add, e.g. general.alignment);
- the same tensors, with the same ggml types, shapes and bytes;
- ours is version 3 with its tensors packed in file order at multiples of
  the alignment, as llama.cpp's loader demands (each offset the sum of the
  padded sizes before it).

Exit status 0 when all agree, 1 with one line per difference.
"""
import argparse
import sys

import numpy as np
from gguf import GGUFReader, GGUFValueType

PSEUDO = {"GGUF.version", "GGUF.tensor_count", "GGUF.kv_count"}


def value(field):
    v = field.contents()
    if field.types[0] == GGUFValueType.ARRAY and field.types[-1] in (GGUFValueType.FLOAT32, GGUFValueType.FLOAT64):
        return np.array(v, dtype=np.float64).tobytes()  # compare floats bit for bit, NaN included
    return v


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("ours")
    ap.add_argument("reference")
    ap.add_argument("--only-ours", action="append", default=[])
    a = ap.parse_args()
    ours, ref = GGUFReader(a.ours), GGUFReader(a.reference)
    errors = []

    version = ours.fields["GGUF.version"].contents()
    if version != 3:
        errors.append(f"version {version}, expected 3")
    keys_ours = set(ours.fields) - PSEUDO
    keys_ref = set(ref.fields) - PSEUDO
    for k in sorted(keys_ref - keys_ours):
        errors.append(f"key {k} is missing")
    for k in sorted(keys_ours - keys_ref - set(a.only_ours)):
        errors.append(f"key {k} is not in the reference")
    for k in sorted(keys_ours & keys_ref):
        fo, fr = ours.fields[k], ref.fields[k]
        if fo.types != fr.types:
            errors.append(f"key {k}: types {[t.name for t in fo.types]}, reference {[t.name for t in fr.types]}")
        elif value(fo) != value(fr):
            errors.append(f"key {k}: {str(fo.contents())[:80]}, reference {str(fr.contents())[:80]}")

    to = {t.name: t for t in ours.tensors}
    tr = {t.name: t for t in ref.tensors}
    for n in sorted(set(tr) - set(to)):
        errors.append(f"tensor {n} is missing")
    for n in sorted(set(to) - set(tr)):
        errors.append(f"tensor {n} is not in the reference")
    for n in sorted(set(to) & set(tr)):
        x, y = to[n], tr[n]
        if x.tensor_type != y.tensor_type:
            errors.append(f"tensor {n}: type {x.tensor_type.name}, reference {y.tensor_type.name}")
        elif list(x.shape) != list(y.shape):
            errors.append(f"tensor {n}: shape {list(x.shape)}, reference {list(y.shape)}")
        elif x.n_bytes != y.n_bytes or x.data.tobytes() != y.data.tobytes():
            errors.append(f"tensor {n}: the bytes differ")

    at = 0
    for t in ours.tensors:
        if t.data_offset - ours.data_offset != at:
            errors.append(f"tensor {t.name} at data offset {t.data_offset - ours.data_offset}, llama.cpp expects {at}")
        at += (t.n_bytes + ours.alignment - 1) // ours.alignment * ours.alignment

    for e in errors:
        print(f"{a.ours}: {e}")
    print(f"{a.ours}: {len(ours.fields) - 3} keys, {len(ours.tensors)} tensors, {len(errors)} differences from {a.reference}")
    sys.exit(1 if errors else 0)


if __name__ == "__main__":
    main()
