#!/usr/bin/env bash
# Flusher benchmark: how long the snapshot cut holds writers with 100,000
# files in the dataset and 100 dirty files, and 4 KiB write latency idle vs
# during a full snapshot's capture. Prints a markdown summary (also written
# to $OUT, default target/bench/flusher.md).
#
#   scripts/bench-flusher.sh                     # 100k files, 50 rounds
#   FILES=20000 ROUNDS=20 scripts/bench-flusher.sh   # quick
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
WORK=${BENCH_DIR:-/var/tmp/rewindfs-bench-flusher}
OUT=${OUT:-$root/target/bench/flusher.md}
FILES=${FILES:-100000}
ROUNDS=${ROUNDS:-50}
DIRTY=${DIRTY:-100}
BIG_MIB=${BIG_MIB:-1024}
# REWINDFS_BIN: measure that build instead (scripts/bench-ab.sh).
if [ -n "${REWINDFS_BIN:-}" ]; then
  rw=$(readlink -f "$REWINDFS_BIN")
else
  cargo build --release --quiet
  rw=$root/target/release/rewindfs
fi
rm -rf "$WORK"; mkdir -p "$WORK/b" "$WORK/m" "$(dirname "$OUT")"
python3 - "$WORK/b" "$FILES" <<'PY'
import os, sys
root, n = sys.argv[1], int(sys.argv[2])
for i in range(n):
    d = os.path.join(root, f"d{i // 1000:03d}")
    if i % 1000 == 0:
        os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, f"f{i:06d}.txt"), "w") as f:
        f.write(f"sample {i}\n" * 20)
PY
head -c $((BIG_MIB << 20)) /dev/urandom > "$WORK/b/big.bin"
t0=$(date +%s.%N)
"$rw" mount "$WORK/b" "$WORK/m" --repo "$WORK/r" --every off --full-every off --snapshot-on-unmount false >/dev/null
"$rw" snapshot --repo "$WORK/r" >/dev/null   # the first snapshot (full)
t1=$(date +%s.%N)
first_cut=$("$rw" status --repo "$WORK/r" --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["flusher"]["last_cut_ms"])')
cuts=$(python3 scripts/lib/flusher_bench.py cuts "$rw" "$WORK/m" "$WORK/r" "$ROUNDS" "$DIRTY")
lat=$(python3 scripts/lib/flusher_bench.py latency "$rw" "$WORK/m" "$WORK/r" big.bin 20000)
"$rw" umount "$WORK/m" >/dev/null
{
  echo "$(nproc) cores, $(uname -r), $(date -u +%Y-%m-%d). Dataset: $FILES small files in $((FILES / 1000)) directories + a ${BIG_MIB} MiB file."
  echo
  echo "- first snapshot (full; the tree is listed before its cut, outside the writer gate): $(python3 -c "print(f'{$t1-$t0:.1f}')") s including the mount, cut held writers ${first_cut} ms"
  echo "- $ROUNDS incremental snapshots, $DIRTY dirty files each: $cuts"
  echo "- 4 KiB writes: $lat"
} | tee "$OUT"
