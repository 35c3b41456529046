#!/usr/bin/env python3
"""Real mmap clients of a snapshot file: safetensors' safe_open (numpy)
and numpy.memmap (np.load with mmap_mode) must give back the saved
tensors, byte for byte.

usage: mmap_check.py gen DIR     # write model.safetensors and weights.npy
       mmap_check.py check DIR   # load them from DIR (e.g. a snapshot mount)
"""
import os
import sys

import numpy as np
from safetensors import safe_open
from safetensors.numpy import save_file


def tensors():
    rng = np.random.default_rng(7)
    return {
        "embed.weight": (rng.standard_normal((2048, 512)) * 0.02).astype(np.float32),
        "layer0.attn.qkv": (rng.standard_normal((512, 1536)) * 0.02).astype(np.float16),
        "layer0.mlp.up": (rng.standard_normal((512, 2048)) * 0.02).astype(np.float32),
        "step": np.array([1234], dtype=np.int64),
    }


def weights():
    rng = np.random.default_rng(8)
    return (rng.standard_normal((1024, 1024)) * 0.02).astype(np.float32)


mode, d = sys.argv[1:3]
if mode == "gen":
    save_file(tensors(), os.path.join(d, "model.safetensors"))
    np.save(os.path.join(d, "weights.npy"), weights())
    sys.exit(0)

want = tensors()
with safe_open(os.path.join(d, "model.safetensors"), framework="numpy") as f:
    keys = sorted(f.keys())
    assert keys == sorted(want), keys
    for k in keys:
        got = f.get_tensor(k)
        assert got.dtype == want[k].dtype and got.shape == want[k].shape, k
        assert np.array_equal(got, want[k]), f"tensor {k} differs"
m = np.load(os.path.join(d, "weights.npy"), mmap_mode="r")
assert isinstance(m, np.memmap), type(m)
w = weights()
assert m.shape == w.shape and m.dtype == w.dtype
assert np.array_equal(m, w), "weights.npy differs"
# Random pages, as a loader touching parts of a mapping would.
rng = np.random.default_rng(9)
for r in rng.integers(0, w.shape[0], 64):
    assert np.array_equal(m[r], w[r]), f"row {r} differs"
print(f"ok: {len(keys)} tensors and a {w.nbytes >> 20} MiB memmap")
