"""What the quant suite's Python checks share: gguf-py or a skip, and a count
of failures that decides the exit status."""

import sys

try:
    import numpy as np  # noqa: F401
    from gguf import GGMLQuantizationType, quants  # noqa: F401
except ImportError as e:  # pragma: no cover
    print("SKIP: %s (run tools/install-deps)" % e)
    sys.exit(77)

failures = 0


def fail(msg):
    global failures
    failures += 1
    print("FAIL: " + msg)


def finish():
    sys.exit(1 if failures else 0)
