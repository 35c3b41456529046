#!/usr/bin/env python3
"""Change a fraction of a dataset in place, and undo it.

mutate.py DIR --fraction 0.01 --save BACKUP   overwrite random 1 MiB blocks of
    the checkpoint files (new fp32 values) and append to 1% of the small
    files, saving the original bytes to BACKUP
mutate.py DIR --revert BACKUP                 put the original bytes back
"""
import argparse
import json
import os

import numpy as np

BLOCK = 1 << 20


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("dir")
    ap.add_argument("--fraction", type=float, default=0.01)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--save")
    ap.add_argument("--revert")
    a = ap.parse_args()
    if a.revert:
        meta = json.load(open(os.path.join(a.revert, "meta.json")))
        for i, (path, off, length) in enumerate(meta["blocks"]):
            with open(os.path.join(a.revert, f"{i}.bin"), "rb") as src, open(path, "r+b") as f:
                f.seek(off)
                f.write(src.read())
        for path, size in meta["small"]:
            with open(path, "r+b") as f:
                f.truncate(size)
        return
    rng = np.random.default_rng(a.seed)
    ck = sorted(
        os.path.join(a.dir, "checkpoints", n) for n in os.listdir(os.path.join(a.dir, "checkpoints"))
    )
    small = sorted(
        os.path.join(r, n) for r, _, ns in os.walk(os.path.join(a.dir, "data")) for n in ns
    )
    total = sum(os.path.getsize(p) for p in ck + small)
    nblocks = max(1, int(total * a.fraction) // BLOCK)
    os.makedirs(a.save, exist_ok=True)
    meta = {"blocks": [], "small": []}
    for i in range(nblocks):
        path = ck[int(rng.integers(0, len(ck)))]
        off = int(rng.integers(0, os.path.getsize(path) // BLOCK)) * BLOCK
        with open(path, "r+b") as f:
            f.seek(off)
            old = f.read(BLOCK)
            with open(os.path.join(a.save, f"{i}.bin"), "wb") as o:
                o.write(old)
            f.seek(off)
            f.write((rng.standard_normal(BLOCK // 4, dtype=np.float32) * 0.02).tobytes())
        meta["blocks"].append([path, off, BLOCK])
    for p in rng.choice(small, size=max(1, len(small) // 100), replace=False):
        meta["small"].append([str(p), os.path.getsize(p)])
        with open(p, "a") as f:
            f.write("appended by mutate.py\n")
    # Undo in reverse order so overlapping blocks come back right.
    meta["blocks"].reverse()
    files = list(range(nblocks))[::-1]
    for j, i in enumerate(files):
        os.rename(os.path.join(a.save, f"{i}.bin"), os.path.join(a.save, f"r{j}.bin"))
    for j in range(nblocks):
        os.rename(os.path.join(a.save, f"r{j}.bin"), os.path.join(a.save, f"{j}.bin"))
    json.dump(meta, open(os.path.join(a.save, "meta.json"), "w"))
    print(f"changed {nblocks} blocks of 1 MiB and {len(meta['small'])} small files")


if __name__ == "__main__":
    main()
