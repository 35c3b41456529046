#!/usr/bin/env bash
# Remote-tier benchmark, one run against one local S3 server (a one-node
# Ceph with its S3 gateway, scripts/ceph-dev.sh, bluestore on a sparse
# file): rewindfs push vs restic backup to the same server (first and
# after a 1% change), full restore from the remote vs restic restore, a
# cold sequential read of a 1 GiB file through mount-snapshot --remote,
# and the cost of encryption (init --encrypt) on snapshot, push and
# restore. Prints markdown (also written to $OUT, default
# target/bench/remote.md).
#
#   scripts/bench-remote.sh                 # ~2 GiB dataset
#   CKPT_MIB=256 scripts/bench-remote.sh    # quick
#
# Then (EPOCH=1, the default) DataLoader-style epochs read straight from
# the remote: scripts/bench-epoch.sh with TARGETS="native remote".
#
# Needs root (drops the page cache, mounts), restic, fuse3, curl, Ceph
# (installed when missing), python3 with numpy.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
WORK=${BENCH_DIR:-/var/tmp/rewindfs-bench-remote}
OUT=${OUT:-$root/target/bench/remote.md}
CKPT_MIB=${CKPT_MIB:-1024}
command -v restic >/dev/null || apt-get install -y -qq restic >/dev/null
command -v curl >/dev/null || apt-get install -y -qq curl >/dev/null
python3 -c 'import numpy' 2>/dev/null || pip install -q numpy
cargo build --release --quiet
rw=$root/target/release/rewindfs
drop() { sync; echo 3 > /proc/sys/vm/drop_caches; }
now() { date +%s.%N; }
secs() { python3 -c "print(f'{$2 - $1:.2f}')"; }
mkdir -p "$WORK" "$(dirname "$OUT")"

# The dataset: 2 checkpoints of CKPT_MIB (fp32, barely compressible) and
# 2000 small files.
src=$WORK/src
if [ "$(cat "$WORK/.dataset" 2>/dev/null)" != "$CKPT_MIB" ]; then
  rm -rf "$src"
  python3 scripts/lib/gen_dataset.py "$src" --checkpoints 2 --checkpoint-mib "$CKPT_MIB"
  echo "$CKPT_MIB" > "$WORK/.dataset"
fi
data_bytes=$(du -sb "$src" | cut -f1)

ceph=$WORK/ceph
mnt=$WORK/mnt
cleanup() {
  "$rw" umount "$mnt" >/dev/null 2>&1 || umount -l "$mnt" 2>/dev/null || true
  python3 scripts/lib/mutate.py "$src" --revert "$WORK/mutate-save" >/dev/null 2>&1 || true
  rm -rf "$WORK/mutate-save"
  scripts/ceph-dev.sh stop "$ceph" >/dev/null 2>&1 || true
}
trap cleanup EXIT
scripts/ceph-dev.sh stop "$ceph" >/dev/null 2>&1 || true
rm -rf "$ceph"
eval "$(CEPH_DEV_OBJECTSTORE=bluestore CEPH_DEV_BLUESTORE_SIZE=40G scripts/ceph-dev.sh start "$ceph" 2>/dev/null)"
ep=$AWS_ENDPOINT_URL
bucket() {
  curl -sf -o /dev/null --aws-sigv4 "aws:amz:us-east-1:s3" --user "$AWS_ACCESS_KEY_ID:$AWS_SECRET_ACCESS_KEY" \
    -H "x-amz-content-sha256: e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855" -X PUT "$ep/$1"
}
bucket rw-plain; bucket rw-enc; bucket restic-b

export RESTIC_PASSWORD=bench RESTIC_CACHE_DIR=$WORK/restic-cache
rr=(restic -r "s3:$ep/restic-b/repo" -o s3.bucket-lookup=path)
key=$WORK/keyfile
head -c 32 /dev/urandom > "$key"
chmod 600 "$key"

