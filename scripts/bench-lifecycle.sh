#!/usr/bin/env bash
# A simulated week of training, then retention: SNAPS snapshots of a
# SIZE_MB dataset (64 shards of random data) where 2-5% of the bytes
# change between snapshots (1 MiB pieces rewritten in a few shards) and a
# new 64 MiB checkpoint appears every 12 snapshots (the oldest beyond 3
# are deleted). Snapshot times are spread over 7 days (--time / --time /
# --timestamp). rewindfs (scan snapshots, a full one a day), restic 0.14
# and borg 1.2 back up the same history in the same run; then each applies
# keep-hourly 24 / keep-daily 7 and reclaims space: `rewindfs forget` +
# `rewindfs gc`, `restic forget --prune`, `borg prune` + `borg compact`.
# Prints repository sizes over time and the forget/gc table (seconds,
# peak RSS, sizes) as markdown.
#
#   scripts/bench-lifecycle.sh                     # 300 snapshots of 2 GiB
#   SNAPS=60 SIZE_MB=512 scripts/bench-lifecycle.sh  # quick
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
WORK=${BENCH_DIR:-/var/tmp/rewindfs-bench-lifecycle}
SNAPS=${SNAPS:-300}
SIZE_MB=${SIZE_MB:-2048}
export TZ=UTC
need=()
command -v restic >/dev/null || need+=(restic)
command -v borg >/dev/null || need+=(borgbackup)
[ -x /usr/bin/time ] || need+=(time)
if [ ${#need[@]} -gt 0 ]; then
  apt-get install -y -qq "${need[@]}" >/dev/null
fi
if [ -n "${REWINDFS_BIN:-}" ]; then
  rw=$(readlink -f "$REWINDFS_BIN")
else
  cargo build --release --quiet
  rw=$root/target/release/rewindfs
fi
export RESTIC_PASSWORD=bench RESTIC_CACHE_DIR=$WORK/restic-cache
export BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK=yes BORG_BASE_DIR=$WORK/borg-home
rm -rf "$WORK"; mkdir -p "$WORK/data"
data=$WORK/data
python3 - "$data" "$SIZE_MB" <<'PY'
import os, sys
root, mb = sys.argv[1], int(sys.argv[2])
per = mb // 64
for i in range(64):
    with open(os.path.join(root, f"shard-{i:02d}.bin"), "wb") as f:
        for _ in range(per):
            f.write(os.urandom(1 << 20))
PY
cat > "$WORK/mutate.py" <<'PY'
import os, random, sys
root, step, mb = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
rng = random.Random(step)
per = mb // 64
pieces = max(1, int(mb * rng.uniform(0.02, 0.05)))  # 2-5 % in 1 MiB pieces
shards = rng.sample(range(64), rng.randint(2, 4))
for p in range(pieces):
    s = shards[p % len(shards)]
    with open(os.path.join(root, f"shard-{s:02d}.bin"), "r+b") as f:
        f.seek(rng.randrange(0, per) << 20)
        f.write(os.urandom(1 << 20))
if step % 12 == 0:
    with open(os.path.join(root, f"ckpt-{step:04d}.pt"), "wb") as f:
        for _ in range(64):
            f.write(os.urandom(1 << 20))
    ckpts = sorted(n for n in os.listdir(root) if n.startswith("ckpt-"))
    for n in ckpts[:-3]:
        os.remove(os.path.join(root, n))
PY
"$rw" init --repo "$WORK/rw" >/dev/null
restic init -q --repo "$WORK/restic" >/dev/null
borg init -e none "$WORK/borg"
start=$(date -u -d 2026-11-16T00:00:00Z +%s)
step=$(( 7 * 24 * 3600 / SNAPS ))
per_day=$(( 24 * 3600 / step ))
size() { du -sb "$1" | cut -f1; }
mib() { awk -v b="$1" 'BEGIN { printf "%.0f", b / 1048576 }'; }
declare -A bt=([rw]=0 [restic]=0 [borg]=0)
now_s() { date +%s.%N; }
echo "| snapshots | rewindfs MiB | restic MiB | borg MiB |"
echo "| ---: | ---: | ---: | ---: |"
for i in $(seq 1 "$SNAPS"); do
  [ "$i" -gt 1 ] && python3 "$WORK/mutate.py" "$data" "$i" "$SIZE_MB"
  t=$(( start + i * step ))
  kind=incremental
  [ $(( (i - 1) % per_day )) -eq 0 ] && kind=full
  a=$(now_s)
  "$rw" snapshot --repo "$WORK/rw" --source "$data" --kind $kind \
    --time "$(date -u -d @$t +%Y-%m-%dT%H:%M:%SZ)" >/dev/null
  b=$(now_s)
  restic backup -q --repo "$WORK/restic" --host bench \
    --time "$(date -u -d @$t '+%Y-%m-%d %H:%M:%S')" "$data" >/dev/null
  c=$(now_s)
  borg create --compression zstd,3 --timestamp "$(date -u -d @$t +%Y-%m-%dT%H:%M:%S)" \
    "$WORK/borg::s$i" "$data"
  d=$(now_s)
  bt[rw]=$(echo "${bt[rw]} + $b - $a" | bc)
  bt[restic]=$(echo "${bt[restic]} + $c - $b" | bc)
  bt[borg]=$(echo "${bt[borg]} + $d - $c" | bc)
  if [ $(( i % 50 )) -eq 0 ] || [ "$i" -eq "$SNAPS" ]; then
    echo "| $i | $(mib "$(size "$WORK/rw")") | $(mib "$(size "$WORK/restic")") | $(mib "$(size "$WORK/borg")") |"
  fi
done
echo
echo "backup time for all $SNAPS snapshots: rewindfs ${bt[rw]} s, restic ${bt[restic]} s, borg ${bt[borg]} s"
sync
before_rw=$(size "$WORK/rw"); before_restic=$(size "$WORK/restic"); before_borg=$(size "$WORK/borg")
policy=(--keep-hourly 24 --keep-daily 7)
timed() { /usr/bin/time -f "%e %M" -o "$WORK/t" "$@" >"$WORK/out" 2>&1 || { cat "$WORK/out"; exit 1; }; cat "$WORK/t"; }
sync; echo 3 > /proc/sys/vm/drop_caches 2>/dev/null || true
read -r rw_f_s rw_f_kb < <(timed "$rw" forget --repo "$WORK/rw" "${policy[@]}")
read -r rw_g_s rw_g_kb < <(timed "$rw" gc --repo "$WORK/rw")
sync; echo 3 > /proc/sys/vm/drop_caches 2>/dev/null || true
read -r re_s re_kb < <(timed restic forget -q --repo "$WORK/restic" "${policy[@]}" --prune)
sync; echo 3 > /proc/sys/vm/drop_caches 2>/dev/null || true
read -r bp_s bp_kb < <(timed borg prune "${policy[@]}" "$WORK/borg")
read -r bc_s bc_kb < <(timed borg compact "$WORK/borg")
after_rw=$(size "$WORK/rw"); after_restic=$(size "$WORK/restic"); after_borg=$(size "$WORK/borg")
kept_rw=$("$rw" snapshots --repo "$WORK/rw" --json | python3 -c 'import json,sys; print(len(json.load(sys.stdin)))')
kept_restic=$(restic snapshots --repo "$WORK/restic" --json | python3 -c 'import json,sys; print(len(json.load(sys.stdin)))')
kept_borg=$(borg list --short "$WORK/borg" | wc -l)
"$rw" verify --repo "$WORK/rw" >/dev/null
echo
echo "$(nproc) cores, $(date -u +%Y-%m-%d), $SNAPS snapshots of $SIZE_MB MiB, keep-hourly 24 / keep-daily 7:"
echo
echo "| tool | kept | size before MiB | forget s | gc/prune s | total s | peak RSS MiB | size after MiB |"
echo "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
kb() { awk -v k="$1" 'BEGIN { printf "%.0f", k / 1024 }'; }
max() { [ "$1" -gt "$2" ] && echo "$1" || echo "$2"; }
echo "| rewindfs | $kept_rw | $(mib "$before_rw") | $rw_f_s | $rw_g_s | $(echo "$rw_f_s + $rw_g_s" | bc) | $(kb "$(max "$rw_f_kb" "$rw_g_kb")") | $(mib "$after_rw") |"
echo "| restic forget --prune | $kept_restic | $(mib "$before_restic") | - | - | $re_s | $(kb "$re_kb") | $(mib "$after_restic") |"
echo "| borg prune + compact | $kept_borg | $(mib "$before_borg") | $bp_s | $bc_s | $(echo "$bp_s + $bc_s" | bc) | $(kb "$(max "$bp_kb" "$bc_kb")") | $(mib "$after_borg") |"
rm -rf "$WORK"
