#!/usr/bin/env bash
# Live-mount benchmark: native ext4 vs rewindfs (defaults: checkpoint fast
# path, passthrough reads) vs rewindfs with recording off (what tracking
# costs) vs bindfs vs mergerfs, one run on one machine, targets alternated
# round by round, medians of ROUNDS rounds. Prints a markdown table (also
# written to $OUT, default target/bench/live.md).
#
#   scripts/bench-live.sh                          # full run (~25 min)
#   TARGETS="native rewindfs rewindfs-writeback" ...  # adds --writeback-cache
#   ROUNDS=1 CKPT_MIB=512 SEQ_MIB=256 FILES=2000 RANDW=2000 DBENCH_SECS=5 scripts/bench-live.sh  # quick
#
# Needs root (drops the page cache, mounts); installs bindfs, mergerfs and
# dbench with apt when missing.
#
# Every target gets a fresh ext4 filesystem (a loop-mounted image) per
# round: ext4 slows down inode allocation near recently deleted inodes, so
# targets sharing one filesystem would be penalised for running later.
#
# Workloads (seconds, lower is better, unless said otherwise):
#   checkpoint   a CKPT_MIB MiB checkpoint as torch.save/safetensors write
#                one: new file tmp-ckpt.pt, 64 MiB writes, fsync, rename
#                to ckpt.pt (the fast path on rewindfs)
#   seq write    SEQ_MIB MiB of 1 MiB writes in place over an existing
#                file, fsync (block-tracked on rewindfs)
#   cpu/GiB      daemon CPU seconds per GiB of that in-place write
#   4K random    RANDW x 4 KiB pwrite into a 256 MiB file, fsync
#   metadata     FILES files: create+write 1 byte, stat, rename, unlink
#   read cold    the SEQ_MIB file after dropping the page cache; warm: again
#                (READ_AFTER=N: again N seconds after it was written)
#   dbench       2 clients, DBENCH_SECS s, MB/s (higher is better)
#   RSS          daemon resident memory after the run (MiB)
#   epoch        (EPOCH=1, the default; EPOCH=0 skips it) DataLoader-style
#                epochs over small files and shards: scripts/bench-epoch.sh,
#                its table appended to $OUT
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
WORK=${BENCH_DIR:-/var/tmp/rewindfs-bench-live}
OUT=${OUT:-$root/target/bench/live.md}
ROUNDS=${ROUNDS:-3}
CKPT_MIB=${CKPT_MIB:-4096}
SEQ_MIB=${SEQ_MIB:-1024}
FILES=${FILES:-20000}
RANDW=${RANDW:-20000}
DBENCH_SECS=${DBENCH_SECS:-20}
# Seconds between writing the read file and reading it. rewindfs reads a
# file changed in the last 5 s through the daemon, not by passthrough
# (docs/semantics.md); READ_AFTER=6 measures reads of a settled file.
READ_AFTER=${READ_AFTER:-0}
TARGETS=${TARGETS:-"native rewindfs rewindfs-untracked bindfs mergerfs"}
for t in bindfs mergerfs dbench; do
  command -v $t >/dev/null || apt-get install -y -qq $t >/dev/null
done
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
cpu_of() { [ -n "$1" ] && awk '{print $14+$15}' "/proc/$1/stat" || echo 0; }
rss_of() { [ -n "$1" ] && awk '/VmRSS/ {print $2/1024}' "/proc/$1/status" || echo 0; }

img=$WORK/fs.img
fsdir=$WORK/fs
mkdir -p "$fsdir"
fresh_fs() {
  umount "$fsdir" 2>/dev/null || true
  rm -f "$img"
  truncate -s $(( CKPT_MIB * 2 + SEQ_MIB * 2 + 4096 ))M "$img"
  mkfs.ext4 -q -F "$img"
  mount -o loop "$img" "$fsdir"
}
mnt=$WORK/m
daemon_pid=""
stop_target() {
  if mountpoint -q "$mnt" 2>/dev/null; then
    case $1 in
      rewindfs*) "$rw" umount "$mnt" >/dev/null ;;
      *) fusermount3 -u "$mnt" 2>/dev/null || umount "$mnt" ;;
    esac
  fi
}
cleanup() { stop_target rewindfs || true; umount "$fsdir" 2>/dev/null || true; rm -f "$img"; }
trap cleanup EXIT

