#!/usr/bin/env bash
# Before/after: run the benchmark scripts (scripts/bench-*.sh) against two
# rewindfs builds in one session, alternating A B B A so that drift of the
# machine (page cache, thermal, background work) hits both alike, and
# print every result side by side. Quick sizes by default; the scripts'
# own variables (SIZE_MIB, FILES, ...) still apply.
#
#   scripts/bench-ab.sh OLD_BIN NEW_BIN [live flusher snapshot views]
#
# Needs what the individual scripts need (root, fuse3, bindfs, restic,
# borg, numpy, safetensors; installed when missing).
set -euo pipefail
cd "$(dirname "$0")/.."
a=$(readlink -f "$1")
b=$(readlink -f "$2")
shift 2
benches=("$@")
[ ${#benches[@]} -gt 0 ] || benches=(live flusher snapshot views)
out=${AB_DIR:-target/bench/ab}
mkdir -p "$out"
export SIZE_MIB=${SIZE_MIB:-256} FILES=${FILES:-2000} RANDW=${RANDW:-5000}
export ROUNDS=${ROUNDS:-20} BIG_MIB=${BIG_MIB:-256}
export CHECKPOINTS=${CHECKPOINTS:-2} CHECKPOINT_MIB=${CHECKPOINT_MIB:-128} SMALL=${SMALL:-500}
for bench in "${benches[@]}"; do
  i=0
  for label in A B B A; do
    i=$((i + 1))
    bin=$a; [ "$label" = B ] && bin=$b
    f="$out/$bench-$label-$i.md"
    echo "== $bench, build $label (run $i of 4)" >&2
    # The flusher benchmark's dataset size follows FILES only when set for it.
    if [ "$bench" = flusher ]; then
      FILES=${FLUSHER_FILES:-20000} REWINDFS_BIN=$bin OUT=$f "scripts/bench-$bench.sh" >/dev/null
    else
      REWINDFS_BIN=$bin OUT=$f "scripts/bench-$bench.sh" >/dev/null
    fi
  done
done
{
  echo "A = $a"
  echo "B = $b"
  for bench in "${benches[@]}"; do
    echo
    echo "### $bench"
    for f in "$out/$bench"-*.md; do
      echo
      echo "#### $(basename "$f" .md)"
      echo
      cat "$f"
    done
  done
} | tee "$out/summary.md"
