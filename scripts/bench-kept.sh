#!/usr/bin/env bash
# Checkpoint versions benchmark (issue 30), one run; scripts/bench-views.sh
# runs it too (KEPT=0 skips it there).
#
# On a live mount with default flags (its repository on BACKING's
# filesystem), medians of $ROUNDS rounds, the page cache dropped before
# every read:
#   first read of the NEWEST version of a checkpoint from .snapshots
#     (.snapshots/latest, never opened before: served by the daemon)
#   first read of a ROTATED-AWAY version (written, then deleted through the
#     mount before any snapshot held it: kept aside, captured, and served
#     by passthrough from the deleted file itself)
#   against a native read of the same file, in the same round;
#   for 1 GiB fp32 / bf16 / random files, and safetensors load_file and
#   safe_open of a 1 GiB checkpoint.
# Bytes the daemon wrote (/proc/PID/io write_bytes) while the rotated-away
# files were kept, captured and adopted, against what their capture added
# to the packs: the kept-aside versions' extra writes.
# And a save-heavy training loop (scripts/lib/save_loop.py: compute, a
# 64 MiB safetensors save every 5 steps, keep-last-2 rotation) on the mount
# against BACKING with nothing mounted.
#
#   scripts/bench-kept.sh                  # 1 GiB files
#   SIZE_MIB=256 ROUNDS=1 scripts/bench-kept.sh
#
# Needs root (drops the page cache, mounts, passthrough, chattr), python3
# with numpy and safetensors. Prints markdown (also written to $OUT).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
WORK=${BENCH_DIR:-/var/tmp/rewindfs-bench-kept}
OUT=${OUT:-$root/target/bench/kept.md}
SIZE_MIB=${SIZE_MIB:-1024}
ROUNDS=${ROUNDS:-3}
LOOP_STEPS=${LOOP_STEPS:-100}
python3 -c 'import numpy, safetensors' 2>/dev/null || pip install -q numpy safetensors
if [ -n "${REWINDFS_BIN:-}" ]; then
  rw=$(readlink -f "$REWINDFS_BIN")
else
  cargo build --release --quiet
  rw=$root/target/release/rewindfs
fi
export OPENBLAS_NUM_THREADS=1
vb="python3 scripts/lib/views_bench.py"
drop() { sync; echo 3 > /proc/sys/vm/drop_caches; }
mkdir -p "$WORK" "$(dirname "$OUT")"
# SRC: a dataset made by views_bench.py gen (bench-views.sh passes its own).
if [ -n "${SRC:-}" ]; then
  src=$SRC
else
  src=$WORK/src
  if [ "$(cat "$WORK/.dataset" 2>/dev/null)" != "v3 $SIZE_MIB" ]; then
    rm -rf "$src"; mkdir -p "$src"
    $vb gen "$src" "$SIZE_MIB"
    echo "v3 $SIZE_MIB" > "$WORK/.dataset"
  fi
