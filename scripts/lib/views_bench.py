#!/usr/bin/env python3
"""Helpers for scripts/bench-views.sh.

views_bench.py gen DIR SIZE_MIB          big.bin (fp32), noise.bin (random), bf16.bin (bf16 tensors),
                                         8 x SIZE/8 fp32 shards, 10,000 small files,
                                         a safetensors checkpoint of SIZE_MIB
views_bench.py read PATH...              read files in parallel (one thread each), print
                                         seconds and this process's CPU seconds
views_bench.py ttfb PATH                 seconds to the first byte
views_bench.py lsl DIR                   seconds for os.scandir + stat of every entry (ls -l)
views_bench.py safetensors PATH          seconds for safetensors.numpy.load_file
views_bench.py rss PID                   VmRSS of a process in MiB
"""
import os
import sys
import threading
import time

import numpy as np


def gen(d, size_mib):
    rng = np.random.default_rng(3)
    os.makedirs(os.path.join(d, "many"), exist_ok=True)

    def weights(path, mib):
        with open(path, "wb") as f:
            left = mib << 20
            while left:
                n = min(left, 64 << 20)
                f.write((rng.standard_normal(n // 4, dtype=np.float32) * 0.02).tobytes())
                left -= n

    weights(os.path.join(d, "big.bin"), size_mib)
    with open(os.path.join(d, "noise.bin"), "wb") as f:
        for _ in range(size_mib // 64):
            f.write(rng.bytes(64 << 20))
    with open(os.path.join(d, "bf16.bin"), "wb") as f:
        for _ in range(size_mib // 64):
            x = (rng.standard_normal(32 << 20, dtype=np.float32) * 0.02).view(np.uint32)
            f.write((x >> 16).astype(np.uint16).tobytes())
    for i in range(8):
        weights(os.path.join(d, f"shard{i}.bin"), size_mib // 8)
    for i in range(10000):
        with open(os.path.join(d, "many", f"f{i:05d}"), "w") as f:
            f.write(f"{i}\n")
    from safetensors.numpy import save_file
    n = (size_mib << 20) // 4 // 8
    save_file({f"w{i}": (rng.standard_normal(n, dtype=np.float32) * 0.02) for i in range(8)},
              os.path.join(d, "model.safetensors"))


def cpu():
    r = os.times()
    return r.user + r.system


def read(paths):
    t = time.perf_counter()
    def one(p):
        with open(p, "rb", buffering=0) as f:
            while f.read(1 << 20):
                pass
    ths = [threading.Thread(target=one, args=(p,)) for p in paths]
    for th in ths:
        th.start()
    for th in ths:
        th.join()
    return time.perf_counter() - t


def ttfb(p):
    t = time.perf_counter()
    with open(p, "rb") as f:
        f.read(1)
    return time.perf_counter() - t


def lsl(d):
    t = time.perf_counter()
    n = 0
    for e in os.scandir(d):
        e.stat(follow_symlinks=False)
        n += 1
    assert n >= 10000, n
    return time.perf_counter() - t


def st(p):
    from safetensors.numpy import load_file
    t = time.perf_counter()
    load_file(p)
    return time.perf_counter() - t


def st_open(p):
    """safe_open (mmap) and touch every tensor, as a loader does."""
    from safetensors import safe_open
    t = time.perf_counter()
    s = 0.0
    with safe_open(p, framework="numpy") as f:
        for k in f.keys():
            s += float(f.get_tensor(k)[::1024].sum())
    return time.perf_counter() - t


def rss(pid):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0


if __name__ == "__main__":
    cmd = sys.argv[1]
    if cmd == "gen":
        gen(sys.argv[2], int(sys.argv[3]))
    elif cmd == "read":
        c = cpu()
        secs = read(sys.argv[2:])
        print(f"{secs:.3f} {cpu() - c:.3f}")
    elif cmd == "ttfb":
        print(f"{ttfb(sys.argv[2]):.4f}")
    elif cmd == "lsl":
        print(f"{lsl(sys.argv[2]):.3f}")
    elif cmd == "safetensors":
        print(f"{st(sys.argv[2]):.3f}")
    elif cmd == "safe_open":
        print(f"{st_open(sys.argv[2]):.3f}")
    elif cmd == "rss":
        print(f"{rss(sys.argv[2]):.0f}")
