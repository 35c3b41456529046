#!/usr/bin/env bash
# DataLoader-style epochs (scripts/lib/epoch.py: worker processes open,
# read and close every file once, shuffled) on native BACKING, through a
# rewindfs live mount of the same BACKING, and through bindfs; cold (page
# cache dropped) and warm (again at once), medians of ROUNDS rounds with
# targets alternated. Prints a markdown table (also written to $OUT,
# default target/bench/epoch.md); scripts/bench-live.sh runs it too.
#
#   scripts/bench-epoch.sh                         # 20,000 small files, 4 x 256 MiB shards, 2 and 8 workers, 3 rounds
#   ROUNDS=1 SMALL=5000 SHARDS=2 scripts/bench-epoch.sh   # quick
#   PASSTHROUGH_HP=/path/to/libfuse/build/example/passthrough_hp \
#     TARGETS="native rewindfs hp hp-uring" scripts/bench-epoch.sh
#   TARGETS="native view snapshot" scripts/bench-epoch.sh   # dataset versions (bench-views.sh)
#   REMOTE=s3://BUCKET/PREFIX TARGETS="native remote" ...   # from S3 (bench-remote.sh)
#
# Targets: native (BACKING itself), rewindfs (the live mount), bindfs,
# view (MOUNT/.snapshots/latest of the live mount), snapshot (the same
# version through `mount-snapshot`, no materialized copies), remote
# (`mount-snapshot --remote`, after a push to REMOTE), hp / hp-uring.
#
# hp and hp-uring are libfuse's own example daemon (passthrough_hp, libfuse
# 3.18+, with FUSE passthrough), over /dev/fuse reads and writes and over
# FUSE-over-io_uring (-o io_uring; this sets the fuse module's
# enable_uring): what the transport alone changes for a daemon answering
# open and release, which fuser 0.18 cannot do yet.
#
# The datasets are written natively into BACKING once (kept in $WORK) and
# have settled (written more than 5 s before the mount): rewindfs then
# serves their reads by passthrough. The mount's first snapshot is taken
# and committed before the first epoch. Columns: seconds, and (x) the
# target's time over native's (1.00 = native speed, lower is better);
# CPU: seconds of the readers (workers) and of the FUSE daemon, per 1,000
# files for small files and per GiB for shards.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
WORK=${BENCH_DIR:-/var/tmp/rewindfs-bench-epoch}
OUT=${OUT:-$root/target/bench/epoch.md}
ROUNDS=${ROUNDS:-3}
SMALL=${SMALL:-20000}
SHARDS=${SHARDS:-4}
SHARD_MIB=${SHARD_MIB:-256}
WORKERS=${WORKERS:-"2 8"}
TARGETS=${TARGETS:-"native rewindfs bindfs"}
MOUNT_ARGS=${MOUNT_ARGS:-}
command -v bindfs >/dev/null || apt-get install -y -qq bindfs >/dev/null
if [ -n "${REWINDFS_BIN:-}" ]; then
  rw=$(readlink -f "$REWINDFS_BIN")
else
  cargo build --release --quiet
  rw=$root/target/release/rewindfs
fi
ep="python3 $root/scripts/lib/epoch.py"
b=$WORK/backing; mnt=$WORK/m; repo=$WORK/repo
mkdir -p "$WORK" "$mnt" "$(dirname "$OUT")"
stamp=$b/.generated-$SMALL-$SHARDS-$SHARD_MIB
if [ ! -e "$stamp" ]; then
  rm -rf "$b" "$repo.snap" "$repo.remote"; mkdir -p "$b"
  $ep gen-small "$b/small" "$SMALL"
  $ep gen-shards "$b/shards" "$SHARDS" "$SHARD_MIB"
  touch "$stamp"
  sync; sleep 6
