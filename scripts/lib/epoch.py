#!/usr/bin/env python3
"""A DataLoader-style epoch without torch: a pool of worker processes
reads every file of a dataset once, in shuffled order, each file opened,
read whole and closed (what a map-style Dataset's __getitem__ does).

    epoch.py gen-small DIR N            N files of 4-16 KiB, 100 per directory
    epoch.py gen-shards DIR N MIB       N shards of MIB MiB each
    epoch.py run DIR WORKERS [SEED]     one epoch; prints "seconds files bytes cpu"

The file list is taken before the clock starts (a Dataset lists once, at
construction), and the workers are started and warmed before it too (a
DataLoader's persistent workers): the time is the epoch's reads only.
`cpu` is the CPU seconds the workers used (user + system), from their
rusage after they exit.
"""
import os
import random
import resource
import sys
import time
from multiprocessing import get_context

CHUNK = 1 << 20


def read_one(path):
    n = 0
    with open(path, "rb", buffering=0) as f:
        while True:
            b = f.read(CHUNK)
            if not b:
                break
            n += len(b)
    return n


def read_batch(paths):
    return sum(read_one(p) for p in paths)


def gen_small(d, n):
    rng = random.Random(1)
    for i in range(n):
        sub = os.path.join(d, "d%04d" % (i // 100))
        if i % 100 == 0:
            os.makedirs(sub, exist_ok=True)
        size = rng.randrange(4096, 16385)
        with open(os.path.join(sub, "s%06d.npy" % i), "wb") as f:
            f.write(os.urandom(size))


def gen_shards(d, n, mib):
    os.makedirs(d, exist_ok=True)
    block = os.urandom(CHUNK)
    for i in range(n):
        with open(os.path.join(d, "shard-%03d.tar" % i), "wb") as f:
            for j in range(mib):
                # Distinct blocks: nothing deduplicates or compresses away.
                f.write(j.to_bytes(8, "little") + i.to_bytes(8, "little") + block[16:])


def run(d, workers, seed):
    paths = []
    for root, dirs, files in os.walk(d):
        dirs.sort()
        paths.extend(os.path.join(root, f) for f in sorted(files))
    random.Random(seed).shuffle(paths)
    # Batches of 16 files per task for small files (a DataLoader hands a
    # worker one batch's indices at a time), one file per task otherwise.
    per = 16 if len(paths) >= 1000 else 1
    batches = [paths[i:i + per] for i in range(0, len(paths), per)]
    ctx = get_context("fork")
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    with ctx.Pool(workers) as pool:
        pool.map(abs, range(workers * 4))  # started and warm
        t = time.perf_counter()
        total = sum(pool.imap_unordered(read_batch, batches, chunksize=1))
        secs = time.perf_counter() - t
        pool.close()
        pool.join()
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    print("%.4f %d %d %.3f" % (secs, len(paths), total, cpu))


if __name__ == "__main__":
    cmd = sys.argv[1]
    if cmd == "gen-small":
        gen_small(sys.argv[2], int(sys.argv[3]))
    elif cmd == "gen-shards":
        gen_shards(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
    elif cmd == "run":
        run(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]) if len(sys.argv) > 4 else 0)
    else:
        sys.exit(__doc__)
