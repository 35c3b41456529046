#!/usr/bin/env bash
# rewindfs demo: build, create a sample dataset, snapshot it (full, then
# incremental and differential after changes), browse, restore, verify.
# Everything happens under a temporary directory (or $DEMO_DIR) and is
# removed at the end unless KEEP=1.
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== building rewindfs (release)"
cargo build --release --quiet
bin="$PWD/target/release/rewindfs"

work="${DEMO_DIR:-$(mktemp -d /tmp/rewindfs-demo.XXXXXX)}"
cleanup() { if [ "${KEEP:-0}" != 1 ]; then rm -rf "$work"; else echo "kept $work"; fi; }
trap cleanup EXIT
data="$work/dataset"
export REWINDFS_REPO="$work/repo"
mkdir -p "$data/checkpoints" "$data/shards"

echo "== sample dataset in $data"
for i in 1 2; do head -c $((32 << 20)) /dev/urandom > "$data/checkpoints/step-$i.bin"; done
for i in $(seq 1 200); do seq 1 50 | sed "s/^/shard $i sample /" > "$data/shards/shard-$i.txt"; done
ln -s checkpoints/step-2.bin "$data/latest.bin"

run() { echo "\$ rewindfs $*"; "$bin" "$@"; }

run init
run snapshot --source "$data" --kind full --label initial

if [ -e /dev/fuse ]; then
  echo "== live mount: serve the dataset through FUSE and write through it"
  mnt="$work/mnt"; mkdir -p "$mnt"
  run mount "$data" "$mnt" --repo "$REWINDFS_REPO"
  trap '"$bin" umount "$mnt" >/dev/null 2>&1 || true; cleanup' EXIT
  ls "$mnt"
  dd if=/dev/urandom of="$mnt/checkpoints/step-2.bin" bs=1M seek=3 count=2 conv=notrunc status=none
  echo "appended through the mount" >> "$mnt/shards/shard-1.txt"
  sleep 0.3
  run status
  run umount "$mnt"
  trap cleanup EXIT
  run snapshot --source "$data" --kind incremental --label live-writes
else
  echo "== /dev/fuse is missing: skipping the live mount part of the demo"
fi

echo "== change 1 MiB inside a checkpoint, append to a shard, add a file"
dd if=/dev/urandom of="$data/checkpoints/step-1.bin" bs=1M seek=7 count=1 conv=notrunc status=none
echo "one more sample" >> "$data/shards/shard-7.txt"
head -c $((8 << 20)) /dev/urandom > "$data/checkpoints/step-3.bin"
run snapshot --source "$data" --kind incremental --label after-step-3

echo "== delete a shard"
rm "$data/shards/shard-9.txt"
run snapshot --source "$data" --kind differential

run snapshots
run ls latest /checkpoints
echo "\$ rewindfs cat 1 shards/shard-7.txt | tail -n 2"
"$bin" cat 1 shards/shard-7.txt | tail -n 2

echo "== restore snapshot 1 and compare with what it captured"
run restore 1 --to "$work/restored"
cmp "$work/restored/shards/shard-9.txt" <("$bin" cat 1 shards/shard-9.txt) && echo "shard-9 restored from snapshot 1"
run restore latest checkpoints/step-1.bin --to "$work/one-file"
cmp "$work/one-file/step-1.bin" "$data/checkpoints/step-1.bin" && echo "step-1.bin restored from the latest snapshot matches the dataset"
run verify --read-data
echo "== demo finished"
