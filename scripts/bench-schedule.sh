#!/usr/bin/env bash
# Scheduled fulls: what a full snapshot taken on schedule costs after a
# 1% change, real (--synthetic-fulls never: every file read again) and
# synthetic (always: built from the latest tree and the journal's
# changes), against restic and borg backing up the same change (their
# "full" is a new backup that re-scans the dataset and re-reads the
# changed files). One run; prints markdown (also written to $OUT,
# default target/bench/schedule.md).
#
#   scripts/bench-schedule.sh               # ~2 GiB dataset
#   CKPT_MIB=256 scripts/bench-schedule.sh  # quick
#
# Needs root (drops the page cache, mounts), fuse3, restic, borg,
# python3 with numpy.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
WORK=${BENCH_DIR:-/var/tmp/rewindfs-bench-schedule}
OUT=${OUT:-$root/target/bench/schedule.md}
CKPT_MIB=${CKPT_MIB:-1024}
command -v restic >/dev/null || apt-get install -y -qq restic >/dev/null
command -v borg >/dev/null || apt-get install -y -qq borgbackup >/dev/null
python3 -c 'import numpy' 2>/dev/null || pip install -q numpy
cargo build --release --quiet
rw=$root/target/release/rewindfs
drop() { sync; echo 3 > /proc/sys/vm/drop_caches; }
now() { date +%s.%N; }
secs() { python3 -c "print(f'{$2 - $1:.2f}')"; }
mkdir -p "$WORK" "$(dirname "$OUT")"

src=$WORK/src
if [ "$(cat "$WORK/.dataset" 2>/dev/null)" != "$CKPT_MIB" ]; then
  rm -rf "$src"
  python3 scripts/lib/gen_dataset.py "$src" --checkpoints 2 --checkpoint-mib "$CKPT_MIB"
  echo "$CKPT_MIB" > "$WORK/.dataset"
fi
data_bytes=$(du -sb "$src" | cut -f1)
mnt=$WORK/mnt
save=$WORK/mutate-save
cleanup() {
  # A change saved through the mount is undone through it.
  if [ -d "$save" ]; then python3 scripts/lib/mutate.py "$src" --revert "$save" >/dev/null 2>&1 || true; fi
  "$rw" umount "$mnt" >/dev/null 2>&1 || umount -l "$mnt" 2>/dev/null || true
  rm -rf "$save"
}
trap cleanup EXIT
cleanup
mkdir -p "$mnt"

count() { "$rw" snapshots --repo "$1" --json | grep -c '"id"'; }
wait_count() { # repo n
  for _ in $(seq 1 1200); do
    [ "$(count "$1")" -ge "$2" ] && return 0
    sleep 0.5
  done
  echo "timed out waiting for snapshot $2" >&2
  return 1
}

rows=()
for mode in never always; do
  repo=$WORK/repo-$mode
  rm -rf "$repo"
  "$rw" init --repo "$repo" >/dev/null
  "$rw" mount "$src" "$mnt" --repo "$repo" --every off --differential-every off \
    --full-every 90s --synthetic-fulls "$mode" --snapshot-on-unmount false >/dev/null
  wait_count "$repo" 1
  python3 scripts/lib/mutate.py "$mnt" --fraction 0.01 --save "$save" >/dev/null
  drop
  wait_count "$repo" 2
  st=$("$rw" status "$mnt" --json)
  ms=$(echo "$st" | python3 -c 'import json,sys; f=json.load(sys.stdin)["flusher"]; print("%.2f %d" % (f["last_duration_ms"] / 1e3, f["last_bytes_read"]))')
  kind=$("$rw" snapshots --repo "$repo" | awk '$1 == 2 { k = $2; if ($3 ~ /^\(/) k = k " " $3; print k }')
  # Undo the change through the mount (the saved paths are the mount's).
  python3 scripts/lib/mutate.py "$mnt" --revert "$save" >/dev/null
  rm -rf "$save"
  "$rw" umount "$mnt" >/dev/null
  read -r t b <<<"$ms"
  rows+=("| rewindfs scheduled full, --synthetic-fulls $mode ($kind) | $t | $(python3 -c "print(f'{$b/2**20:.1f}')") |")
done

# restic: a new backup after the same change.
export RESTIC_PASSWORD=bench
rr=$WORK/restic
rm -rf "$rr"
restic init -q --repo "$rr"
restic backup -q --repo "$rr" "$src"
python3 scripts/lib/mutate.py "$src" --fraction 0.01 --save "$save" >/dev/null
drop
r0=$(now)
restic backup -q --repo "$rr" "$src"
r1=$(now)
python3 scripts/lib/mutate.py "$src" --revert "$save" >/dev/null
rm -rf "$save"
rows+=("| restic backup after the change | $(secs "$r0" "$r1") | - |")

# borg: the same.
br=$WORK/borg
rm -rf "$br"
export BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK=yes
borg init -e none "$br" >/dev/null 2>&1
borg create "$br::a" "$src"
python3 scripts/lib/mutate.py "$src" --fraction 0.01 --save "$save" >/dev/null
drop
b0=$(now)
borg create "$br::b" "$src"
b1=$(now)
python3 scripts/lib/mutate.py "$src" --revert "$save" >/dev/null
rm -rf "$save"
rows+=("| borg create after the change | $(secs "$b0" "$b1") | - |")

{
  echo "Scheduled full after a 1% change; dataset $(python3 -c "print(f'{$data_bytes/2**20:.0f}')") MiB (2 checkpoints of $CKPT_MIB MiB + 2000 small files), page cache dropped before each"
  echo
  echo "| what | seconds | MiB read by the capture |"
  echo "| --- | --- | --- |"
  printf '%s\n' "${rows[@]}"
} | tee "$OUT"
