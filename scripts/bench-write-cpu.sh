#!/usr/bin/env bash
# Daemon CPU per GiB of block-tracked writes, two rewindfs builds
# alternated (A B B A ...), on one fresh loop-mounted ext4 per mount:
# SIZE_MIB MiB of 1 MiB writes in place over an existing file, fsync, with
# the daemon's user+system CPU read from /proc/PID/stat before and after.
# The first write of each mount also runs (it warms the page cache the
# hypervisor hands out lazily on this machine) but is not counted.
#
#   scripts/bench-write-cpu.sh OLD_BIN NEW_BIN [ROUNDS]
#
# Needs root.
set -euo pipefail
cd "$(dirname "$0")/.."
a=$(readlink -f "$1")
b=$(readlink -f "$2")
ROUNDS=${3:-5}
SIZE_MIB=${SIZE_MIB:-1024}
WORK=${BENCH_DIR:-/var/tmp/rewindfs-bench-write-cpu}
mkdir -p "$WORK/fs" "$WORK/m"
img=$WORK/fs.img
cleanup() { umount "$WORK/m" 2>/dev/null || true; umount "$WORK/fs" 2>/dev/null || true; rm -f "$img"; }
trap cleanup EXIT
one() { # bin -> "wall cpu_s_per_gib"
  local bin=$1
  umount "$WORK/fs" 2>/dev/null || true
  rm -f "$img"; truncate -s $((SIZE_MIB * 3 + 1024))M "$img"; mkfs.ext4 -q -F "$img"; mount -o loop "$img" "$WORK/fs"
  mkdir -p "$WORK/fs/b"
  "$bin" mount "$WORK/fs/b" "$WORK/m" --repo "$WORK/fs/r" --every off --full-every off >/dev/null
  local pid
  pid=$("$bin" status --repo "$WORK/fs/r" --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["pid"])')
  dd if=/dev/zero of="$WORK/m/f" bs=1M count="$SIZE_MIB" conv=fsync status=none
  dd if=/dev/zero of="$WORK/m/f" bs=1M count="$SIZE_MIB" conv=notrunc,fsync status=none
  local c0 c1 t0 t1
  c0=$(awk '{print $14+$15}' "/proc/$pid/stat"); t0=$(date +%s.%N)
  dd if=/dev/zero of="$WORK/m/f" bs=1M count="$SIZE_MIB" conv=notrunc,fsync status=none
  t1=$(date +%s.%N); c1=$(awk '{print $14+$15}' "/proc/$pid/stat")
  "$bin" umount "$WORK/m" >/dev/null
  python3 -c "print(f'{$t1-$t0:.2f} {($c1-$c0)/100/($SIZE_MIB/1024):.2f}')"
}
ra=(); rb=()
for r in $(seq 1 "$ROUNDS"); do
  if [ $((r % 2)) -eq 1 ]; then ra+=("$(one "$a")"); rb+=("$(one "$b")"); else rb+=("$(one "$b")"); ra+=("$(one "$a")"); fi
  echo "round $r: A ${ra[-1]}  B ${rb[-1]}" >&2
done
python3 - "${ra[*]}" "${rb[*]}" "$ROUNDS" "$SIZE_MIB" <<'PY'
import statistics, sys
def parse(s):
    v = s.split()
    return [float(x) for x in v[0::2]], [float(x) for x in v[1::2]]
(wa, ca), (wb, cb) = parse(sys.argv[1]), parse(sys.argv[2])
print(f"{sys.argv[4]} MiB in place, 1 MiB writes + fsync, medians of {sys.argv[3]} rounds [min-max]")
print()
print("| build | seconds | daemon CPU s/GiB |")
print("| --- | --- | --- |")
for n, w, c in (("A", wa, ca), ("B", wb, cb)):
    print(f"| {n} | {statistics.median(w):.2f} [{min(w):.2f}-{max(w):.2f}] | {statistics.median(c):.2f} [{min(c):.2f}-{max(c):.2f}] |")
PY
