#!/usr/bin/env bash
# Snapshot-view benchmark, one run: reading a snapshot through rewindfs vs
# the native file and vs restic mount / borg mount of the same data; 4
# parallel readers; ls -l of 10,000 entries; time to first byte at the end
# of a 20-deep incremental chain; safetensors load; daemon RSS.
# Prints markdown (also written to $OUT, default target/bench/views.md).
#
#   scripts/bench-views.sh                 # 1 GiB
#   SIZE_MIB=256 scripts/bench-views.sh    # quick
#
# Needs root (drops the page cache, mounts), restic, borgbackup, fuse3,
# python3 with numpy and safetensors (installed when missing).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
WORK=${BENCH_DIR:-/var/tmp/rewindfs-bench-views}
OUT=${OUT:-$root/target/bench/views.md}
SIZE_MIB=${SIZE_MIB:-1024}
CACHE=${CACHE:-256M}
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
if [ "$(cat "$WORK/.dataset" 2>/dev/null)" != "$SIZE_MIB" ]; then
  rm -rf "$src"; mkdir -p "$src"
  $vb gen "$src" "$SIZE_MIB"
  echo "$SIZE_MIB" > "$WORK/.dataset"
fi
cleanup() {
  for m in "$WORK"/mnt-*; do
    [ -d "$m" ] || continue
    "$rw" umount "$m" >/dev/null 2>&1 || fusermount3 -u "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || true
  done
}
trap cleanup EXIT
cleanup

# Repositories with the same data.
repo=$WORK/repo-rewindfs
rm -rf "$repo" "$WORK/repo-borg" "$WORK/repo-restic"
"$rw" init --repo "$repo" >/dev/null
"$rw" snapshot --repo "$repo" --source "$src" >/dev/null 2>&1
export RESTIC_PASSWORD=bench BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK=yes
borg init -e none "$WORK/repo-borg" >/dev/null 2>&1
(cd "$src" && borg create "$WORK/repo-borg::a" big.bin part0.bin part1.bin part2.bin part3.bin) >/dev/null 2>&1
restic init -q -r "$WORK/repo-restic" >/dev/null
(cd "$src" && restic -q -r "$WORK/repo-restic" backup big.bin part0.bin part1.bin part2.bin part3.bin) >/dev/null

mnt=$WORK/mnt-rw; mkdir -p "$mnt"
mount_rw() { "$rw" mount-snapshot --repo "$repo" --chunk-cache "$CACHE" 1 "$mnt" >/dev/null; }
umount_rw() { "$rw" umount "$mnt" >/dev/null; }

drop; native_cold=$($vb read "$src/big.bin"); native_warm=$($vb read "$src/big.bin")
drop; mount_rw; snap_cold=$($vb read "$mnt/big.bin"); snap_warm=$($vb read "$mnt/big.bin")
pid=$("$rw" status --repo "$repo" --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["pid"])')
rss=$($vb rss "$pid")
umount_rw
drop; native_par=$($vb read "$src"/part{0,1,2,3}.bin)
drop; mount_rw; snap_par=$($vb read "$mnt"/part{0,1,2,3}.bin); umount_rw
drop; mount_rw; lsl=$($vb lsl "$mnt/many"); umount_rw
drop; st_native=$($vb safetensors "$src/model.safetensors")
drop; mount_rw; st_snap=$($vb safetensors "$mnt/model.safetensors"); umount_rw

# borg mount and restic mount of the same file.
bm=$WORK/mnt-borg; mkdir -p "$bm"
drop; borg mount "$WORK/repo-borg::a" "$bm"
borg_cold=$($vb read "$bm/big.bin")
borg umount "$bm"
rm_=$WORK/mnt-restic; mkdir -p "$rm_"
restic -q -r "$WORK/repo-restic" mount "$rm_" >/dev/null 2>&1 &
rpid=$!
for _ in $(seq 1 100); do [ -d "$rm_/snapshots/latest" ] && break; sleep 0.2; done
drop; restic_cold=$($vb read "$rm_/snapshots/latest/big.bin")
kill "$rpid"; wait "$rpid" 2>/dev/null || true
fusermount3 -u "$rm_" 2>/dev/null || true

# A 20-deep incremental chain.
crepo=$WORK/repo-chain; rm -rf "$crepo" "$WORK/chain"; mkdir -p "$WORK/chain"
"$rw" init --repo "$crepo" >/dev/null
cp "$src"/part0.bin "$WORK/chain/f.bin"
"$rw" snapshot --repo "$crepo" --source "$WORK/chain" >/dev/null 2>&1
for i in $(seq 1 20); do
  printf 'edit %d' "$i" | dd of="$WORK/chain/f.bin" bs=1 seek=$((i * 1048576)) conv=notrunc status=none
  "$rw" snapshot --repo "$crepo" --source "$WORK/chain" >/dev/null 2>&1
done
drop; "$rw" mount-snapshot --repo "$crepo" latest "$mnt" >/dev/null
ttfb=$($vb ttfb "$mnt/f.bin")
"$rw" umount "$mnt" >/dev/null

r() { python3 -c "print(f'{$1:.2f}')"; }
pct() { python3 -c "print(f'{100*$2/$1:.0f}%')"; }
{
  echo "$(nproc) cores, $(uname -r), $(date -u +%Y-%m-%d). ${SIZE_MIB} MiB fp32 file; chunk cache $CACHE; page cache dropped (and the view remounted) before every cold run."
  echo
  echo "| measurement | rewindfs snapshot | native | ratio | borg mount | restic mount |"
  echo "| --- | --- | --- | --- | --- | --- |"
  echo "| sequential read, cold (s) | $snap_cold | $native_cold | $(pct "$snap_cold" "$native_cold") of native speed | $borg_cold | $restic_cold |"
  echo "| sequential read, warm (s) | $snap_warm | $native_warm | $(pct "$snap_warm" "$native_warm") of native speed | | |"
  echo "| 4 parallel readers, 4 x $((SIZE_MIB / 4)) MiB, cold (s) | $snap_par | $native_par | $(pct "$snap_par" "$native_par") of native speed | | |"
  echo "| safetensors load_file, cold (s) | $st_snap | $st_native | $(r "$st_snap / $st_native")x native time | | |"
  echo "| ls -l of 10,000 entries, cold mount (s) | $lsl | | | | |"
  echo "| first byte, 20-deep incremental chain, cold mount (s) | $ttfb | | | | |"
  echo "| view daemon RSS after the reads (MiB) | $rss | | | | |"
} | tee "$OUT"