# Start target $1 on a fresh filesystem; sets $dir (where to work) and
# $daemon_pid (the FUSE daemon, if any).
start_target() {
  fresh_fs
  local b=$fsdir/b
  mkdir -p "$b" "$mnt"
  daemon_pid=""
  case $1 in
    native) dir=$b ;;
    rewindfs)
      "$rw" mount "$b" "$mnt" --repo "$fsdir/r" --every off --full-every off >/dev/null
      dir=$mnt; daemon_pid=$("$rw" status --repo "$fsdir/r" --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["pid"])') ;;
    rewindfs-writeback)
      "$rw" mount "$b" "$mnt" --repo "$fsdir/r" --every off --full-every off --writeback-cache >/dev/null
      dir=$mnt; daemon_pid=$("$rw" status --repo "$fsdir/r" --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["pid"])') ;;
    rewindfs-untracked)
      REWINDFS_BENCH_UNTRACKED=1 "$rw" mount "$b" "$mnt" --repo "$fsdir/r" --every off --full-every off --snapshot-on-unmount false >/dev/null
      dir=$mnt; daemon_pid=$("$rw" status --repo "$fsdir/r" --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["pid"])') ;;
    bindfs) bindfs "$b" "$mnt"; dir=$mnt; daemon_pid=$(pgrep -n -x bindfs) ;;
    mergerfs)
      # Its documented throughput settings (direct passthrough of reads
      # and writes where the kernel allows, writeback cache).
      mergerfs -o cache.files=auto-full,passthrough.io=rw,cache.writeback=true,category.create=ff "$b" "$mnt" 2>/dev/null \
        || mergerfs -o cache.files=auto-full,category.create=ff "$b" "$mnt"
      dir=$mnt; daemon_pid=$(pgrep -n -x mergerfs) ;;
  esac
}

run_case() { # target -> "name ckpt seqw cpu_per_gib rand meta readc readw dbench rss"
  local name=$1 ck sw c0 c1 cpg rand meta rc rwm db rss
  start_target "$name"
  local d=$dir
  drop
  ck=$(secs python3 scripts/lib/fsops.py checkpoint "$d" "$CKPT_MIB")
  rm -f "$d/ckpt.pt"
  dd if=/dev/zero of="$d/seq" bs=1M count="$SEQ_MIB" conv=fsync status=none
  drop
  c0=$(cpu_of "$daemon_pid")
  sw=$(secs dd if=/dev/zero of="$d/seq" bs=1M count="$SEQ_MIB" conv=notrunc,fsync status=none)
  c1=$(cpu_of "$daemon_pid")
  cpg=$(python3 -c "print(f'{($c1-$c0)/100/($SEQ_MIB/1024):.2f}')")
  drop
  rc=$(secs dd if="$d/seq" of=/dev/null bs=1M status=none)
  rwm=$(secs dd if="$d/seq" of=/dev/null bs=1M status=none)
  if [ "$READ_AFTER" != 0 ]; then
    sleep "$READ_AFTER"; drop
    rc=$(secs dd if="$d/seq" of=/dev/null bs=1M status=none)
    rwm=$(secs dd if="$d/seq" of=/dev/null bs=1M status=none)
  fi
  rm -f "$d/seq"
  rand=$(python3 scripts/lib/fsops.py randwrite "$d/rand" "$RANDW")
  rm -f "$d/rand"
  meta=$(python3 scripts/lib/fsops.py meta4 "$d" "$FILES")
  mkdir -p "$d/db"
  db=$(dbench -c /usr/share/dbench/client.txt -D "$d/db" -t "$DBENCH_SECS" 2 2>/dev/null | awk '/Throughput/ {print $2}')
  rm -rf "$d/db"
  rss=$(rss_of "$daemon_pid")
  stop_target "$name"
  echo "$name $ck $sw $cpg $rand $meta $rc $rwm ${db:-0} $rss"
}

