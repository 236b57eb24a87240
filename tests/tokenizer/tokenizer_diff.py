#!/usr/bin/python3
"""Differential test of our tokenizer against Python sentencepiece.

Generates random inputs (many scripts, whitespace runs, control characters,
invalid UTF-8, text that looks like markup), asks sentencepiece for the ids
and for the decoded text, and lets tokenizer-check compare ours with them.
Random id sequences (heavy on byte pieces, control pieces and spaces) check
decoding on its own. The seed is printed; MX_DIFF_SEED=N reproduces a run.

Runs with /usr/bin/python3: sentencepiece comes from Debian's
python3-sentencepiece.
"""
import argparse
import os
import random
import subprocess
import sys
import tempfile
import time

try:
    import sentencepiece as spm
except ImportError:
    print("SKIP: Python sentencepiece is not installed (apt-get install python3-sentencepiece)")
    sys.exit(77)

# (first, last) code points of blocks from many scripts, weighted by use.
BLOCKS = [
    (0x20, 0x7E), (0x20, 0x7E), (0x20, 0x7E), (0xA0, 0xFF), (0x100, 0x17F),
    (0x370, 0x3FF), (0x400, 0x4FF), (0x530, 0x58F), (0x590, 0x5FF), (0x600, 0x6FF),
    (0x900, 0x97F), (0xE00, 0xE7F), (0x10A0, 0x10FF), (0x1100, 0x11FF), (0x1E00, 0x1EFF),
    (0x2000, 0x206F), (0x20A0, 0x20CF), (0x2190, 0x21FF), (0x2500, 0x25FF), (0x2580, 0x2583),
    (0x3000, 0x303F), (0x3040, 0x309F), (0x30A0, 0x30FF), (0x4E00, 0x9FFF), (0xAC00, 0xD7A3),
    (0xE000, 0xE0FF), (0xFB00, 0xFB4F), (0xFE00, 0xFE0F), (0xFF00, 0xFFEF), (0xFFF0, 0xFFFF),
    (0x10000, 0x1007F), (0x1D400, 0x1D4FF), (0x1F300, 0x1F64F), (0x1F900, 0x1F9FF),
    (0x20000, 0x2A6DF), (0xE0000, 0xE007F), (0x10FFF0, 0x10FFFF), (0x300, 0x36F),
]
WORDS = ("the of and to in is that for it as was with be by on not he I this are or his "
         "from at which but have an they you were her she there been one all we their "
         "Mixtral [INST] [/INST] <s> </s> <unk> ▁ hello world naïve café Straße élève "
         "東京 日本語 русский ελληνικά العربية 🙂 🚀 ```c int main() { return 0; } ```").split(" ")
SPACES = [" ", "  ", "   ", "    ", "\t", "\n", "\n\n", "\r\n", "\u00a0", "\u3000", "\u2581",
          "\u2028", " \n ", "\x0b", "\x0c"]


def rand_unicode(rng, n):
    out = []
    for _ in range(n):
        lo, hi = rng.choice(BLOCKS)
        cp = rng.randint(lo, hi)
        if 0xD800 <= cp <= 0xDFFF:
            cp = 0xFFFD
        out.append(chr(cp))
    return "".join(out)


def rand_text(rng):
    kind = rng.random()
    if kind < 0.30:
        s = rand_unicode(rng, rng.randint(0, 40))
    elif kind < 0.55:
        s = "".join(rng.choice(WORDS) + rng.choice(SPACES[:3] + SPACES) for _ in range(rng.randint(1, 20)))
    elif kind < 0.70:
        s = "".join(rng.choice(SPACES) if rng.random() < 0.5 else rng.choice(WORDS)
                    for _ in range(rng.randint(1, 15)))
    elif kind < 0.80:
        s = "".join(chr(rng.choice([rng.randint(0, 0x1F), 0x7F, rng.randint(0x80, 0x9F), 0x20,
                                    rng.randint(0x21, 0x7E)])) for _ in range(rng.randint(1, 20)))
    else:
        s = None
    if s is not None:
        data = s.encode("utf-8")
    else:
        # Invalid UTF-8: random bytes, truncated and overlong sequences, stray
        # continuation bytes, surrogates, all mixed with valid text.
        parts = []
        for _ in range(rng.randint(1, 12)):
            r = rng.random()
            if r < 0.3:
                parts.append(bytes(rng.randint(0, 255) for _ in range(rng.randint(1, 4))))
            elif r < 0.45:
                parts.append(rng.choice([b"\xc0\x80", b"\xc1\xbf", b"\xe0\x80\x80", b"\xed\xa0\x80",
                                         b"\xf4\x90\x80\x80", b"\xf8\x88\x80\x80\x80", b"\xff", b"\xfe",
                                         b"\x80", b"\xbf", b"\xe6\x97", b"\xf0\x9f\x99"]))
            else:
                parts.append(rand_unicode(rng, rng.randint(1, 6)).encode("utf-8"))
        data = b"".join(parts)
    if rng.random() < 0.1:
        data = data * rng.randint(2, 5)
    return data


