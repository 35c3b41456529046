#!/usr/bin/env bash
# A/B of the snapshot read path: two builds, each with a repository it
# made itself (so each uses its own format) of the same files, read cold
# through a fresh snapshot mount (no materialized copies) and restored,
# alternating A B B A per round, with a cold native read of the same
# files at the start of each round. Prints seconds, the share of native
# read speed, and the daemon's CPU seconds per GiB.
#
#   scripts/bench-read-ab.sh OLD_BIN NEW_BIN [FILES...]
#
# FILES default to the fp32 and random files of scripts/bench-views.sh
# (/var/tmp/rewindfs-bench-views/src/{big,noise}.bin). Needs root.
set -euo pipefail
A=$(readlink -f "$1"); B=$(readlink -f "$2"); shift 2
src=/var/tmp/rewindfs-bench-views/src
files=("$@")
[ ${#files[@]} -gt 0 ] || files=("$src/big.bin" "$src/noise.bin")
ROUNDS=${ROUNDS:-3}
W=${BENCH_DIR:-/var/tmp/rewindfs-bench-read-ab}
export OPENBLAS_NUM_THREADS=1
vb="python3 $(dirname "$0")/lib/views_bench.py"
drop() { sync; echo 3 > /proc/sys/vm/drop_caches; }
rm -rf "$W"; mkdir -p "$W/src" "$W/mnt"
for f in "${files[@]}"; do cp "$f" "$W/src/"; done
for v in A B; do
  bin=${!v}
  "$bin" init --repo "$W/repo-$v" >/dev/null
  "$bin" snapshot --repo "$W/repo-$v" --source "$W/src" >/dev/null 2>&1
done
gib=$(du -b "$W/src" | awk '{print $1 / 2^30}')
declare -A T C R
N=""
native() { drop; local out; out=$($vb read "$W"/src/*); N+="${out% *} "; }
one() {
  local v=$1 bin=${!1} repo=$W/repo-$1
  drop
  "$bin" mount-snapshot --repo "$repo" --materialize-cache 0 1 "$W/mnt" >/dev/null 2>&1 \
    || "$bin" mount-snapshot --repo "$repo" 1 "$W/mnt" >/dev/null
  local pid c0 out c1
  pid=$("$bin" status --repo "$repo" --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["pid"])')
  c0=$(awk '{print ($14+$15)/100}' "/proc/$pid/stat")
  out=$($vb read "$W"/mnt/*)
  c1=$(awk '{print ($14+$15)/100}' "/proc/$pid/stat")
  "$bin" umount "$W/mnt" >/dev/null
  T[$v]+="${out% *} "; C[$v]+="$(python3 -c "print(($c1 - $c0) / $gib)") "
  rm -rf "$W/out"; drop
  local t0 t1
  t0=$(date +%s.%N); "$bin" restore --repo "$repo" --to "$W/out" 1 >/dev/null 2>&1; t1=$(date +%s.%N)
  R[$v]+="$(python3 -c "print($t1 - $t0)") "
}
for _ in $(seq 1 "$ROUNDS"); do native; one A; one B; one B; one A; done
med() { python3 -c "import statistics,sys; print(f'{statistics.median(map(float, sys.argv[1:])):.3f}')" $1; }
echo "files: ${files[*]} ($gib GiB); $ROUNDS rounds of A B B A; medians"
share() { python3 -c "import sys; print(f'{float(sys.argv[1]) / float(sys.argv[2]):.2f}')" "$(med "$N")" "$(med "$1")"; }
echo "native cold read: $(med "$N") s"
echo "| build | cold read through a snapshot mount (s) | share of native | daemon CPU s/GiB | restore (s) |"
echo "| --- | --- | --- | --- | --- |"
echo "| A $A | $(med "${T[A]}") | $(share "${T[A]}") | $(med "${C[A]}") | $(med "${R[A]}") |"
echo "| B $B | $(med "${T[B]}") | $(share "${T[B]}") | $(med "${C[B]}") | $(med "${R[B]}") |"
rm -rf "$W"
