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
export BORG_RELOCATED_REPO_ACCESS_IS_OK=yes
rm -rf "$WORK"; mkdir -p "$WORK"
data=$WORK/data
cat > "$WORK/gen.py" <<'PY'
import os, random, sys
root, mb = sys.argv[1], int(sys.argv[2])
os.makedirs(root)
per = mb // 64
for i in range(64):
    rng = random.Random(1000 + i)
    with open(os.path.join(root, f"shard-{i:02d}.bin"), "wb") as f:
        for _ in range(per):
            f.write(rng.randbytes(1 << 20))
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
        f.write(rng.randbytes(1 << 20))
if step % 12 == 0:
    with open(os.path.join(root, f"ckpt-{step:04d}.pt"), "wb") as f:
        for _ in range(64):
            f.write(rng.randbytes(1 << 20))
    ckpts = sorted(n for n in os.listdir(root) if n.startswith("ckpt-"))
    for n in ckpts[:-3]:
        os.remove(os.path.join(root, n))
PY
start=$(date -u -d 2026-11-16T00:00:00Z +%s)
step=$(( 7 * 24 * 3600 / SNAPS ))
per_day=$(( 24 * 3600 / step ))
size() { du -sb "$1" | cut -f1; }
mib() { awk -v b="$1" 'BEGIN { printf "%.0f", b / 1048576 }'; }
kb() { awk -v k="$1" 'BEGIN { printf "%.0f", k / 1024 }'; }
max() { [ "$1" -gt "$2" ] && echo "$1" || echo "$2"; }
now_s() { date +%s.%N; }
timed() { /usr/bin/time -f "%e %M" -o "$WORK/t" "$@" >"$WORK/out" 2>&1 || { cat "$WORK/out"; exit 1; }; cat "$WORK/t"; }
drop_caches() { sync; echo 3 > /proc/sys/vm/drop_caches 2>/dev/null || true; }
policy=(--keep-hourly 24 --keep-daily 7)
declare -A sizes backup_s row

# One tool's week: backup, then retention. $1: rw | restic | borg
week() {
  local tool=$1 repo=$WORK/$1 i t kind a total=0
  rm -rf "$data"; python3 "$WORK/gen.py" "$data" "$SIZE_MB"
  case $tool in
    rw) "$rw" init --repo "$repo" >/dev/null ;;
    restic) restic init -q --repo "$repo" >/dev/null ;;
    borg) borg init -e none "$repo" ;;
  esac
  for i in $(seq 1 "$SNAPS"); do
    [ "$i" -gt 1 ] && python3 "$WORK/mutate.py" "$data" "$i" "$SIZE_MB"
    t=$(( start + i * step ))
    a=$(now_s)
    case $tool in
      rw)
        kind=incremental
        [ $(( (i - 1) % per_day )) -eq 0 ] && kind=full
        "$rw" snapshot --repo "$repo" --source "$data" --kind $kind \
          --time "$(date -u -d @$t +%Y-%m-%dT%H:%M:%SZ)" >/dev/null ;;
      restic)
        restic backup -q --repo "$repo" --host bench \
          --time "$(date -u -d @$t '+%Y-%m-%d %H:%M:%S')" "$data" >/dev/null ;;
      borg)
        borg create --compression zstd,3 --timestamp "$(date -u -d @$t +%Y-%m-%dT%H:%M:%S)" \
          "$repo::s$i" "$data" ;;
    esac
    total=$(echo "$total + $(now_s) - $a" | bc)
    if [ $(( i % 50 )) -eq 0 ] || [ "$i" -eq "$SNAPS" ]; then
      sizes[$tool,$i]=$(mib "$(size "$repo")")
    fi
  done
  backup_s[$tool]=$total
  local before kept after f_s f_kb g_s g_kb
  before=$(size "$repo")
  drop_caches
  case $tool in
    rw)
      read -r f_s f_kb < <(timed "$rw" forget --repo "$repo" "${policy[@]}")
      read -r g_s g_kb < <(timed "$rw" gc --repo "$repo")
      "$rw" verify --repo "$repo" >/dev/null
      kept=$("$rw" snapshots --repo "$repo" --json | python3 -c 'import json,sys; print(len(json.load(sys.stdin)))')
      row[$tool]="| rewindfs forget + gc | $kept | $(mib "$before") | $f_s | $g_s | $(echo "$f_s + $g_s" | bc) | $(kb "$(max "$f_kb" "$g_kb")") |" ;;
    restic)
      read -r g_s g_kb < <(timed restic forget -q --repo "$repo" "${policy[@]}" --prune)
      kept=$(restic snapshots --repo "$repo" --json | python3 -c 'import json,sys; print(len(json.load(sys.stdin)))')
      row[$tool]="| restic forget --prune | $kept | $(mib "$before") | - | - | $g_s | $(kb "$g_kb") |" ;;
    borg)
      read -r f_s f_kb < <(timed borg prune "${policy[@]}" "$repo")
      read -r g_s g_kb < <(timed borg compact "$repo")
      kept=$(borg list --short "$repo" | wc -l)
      row[$tool]="| borg prune + compact | $kept | $(mib "$before") | $f_s | $g_s | $(echo "$f_s + $g_s" | bc) | $(kb "$(max "$f_kb" "$g_kb")") |" ;;
  esac
  after=$(size "$repo")
  row[$tool]="${row[$tool]} $(mib "$after") |"
  rm -rf "$repo"
}

for tool in rw restic borg; do week $tool; done
echo "$(nproc) cores, $(date -u +%Y-%m-%d), $SNAPS snapshots of $SIZE_MB MiB over 7 days, 2-5% changed between snapshots; keep-hourly 24 / keep-daily 7"
echo
echo "| snapshots | rewindfs MiB | restic MiB | borg MiB |"
echo "| ---: | ---: | ---: | ---: |"
for i in $(seq 1 "$SNAPS"); do
  if [ -n "${sizes[rw,$i]:-}" ]; then
    echo "| $i | ${sizes[rw,$i]} | ${sizes[restic,$i]} | ${sizes[borg,$i]} |"
  fi
done
echo
echo "backup time for all $SNAPS snapshots: rewindfs ${backup_s[rw]} s, restic ${backup_s[restic]} s, borg ${backup_s[borg]} s"
echo
echo "| tool | kept | size before MiB | forget s | gc/prune s | total s | peak RSS MiB | size after MiB |"
echo "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
echo "${row[rw]}"
echo "${row[restic]}"
echo "${row[borg]}"
rm -rf "$WORK"
