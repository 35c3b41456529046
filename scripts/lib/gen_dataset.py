#!/usr/bin/env python3
"""Generate a benchmark dataset that looks like AI training data.

Usage: gen_dataset.py DIR [--checkpoints N] [--checkpoint-mib M] [--small N]

- N checkpoint files of M MiB: fp32 weights ~ Normal(0, 0.02), which zstd
  barely compresses (like real weights);
- small files: JSON-ish metadata and tokenised text shards (compressible).
"""
import argparse
import os

import numpy as np


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("dir")
    ap.add_argument("--checkpoints", type=int, default=5)
    ap.add_argument("--checkpoint-mib", type=int, default=384)
    ap.add_argument("--small", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=42)
    a = ap.parse_args()
    rng = np.random.default_rng(a.seed)
    os.makedirs(os.path.join(a.dir, "checkpoints"), exist_ok=True)
    os.makedirs(os.path.join(a.dir, "data"), exist_ok=True)
    for i in range(a.checkpoints):
        path = os.path.join(a.dir, "checkpoints", f"step-{(i + 1) * 1000}.bin")
        with open(path, "wb") as f:
            left = a.checkpoint_mib << 20
            while left > 0:
                n = min(left, 64 << 20)
                f.write((rng.standard_normal(n // 4, dtype=np.float32) * 0.02).tobytes())
                left -= n
    vocab = [f"tok{i}" for i in range(5000)]
    for i in range(a.small):
        sub = os.path.join(a.dir, "data", f"shard-{i // 200:03d}")
        os.makedirs(sub, exist_ok=True)
        if i % 4 == 0:
            body = "{" + ", ".join(f'"k{j}": {rng.integers(0, 10**6)}' for j in range(200)) + "}\n"
        else:
            words = rng.integers(0, len(vocab), size=int(rng.integers(500, 8000)))
            body = " ".join(vocab[w] for w in words) + "\n"
        with open(os.path.join(sub, f"sample-{i:05d}.txt"), "w") as f:
            f.write(body)


if __name__ == "__main__":
    main()
