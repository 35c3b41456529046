#!/usr/bin/env bash
# Snapshot-view benchmark, one run: reading snapshot files through a
# rewindfs snapshot mount against the native files, borg mount and restic
# mount of the same data. Medians of 3 rounds, native and rewindfs
# alternating; the page cache is dropped before every cold read.
#
# For rewindfs each file is measured in the states a user meets:
#   first   the first open of a fresh mount (served by the daemon: chunks
#           decoded and verified), page cache dropped
#   again   a second open (the FUSE page cache; it also triggers the copy
#           into the materialization cache)
#   copy    once copied: page cache dropped, read by kernel passthrough
#           from the verified copy on disk
#   copy+w  the same, warm
# Files: 1 GiB fp32 tensors, 1 GiB random bytes, 1 GiB bf16 tensors;
# safetensors load_file and safe_open of a 1 GiB checkpoint; 4 and 8
# parallel readers of shards. CPU seconds per GiB: the reader's plus the
# daemon's. Prints markdown (also written to $OUT).
#
# On a virtual disk the host keeps recently read data in its own cache,
# which the guest's drop_caches does not touch: a file read a few times
# reads from "disk" up to 3x faster than one just written. So every file
# is read twice (the native files and each copy, directly) before its
# first cold measurement (runs before 2026-12-01 14:10 read them twice
# without dropping the guest's cache in between, which left fresh copies
# slower than their native twins).
#
#   scripts/bench-views.sh                 # 1 GiB files
#   SIZE_MIB=256 scripts/bench-views.sh    # quick
#
# Then (EPOCH=1, the default; EPOCH=0 skips it) DataLoader-style epochs
# over a dataset version: scripts/bench-epoch.sh with TARGETS="native
# view snapshot" (the live mount's .snapshots/latest, mount-snapshot),
# its table appended to $OUT; and (KEPT=1, the default) the checkpoint
# versions benchmark, scripts/bench-kept.sh, on the same dataset.
#
# Needs root (drops the page cache, mounts, passthrough), restic,
# borgbackup, fuse3, python3 with numpy and safetensors (installed when
# missing).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
WORK=${BENCH_DIR:-/var/tmp/rewindfs-bench-views}
OUT=${OUT:-$root/target/bench/views.md}
SIZE_MIB=${SIZE_MIB:-1024}
CACHE=${CACHE:-256M}
ROUNDS=${ROUNDS:-3}
need=()
command -v restic >/dev/null || need+=(restic)
command -v borg >/dev/null || need+=(borgbackup)
[ ${#need[@]} -eq 0 ] || apt-get install -y -qq "${need[@]}" >/dev/null
python3 -c 'import numpy, safetensors' 2>/dev/null || pip install -q numpy safetensors
# REWINDFS_BIN: measure that build instead (scripts/bench-ab.sh).
if [ -n "${REWINDFS_BIN:-}" ]; then
  rw=$(readlink -f "$REWINDFS_BIN")
else
  cargo build --release --quiet
  rw=$root/target/release/rewindfs
fi
# numpy (imported by the helper) would otherwise start BLAS threads that
# spin on the 2 cores the daemon needs.
export OPENBLAS_NUM_THREADS=1
vb="python3 scripts/lib/views_bench.py"
drop() { sync; echo 3 > /proc/sys/vm/drop_caches; }
mkdir -p "$WORK" "$(dirname "$OUT")"
src=$WORK/src
if [ "$(cat "$WORK/.dataset" 2>/dev/null)" != "v3 $SIZE_MIB" ]; then
  rm -rf "$src"; mkdir -p "$src"
  $vb gen "$src" "$SIZE_MIB"
  echo "v3 $SIZE_MIB" > "$WORK/.dataset"
fi
# Read from the disk twice (the guest's cache dropped before each read):
# the host's cache then holds the file as it holds the others.
host_warm() {
  local x i
  for i in 1 2; do
    drop
    for x in "$@"; do cat "$x" > /dev/null; done
  done
}
host_warm "$src"/*.bin "$src/model.safetensors"
cleanup() {
  for m in "$WORK"/mnt-*; do
    [ -d "$m" ] || continue
    "$rw" umount "$m" >/dev/null 2>&1 || fusermount3 -u "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || true
  done
}
trap cleanup EXIT
cleanup

files=(big.bin noise.bin bf16.bin)
shards4=(shard0.bin shard1.bin shard2.bin shard3.bin)
shards8=("${shards4[@]}" shard4.bin shard5.bin shard6.bin shard7.bin)

# Repositories with the same data.
repo=$WORK/repo-rewindfs
rm -rf "$repo" "$WORK/repo-borg" "$WORK/repo-restic"
"$rw" init --repo "$repo" >/dev/null
"$rw" snapshot --repo "$repo" --source "$src" >/dev/null 2>&1
export RESTIC_PASSWORD=bench BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK=yes
borg init -e none "$WORK/repo-borg" >/dev/null 2>&1
(cd "$src" && borg create "$WORK/repo-borg::a" big.bin) >/dev/null 2>&1
restic init -q -r "$WORK/repo-restic" >/dev/null
(cd "$src" && restic -q -r "$WORK/repo-restic" backup big.bin) >/dev/null

mnt=$WORK/mnt-rw; mkdir -p "$mnt"
pid=
# A fresh snapshot mount with an empty materialization cache.
mount_fresh() {
  "$rw" umount "$mnt" >/dev/null 2>&1 || true
  rm -rf "$repo/cache"
  "$rw" mount-snapshot --repo "$repo" --chunk-cache "$CACHE" --materialize-cache 8G 1 "$mnt" >/dev/null
  pid=$("$rw" status --repo "$repo" --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["pid"])')
}
umount_rw() { "$rw" umount "$mnt" >/dev/null; }
dcpu() { awk '{print ($14+$15)/100}' "/proc/$pid/stat"; }
promoted() { "$rw" status --repo "$repo" --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["materialized"]["promoted"])'; }
wait_promoted() {
  for _ in $(seq 1 600); do
    if [ "$(promoted)" -ge "$1" ]; then host_warm "$repo"/cache/materialized/*.data; return 0; fi
    sleep 0.1
  done
  echo "the copies were not made" >&2; return 1
}
# read LABEL DAEMON(0/1) PATHS...: record "seconds cpu" under LABEL.
declare -A T C
rec() { T[$1]+="$2 "; C[$1]+="$3 "; }
timed_read() {
  local label=$1 daemon=$2; shift 2
  local before=0 out secs cpu
  [ "$daemon" = 1 ] && before=$(dcpu)
  out=$($vb read "$@"); secs=${out% *}; cpu=${out#* }
  if [ "$daemon" = 1 ]; then cpu=$(python3 -c "print($cpu + $(dcpu) - $before)"); fi
  rec "$label" "$secs" "$cpu"
}

for round in $(seq 1 "$ROUNDS"); do
  for f in "${files[@]}"; do
    drop; timed_read "native cold $f" 0 "$src/$f"
    timed_read "native warm $f" 0 "$src/$f"
    drop; mount_fresh; timed_read "first $f" 1 "$mnt/$f"
    timed_read "again $f" 1 "$mnt/$f"
    wait_promoted 1
    drop; timed_read "copy $f" 1 "$mnt/$f"
    timed_read "copy+w $f" 1 "$mnt/$f"
  done
  drop; timed_read "native cold par4" 0 "${shards4[@]/#/$src/}"
  drop; mount_fresh; timed_read "first par4" 1 "${shards4[@]/#/$mnt/}"
  drop; timed_read "native cold par8" 0 "${shards8[@]/#/$src/}"
  drop; mount_fresh; timed_read "first par8" 1 "${shards8[@]/#/$mnt/}"
  timed_read "again par8" 1 "${shards8[@]/#/$mnt/}"
  wait_promoted 8
  drop; timed_read "copy par4" 1 "${shards4[@]/#/$mnt/}"
  drop; timed_read "copy par8" 1 "${shards8[@]/#/$mnt/}"
  for how in safetensors safe_open; do
    drop; T["native $how"]+="$($vb $how "$src/model.safetensors") "
    drop; mount_fresh; T["first $how"]+="$($vb $how "$mnt/model.safetensors") "
    T["again $how"]+="$($vb $how "$mnt/model.safetensors") "
    wait_promoted 1
    drop; T["copy $how"]+="$($vb $how "$mnt/model.safetensors") "
  done
done
rss=$($vb rss "$pid")
umount_rw

# borg mount and restic mount of the same file, once.
bm=$WORK/mnt-borg; mkdir -p "$bm"
drop; borg mount "$WORK/repo-borg::a" "$bm"
borg_cold=$($vb read "$bm/big.bin"); borg_cold=${borg_cold% *}
borg umount "$bm"
rm_=$WORK/mnt-restic; mkdir -p "$rm_"
restic -q -r "$WORK/repo-restic" mount "$rm_" >/dev/null 2>&1 &
rpid=$!
for _ in $(seq 1 100); do [ -d "$rm_/snapshots/latest" ] && break; sleep 0.2; done
drop; restic_cold=$($vb read "$rm_/snapshots/latest/big.bin"); restic_cold=${restic_cold% *}
kill "$rpid"; wait "$rpid" 2>/dev/null || true
fusermount3 -u "$rm_" 2>/dev/null || true

drop; "$rw" mount-snapshot --repo "$repo" --materialize-cache 0 1 "$mnt" >/dev/null
lsl=$($vb lsl "$mnt/many"); umount_rw

# A 20-deep incremental chain.
crepo=$WORK/repo-chain; rm -rf "$crepo" "$WORK/chain"; mkdir -p "$WORK/chain"
"$rw" init --repo "$crepo" >/dev/null
cp "$src"/shard0.bin "$WORK/chain/f.bin"
"$rw" snapshot --repo "$crepo" --source "$WORK/chain" >/dev/null 2>&1
for i in $(seq 1 20); do
  printf 'edit %d' "$i" | dd of="$WORK/chain/f.bin" bs=1 seek=$((i * 1048576)) conv=notrunc status=none
  "$rw" snapshot --repo "$crepo" --source "$WORK/chain" >/dev/null 2>&1
done
drop; "$rw" mount-snapshot --repo "$crepo" latest "$mnt" >/dev/null
ttfb=$($vb ttfb "$mnt/f.bin")
"$rw" umount "$mnt" >/dev/null

med() { python3 -c "import statistics,sys; print(f'{statistics.median(map(float, sys.argv[1:])):.3f}')" $1; }
ratio() { python3 -c "print(f'{$1/$2:.2f}')"; }   # speed as a share of native: native time / our time
# CPU seconds per GiB: median CPU over the GiB the files hold.
gib() { python3 -c "import os,sys; print(sum(os.path.getsize(p) for p in sys.argv[1:]) / 2**30)" "$@"; }
cpg() { python3 -c "print(f'{$(med "$1") / $2:.2f}')"; }
{
  echo "$(nproc) cores, $(uname -r), $(date -u +%Y-%m-%d). Files of ${SIZE_MIB} MiB; medians of $ROUNDS rounds; chunk cache $CACHE; page cache dropped before every cold read; 'first' is the first open of a fresh mount, 'copy' a read by passthrough from the materialized copy (cold, then warm)."
  echo
  echo "| file | native cold (s) | first, cold (s) | share of native | again, warm (s) | native warm (s) | copy, cold (s) | share of native | copy, warm (s) | share of native warm | CPU s/GiB native / first / copy |"
  echo "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"
  for f in "${files[@]}"; do
    nc=$(med "${T[native cold $f]}"); nw=$(med "${T[native warm $f]}")
    fi_=$(med "${T[first $f]}"); ag=$(med "${T[again $f]}")
    cc=$(med "${T[copy $f]}"); cw=$(med "${T[copy+w $f]}")
    g=$(gib "$src/$f")
    echo "| $f | $nc | $fi_ | $(ratio "$nc" "$fi_") | $ag | $nw | $cc | $(ratio "$nc" "$cc") | $cw | $(ratio "$nw" "$cw") | $(cpg "${C[native cold $f]}" "$g") / $(cpg "${C[first $f]}" "$g") / $(cpg "${C[copy $f]}" "$g") |"
  done
  echo
  echo "| parallel readers, cold | native (s) | first (s) | share of native | copy (s) | share of native | CPU s/GiB native / first / copy |"
  echo "| --- | --- | --- | --- | --- | --- | --- |"
  for p in 4 8; do
    n=$(med "${T[native cold par$p]}"); fi_=$(med "${T[first par$p]}"); cc=$(med "${T[copy par$p]}")
    if [ "$p" = 4 ]; then g=$(gib "${shards4[@]/#/$src/}"); else g=$(gib "${shards8[@]/#/$src/}"); fi
    echo "| $p x $((SIZE_MIB / 8)) MiB shards | $n | $fi_ | $(ratio "$n" "$fi_") | $cc | $(ratio "$n" "$cc") | $(cpg "${C[native cold par$p]}" "$g") / $(cpg "${C[first par$p]}" "$g") / $(cpg "${C[copy par$p]}" "$g") |"
  done
  echo
  echo "| ${SIZE_MIB} MiB safetensors checkpoint, cold | native (s) | first (s) | x native time | again, warm (s) | copy (s) | x native time |"
  echo "| --- | --- | --- | --- | --- | --- | --- |"
  for how in safetensors safe_open; do
    n=$(med "${T[native $how]}"); fi_=$(med "${T[first $how]}"); ag=$(med "${T[again $how]}"); cc=$(med "${T[copy $how]}")
    label=$([ "$how" = safetensors ] && echo "safetensors.numpy.load_file" || echo "safe_open + every tensor")
    echo "| $label | $n | $fi_ | $(ratio "$fi_" "$n") | $ag | $cc | $(ratio "$cc" "$n") |"
  done
  echo
  echo "| other | value |"
  echo "| --- | --- |"
  echo "| big.bin cold: borg mount / restic mount (s, one run) | $borg_cold / $restic_cold |"
  echo "| ls -l of 10,000 entries, cold mount (s) | $lsl |"
  echo "| first byte, 20-deep incremental chain, cold mount (s) | $ttfb |"
  echo "| view daemon RSS after the reads (MiB) | $rss |"
} | tee "$OUT"

# DataLoader-style epochs over a dataset version: the live mount's
# .snapshots/latest and a mount-snapshot of the same version, against
# native (EPOCH=0 skips it).
if [ "${EPOCH:-1}" = 1 ]; then
  OUT=$WORK/epoch.md REWINDFS_BIN=$rw BENCH_DIR=$WORK/epoch TARGETS="native view snapshot" scripts/bench-epoch.sh
  { echo; echo "DataLoader-style epochs over a snapshot (scripts/bench-epoch.sh):"; echo; cat "$WORK/epoch.md"; } >> "$OUT"
fi

# Checkpoint versions (issue 30): first reads of the newest and of a
# rotated-away checkpoint from a live mount's .snapshots, the kept
# versions' extra writes, a save-heavy loop (scripts/bench-kept.sh; KEPT=0
# skips it). Same dataset.
if [ "${KEPT:-1}" = 1 ]; then
  OUT=$WORK/kept.md REWINDFS_BIN=$rw BENCH_DIR=$WORK/kept SRC=$src SIZE_MIB=$SIZE_MIB ROUNDS=$ROUNDS scripts/bench-kept.sh
  { echo; echo "Checkpoint versions on a live mount (scripts/bench-kept.sh):"; echo; cat "$WORK/kept.md"; } >> "$OUT"
fi
