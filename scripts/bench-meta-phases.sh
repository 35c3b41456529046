#!/usr/bin/env bash
# Metadata phases (create+write 1 byte, stat, rename, unlink of N files:
# `fsops.py meta4`, each phase timed) on a fresh loop-mounted ext4 per run,
# for several targets alternated round by round:
#
#   scripts/bench-meta-phases.sh N ROUNDS TARGET...
#     TARGET: native | BIN (a rewindfs build, recording on)
#             | untracked=BIN (REWINDFS_BENCH_UNTRACKED=1: recording off)
#   MOUNT_ARGS="--threads 2" scripts/bench-meta-phases.sh 20000 2 target/release/rewindfs
#
# Prints "target: create stat rename unlink total" (seconds) per run.
set -euo pipefail
cd "$(dirname "$0")/.."
N=$1; ROUNDS=$2; shift 2
W=${BENCH_DIR:-/var/tmp/rewindfs-bench-meta-phases}
MOUNT_ARGS=${MOUNT_ARGS:-}
mkdir -p "$W/fs" "$W/m"
cleanup() { mountpoint -q "$W/m" && fusermount3 -u "$W/m"; mountpoint -q "$W/fs" && umount "$W/fs"; rm -f "$W/img"; }
trap cleanup EXIT
for r in $(seq 1 "$ROUNDS"); do
  for t in "$@"; do
    rm -f "$W/img"; truncate -s 4G "$W/img"; mkfs.ext4 -q -F "$W/img"; mount -o loop "$W/img" "$W/fs"; mkdir -p "$W/fs/b"
    d=$W/m; bin=""
    case $t in
      native) d=$W/fs/b ;;
      untracked=*) bin=$(readlink -f "${t#untracked=}")
        # shellcheck disable=SC2086
        REWINDFS_BENCH_UNTRACKED=1 "$bin" mount "$W/fs/b" "$W/m" --repo "$W/fs/r" --every off --full-every off --snapshot-on-unmount false $MOUNT_ARGS >/dev/null 2>&1 ;;
      *) bin=$(readlink -f "$t")
        # shellcheck disable=SC2086
        "$bin" mount "$W/fs/b" "$W/m" --repo "$W/fs/r" --every off --full-every off $MOUNT_ARGS >/dev/null ;;
    esac
    echo "round $r $t: $(python3 scripts/lib/fsops.py meta4-phases "$d" "$N")"
    [ -n "$bin" ] && "$bin" umount "$W/m" >/dev/null 2>&1
    umount "$W/fs"
  done
done
