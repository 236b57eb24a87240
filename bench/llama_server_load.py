#!/usr/bin/env python3
"""Concurrent clients against llama.cpp's llama-server, as bench/daemon_bench.c is against
mixtrald: N requests at once, each a short raw prompt and `tokens` greedy tokens with EOS
ignored; prints one JSON line with the aggregate tokens/s and time to first token.
Standard library only.

    llama_server_load.py PORT CLIENTS TOKENS
"""
import json
import sys
import threading
import time
import urllib.request

PROMPTS = ["The history of", "Once upon a time", "In the beginning", "A recipe for", "Dear diary,",
           "The theorem states"]


def one(port, i, tokens, out):
    body = json.dumps({"prompt": PROMPTS[i % len(PROMPTS)], "n_predict": tokens, "temperature": 0,
                       "ignore_eos": True, "cache_prompt": False, "seed": i}).encode()
    req = urllib.request.Request(f"http://127.0.0.1:{port}/completion", data=body,
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=600) as r:
        d = json.load(r)
    out[i] = d


def main():
    port, clients, tokens = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
    out = [None] * clients
    threads = [threading.Thread(target=one, args=(port, i, tokens, out)) for i in range(clients)]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.monotonic() - t0
    n = sum(d["timings"]["predicted_n"] for d in out)
    ttft = sorted(d["timings"]["prompt_ms"] / 1000 for d in out)
    print(json.dumps({"clients": clients, "tokens_each": tokens, "tokens_per_s": round(n / wall, 1),
                      "ttft_p50_s": round(ttft[len(ttft) // 2], 3), "ttft_max_s": round(ttft[-1], 3)}))


if __name__ == "__main__":
    main()
