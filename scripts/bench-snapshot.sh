#!/usr/bin/env bash
# Snapshot benchmark: rewindfs (scan mode) vs borg and restic, one run, same
# machine, same data. Writes a markdown table to $OUT (default
# target/bench/snapshot.md) and prints it.
#
#   scripts/bench-snapshot.sh            # ~2 GiB dataset
#   CHECKPOINTS=2 CHECKPOINT_MIB=64 SMALL=200 scripts/bench-snapshot.sh   # quick
#
# Needs root (drops the page cache before each timed step), python3 with
# numpy, restic and borgbackup (installed with apt/pip when missing).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
WORK=${BENCH_DIR:-/var/tmp/rewindfs-bench}
OUT=${OUT:-$root/target/bench/snapshot.md}
CHECKPOINTS=${CHECKPOINTS:-5}
CHECKPOINT_MIB=${CHECKPOINT_MIB:-384}
SMALL=${SMALL:-2000}

need_apt=()
command -v restic >/dev/null || need_apt+=(restic)
command -v borg >/dev/null || need_apt+=(borgbackup)
[ -x /usr/bin/time ] || need_apt+=(time)
if [ ${#need_apt[@]} -gt 0 ]; then apt-get install -y -qq "${need_apt[@]}" >/dev/null; fi
python3 -c 'import numpy' 2>/dev/null || pip install -q numpy

# REWINDFS_BIN: measure that build instead (scripts/bench-ab.sh).
if [ -n "${REWINDFS_BIN:-}" ]; then
  rw=$(readlink -f "$REWINDFS_BIN")
else
  cargo build --release --quiet
  rw=$root/target/release/rewindfs
fi

mkdir -p "$WORK" "$(dirname "$OUT")"
src=$WORK/src
stamp="$CHECKPOINTS-$CHECKPOINT_MIB-$SMALL"
if [ "$(cat "$WORK/.dataset" 2>/dev/null)" != "$stamp" ]; then
  rm -rf "$src"
  python3 scripts/lib/gen_dataset.py "$src" --checkpoints "$CHECKPOINTS" \
    --checkpoint-mib "$CHECKPOINT_MIB" --small "$SMALL"
  echo "$stamp" > "$WORK/.dataset"
fi
data_bytes=$(du -sb "$src" | cut -f1)

drop() { sync; echo 3 > /proc/sys/vm/drop_caches; }
# timed LABEL CMD...: runs CMD, records seconds and peak RSS (KiB)
timed() {
  local label=$1; shift
  drop
  /usr/bin/time -f "%e %M" -o "$WORK/time.$label" "$@" > "$WORK/log.$label" 2>&1 \
    || { cat "$WORK/log.$label"; exit 1; }
  read -r secs rss < "$WORK/time.$label"
  eval "T_$label=$secs; M_$label=$rss"
}
size() { du -sb "$1" | cut -f1; }

export RESTIC_PASSWORD=bench BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK=yes
for tool in rewindfs borg restic; do
  repo=$WORK/repo-$tool
  out=$WORK/restore-$tool
  rm -rf "$repo" "$out" "$WORK/undo"
  case $tool in
    rewindfs) "$rw" init --repo "$repo" >/dev/null
              full="'$rw' snapshot --repo '$repo' --source '$src' --kind full"
              incr="'$rw' snapshot --repo '$repo' --source '$src' --kind incremental"
              rest="'$rw' restore --repo '$repo' latest --to '$out'" ;;
    borg)     borg init -e none "$repo" >/dev/null
              full="borg create '$repo::one' '$src'"
              incr="borg create '$repo::two' '$src'"
              rest="mkdir -p '$out' && cd '$out' && borg extract '$repo::two'" ;;
    restic)   restic init -q -r "$repo" >/dev/null
              full="restic -q -r '$repo' backup '$src'"
              incr="restic -q -r '$repo' backup '$src'"
              rest="restic -q -r '$repo' restore latest --target '$out'" ;;
  esac
  timed "${tool}_full" bash -c "$full"
  eval "S_${tool}_full=$(size "$repo")"
  python3 scripts/lib/mutate.py "$src" --fraction 0.01 --save "$WORK/undo" > "$WORK/mutate.log"
  timed "${tool}_incr" bash -c "$incr"
  eval "S_${tool}_incr=$(( $(size "$repo") - S_${tool}_full ))"
  timed "${tool}_rest" bash -c "$rest"
  python3 scripts/lib/mutate.py "$src" --revert "$WORK/undo"
  rm -rf "$out"
done

ratio() { python3 -c "print(f'{$1/$2:.2f}')"; }
mib() { python3 -c "print(f'{$1/1048576:.1f}')"; }
{
  echo "Dataset: $(mib "$data_bytes") MiB ($CHECKPOINTS x $CHECKPOINT_MIB MiB fp32 checkpoints, $SMALL small files); change: $(cat "$WORK/mutate.log")."
  echo "$(nproc) cores, $(uname -r), $(date -u +%Y-%m-%d). Page cache dropped before every step."
  echo
  echo "| tool | full s | full MiB | full RSS MiB | incr s | incr added MiB | incr RSS MiB | restore s | restore RSS MiB |"
  echo "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"
  for t in rewindfs borg restic; do
    eval "echo \"| $t | \$T_${t}_full | \$(mib \$S_${t}_full) | \$(( M_${t}_full / 1024 )) | \$T_${t}_incr | \$(mib \$S_${t}_incr) | \$(( M_${t}_incr / 1024 )) | \$T_${t}_rest | \$(( M_${t}_rest / 1024 )) |\""
  done
  echo
  for t in borg restic; do
    eval "echo \"- $t / rewindfs time: full \$(ratio \$T_${t}_full \$T_rewindfs_full)x, incremental \$(ratio \$T_${t}_incr \$T_rewindfs_incr)x, restore \$(ratio \$T_${t}_rest \$T_rewindfs_rest)x; stored size full \$(ratio \$S_${t}_full \$S_rewindfs_full)x, incremental added \$(ratio \$S_${t}_incr \$S_rewindfs_incr)x\""
  done
} | tee "$OUT"
