#!/usr/bin/env python3
"""Checkpoint versions for scripts/bench-dedup.sh.

  ckpt_versions.py version DIR K      write version K of model.safetensors into DIR
  ckpt_versions.py names              the versions, one per line: K<TAB>what changed
  ckpt_versions.py many DIR N MIB     N different checkpoints of about MIB MiB each

A ~64 MiB mixed checkpoint (an fp32 embedding and head, six fp32 and six
bf16 layers, fp32 norms; weights ~ N(0, 0.02) as trained weights are)
written with the `safetensors` library (numpy arrays; bf16 stored as the
upper half of fp32), then what fine-tuning jobs do to it. Deterministic:
version K is the same bytes on every run.
"""
import sys

import numpy as np
from safetensors.numpy import save_file

D = 512
VOCAB = 4096
LAYERS = 12

VERSIONS = [
    "base checkpoint (frozen backbone)",
    "head fine-tuned (4 MiB of 64 changed)",
    "head fine-tuned again",
    "LoRA adapters added to two layers (rank 2, 40 KiB)",
    "LoRA adapters trained",
    "LoRA merged into the two layers, adapters dropped",
    "metadata-only save (step counter)",
    "vocabulary extended by 64 rows (embedding grows)",
    "full fine-tune (every tensor changes)",
]


def rnd(seed, shape):
    return np.random.default_rng(seed).normal(0, 0.02, size=shape).astype(np.float32)


def bf16(a):
    """bf16 as numpy has none: the upper 16 bits of each fp32, as uint16
    (safetensors then records it as U16; the bytes are a bf16 tensor's)."""
    return (a.view(np.uint32) >> 16).astype(np.uint16)


def base():
    t = {"embed.weight": rnd(1, (VOCAB, D)), "head.weight": rnd(2, (D, 2048))}
    for i in range(LAYERS):
        w = rnd(100 + i, (D, 2048))
        t[f"layers.{i}.weight"] = w if i % 2 == 0 else bf16(rnd(100 + i, (D, 4096)))
        t[f"layers.{i}.norm"] = np.ones(D, dtype=np.float32)
    return t


def version(k):
    t = base()
    step = str(100 * k)
    if k >= 1:
        t["head.weight"] = rnd(1000 + min(k, 2), (D, 2048))
    if k in (3, 4):
        for i in (4, 8):
            t[f"layers.{i}.lora_A"] = rnd(2000 + 10 * k + i, (2, 2048))
            t[f"layers.{i}.lora_B"] = rnd(3000 + 10 * k + i, (D, 2))
    if k >= 5:
        for i in (4, 8):
            a = rnd(2040 + i, (2, 2048))
            b = rnd(3040 + i, (D, 2))
            t[f"layers.{i}.weight"] = (t[f"layers.{i}.weight"] + b @ a).astype(np.float32)
    if k >= 7:
        t["embed.weight"] = np.concatenate([t["embed.weight"], rnd(4000, (64, D))])
    if k >= 8:
        for n, v in list(t.items()):
            if v.dtype == np.float32:
                t[n] = (v + rnd(5000 + len(n), v.shape) * 0.01).astype(np.float32)
            else:
                t[n] = bf16(rnd(6000 + len(n), v.shape))
    if k == 6:
        step = "500-final"
    return t, {"step": step, "format": "pt"}


def main():
    cmd = sys.argv[1]
    if cmd == "names":
        for k, w in enumerate(VERSIONS):
            print(f"{k}\t{w}")
    elif cmd == "version":
        d, k = sys.argv[2], int(sys.argv[3])
        t, meta = version(k)
        save_file(t, f"{d}/model.safetensors", metadata=meta)
    elif cmd == "many":
        d, n, mib = sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
        for j in range(n):
            t = {}
            rows = mib * (1 << 20) // (16 * 4 * 2048)
            for i in range(16):
                v = rnd(7000 + 100 * j + i, (rows, 2048))
                t[f"layers.{i}.weight"] = v if i % 2 == 0 else bf16(np.concatenate([v, v]))
            save_file(t, f"{d}/ckpt-{j:03d}.safetensors", metadata={"step": str(j)})
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
