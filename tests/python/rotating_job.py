"""A training job's checkpointing with keep-last-2 rotation, without torch.

job MNT STEPS INTERVAL KEEP DIR: every INTERVAL seconds write
DIR/step-N.safetensors (safetensors, 1.5 MiB) and a DCP-like folder
DIR/dcp-N/ (a .distcp shard, then .metadata last), then delete every step
but the last KEEP (files with os.remove, folders with shutil.rmtree, as
Hugging Face's rotation does).
Prints {path: sha256} of every file the job completed.

check MNT HASHES: for every path of HASHES (a file the job printed), find
a snapshot under MNT/.snapshots holding it with the same bytes. Prints
{"missing": [...], "found_in": {path: snapshot}}.
"""
import hashlib
import json
import os
import shutil
import sys
import time

import numpy as np
from safetensors.numpy import save_file


def sha(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            b = f.read(1 << 20)
            if not b:
                return h.hexdigest()
            h.update(b)


def job(mnt, steps, interval, keep, name):
    run = os.path.join(mnt, name)
    os.makedirs(run, exist_ok=True)
    done = {}
    rng = np.random.default_rng(7)
    for n in range(steps):
        t0 = time.monotonic()
        st = os.path.join(run, f"step-{n}.safetensors")
        save_file(
            {
                "w": rng.standard_normal((384, 1024)).astype(np.float32),
                "b": np.full((1024,), n, dtype=np.float32),
            },
            st,
            metadata={"step": str(n)},
        )
        d = os.path.join(run, f"dcp-{n}")
        os.makedirs(d)
        shard = os.path.join(d, "__0_0.distcp")
        with open(shard, "wb") as f:
            f.write(rng.bytes(1_200_000))
        meta = os.path.join(d, ".metadata")
        with open(meta, "wb") as f:
            f.write(json.dumps({"step": n, "shards": ["__0_0.distcp"]}).encode())
        for p in (st, shard, meta):
            done[os.path.relpath(p, mnt)] = sha(p)
        # Rotation: keep the last KEEP steps.
        old = n - keep
        if old >= 0:
            os.remove(os.path.join(run, f"step-{old}.safetensors"))
            shutil.rmtree(os.path.join(run, f"dcp-{old}"))
        left = interval - (time.monotonic() - t0)
        if left > 0:
            time.sleep(left)
    print(json.dumps(done))


def check(mnt, hashes_file):
    with open(hashes_file) as f:
        want = json.load(f)
    snaps = os.path.join(mnt, ".snapshots")
    names = sorted(n for n in os.listdir(snaps) if n != "latest")
    found = {}
    for name in names:
        for path, h in want.items():
            if path in found:
                continue
            p = os.path.join(snaps, name, path)
            if os.path.isfile(p) and sha(p) == h:
                found[path] = name
    missing = sorted(p for p in want if p not in found)
    print(json.dumps({"missing": missing, "found_in": found, "snapshots": names}))


if __name__ == "__main__":
    if sys.argv[1] == "job":
        job(sys.argv[2], int(sys.argv[3]), float(sys.argv[4]), int(sys.argv[5]), sys.argv[6])
    else:
        check(sys.argv[2], sys.argv[3])