fi
drop() { sync; echo 3 > /proc/sys/vm/drop_caches; }
cpu_of() { [ -n "$1" ] && awk '{print ($14+$15)/100}' "/proc/$1/stat" || echo 0; }
pid=""
uring_param=/sys/module/fuse/parameters/enable_uring
uring_was=$(cat "$uring_param" 2>/dev/null || echo N)
cleanup() {
  [ -w "$uring_param" ] && echo "$uring_was" > "$uring_param" 2>/dev/null || true
  if mountpoint -q "$mnt"; then "$rw" umount "$mnt" >/dev/null 2>&1 || fusermount3 -u "$mnt" || true; fi
}
trap cleanup EXIT
start() { # target -> sets $dir and $pid
  pid=""
  case $1 in
    native) dir=$b ;;
    rewindfs)
      rm -rf "$repo"
      # shellcheck disable=SC2086
      "$rw" mount "$b" "$mnt" --repo "$repo" --every off --full-every off --snapshot-on-unmount false $MOUNT_ARGS >/dev/null
      "$rw" snapshot -C "$mnt" >/dev/null
      pid=$("$rw" status -C "$mnt" --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["pid"])')
      dir=$mnt ;;
    bindfs) bindfs "$b" "$mnt"; pid=$(pgrep -n -x bindfs); dir=$mnt ;;
    view)
      # A dataset version read from the live mount's .snapshots (the
      # daemon that serves the live tree serves the view).
      rm -rf "$repo"
      # shellcheck disable=SC2086
      "$rw" mount "$b" "$mnt" --repo "$repo" --every off --full-every off --snapshot-on-unmount false $MOUNT_ARGS >/dev/null
      "$rw" snapshot -C "$mnt" >/dev/null
      pid=$("$rw" status -C "$mnt" --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["pid"])')
      dir=$mnt/.snapshots/latest ;;
    snapshot)
      # The same version as a standalone read-only mount (mount-snapshot),
      # with its first reads through the daemon (no materialized copies:
      # an epoch reads each file once).
      if [ ! -e "$repo.snap/config" ]; then
        rm -rf "$repo.snap"
        "$rw" init --repo "$repo.snap" >/dev/null
        "$rw" snapshot --repo "$repo.snap" --source "$b" >/dev/null 2>&1
      fi
      "$rw" mount-snapshot --repo "$repo.snap" --materialize-cache 0 latest "$mnt" >/dev/null
      pid=$("$rw" status --repo "$repo.snap" --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["pid"])')
      dir=$mnt ;;
    remote)
      # The version read straight from an S3 remote (mount-snapshot
      # --remote): REMOTE=s3://BUCKET/PREFIX and the AWS_* variables of
      # the server (scripts/bench-remote.sh sets them); pushed once.
      [ -n "${REMOTE:-}" ] || { echo "target remote needs REMOTE=s3://BUCKET/PREFIX" >&2; exit 2; }
      if [ ! -e "$repo.remote/config" ]; then
        rm -rf "$repo.remote"
        "$rw" init --repo "$repo.remote" >/dev/null
        "$rw" snapshot --repo "$repo.remote" --source "$b" >/dev/null 2>&1
        "$rw" remote add --repo "$repo.remote" epoch "$REMOTE" --host epoch >/dev/null
        "$rw" push --repo "$repo.remote" >/dev/null
      fi
      "$rw" mount-snapshot --remote "$REMOTE" --host epoch latest "$mnt" >/dev/null 2>&1
      pid=$(pgrep -n -f "rewindfs.*mount-snapshot.*--remote" || true)
      dir=$mnt ;;
    hp|hp-uring)
      [ -x "${PASSTHROUGH_HP:-}" ] || { echo "target $1 needs PASSTHROUGH_HP (libfuse's example/passthrough_hp)" >&2; exit 2; }
      local o=()
      if [ "$1" = hp-uring ]; then
        echo 1 > "$uring_param"
        o=(-o io_uring)
      fi
      # It keeps a descriptor per inode it knows (rewindfs keeps a
      # bounded cache of them): raise its limit to the hard one, which
      # must exceed the dataset's files (use a smaller SMALL otherwise).
      (ulimit -n "$(ulimit -Hn)"; "$PASSTHROUGH_HP" "${o[@]}" "$b" "$mnt")
      pid=$(pgrep -n -f "passthrough_hp.* $mnt\$"); dir=$mnt ;;
  esac
}
stop() {
  case $1 in
    native) ;;
    rewindfs|view|snapshot|remote) "$rw" umount "$mnt" >/dev/null ;;
    *) fusermount3 -u "$mnt" ;;
  esac
}
raw=$WORK/raw.txt
: > "$raw"
read -r -a tl <<< "$TARGETS"
for r in $(seq 1 "$ROUNDS"); do
  n=${#tl[@]}
  for i in $(seq 0 $((n - 1))); do
    t=${tl[$(( (i + r - 1) % n ))]}
    start "$t"
    for set in small shards; do
      for w in $WORKERS; do
        for temp in cold warm; do
          [ "$temp" = cold ] && drop
          c0=$(cpu_of "$pid")
          read -r s files bytes cpu < <($ep run "$dir/$set" "$w" "$r")
          c1=$(cpu_of "$pid")
          d=$(python3 -c "print(f'{$c1-$c0:.2f}')")
          echo "$t $set $w $temp $s $files $bytes $cpu $d" >> "$raw"
          echo "round $r: $t $set workers=$w $temp: $s s ($files files, $bytes bytes; cpu readers $cpu s, daemon $d s)" >&2
        done
      done
    done
    stop "$t"
  done
done

python3 - "$raw" "$OUT" "$ROUNDS" "$SMALL" "$SHARDS" "$SHARD_MIB" "$TARGETS" "$MOUNT_ARGS" <<'PY'
import datetime, os, statistics, sys
raw, out, rounds, small, shards, shard_mib, targets, margs = sys.argv[1:]
rows = {}
for line in open(raw):
    t, st, w, temp, s, files, nbytes, cpu, dcpu = line.split()
    rows.setdefault((st, int(w), temp, t), []).append((float(s), int(files), int(nbytes), float(cpu), float(dcpu)))
tl = [t for t in targets.split()]
med = lambda xs: statistics.median(xs)
hdr = (f"{os.cpu_count()} cores, {os.uname().release}, {datetime.date.today()}; small: {small} files of 4-16 KiB, "
       f"100 per directory; shards: {shards} x {shard_mib} MiB; every file read once per epoch in shuffled order by "
       f"a pool of worker processes (batches of 16 small files per task); cold: page cache dropped before the epoch, "
       f"warm: the next epoch at once. Median of {rounds} rounds [min-max]; (x) = target time / native time."
       + (f" rewindfs mounted with `{margs}`." if margs else ""))
lines = [hdr, "", "| dataset | workers | cache | " + " | ".join(f"{t} (s)" for t in tl)
         + " | CPU readers / daemon per unit, " + " / ".join(t for t in tl if t != "native") + " |",
         "|" + " --- |" * (4 + len(tl))]
for st in ("small", "shards"):
    for w in sorted({k[1] for k in rows}):
        for temp in ("cold", "warm"):
            nat = rows.get((st, w, temp, "native"))
            if not nat:
                continue
            n = med([x[0] for x in nat])
            cells, cpu = [], []
            for t in tl:
                xs = rows.get((st, w, temp, t))
                if not xs:
                    cells.append("-"); continue
                v = med([x[0] for x in xs])
                sp = [x[0] for x in xs]
                rng = f" [{min(sp):.2f}-{max(sp):.2f}]" if len(sp) > 1 else ""
                cells.append(f"{v:.2f}" + ("" if t == "native" else f" ({v / n:.2f}x)") + rng)
                units = xs[0][1] / 1000 if st == "small" else xs[0][2] / 2**30
                c = med([x[3] for x in xs]) / units
                dc = med([x[4] for x in xs]) / units
                cpu.append(f"{c:.3f}" if t == "native" else f"{c:.3f} / {dc:.3f}")
            unit = "s per 1,000 files" if st == "small" else "s per GiB"
            lines.append(f"| {st} | {w} | {temp} | " + " | ".join(cells) + f" | {unit}: " + "; ".join(cpu) + " |")
text = "\n".join(lines)
print(text)
open(out, "w").write(text + "\n")
PY
