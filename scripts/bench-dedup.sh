#!/usr/bin/env bash
# Checkpoint-aware deduplication: rewindfs (content chunks, and fixed blocks
# as before them) vs restic and borg on the same sequence of checkpoint
# versions, one run. Writes a markdown report to $OUT (default
# target/bench/dedup.md) and prints it.
#
#   scripts/bench-dedup.sh                 # versions + 1 GiB throughput
#   THROUGHPUT_MIB=256 ROUNDS=1 scripts/bench-dedup.sh     # quick
#
# 1. Versions (scripts/lib/ckpt_versions.py): a ~60 MiB mixed fp32/bf16
#    safetensors checkpoint, then head fine-tuning, LoRA added, trained and
#    merged, a metadata-only save, a vocabulary extension, a full
#    fine-tune. After each version: one snapshot per tool of the folder
#    (rewindfs: scan snapshot; restic backup; borg create), and the bytes
#    its repository grew by on disk (rewindfs: packs and records; its
#    index and caches are rebuildable and left out, as restic's and borg's
#    caches outside the repository are).
# 2. Throughput: THROUGHPUT_MIB of new checkpoints (16 files), a scan
#    snapshot with content chunks and with fixed blocks
#    (REWINDFS_FIXED_BLOCKS=1), page cache dropped first; then the first
#    read of every file through `mount-snapshot` (cold page cache, no
#    materialized copies). Best of ROUNDS.
#
# Needs root (drops the page cache), python3 with numpy and safetensors,
# restic and borgbackup (installed when missing).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
WORK=${BENCH_DIR:-/var/tmp/rewindfs-bench-dedup}
OUT=${OUT:-$root/target/bench/dedup.md}
THROUGHPUT_MIB=${THROUGHPUT_MIB:-1024}
ROUNDS=${ROUNDS:-3}

need_apt=()
command -v restic >/dev/null || need_apt+=(restic)
command -v borg >/dev/null || need_apt+=(borgbackup)
if [ ${#need_apt[@]} -gt 0 ]; then apt-get install -y -qq "${need_apt[@]}" >/dev/null; fi
python3 -c 'import numpy, safetensors' 2>/dev/null || pip install -q numpy safetensors

if [ -n "${REWINDFS_BIN:-}" ]; then
  rw=$(readlink -f "$REWINDFS_BIN")
else
  cargo build --release --quiet
  rw=$root/target/release/rewindfs
fi
gen=$root/scripts/lib/ckpt_versions.py
export RESTIC_PASSWORD=bench BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK=yes
export BORG_RELOCATED_REPO_ACCESS_IS_OK=yes

rm -rf "$WORK"
mkdir -p "$WORK" "$(dirname "$OUT")"
src=$WORK/src
mkdir -p "$src"
drop() { sync; echo 3 > /proc/sys/vm/drop_caches; }
now() { date +%s.%N; }
# Bytes a repository holds (rewindfs: packs and snapshot records only).
repo_bytes() {
  case $1 in
    rw|fixed) du -sb "$WORK/$1/packs" "$WORK/$1/snapshots" | awk '{s+=$1} END {print s}' ;;
    *) du -sb "$WORK/$1" | cut -f1 ;;
  esac
}

"$rw" init --repo "$WORK/rw" >/dev/null
"$rw" init --repo "$WORK/fixed" >/dev/null
restic init -q -r "$WORK/restic" >/dev/null
borg init -e none "$WORK/borg" >/dev/null

