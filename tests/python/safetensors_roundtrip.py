#!/usr/bin/env python3
"""A real client of snapshot views: save a checkpoint with safetensors into
the live mount, snapshot it, overwrite it with new tensors, then load the
old version from .snapshots/<name>/ (safe_open maps the file) and the new
one from the live path, checking every tensor.

usage: safetensors_roundtrip.py REWINDFS MOUNTPOINT REPO
"""
import json
import os
import subprocess
import sys

import numpy as np
from safetensors import safe_open
from safetensors.numpy import load_file, save_file

rw, mnt, repo = sys.argv[1:4]


def tensors(seed):
    rng = np.random.default_rng(seed)
    return {
        "embed.weight": (rng.standard_normal((1024, 512)) * 0.02).astype(np.float32),
        "layer0.attn.qkv": (rng.standard_normal((512, 1536)) * 0.02).astype(np.float16),
        "layer0.mlp.up": (rng.standard_normal((512, 2048)) * 0.02).astype(np.float32),
        "step": np.array([seed], dtype=np.int64),
    }


os.makedirs(os.path.join(mnt, "ckpt"), exist_ok=True)
path = os.path.join(mnt, "ckpt", "model.safetensors")
v1, v2 = tensors(1), tensors(2)
save_file(v1, path)
subprocess.run([rw, "snapshot", "--repo", repo, "--label", "v1"], check=True, capture_output=True)
snaps = json.loads(subprocess.run([rw, "snapshots", "--repo", repo, "--json"], check=True, capture_output=True).stdout)
name = [s for s in snaps if s["label"] == "v1"][-1]["name"]
save_file(v2, path)

old = os.path.join(mnt, ".snapshots", name, "ckpt", "model.safetensors")
with safe_open(old, framework="np") as f:
    keys = sorted(f.keys())
    assert keys == sorted(v1), keys
    for k in keys:
        t = f.get_tensor(k)
        assert t.dtype == v1[k].dtype and np.array_equal(t, v1[k]), f"snapshot tensor {k} differs"
new = load_file(path)
for k, t in v2.items():
    assert np.array_equal(new[k], t), f"live tensor {k} differs"
# The old version is still the old one after the live file changed again.
again = load_file(old)
assert all(np.array_equal(again[k], v1[k]) for k in v1)
print(f"ok: {len(keys)} tensors from snapshot {name}, live file has the new ones")
