#!/usr/bin/env bash
# Metadata A/B of two rewindfs builds: the same create+stat+unlink and
# stat workloads (scripts/lib/fsops.py) through a live mount of each
# binary, alternating A and B for ROUNDS rounds, plus native ext4 in the
# same rounds. Prints every round and the medians, so that a change's cost
# is measured against the build before it on the same (noisy) machine.
#
#   scripts/bench-meta-ab.sh OLD_BIN NEW_BIN [ROUNDS] [FILES]
#
# Needs root (mounts).
set -euo pipefail
cd "$(dirname "$0")/.."
a=$(readlink -f "$1")
b=$(readlink -f "$2")
rounds=${3:-5}
files=${4:-5000}
work=${BENCH_DIR:-/var/tmp/rewindfs-bench-ab}
rm -rf "$work"
mkdir -p "$work"
chmod 755 "$work"

one() { # label binary|native round
  local label=$1 bin=$2 r=$3 d="$work/$1-$3"
  mkdir -p "$d/data" "$d/mnt"
  local target=$d/data
  if [ "$bin" != native ]; then
    "$bin" mount "$d/data" "$d/mnt" --repo "$d/repo" --every off --snapshot-on-unmount false >/dev/null
    target=$d/mnt
  fi
  local meta st
  meta=$(python3 scripts/lib/fsops.py meta "$target" "$files")
  st=$(python3 scripts/lib/fsops.py stat "$target" "$files")
  if [ "$bin" != native ]; then
    "$bin" umount "$d/mnt" >/dev/null
  fi
  rm -rf "$d"
  echo "$label $meta $st"
}

results=$work/results.txt
: >"$results"
for r in $(seq 1 "$rounds"); do
  for t in "native native" "A $a" "B $b"; do
    set -- $t
    line=$(one "$1" "$2" "$r")
    echo "round $r: $line"
    echo "$line" >>"$results"
  done
done
python3 - "$results" "$files" <<'EOF'
import statistics, sys
rows = {}
for line in open(sys.argv[1]):
    label, meta, st = line.split()
    rows.setdefault(label, []).append((float(meta), float(st)))
n = rows["native"]
med = lambda v: statistics.median(v)
nm, ns = med([x[0] for x in n]), med([x[1] for x in n])
print(f"\nmedians over {len(n)} rounds, {sys.argv[2]} files (seconds; ratio to native):")
print("| target | create+stat+unlink | stat x3 |")
print("| --- | --- | --- |")
for label in ("native", "A", "B"):
    m = med([x[0] for x in rows[label]]); s = med([x[1] for x in rows[label]])
    print(f"| {label} | {m:.2f} ({m/nm:.1f}x) | {s:.2f} ({s/ns:.1f}x) |")
EOF