declare -A before
for t in rw fixed restic borg; do before[$t]=$(repo_bytes $t); done
rows=()
mapfile -t names < <(python3 "$gen" names)
for line in "${names[@]}"; do
  k=${line%%$'\t'*}; what=${line#*$'\t'}
  python3 "$gen" version "$src" "$k"
  raw=$(stat -c %s "$src/model.safetensors")
  "$rw" snapshot --repo "$WORK/rw" --source "$src" >/dev/null
  REWINDFS_FIXED_BLOCKS=1 "$rw" snapshot --repo "$WORK/fixed" --source "$src" >/dev/null
  restic -q -r "$WORK/restic" backup "$src" >/dev/null
  borg create "$WORK/borg::v$k" "$src" >/dev/null
  row="| $k | $what | $(awk -v b="$raw" 'BEGIN{printf "%.1f", b/1048576}')"
  for t in rw fixed restic borg; do
    b=$(repo_bytes $t)
    row+=" | $(awk -v n="$((b - ${before[$t]}))" 'BEGIN{printf "%.3f", n/1048576}')"
    before[$t]=$b
  done
  # What rewindfs's record says it shares with the file's last version.
  shared=$("$rw" snapshots --repo "$WORK/rw" --json | python3 -c '
import json,sys
s = json.load(sys.stdin)[-1]
print("%.1f / %.1f" % ((s.get("shared_bytes") or 0) / 2**20, (s.get("rewritten_bytes") or 0) / 2**20))')
  rows+=("$row | $shared |")
done
total() { awk -v b="$(repo_bytes "$1")" 'BEGIN{printf "%.1f", b/1048576}'; }

# The first version's stored/raw (the byte-plane codec on fp32 and bf16).
first_ratio() {
  "$rw" snapshots --repo "$WORK/$1" --json | python3 -c '
import json,sys
s = json.load(sys.stdin)[0]
print("%.3f" % (s["stored_bytes"] / s["logical_bytes"]))'
}

# Throughput.
tp=$WORK/tp
mkdir -p "$tp"
python3 "$gen" many "$tp" 16 $((THROUGHPUT_MIB / 16))
tp_bytes=$(du -sb "$tp" | cut -f1)
mnt=$WORK/mnt
mkdir -p "$mnt"
best_cap_rw=999999; best_cap_fixed=999999; best_read_rw=999999; best_read_fixed=999999
for r in $(seq "$ROUNDS"); do
  for t in rw fixed; do
    repo=$WORK/tp-$t
    rm -rf "$repo"
    "$rw" init --repo "$repo" >/dev/null
    env=()
    [ "$t" = fixed ] && env=(REWINDFS_FIXED_BLOCKS=1)
    drop
    t0=$(now)
    env "${env[@]}" "$rw" snapshot --repo "$repo" --source "$tp" >/dev/null
    cap=$(awk -v a="$t0" -v b="$(now)" 'BEGIN{print b-a}')
    "$rw" mount-snapshot --repo "$repo" --materialize-cache 0 latest "$mnt" >/dev/null
    drop
    t0=$(now)
    cat "$mnt"/*.safetensors > /dev/null
    rd=$(awk -v a="$t0" -v b="$(now)" 'BEGIN{print b-a}')
    "$rw" umount "$mnt" >/dev/null
    eval "c=\$best_cap_$t; d=\$best_read_$t"
    eval "best_cap_$t=$(awk -v x="$cap" -v y="$c" 'BEGIN{print (x<y)?x:y}')"
    eval "best_read_$t=$(awk -v x="$rd" -v y="$d" 'BEGIN{print (x<y)?x:y}')"
  done
done
mibs() { awk -v b="$tp_bytes" -v s="$1" 'BEGIN{printf "%.0f", b/1048576/s}'; }

{
  echo "Measured $(date -u +%F) on $(nproc) cores: \`$0\` (THROUGHPUT_MIB=$THROUGHPUT_MIB ROUNDS=$ROUNDS)"
  echo
  echo "New MiB stored per version (repository growth on disk; rewindfs: packs and records)."
  echo "\"fixed\" is rewindfs storing files read whole in fixed 1 MiB blocks, as before content chunks."
  echo
  echo "| # | version | file MiB | rewindfs | fixed | restic | borg | shared / rewritten MiB (rewindfs) |"
  echo "| --- | --- | --- | --- | --- | --- | --- | --- |"
  printf '%s\n' "${rows[@]}"
  echo "| | repository total MiB | | $(total rw) | $(total fixed) | $(total restic) | $(total borg) | |"
  echo
  echo "First version stored/raw (byte planes on fp32 and bf16): content chunks $(first_ratio rw), fixed blocks $(first_ratio fixed)."
  echo
  echo "Throughput on $((tp_bytes / 1048576)) MiB of new checkpoints (best of $ROUNDS, cold page cache):"
  echo
  echo "| | content chunks | fixed blocks | ratio |"
  echo "| --- | --- | --- | --- |"
  echo "| scan snapshot s (MiB/s) | $best_cap_rw ($(mibs "$best_cap_rw")) | $best_cap_fixed ($(mibs "$best_cap_fixed")) | $(awk -v a="$best_cap_fixed" -v b="$best_cap_rw" 'BEGIN{printf "%.2f", a/b}') |"
  echo "| first read via mount-snapshot s (MiB/s) | $best_read_rw ($(mibs "$best_read_rw")) | $best_read_fixed ($(mibs "$best_read_fixed")) | $(awk -v a="$best_read_fixed" -v b="$best_read_rw" 'BEGIN{printf "%.2f", a/b}') |"
} > "$OUT"
cat "$OUT"
