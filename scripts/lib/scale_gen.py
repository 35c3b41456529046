#!/usr/bin/env python3
"""Generate or change a many-file dataset for scripts/bench-scale.sh.

  scale_gen.py gen DIR N        N files of 4 KiB, 100 per directory
                                (DIR/dNNN/dNNNNN/fNNNNNNN), each unique
  scale_gen.py touch DIR N K S  rewrite K files chosen with seed S (same
                                size, new content)
  scale_gen.py snaps RW MNT N SNAPS K S OUT
                                SNAPS times: rewrite K files through the
                                live mount MNT (seeds S, S+1, ...), time
                                `RW snapshot -C MNT`, read the cut pause
                                from `RW status -C MNT --json`; writes
                                "seconds cut_ms" per snapshot to OUT
"""
import json
import os
import random
import subprocess
import sys
import time

PER_DIR = 100
DIRS_PER_TOP = 100


def path_of(root, i):
    d = i // PER_DIR
    return os.path.join(root, f"d{d // DIRS_PER_TOP:03d}", f"d{d:05d}", f"f{i:07d}")


def body(i, salt):
    head = f"file {i} version {salt}\n".encode()
    return head + os.urandom(4096 - len(head))


def gen(root, n):
    for i in range(n):
        p = path_of(root, i)
        if i % PER_DIR == 0:
            os.makedirs(os.path.dirname(p), exist_ok=True)
        with open(p, "wb") as f:
            f.write(body(i, 0))


def touch(root, n, k, seed):
    rng = random.Random(seed)
    for i in rng.sample(range(n), k):
        with open(path_of(root, i), "r+b") as f:
            f.write(body(i, seed))


def snaps(rw, mnt, n, count, k, seed, out):
    with open(out, "w") as log:
        for s in range(seed, seed + count):
            touch(mnt, n, k, s)
            t = time.perf_counter()
            subprocess.run([rw, "snapshot", "-C", mnt], check=True, stdout=subprocess.DEVNULL)
            secs = time.perf_counter() - t
            st = subprocess.run([rw, "status", "-C", mnt, "--json"], check=True,
                                capture_output=True).stdout
            log.write(f"{secs:.6f} {json.loads(st)['flusher']['last_cut_ms']}\n")


def main():
    cmd = sys.argv[1]
    if cmd == "gen":
        gen(sys.argv[2], int(sys.argv[3]))
    elif cmd == "touch":
        touch(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]))
    elif cmd == "snaps":
        a = sys.argv[2:]
        snaps(a[0], a[1], int(a[2]), int(a[3]), int(a[4]), int(a[5]), a[6])
    else:
        sys.exit(f"unknown command {cmd}")


if __name__ == "__main__":
    main()
