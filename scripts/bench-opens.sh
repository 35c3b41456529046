#!/usr/bin/env bash
# Python open()+read()+close() of 5,000 small (8 KiB) files through a live
# mount, warm, best of 5 passes, for one or more rewindfs binaries (A/B):
#   scripts/bench-opens.sh [BIN...]      (default: target/release/rewindfs)
set -euo pipefail
cd "$(dirname "$0")/.."
bins=("$@")
[ ${#bins[@]} -gt 0 ] || bins=(target/release/rewindfs)
for B in "${bins[@]}"; do
  T=$(mktemp -d)
  mkdir -p "$T/b/d" "$T/m"
  python3 - "$T/b/d" <<'PY'
import os, sys
for i in range(5000):
    open(os.path.join(sys.argv[1], "f%05d" % i), "wb").write(os.urandom(8192))
PY
  # Settled files (not "written in the last seconds"): read by passthrough.
  sleep 6
  "$B" mount "$T/b" "$T/m" --every off --repo "$T/r" >/dev/null
  secs=$(python3 - "$T/m/d" <<'PY'
import os, sys, time
d = sys.argv[1]
names = sorted(os.listdir(d))
best = None
for _ in range(5):
    t = time.perf_counter()
    for n in names:
        with open(os.path.join(d, n), "rb") as f:
            f.read()
    e = time.perf_counter() - t
    best = e if best is None else min(best, e)
print("%.3f" % best)
PY
)
  echo "$B: $secs s for 5000 open+read+close (warm, best of 5)"
  "$B" umount "$T/m" >/dev/null
  rm -rf "$T"
done
