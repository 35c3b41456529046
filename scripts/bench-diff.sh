#!/usr/bin/env bash
# `rewindfs diff` on a large tree: FILES small files in directories of
# 1,000 (scan snapshots), then 100 files appended to and one directory
# renamed, a second snapshot, and `rewindfs diff 1 2` timed RUNS times
# (seconds and peak RSS). Prints a markdown line.
#
#   scripts/bench-diff.sh                # 100,000 files, 3 runs
#   FILES=20000 scripts/bench-diff.sh    # quick
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
WORK=${BENCH_DIR:-/var/tmp/rewindfs-bench-diff}
FILES=${FILES:-100000}
RUNS=${RUNS:-3}
[ -x /usr/bin/time ] || apt-get install -y -qq time >/dev/null
# REWINDFS_BIN: measure that build instead.
if [ -n "${REWINDFS_BIN:-}" ]; then
  rw=$(readlink -f "$REWINDFS_BIN")
else
  cargo build --release --quiet
  rw=$root/target/release/rewindfs
fi
rm -rf "$WORK"; mkdir -p "$WORK/s"
python3 - "$WORK/s" "$FILES" <<'PY'
import os, sys
root, n = sys.argv[1], int(sys.argv[2])
for i in range(n):
    d = os.path.join(root, f"d{i // 1000:03d}")
    if i % 1000 == 0:
        os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, f"f{i:06d}.txt"), "w") as f:
        f.write(f"sample {i}\n")
PY
"$rw" init --repo "$WORK/r" >/dev/null
"$rw" snapshot --repo "$WORK/r" --source "$WORK/s" >/dev/null 2>&1
for i in $(seq 0 99); do echo more >> "$WORK/s/d000/f$(printf %06d "$i").txt"; done
mv "$WORK/s/d001" "$WORK/s/renamed"
"$rw" snapshot --repo "$WORK/r" --source "$WORK/s" >/dev/null 2>&1
times=()
for _ in $(seq 1 "$RUNS"); do
  t=$( { /usr/bin/time -f "%e s, %M KiB" "$rw" diff --repo "$WORK/r" 1 2 >/dev/null; } 2>&1 )
  times+=("$t")
done
summary=$("$rw" diff --repo "$WORK/r" 1 2 | tail -1)
echo "- $(nproc) cores, $(date -u +%Y-%m-%d), $FILES files; diff: $summary; runs: $(IFS=';'; echo "${times[*]}")"
rm -rf "$WORK"
