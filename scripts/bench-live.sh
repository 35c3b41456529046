#!/usr/bin/env bash
# Live-mount benchmark: native ext4 vs rewindfs (default, --passthrough-reads,
# --writeback-cache) vs bindfs, one run, same machine. Prints a markdown
# table (also written to $OUT, default target/bench/live.md).
#
#   scripts/bench-live.sh              # 1 GiB sequential, 10k files, 20k 4 KiB writes
#   SIZE_MIB=256 FILES=2000 scripts/bench-live.sh   # quick
#
# Needs root (drops the page cache, mounts) and bindfs (apt).
#
# Every target gets a fresh ext4 filesystem (a loop-mounted image): ext4
# slows down inode allocation near recently deleted inodes, so targets
# sharing one filesystem would be penalised for running later.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
WORK=${BENCH_DIR:-/var/tmp/rewindfs-bench-live}
OUT=${OUT:-$root/target/bench/live.md}
SIZE_MIB=${SIZE_MIB:-1024}
FILES=${FILES:-10000}
RANDW=${RANDW:-20000}
command -v bindfs >/dev/null || apt-get install -y -qq bindfs >/dev/null
# REWINDFS_BIN: measure that build instead (scripts/bench-ab.sh).
if [ -n "${REWINDFS_BIN:-}" ]; then
  rw=$(readlink -f "$REWINDFS_BIN")
else
  cargo build --release --quiet
  rw=$root/target/release/rewindfs
fi
mkdir -p "$WORK" "$(dirname "$OUT")"
drop() { sync; echo 3 > /proc/sys/vm/drop_caches; }
secs() { local t0 t1; t0=$(date +%s.%N); "$@" >/dev/null; t1=$(date +%s.%N); python3 -c "print(f'{$t1-$t0:.3f}')"; }

run_case() { # name dir
  local name=$1 d=$2
  local w rc rw_ meta st rand
  drop
  w=$(secs dd if=/dev/zero of="$d/big" bs=1M count="$SIZE_MIB" conv=fsync status=none)
  drop
  rc=$(secs dd if="$d/big" of=/dev/null bs=1M status=none)
  rw_=$(secs dd if="$d/big" of=/dev/null bs=1M status=none)
  rm -f "$d/big"
  meta=$(python3 scripts/lib/fsops.py meta "$d" "$FILES")
  st=$(python3 scripts/lib/fsops.py stat "$d" "$FILES")
  rm -rf "$d/s"
  rand=$(python3 scripts/lib/fsops.py randwrite "$d/rand" "$RANDW")
  rm -f "$d/rand"
  echo "$name $w $rc $rw_ $meta $st $rand"
}

img=$WORK/fs.img
fsdir=$WORK/fs
mkdir -p "$fsdir"
fresh_fs() {
  umount "$fsdir" 2>/dev/null || true
  rm -f "$img"
  truncate -s $(( SIZE_MIB * 3 + 2048 ))M "$img"
  mkfs.ext4 -q -F "$img"
  mount -o loop "$img" "$fsdir"
}
cleanup() { umount "$fsdir" 2>/dev/null || true; rm -f "$img"; }
trap cleanup EXIT

results=()
# native
fresh_fs; mkdir -p "$fsdir/native"
results+=("$(run_case native "$fsdir/native")")
# rewindfs variants
for v in default passthrough writeback; do
  fresh_fs
  b=$fsdir/b; m=$WORK/m-$v; r=$fsdir/r
  mkdir -p "$b" "$m"
  case $v in
    default) extra=() ;;
    passthrough) extra=(--passthrough-reads) ;;
    writeback) extra=(--writeback-cache) ;;
  esac
  "$rw" mount "$b" "$m" --repo "$r" "${extra[@]}" >/dev/null
  results+=("$(run_case "rewindfs-$v" "$m")")
  "$rw" umount "$m" >/dev/null
done
# bindfs
fresh_fs
b=$fsdir/b; m=$WORK/m-bindfs
mkdir -p "$b" "$m"
bindfs "$b" "$m"
results+=("$(run_case bindfs "$m")")
fusermount3 -u "$m" || umount "$m"

{
  echo "$(nproc) cores, $(uname -r), $(date -u +%Y-%m-%d), each target on a fresh loop-mounted ext4. Sequential: $SIZE_MIB MiB with dd bs=1M; metadata: $FILES files; random: $RANDW x 4 KiB pwrite + fsync into a 256 MiB file. Seconds (lower is better); ratio to native in parentheses."
  echo
  echo "| target | write+fsync | read cold | read warm | create+stat+unlink | stat x3 | 4 KiB random writes |"
  echo "| --- | --- | --- | --- | --- | --- | --- |"
  read -r _ nw nrc nrw nm ns nr <<< "${results[0]}"
  for line in "${results[@]}"; do
    read -r name w rc rwm m s r <<< "$line"
    f() { python3 -c "print(f'{$1:.2f} ({$1/$2:.1f}x)')"; }
    echo "| $name | $(f "$w" "$nw") | $(f "$rc" "$nrc") | $(f "$rwm" "$nrw") | $(f "$m" "$nm") | $(f "$s" "$ns") | $(f "$r" "$nr") |"
  done
} | tee "$OUT"