fi
b=$WORK/backing; m=$WORK/mnt-live; repo=$WORK/repo
cleanup() {
  "$rw" umount "$m" >/dev/null 2>&1 || umount -l "$m" 2>/dev/null || true
}
trap cleanup EXIT
cleanup
# name in the mount -> source file
declare -A SRCF=([fp32.pt]=big.bin [bf16.pt]=bf16.bin [random.pt]=noise.bin [model.safetensors]=model.safetensors)
reads=(fp32.pt bf16.pt random.pt)
pid=
start() {
  cleanup
  # (Kept checkpoints adopted by a killed daemon stay immutable.)
  chattr -R -i "$repo" 2>/dev/null || true
  rm -rf "$b" "$repo"; mkdir -p "$b" "$m"
  "$rw" mount "$b" "$m" --repo "$repo" --every off --full-every off >/dev/null
  "$rw" snapshot --repo "$repo" --label base >/dev/null
  pid=$("$rw" status --repo "$repo" --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["pid"])')
}
settled() {
  "$rw" status --repo "$repo" --json | python3 -c '
import json, sys
f = json.load(sys.stdin)["flusher"]
sys.exit(0 if f["kept_pending"] == 0 and f["pending_on_close"] is None and f["state"] == "idle" else 1)'
}
wait_settled() {
  for _ in $(seq 1 1200); do settled && return 0; sleep 0.1; done
  echo "the flusher did not settle" >&2; return 1
}
wbytes() { awk '/^write_bytes/ {print $2}' "/proc/$pid/io"; }
packs() { du -sb "$repo/packs" | cut -f1; }
# The snapshot holding rot/NAME (a kept one).
kept_path() {
  local d
  for d in "$m"/.snapshots/*/; do
    [ -e "$d/rot/$1" ] && { echo "$d/rot/$1"; return 0; }
  done
  echo "rot/$1 is in no snapshot" >&2; return 1
}
# modcopy SRC DST: copy with 4 KiB in the middle inverted (a safetensors
# file stays valid: its header is at the start).
modcopy() {
  python3 - "$1" "$2" <<'PY'
import sys
src, dst = sys.argv[1], sys.argv[2]
with open(src, "rb") as f:
    data = f.read()
mid = len(data) // 2
b = bytearray(data[mid:mid + 4096])
for i in range(len(b)):
    b[i] ^= 0xFF
with open(dst, "wb") as o:
    o.write(data[:mid]); o.write(b); o.write(data[mid + 4096:])
PY
}
host_warm() {
  local x i
  for i in 1 2; do
    drop
    for x in "$@"; do if [ -f "$x" ]; then cat "$x" > /dev/null; fi; done
  done
}
declare -A T C
rec() { T[$1]+="$2 "; C[$1]+="${3:-0} "; }
read1() { local o; o=$($vb read "$1"); echo "$o"; }
for round in $(seq 1 "$ROUNDS"); do
  start
  mkdir -p "$m/ckpt" "$m/rot"
  # The newest versions: written through the mount, each taken by its
  # on-close snapshot.
  for n in "${!SRCF[@]}"; do cp "${src}/${SRCF[$n]}" "$m/ckpt/$n"; done
  wait_settled
  # Rotated away before any snapshot held them: versions that differ
  # from the newest by 4 KiB in the middle (a version whose content equals
  # another's shares its materialized copy, and would not be measured).
  w0=$(wbytes); p0=$(packs)
  for n in "${!SRCF[@]}"; do modcopy "${src}/${SRCF[$n]}" "$m/rot/$n" && rm "$m/rot/$n"; done
  w1=$(wbytes); wait_settled; w2=$(wbytes); p1=$(packs)
  # What the reads below read from disk (the sources, the packs, the kept
  # files in the cache) read twice first, so that the host's cache holds
  # each alike (see bench-views.sh: a file just written reads slower).
  host_warm "$src"/big.bin "$src"/bf16.bin "$src"/noise.bin "$src"/model.safetensors \
    "$repo"/packs/* "$repo"/cache/materialized/*.data
  rec "daemon writes" "$((w2 - w0))"; rec "pack bytes" "$((p1 - p0))"
  rec "kept files" "$("$rw" status --repo "$repo" --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["materialized"]["kept_files"])')"
  for n in "${reads[@]}"; do
    kp=$(kept_path "$n")
    drop; o=$(read1 "$src/${SRCF[$n]}"); rec "native $n" ${o% *} ${o#* }
    drop; c0=$(awk '{print ($14+$15)/100}' /proc/$pid/stat); o=$(read1 "$m/.snapshots/latest/ckpt/$n")
    rec "newest $n" ${o% *} "$(python3 -c "print(${o#* } + $(awk '{print ($14+$15)/100}' /proc/$pid/stat) - $c0)")"
    drop; c0=$(awk '{print ($14+$15)/100}' /proc/$pid/stat); o=$(read1 "$kp")
    rec "kept $n" ${o% *} "$(python3 -c "print(${o#* } + $(awk '{print ($14+$15)/100}' /proc/$pid/stat) - $c0)")"
  done
  kp=$(kept_path model.safetensors)
  for how in safetensors safe_open; do
    drop; rec "native $how" "$($vb $how "$src/model.safetensors")"
    drop; rec "newest $how" "$($vb $how "$m/.snapshots/latest/ckpt/model.safetensors")"
    drop; rec "kept $how" "$($vb $how "$kp")"
  done
  cleanup
  # The save-heavy loop: BACKING alone, then through the mount (default
  # flags: each checkpoint's close takes a snapshot, rotation keeps).
  rm -rf "$b/loop"
  o=$(python3 scripts/lib/save_loop.py "$b/loop" "$LOOP_STEPS" 5 64); rec "loop native" ${o% *} ${o#* }
  start
  o=$(python3 scripts/lib/save_loop.py "$m/loop" "$LOOP_STEPS" 5 64); rec "loop mount" ${o% *} ${o#* }
  wait_settled
  rec "loop snapshots" "$("$rw" snapshots --repo "$repo" --json | python3 -c 'import json,sys; print(len(json.load(sys.stdin)))')"
  cleanup
done

med() { python3 -c "import statistics,sys; print(f'{statistics.median(map(float, sys.argv[1:])):.3f}')" $1; }
share() { python3 -c "print(f'{$1/$2:.2f}')"; }
gib() { python3 -c "import os; print(os.path.getsize('$1') / 2**30)"; }
{
  echo "$(nproc) cores, $(uname -r), $(date -u +%Y-%m-%d). Files of ${SIZE_MIB} MiB; medians of $ROUNDS rounds; page cache dropped before every read. 'newest': .snapshots/latest, first open (served by the daemon); 'kept': a version deleted through the mount before any snapshot held it, first open (passthrough from the deleted file itself)."
  echo
  echo "| file | native (s) | newest (s) | share of native | kept (s) | share of native | CPU s/GiB native / newest / kept |"
  echo "| --- | --- | --- | --- | --- | --- | --- |"
  for n in "${reads[@]}"; do
    nt=$(med "${T[native $n]}"); ne=$(med "${T[newest $n]}"); ke=$(med "${T[kept $n]}")
    g=$(gib "$src/${SRCF[$n]}")
    cpg() { python3 -c "print(f'{$(med "$1") / $g:.2f}')"; }
    echo "| $n | $nt | $ne | $(share "$nt" "$ne") | $ke | $(share "$nt" "$ke") | $(cpg "${C[native $n]}") / $(cpg "${C[newest $n]}") / $(cpg "${C[kept $n]}") |"
  done
  echo
  echo "| ${SIZE_MIB} MiB safetensors checkpoint | native (s) | newest (s) | x native time | kept (s) | x native time |"
  echo "| --- | --- | --- | --- | --- | --- |"
  for how in safetensors safe_open; do
    nt=$(med "${T[native $how]}"); ne=$(med "${T[newest $how]}"); ke=$(med "${T[kept $how]}")
    label=$([ "$how" = safetensors ] && echo "safetensors.numpy.load_file" || echo "safe_open + every tensor")
    echo "| $label | $nt | $ne | $(share "$ne" "$nt") | $ke | $(share "$ke" "$nt") |"
  done
  echo
  total=$(python3 -c "import os; print(sum(os.path.getsize('$src/'+f) for f in ['big.bin','bf16.bin','noise.bin','model.safetensors']))")
  echo "| kept aside: 4 files, $((total >> 20)) MiB, written then deleted at once | median |"
  echo "| --- | --- |"
  echo "| bytes the daemon wrote while keeping, capturing and adopting them (MiB) | $(python3 -c "print(f'{$(med "${T[daemon writes]}") / 2**20:.1f}')") |"
  echo "| of which pack bytes their capture added (MiB) | $(python3 -c "print(f'{$(med "${T[pack bytes]}") / 2**20:.1f}')") |"
  echo "| versions served from the kept files | $(med "${T[kept files]}") |"
  echo
  ln_=$(med "${T[loop native]}"); lm=$(med "${T[loop mount]}")
  echo "| save-heavy loop ($LOOP_STEPS steps, 64 MiB save every 5, keep-last-2) | native (s) | mount (s) | x native | snapshots taken |"
  echo "| --- | --- | --- | --- | --- |"
  echo "| wall time | $ln_ | $lm | $(share "$lm" "$ln_") | $(med "${T[loop snapshots]}") |"
} | tee "$OUT"
