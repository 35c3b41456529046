"""Data-loading stress without torch: N worker processes open, mmap and
read slices of the same safetensors shards and small files at the same
moment, round after round, and compare every byte with what was written.

usage: loader_stress.py write DIR SHARDS SHARD_MIB SMALL
       loader_stress.py read DIR WORKERS ROUNDS
Prints one JSON line: {"ok": reads, "errors": [...]} and exits 1 on any
error or mismatch.
"""
import json
import mmap
import multiprocessing as mp
import os
import random
import sys

import numpy as np
from safetensors import safe_open
from safetensors.numpy import save_file

ROWS = 256


def expected_row(shard, tensor, row, cols):
    rng = np.random.default_rng(shard * 1000 + tensor * 10_000 + row)
    return rng.standard_normal(cols, dtype=np.float32)


def small_bytes(i):
    return (b"%08d" % i) * (512 + (i * 37) % 1536)


def write(d, shards, shard_mib, small):
    os.makedirs(d, exist_ok=True)
    cols = shard_mib * (1 << 20) // (4 * ROWS * 2)
    for s in range(shards):
        tensors = {}
        for t in range(2):
            rows = [expected_row(s, t, r, cols) for r in range(ROWS)]
            tensors["t%d" % t] = np.stack(rows)
        save_file(tensors, os.path.join(d, "shard-%02d.safetensors" % s))
    os.makedirs(os.path.join(d, "small"), exist_ok=True)
    for i in range(small):
        with open(os.path.join(d, "small", "%05d.bin" % i), "wb") as f:
            f.write(small_bytes(i))
    with open(os.path.join(d, "meta.json"), "w") as f:
        json.dump({"shards": shards, "cols": cols, "small": small}, f)


def worker(args):
    d, wid, rounds, barrier = args
    meta = json.load(open(os.path.join(d, "meta.json")))
    rng = random.Random(wid)
    errors = []
    reads = 0
    for rnd in range(rounds):
        barrier.wait()
        # Every worker opens the same shard at the same moment.
        s = rnd % meta["shards"]
        path = os.path.join(d, "shard-%02d.safetensors" % s)
        try:
            with safe_open(path, framework="np") as f:
                for _ in range(4):
                    t = rng.randrange(2)
                    r = rng.randrange(ROWS)
                    got = f.get_slice("t%d" % t)[r:r + 1][0]
                    if not np.array_equal(got, expected_row(s, t, r, meta["cols"])):
                        errors.append("mismatch %s t%d row %d" % (path, t, r))
                    reads += 1
            # A plain mmap of the same file, as numpy.memmap users do.
            with open(path, "rb") as fh:
                mm = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
                n = int.from_bytes(mm[:8], "little")
                json.loads(mm[8:8 + n])
                mm.close()
            for _ in range(8):
                i = rng.randrange(meta["small"])
                with open(os.path.join(d, "small", "%05d.bin" % i), "rb") as fh:
                    if fh.read() != small_bytes(i):
                        errors.append("mismatch small %d" % i)
                reads += 1
        except OSError as e:
            errors.append("round %d worker %d: %s" % (rnd, wid, e))
    return reads, errors


def read(d, workers, rounds):
    ctx = mp.get_context("fork")
    with ctx.Manager() as m:
        barrier = m.Barrier(workers)
        with ctx.Pool(workers) as pool:
            res = pool.map(worker, [(d, w, rounds, barrier) for w in range(workers)])
    reads = sum(r for r, _ in res)
    errors = [e for _, es in res for e in es]
    print(json.dumps({"ok": reads, "errors": errors[:20], "error_count": len(errors)}))
    sys.exit(1 if errors or reads == 0 else 0)


if __name__ == "__main__":
    if sys.argv[1] == "write":
        write(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]))
    else:
        read(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