rm -rf "$WORK"/repo-* "$WORK"/out-* "$RESTIC_CACHE_DIR"
"$rw" init --repo "$WORK/repo-plain" >/dev/null
REWINDFS_KEY_FILE=$key "$rw" init --repo "$WORK/repo-enc" --encrypt >/dev/null
"${rr[@]}" init >/dev/null 2>&1

# Snapshots (local) of the same data, plain and encrypted.
drop; t0=$(now); "$rw" snapshot --repo "$WORK/repo-plain" --source "$src" --kind full >/dev/null 2>&1; t1=$(now)
snap_plain=$(secs "$t0" "$t1")
drop; t0=$(now); REWINDFS_KEY_FILE=$key "$rw" snapshot --repo "$WORK/repo-enc" --source "$src" --kind full >/dev/null 2>&1; t1=$(now)
snap_enc=$(secs "$t0" "$t1")
"$rw" remote add --repo "$WORK/repo-plain" bk s3://rw-plain/bench --host h >/dev/null
REWINDFS_KEY_FILE=$key "$rw" remote add --repo "$WORK/repo-enc" bk s3://rw-enc/bench --host h >/dev/null

# First push vs first restic backup.
drop; t0=$(now); "$rw" push --repo "$WORK/repo-plain" --json > "$WORK/push1.json"; t1=$(now)
push1=$(secs "$t0" "$t1")
push1_bytes=$(python3 -c "import json;print(json.load(open('$WORK/push1.json'))[0]['report']['bytes'])")
drop; t0=$(now); REWINDFS_KEY_FILE=$key "$rw" push --repo "$WORK/repo-enc" --json > "$WORK/push1e.json"; t1=$(now)
push1e=$(secs "$t0" "$t1")
drop; t0=$(now); "${rr[@]}" backup "$src" --json > "$WORK/restic1.json" 2>/dev/null; t1=$(now)
restic1=$(secs "$t0" "$t1")
restic1_bytes=$(python3 -c "
import json
s=[json.loads(l) for l in open('$WORK/restic1.json') if '\"summary\"' in l][-1]
print(s['data_added'])")

# A 1% change: incremental snapshot, push, restic backup.
python3 scripts/lib/mutate.py "$src" --fraction 0.01 --save "$WORK/mutate-save" >/dev/null
"$rw" snapshot --repo "$WORK/repo-plain" --source "$src" >/dev/null 2>&1
changed=$("$rw" snapshots --repo "$WORK/repo-plain" --json | python3 -c "import json,sys;print(json.load(sys.stdin)[-1]['stored_bytes'])")
drop; t0=$(now); "$rw" push --repo "$WORK/repo-plain" --json > "$WORK/push2.json"; t1=$(now)
push2=$(secs "$t0" "$t1")
push2_bytes=$(python3 -c "import json;print(json.load(open('$WORK/push2.json'))[0]['report']['bytes'])")
drop; t0=$(now); "${rr[@]}" backup "$src" --json > "$WORK/restic2.json" 2>/dev/null; t1=$(now)
restic2=$(secs "$t0" "$t1")
restic2_bytes=$(python3 -c "
import json
s=[json.loads(l) for l in open('$WORK/restic2.json') if '\"summary\"' in l][-1]
print(s['data_added'])")

# Full restore from the remote (nothing local) vs restic restore.
drop; t0=$(now); "$rw" restore --remote s3://rw-plain/bench --host h latest --to "$WORK/out-rw" >/dev/null; t1=$(now)
restore_rw=$(secs "$t0" "$t1")
diff -r "$src" "$WORK/out-rw" >/dev/null || { echo "restore from the remote differs" >&2; exit 1; }
drop; t0=$(now); REWINDFS_KEY_FILE=$key "$rw" restore --remote s3://rw-enc/bench --host h latest --to "$WORK/out-enc" >/dev/null; t1=$(now)
restore_enc=$(secs "$t0" "$t1")
python3 scripts/lib/mutate.py "$src" --revert "$WORK/mutate-save" >/dev/null; rm -rf "$WORK/mutate-save"
diff -r "$src" "$WORK/out-enc" >/dev/null || { echo "encrypted restore differs" >&2; exit 1; }
python3 scripts/lib/mutate.py "$src" --fraction 0.01 --save "$WORK/mutate-save" >/dev/null
drop; t0=$(now); "${rr[@]}" restore latest --target "$WORK/out-restic" >/dev/null 2>&1; t1=$(now)
restore_restic=$(secs "$t0" "$t1")

# Cold sequential read of a 1 GiB checkpoint through mount-snapshot --remote.
big=$(ls "$src/checkpoints" | head -1)
mkdir -p "$mnt"
"$rw" mount-snapshot --remote s3://rw-plain/bench --host h latest "$mnt" >/dev/null
drop; t0=$(now); cat "$mnt/checkpoints/$big" > /dev/null; t1=$(now)
read_remote=$(secs "$t0" "$t1")
"$rw" umount "$mnt" >/dev/null
drop; t0=$(now); cat "$src/checkpoints/$big" > /dev/null; t1=$(now)
read_native=$(secs "$t0" "$t1")
big_bytes=$(stat -c %s "$src/checkpoints/$big")

python3 - "$OUT" <<PY
import sys
mib = 1 << 20
d = $data_bytes
def rate(b, s): return f"{b / mib / float(s):.0f} MiB/s"
rows = [
  ("first push / backup", "$push1", "$restic1", f"{$push1_bytes / mib:.0f} MiB sent", f"{$restic1_bytes / mib:.0f} MiB added"),
  ("push / backup after a 1% change", "$push2", "$restic2", f"{$push2_bytes / mib:.1f} MiB sent (snapshot added {$changed / mib:.1f} MiB)", f"{$restic2_bytes / mib:.1f} MiB added"),
  ("full restore from the remote", "$restore_rw", "$restore_restic", "", ""),
]
out = []
out.append(f"Dataset: {d / mib:.0f} MiB (2 fp32 checkpoints of $CKPT_MIB MiB, 2000 small files); one local Ceph RGW (bluestore), page cache dropped before each step.\n")
out.append("| step | rewindfs (s) | restic (s) | restic / rewindfs | rewindfs | restic |")
out.append("|---|---|---|---|---|---|")
for name, a, b, x, y in rows:
    out.append(f"| {name} | {a} | {b} | {float(b) / float(a):.2f}x | {x} | {y} |")
out.append("")
out.append(f"Cold sequential read of a {$big_bytes / mib:.0f} MiB file through mount-snapshot --remote: {float('$read_remote'):.2f} s ({rate($big_bytes, '$read_remote')}); the same file from the native disk: {float('$read_native'):.2f} s ({rate($big_bytes, '$read_native')}).\n")
out.append("| encryption cost | plain (s) | encrypted (s) | throughput ratio |")
out.append("|---|---|---|---|")
for name, a, b in [("full snapshot (local)", "$snap_plain", "$snap_enc"), ("first push", "$push1", "$push1e"), ("full restore from the remote", "$restore_rw", "$restore_enc")]:
    out.append(f"| {name} | {a} | {b} | {float(a) / float(b):.2f} |")
text = "\n".join(out) + "\n"
open(sys.argv[1], "w").write(text)
print(text)
PY

# DataLoader-style epochs straight from the remote (mount-snapshot
# --remote) against native, on bench-epoch.sh's own dataset (EPOCH=0
# skips it; EPOCH_SMALL files of 4-16 KiB and 2 shards of 256 MiB).
if [ "${EPOCH:-1}" = 1 ]; then
  bucket rw-epoch
  OUT=$WORK/epoch.md REWINDFS_BIN=$rw BENCH_DIR=$WORK/epoch SMALL=${EPOCH_SMALL:-5000} SHARDS=2 \
    REMOTE=s3://rw-epoch/bench TARGETS="native remote" scripts/bench-epoch.sh
  { echo; echo "DataLoader-style epochs from the remote (scripts/bench-epoch.sh):"; echo; cat "$WORK/epoch.md"; } >> "$OUT"
  cat "$WORK/epoch.md"
fi