class IdPools:
    """Ids worth drawing often when testing decode."""

    def __init__(self, sp):
        self.n = n = sp.get_piece_size()
        self.specials = [i for i in range(n) if sp.is_control(i) or sp.is_unknown(i)]
        self.byte_ids = [i for i in range(n) if sp.is_byte(i)]
        self.spacey = [i for i in range(n) if sp.id_to_piece(i).startswith("\u2581")][:200]


def rand_ids(rng, pools):
    n, specials, byte_ids, spacey = pools.n, pools.specials, pools.byte_ids, pools.spacey
    ids = []
    for _ in range(rng.randint(0, 24)):
        r = rng.random()
        if r < 0.35 and len(byte_ids) == 256:
            # often a run of bytes from a real character, possibly cut short
            ch = rand_unicode(rng, 1).encode("utf-8")
            run = ch[: rng.randint(1, len(ch))] if rng.random() < 0.3 else ch
            ids += [byte_ids[b] for b in run]
        elif r < 0.45:
            ids.append(rng.choice(byte_ids or specials))
        elif r < 0.55:
            ids.append(rng.choice(specials))
        elif r < 0.75 and spacey:
            ids.append(rng.choice(spacey))
        else:
            ids.append(rng.randrange(n))
    return ids


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--checker", required=True, help="path of tokenizer-check")
    ap.add_argument("--model", help="tokenizer.model (default: the real one, else skip)")
    ap.add_argument("--checker-tokenizer", help="what tokenizer-check loads (default: --model), e.g. a GGUF "
                    "file holding --model's vocabulary")
    ap.add_argument("--count", type=int, default=20000, help="random strings (default 20000)")
    ap.add_argument("--id-sequences", type=int, default=5000)
    args = ap.parse_args()

    model = args.model
    if not model:
        model = os.environ.get("MIXTRAL_TOKENIZER") or os.path.join(
            os.path.dirname(__file__), "..", "..", "..", "shared", "models", "tokenizer.model.v1")
    if not os.path.exists(model):
        print(f"SKIP: no real tokenizer (set MIXTRAL_TOKENIZER or provide {model})")
        sys.exit(77)

    seed = int(os.environ.get("MX_DIFF_SEED", time.time_ns() % 2**32))
    print(f"model {model}; seed {seed} (MX_DIFF_SEED={seed} reproduces this run)")
    rng = random.Random(seed)
    sp = spm.SentencePieceProcessor(model_file=model)

    with tempfile.NamedTemporaryFile("w", suffix=".cases", delete=False) as f:
        path = f.name
        for _ in range(args.count):
            data = rand_text(rng)
            ids = sp.encode(data)
            dec = sp.decode(ids).encode("utf-8")
            f.write(f"E\t{data.hex()}\t{' '.join(map(str, ids))}\t{dec.hex()}\n")
        pools = IdPools(sp)
        for _ in range(args.id_sequences):
            ids = rand_ids(rng, pools)
            dec = sp.decode(ids).encode("utf-8")
            f.write(f"D\t{' '.join(map(str, ids))}\t{dec.hex()}\n")
    try:
        r = subprocess.run([args.checker, args.checker_tokenizer or model, path])
    finally:
        if os.environ.get("MX_DIFF_KEEP"):
            print(f"cases kept in {path}")
        else:
            os.unlink(path)
    if r.returncode != 0:
        print(f"FAILED with seed {seed}: rerun with MX_DIFF_SEED={seed} MX_DIFF_KEEP=1")
    sys.exit(r.returncode)


if __name__ == "__main__":
    main()
