#!/usr/bin/env python3
"""Small filesystem workloads for scripts/bench-live.sh; prints seconds.

fsops.py meta DIR N         create, stat and unlink N files
fsops.py randwrite FILE N   N random 4 KiB pwrites into FILE (256 MiB), then fsync
fsops.py stat DIR N         stat N existing files (created first, not timed)
fsops.py meta4 DIR N        create (1 byte), stat, rename and unlink N files
fsops.py checkpoint DIR MIB write DIR/tmp-ckpt.pt as torch.save/safetensors
                            do (64 MiB writes), fsync, rename to DIR/ckpt.pt
"""
import os
import random
import sys
import time


def meta(d, n):
    t = time.perf_counter()
    for i in range(n):
        p = os.path.join(d, f"f{i}")
        with open(p, "wb") as f:
            f.write(b"x")
        os.stat(p)
    for i in range(n):
        os.unlink(os.path.join(d, f"f{i}"))
    return time.perf_counter() - t


def meta4_phases(d, n):
    """meta4's four phases, each timed: [create, stat, rename, unlink]."""
    out = []
    t = time.perf_counter()
    for i in range(n):
        p = os.path.join(d, f"f{i}")
        with open(p, "wb") as f:
            f.write(b"x")
    out.append(time.perf_counter() - t)
    t = time.perf_counter()
    for i in range(n):
        os.stat(os.path.join(d, f"f{i}"))
    out.append(time.perf_counter() - t)
    t = time.perf_counter()
    for i in range(n):
        os.rename(os.path.join(d, f"f{i}"), os.path.join(d, f"g{i}"))
    out.append(time.perf_counter() - t)
    t = time.perf_counter()
    for i in range(n):
        os.unlink(os.path.join(d, f"g{i}"))
    out.append(time.perf_counter() - t)
    return out


def meta4(d, n):
    return sum(meta4_phases(d, n))


def checkpoint(d, mib):
    chunk = 64 << 20
    # Tensor-like bytes (incompressible), made before the clock starts.
    buf = os.urandom(chunk)
    left = mib << 20
    tmp, final = os.path.join(d, "tmp-ckpt.pt"), os.path.join(d, "ckpt.pt")
    t = time.perf_counter()
    with open(tmp, "wb") as f:
        while left > 0:
            n = min(left, chunk)
            f.write(buf[:n])
            left -= n
        f.flush()
        os.fsync(f.fileno())
    os.rename(tmp, final)
    return time.perf_counter() - t


def stat(d, n):
    os.makedirs(os.path.join(d, "s"), exist_ok=True)
    for i in range(n):
        with open(os.path.join(d, "s", f"f{i}"), "wb") as f:
            f.write(b"x")
    t = time.perf_counter()
    for _ in range(3):
        for i in range(n):
            os.stat(os.path.join(d, "s", f"f{i}"))
    return time.perf_counter() - t


def randwrite(path, n):
    size = 256 << 20
    with open(path, "wb") as f:
        f.truncate(size)
    rng = random.Random(1)
    buf = os.urandom(4096)
    fd = os.open(path, os.O_WRONLY)
    t = time.perf_counter()
    for _ in range(n):
        os.pwrite(fd, buf, rng.randrange(0, size // 4096) * 4096)
    os.fsync(fd)
    el = time.perf_counter() - t
    os.close(fd)
    return el


if __name__ == "__main__":
    what, target, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
    if what == "meta4-phases":
        ph = meta4_phases(target, n)
        print(" ".join(f"{x:.3f}" for x in ph), f"{sum(ph):.3f}")
        sys.exit(0)
    ops = {"meta": meta, "meta4": meta4, "stat": stat, "randwrite": randwrite, "checkpoint": checkpoint}
    print(f"{ops[what](target, n):.3f}")
