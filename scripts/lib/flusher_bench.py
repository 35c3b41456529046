#!/usr/bin/env python3
"""Measurements for scripts/bench-flusher.sh (run against a live mount).

flusher_bench.py cuts REWINDFS MNT REPO ROUNDS DIRTY
    ROUNDS times: write 4 KiB into DIRTY files spread over the tree, take an
    incremental snapshot, read how long its cut held writers. Prints
    p50/p99/max cut ms and the mean snapshot time.
flusher_bench.py latency REWINDFS MNT REPO BIGFILE N
    4 KiB write latency (N writes into MNT/lat.bin), idle and then while a
    full snapshot is being captured. Prints p50/p99 for both.
"""
import json
import os
import random
import subprocess
import sys
import threading
import time


def status(rw, repo):
    out = subprocess.run([rw, "status", "--repo", repo, "--json"], check=True, capture_output=True).stdout
    return json.loads(out)


def pct(v, p):
    v = sorted(v)
    return v[min(len(v) - 1, int(round(p / 100 * (len(v) - 1))))]


def cuts(rw, mnt, repo, rounds, dirty):
    files = []
    for root, _, names in os.walk(mnt):
        for n in names:
            files.append(os.path.join(root, n))
    rng = random.Random(1)
    cut_ms, snap_s = [], []
    buf = os.urandom(4096)
    for _ in range(rounds):
        for p in rng.sample(files, dirty):
            with open(p, "r+b") as f:
                f.write(buf)
        t = time.perf_counter()
        subprocess.run([rw, "snapshot", "--repo", repo], check=True, capture_output=True)
        snap_s.append(time.perf_counter() - t)
        cut_ms.append(status(rw, repo)["flusher"]["last_cut_ms"])
    print(f"cut_ms p50={pct(cut_ms, 50):.2f} p99={pct(cut_ms, 99):.2f} max={max(cut_ms):.2f} "
          f"snapshot_s mean={sum(snap_s) / len(snap_s):.3f}")


def write_lat(path, n, stop=None):
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
    buf = os.urandom(4096)
    rng = random.Random(2)
    lat = []
    for _ in range(n):
        if stop is not None and stop.is_set():
            break
        off = rng.randrange(0, 4096) * 4096
        t = time.perf_counter()
        os.pwrite(fd, buf, off)
        lat.append((time.perf_counter() - t) * 1e3)
    os.close(fd)
    return lat


def latency(rw, mnt, repo, big, n):
    p = os.path.join(mnt, "lat.bin")
    idle = write_lat(p, n)
    # Make the big file dirty, then capture a full snapshot while writing.
    with open(os.path.join(mnt, big), "r+b") as f:
        f.write(os.urandom(4096))
    done = threading.Event()
    lat = []

    def writer():
        while not done.is_set():
            lat.extend(write_lat(p, 200, done))

    th = threading.Thread(target=writer)
    th.start()
    time.sleep(0.2)
    t = time.perf_counter()
    subprocess.run([rw, "snapshot", "--repo", repo, "--kind", "full"], check=True, capture_output=True)
    dur = time.perf_counter() - t
    done.set()
    th.join()
    print(f"write_ms idle p50={pct(idle, 50):.3f} p99={pct(idle, 99):.3f} "
          f"during_capture p50={pct(lat, 50):.3f} p99={pct(lat, 99):.3f} "
          f"(n={len(lat)}, full snapshot {dur:.2f} s)")


if __name__ == "__main__":
    what = sys.argv[1]
    if what == "cuts":
        cuts(sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5]), int(sys.argv[6]))
    else:
        latency(sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5], int(sys.argv[6]))
