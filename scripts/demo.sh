#!/usr/bin/env bash
# rewindfs demo: build, mount a sample dataset, write through the mount
# (a checkpoint saved the usual way, in-place edits, a deletion), let
# rewindfs snapshot it (on close, on request, at unmount), browse old
# versions (rewindfs ls/cat, the .snapshots folders, a snapshot mount),
# restore one, diff, stats, forget + gc, verify; and, when Ceph's S3
# gateway is installed (.ci/run installs it), replicate to an object store
# on loopback and restore from it alone. Without FUSE it shows scan mode
# instead.
# Everything happens under a temporary directory (or $DEMO_DIR) and is
# removed at the end unless KEEP=1.
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== building rewindfs (release)"
cargo build --release --quiet
bin="$PWD/target/release/rewindfs"

work="${DEMO_DIR:-$(mktemp -d /tmp/rewindfs-demo.XXXXXX)}"
mnt="$work/mnt"
cleanup() {
  "$bin" umount "$mnt" >/dev/null 2>&1 || true
  [ -d "$work/ceph" ] && scripts/ceph-dev.sh stop "$work/ceph" >/dev/null 2>&1 || true
  if [ "${KEEP:-0}" != 1 ]; then rm -rf "$work"; else echo "kept $work"; fi
}
trap cleanup EXIT
data="$work/dataset"
export REWINDFS_REPO="$work/repo"
mkdir -p "$data/checkpoints" "$data/shards" "$mnt"

echo "== sample dataset in $data"
for i in 1 2; do head -c $((32 << 20)) /dev/urandom > "$data/checkpoints/step-$i.bin"; done
for i in $(seq 1 200); do seq 1 50 | sed "s/^/shard $i sample /" > "$data/shards/shard-$i.txt"; done
ln -s checkpoints/step-2.bin "$data/latest.bin"

run() { echo "\$ rewindfs $*"; "$bin" "$@"; }
wait_snapshots() { # wait until there are $1 snapshots
  for _ in $(seq 1 100); do
    [ "$("$bin" snapshots --json | grep -c '"id"')" -ge "$1" ] && return 0
    sleep 0.1
  done
  echo "timed out waiting for snapshot $1"; return 1
}

run init

if [ -e /dev/fuse ]; then
  echo "== mount: the first (full) snapshot is taken right away; then incrementals every"
  echo "   15 minutes, a differential every night and a full on Sundays, both inside 01:00-05:00"
  run mount "$data" "$mnt" --every 15m --differential-at "0 2 * * *" --full-at "0 2 * * SUN" \
    --window 01:00-05:00 --on-close '*.bin' --settle 1s --metrics-listen 127.0.0.1:0
  wait_snapshots 1

  echo "== a training job saves checkpoint 3 the usual way: temporary file, then rename"
  head -c $((8 << 20)) /dev/urandom > "$mnt/checkpoints/.step-3.tmp"
  mv "$mnt/checkpoints/.step-3.tmp" "$mnt/checkpoints/step-3.bin"
  wait_snapshots 2
  echo "   (an on-close snapshot, labelled with the checkpoint)"

  echo "== change 2 MiB inside checkpoint 1 and append to a shard, then snapshot on request"
  dd if=/dev/urandom of="$mnt/checkpoints/step-1.bin" bs=1M seek=7 count=2 conv=notrunc status=none
  echo "one more sample" >> "$mnt/shards/shard-7.txt"
  run snapshot --label after-edits

  echo "== delete a shard; a differential snapshot (changes since the last full)"
  rm "$mnt/shards/shard-9.txt"
  run snapshot --kind differential

  echo "== browse and restore while mounted (the daemon answers for the repository)"
  run snapshots
  run ls latest /checkpoints
  echo "\$ rewindfs cat 1 shards/shard-9.txt | tail -n 1"
  "$bin" cat 1 shards/shard-9.txt | tail -n 1
  run restore 1 checkpoints/step-1.bin --to "$work/old"
  if cmp -s "$work/old/step-1.bin" "$mnt/checkpoints/step-1.bin"; then
    echo "unexpected: the old version equals the current one"; exit 1
  fi
  echo "the restored step-1.bin is the version from before the edit"

  echo "== every snapshot is a read-only folder under .snapshots (not listed in the root)"
  echo "\$ ls $mnt/.snapshots"
  ls "$mnt/.snapshots"
  first=$(ls "$mnt/.snapshots" | head -n 1)
  echo "\$ ls -l $mnt/.snapshots/latest/checkpoints"
  ls -l "$mnt/.snapshots/latest/checkpoints"
  echo "\$ tail -n 1 $mnt/.snapshots/$first/shards/shard-9.txt    (deleted since)"
  tail -n 1 "$mnt/.snapshots/$first/shards/shard-9.txt"
  cmp "$mnt/.snapshots/$first/checkpoints/step-1.bin" "$work/old/step-1.bin"
  echo "the old step-1.bin read from .snapshots/$first equals the restored one"
  echo "\$ touch $mnt/.snapshots/latest/new-file"
  if touch "$mnt/.snapshots/latest/new-file"; then
    echo "unexpected: a snapshot accepted a new file"; exit 1
  fi
  echo "== one snapshot as a read-only mount of its own"
  mkdir -p "$work/snap1"
  run mount-snapshot 1 "$work/snap1"
  echo "\$ ls $work/snap1/checkpoints"
  ls "$work/snap1/checkpoints"
  run umount "$work/snap1"
  echo "== no --repo needed: commands find the repository from the mount they run in, or -C MNT"
  echo "\$ cd $mnt/checkpoints && rewindfs snapshots | tail -n 2"
  (cd "$mnt/checkpoints" && env -u REWINDFS_REPO "$bin" snapshots | tail -n 2)
  echo "\$ rewindfs status        (every rewindfs mount on this machine)"
  env -u REWINDFS_REPO "$bin" status
  run status "$mnt"
  url=$("$bin" status --json | sed -n 's/.*"metrics_url": "http:\/\/\([^"]*\)\/".*/\1/p')
  if [ -n "$url" ]; then
    echo "== Prometheus metrics and a status page on http://$url/ (a few metrics:)"
    # Only who can read the repository may read its figures: the token.
    tok=$(cat "$REWINDFS_REPO/web-token")
    exec 3<>"/dev/tcp/${url%:*}/${url##*:}"
    printf 'GET /metrics HTTP/1.0\r\nAuthorization: Bearer %s\r\n\r\n' "$tok" >&3
    grep -E '^rewindfs_(snapshots\{|dirty_bytes|oldest_change_age|dedup_ratio)' <&3 || true
    exec 3<&-
  fi
  echo "== unmount (pending changes get a last snapshot)"
  echo "late change" >> "$mnt/shards/shard-1.txt"
  run umount "$mnt"
