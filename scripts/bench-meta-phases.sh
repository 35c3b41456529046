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
# Prints "target: create stat rename unlink total" (seconds) per run;
# with THREAD_CPU=1 also the daemon's CPU seconds over the workload, per
# thread name (fuser-N summed as fuser, sled-io-N as sled-io).
set -euo pipefail
cd "$(dirname "$0")/.."
N=$1; ROUNDS=$2; shift 2
W=${BENCH_DIR:-/var/tmp/rewindfs-bench-meta-phases}
MOUNT_ARGS=${MOUNT_ARGS:-}
mkdir -p "$W/fs" "$W/m"
cleanup() { mountpoint -q "$W/m" && fusermount3 -u "$W/m"; mountpoint -q "$W/fs" && umount "$W/fs"; rm -f "$W/img"; }
trap cleanup EXIT
# Per-thread CPU ticks of a process, as "name ticks" lines.
thread_cpu() { for t in /proc/"$1"/task/*; do echo "$(tr ' ' _ < "$t/comm" | sed 's/-[0-9]*$//') $(awk '{print $14+$15}' "$t/stat")"; done; }
cpu_delta() {
  python3 - "$1" "$2" <<'PY'
import collections, os, sys
hz = os.sysconf("SC_CLK_TCK")
def sums(text):
    d = collections.Counter()
    for line in text.splitlines():
        name, ticks = line.split()
        d[name] += int(ticks)
    return d
a, b = sums(sys.argv[1]), sums(sys.argv[2])
d = {k: (b[k] - a.get(k, 0)) / hz for k in b}
print(" ".join(f"{k}={v:.2f}" for k, v in sorted(d.items()) if v > 0), f"total={sum(d.values()):.2f}")
PY
}
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
    pid=""
    if [ -n "$bin" ] && [ "${THREAD_CPU:-0}" = 1 ]; then
      pid=$("$bin" status --repo "$W/fs/r" --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["pid"])')
      c0=$(thread_cpu "$pid")
    fi
    echo "round $r $t: $(python3 scripts/lib/fsops.py meta4-phases "$d" "$N")"
    [ -n "$pid" ] && echo "  daemon CPU (s): $(cpu_delta "$c0" "$(thread_cpu "$pid")")"
    [ -n "$bin" ] && "$bin" umount "$W/m" >/dev/null 2>&1
    umount "$W/fs"
  done
done
