#!/usr/bin/env bash
# The first snapshot's time and the daemon's memory, cold, through a fresh
# mount, for one or more rewindfs builds (A/B, runs alternated):
#
#   scripts/bench-first-memory.sh [BIN...]       (default: target/release/rewindfs)
#   N=100000 RUNS=1 scripts/bench-first-memory.sh OLD NEW
#
# Over the tree of N files of 4 KiB that scripts/bench-scale.sh generates
# (BENCH_DIR/data-N, made with SIZES=N if missing): rewindfs init, drop
# the page cache, mount with no schedule, `rewindfs snapshot`, then the
# daemon's VmHWM (peak) and VmRSS 4 s after the snapshot returned.
set -euo pipefail
cd "$(dirname "$0")/.."
N=${N:-1000000}
RUNS=${RUNS:-2}
BENCH_DIR=${BENCH_DIR:-/var/tmp/rewindfs-bench-scale}
data=$BENCH_DIR/data-$N
[ -e "$data.ok" ] || { echo "no $data: generate it with SIZES=$N scripts/bench-scale.sh" >&2; exit 2; }
bins=("$@")
if [ ${#bins[@]} -eq 0 ]; then
  cargo build --release --quiet
  bins=(target/release/rewindfs)
fi
W=$(mktemp -d /var/tmp/rewindfs-first-memory.XXXXXX)
mnt=$W/m; repo=$W/r
cleanup() { mountpoint -q "$mnt" && fusermount3 -u "$mnt"; rm -rf "$W"; }
trap cleanup EXIT
mkdir -p "$mnt"
echo "| build | run | first snapshot, mount included (s) | VmHWM (MiB) | VmRSS after (MiB) |"
echo "| --- | --- | ---: | ---: | ---: |"
for r in $(seq 1 "$RUNS"); do
  for b in "${bins[@]}"; do
    b=$(readlink -f "$b")
    rm -rf "$repo"
    "$b" init --repo "$repo" >/dev/null
    sync; echo 3 > /proc/sys/vm/drop_caches
    t0=$(date +%s.%N)
    "$b" mount "$data" "$mnt" --repo "$repo" --every off --full-every off --snapshot-on-unmount false >/dev/null
    pid=$("$b" status -C "$mnt" --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["pid"])')
    "$b" snapshot -C "$mnt" >/dev/null
    t1=$(date +%s.%N)
    sleep 4
    read -r hwm rss < <(awk '/VmHWM/ {h=$2} /VmRSS/ {r=$2} END {printf "%.1f %.1f\n", h/1024, r/1024}' "/proc/$pid/status")
    "$b" umount "$mnt" >/dev/null
    echo "| $b | $r | $(python3 -c "print(f'{$t1-$t0:.1f}')") | $hwm | $rss |"
  done
done