else
  echo "== /dev/fuse is missing: scan mode instead of the live mount"
  run snapshot --source "$data" --kind full --label initial
  dd if=/dev/urandom of="$data/checkpoints/step-1.bin" bs=1M seek=7 count=2 conv=notrunc status=none
  echo "one more sample" >> "$data/shards/shard-7.txt"
  run snapshot --source "$data" --label after-edits
  rm "$data/shards/shard-9.txt"
  run snapshot --source "$data" --kind differential
  run ls latest /checkpoints
  run restore 1 checkpoints/step-1.bin --to "$work/old"
fi

run snapshots
echo "== what changed since the first snapshot, and where the space goes"
run diff 1 latest
run stats
echo "== retention: keep the 2 newest; the chains built on the others are rewritten"
run forget --keep-last 2 --dry-run
run forget --keep-last 2 --prune
run snapshots
echo "== restore the latest snapshot and compare with the dataset"
run restore latest --to "$work/restored"
diff -r "$data" "$work/restored" && echo "the latest snapshot equals the dataset"
run verify --read-data
if command -v radosgw >/dev/null && command -v curl >/dev/null; then
  echo "== off-machine copy: replicate to an S3 object store (a one-node Ceph on loopback)"
  eval "$(scripts/ceph-dev.sh start "$work/ceph" 2>/dev/null)"
  curl -sf -o /dev/null --aws-sigv4 "aws:amz:us-east-1:s3" --user "$AWS_ACCESS_KEY_ID:$AWS_SECRET_ACCESS_KEY" \
    -H "x-amz-content-sha256: e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855" \
    -X PUT "$AWS_ENDPOINT_URL/demo-backups"
  run remote add offsite s3://demo-backups/lab --host demo
  run push
  echo "== disaster recovery: nothing local, straight from the bucket"
  echo "\$ rewindfs snapshots --remote s3://demo-backups/lab"
  env -u REWINDFS_REPO "$bin" snapshots --remote s3://demo-backups/lab
  echo "\$ rewindfs restore --remote s3://demo-backups/lab --trust-remote latest --to $work/from-remote"
  env -u REWINDFS_REPO "$bin" restore --remote s3://demo-backups/lab --trust-remote latest --to "$work/from-remote"
  diff -r "$data" "$work/from-remote" && echo "restored from the object store alone: equals the dataset"
else
  echo "== (skipped) off-machine copies: install Ceph's S3 gateway (apt-get install --no-install-recommends ceph-mon ceph-osd radosgw ceph-common) and curl to see replication to an object store"
fi
echo "== demo finished"