raw=$WORK/raw.txt
: > "$raw"
read -r -a tl <<< "$TARGETS"
for r in $(seq 1 "$ROUNDS"); do
  # Rotate the order each round so no target always runs first.
  n=${#tl[@]}
  for i in $(seq 0 $((n - 1))); do
    t=${tl[$(( (i + r - 1) % n ))]}
    line=$(run_case "$t")
    echo "round $r: $line" >&2
    echo "$line" >> "$raw"
  done
done

python3 - "$raw" "$OUT" "$ROUNDS" "$CKPT_MIB" "$SEQ_MIB" "$FILES" "$RANDW" "$DBENCH_SECS" "$TARGETS" <<'PY'
import statistics, subprocess, sys, datetime, os
raw, out, rounds, ck, seq, files, randw, dbs, targets = sys.argv[1:]
rows = {}
for line in open(raw):
    f = line.split()
    rows.setdefault(f[0], []).append([float(x) for x in f[1:]])
order = [t for t in targets.split() if t in rows]
med = {t: [statistics.median(c) for c in zip(*rows[t])] for t in order}
cols = ["checkpoint", "seq write", "cpu s/GiB", "4K random", "metadata", "read cold", "read warm", "dbench MB/s", "RSS MiB"]
higher = {"dbench MB/s"}
noratio = {"cpu s/GiB", "RSS MiB"}
nat = med.get("native")
def cell(t, i, c):
    v = med[t][i]
    if c in noratio or nat is None or t == "native":
        return f"{v:.2f}" if c != "RSS MiB" else f"{v:.0f}"
    n = nat[i]
    ratio = (v / n) if c in higher else (n / v if v else 0)
    spread = [x[i] for x in rows[t]]
    return f"{v:.2f} ({ratio:.2f})" + (f" [{min(spread):.2f}-{max(spread):.2f}]" if len(spread) > 1 else "")
hdr = f"{os.cpu_count()} cores, {os.uname().release}, {datetime.date.today()}, each target on a fresh loop-mounted ext4 per round, targets alternated, median of {rounds} rounds [min-max]. Checkpoint {ck} MiB; seq write {seq} MiB in place; {randw} x 4 KiB random writes; metadata {files} files (create, stat, rename, unlink); dbench 2 clients {dbs} s. Seconds unless said; (x) is the share of native speed (native time / target time; for dbench target / native MB/s)."
lines = [hdr, "", "| target | " + " | ".join(cols) + " |", "|" + " --- |" * (len(cols) + 1)]
for t in order:
    lines.append(f"| {t} | " + " | ".join(cell(t, i, c) for i, c in enumerate(cols)) + " |")
if "rewindfs" in med and "rewindfs-untracked" in med:
    a, b = med["rewindfs"], med["rewindfs-untracked"]
    lines += ["", f"Tracking cost (rewindfs vs rewindfs-untracked, medians): seq write {a[1]/b[1]-1:+.1%}, 4K random {a[3]/b[3]-1:+.1%}, metadata {a[4]/b[4]-1:+.1%}, dbench {b[7]/a[7]-1 if a[7] else 0:+.1%}."]
text = "\n".join(lines)
print(text)
open(out, "w").write(text + "\n")
PY

if [ "${EPOCH:-1}" = 1 ]; then
  OUT=$WORK/epoch.md REWINDFS_BIN=$rw ROUNDS=$ROUNDS BENCH_DIR=$WORK/epoch scripts/bench-epoch.sh
  { echo; echo "DataLoader-style epochs (scripts/bench-epoch.sh):"; echo; cat "$WORK/epoch.md"; } >> "$OUT"
fi
