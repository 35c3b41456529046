#!/usr/bin/env python3
"""A save-heavy training loop, for scripts/bench-kept.sh.

save_loop.py DIR STEPS EVERY MIB: STEPS steps of compute (numpy matmuls,
one thread), saving a MIB MiB safetensors checkpoint every EVERY steps to
DIR/step-N.safetensors and deleting all but the last two (keep-last-2
rotation). Prints the loop's wall seconds and this process's CPU seconds.
"""
import os
import sys
import time

import numpy as np
from safetensors.numpy import save_file


def main(d, steps, every, mib):
    os.makedirs(d, exist_ok=True)
    rng = np.random.default_rng(0)
    a = rng.standard_normal((384, 384)).astype(np.float32)
    n = (mib << 20) // 4 // 8
    tensors = {f"w{i}": rng.standard_normal(n).astype(np.float32) * 0.02 for i in range(8)}
    saved = []
    t0 = time.perf_counter()
    c0 = sum(os.times()[:2])
    for s in range(steps):
        for _ in range(12):
            a = np.tanh(a @ a.T * 1e-3)
        if s % every == every - 1:
            # The weights move a little each save.
            tensors["w0"][: 1 << 16] += np.float32(1e-4)
            p = os.path.join(d, f"step-{s}.safetensors")
            save_file(tensors, p, metadata={"step": str(s)})
            saved.append(p)
            while len(saved) > 2:
                os.remove(saved.pop(0))
    print(f"{time.perf_counter() - t0:.3f} {sum(os.times()[:2]) - c0:.3f}")


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]))
