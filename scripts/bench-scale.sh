#!/usr/bin/env bash
# Scale benchmark: how rewindfs behaves as the file count grows. For each
# size in SIZES (files of 4 KiB, 100 per directory, generated natively in
# BACKING by scripts/lib/scale_gen.py and kept in BENCH_DIR between runs),
# a fresh repository, a live mount of BACKING (no cadence: every snapshot
# is taken on request) and SNAPS incremental snapshots of small changes
# (FEW files rewritten through the mount before each), then the commands a
# user runs on the result. Prints a markdown table, one column per size
# plus the growth between consecutive sizes (larger / smaller: with the
# default sizes, 10x apart, the growth per 10x more files) (also
# written to $OUT, default target/bench/scale.md).
#
# Rows, in the order they are measured (times are wall clock of the CLI
# command; with a live mount the daemon does the work, so its memory
# figures include snapshots, ls, diff, stats, restore, forget, gc, verify):
#   cold find              `find BACKING -printf '%s %T@\n'`, page cache dropped
#   first snapshot         page cache dropped; `rewindfs mount` until
#                          `rewindfs snapshot -C MNT` returns with snapshot 1
#                          (full: reads every file); files/s and x find from
#                          that wall time; capture = the flusher's own
#                          last_duration_ms; cut = status flusher.last_cut_ms
#   small incrementals     SNAPS x (FEW files rewritten through MNT, then
#                          `rewindfs snapshot -C MNT`): median wall time, and
#                          p50/max of the cut pause (flusher.last_cut_ms)
#   manifest bytes         from REPO/snapshots/*.json of the small
#                          incrementals: median stored_bytes (everything the
#                          snapshot appended to packs: data chunks with their
#                          88-byte blob headers + manifest parts), median
#                          manifest bytes stored = stored_bytes - changed
#                          blocks x (4096 + 88) (exact: 4 KiB random blocks
#                          are stored raw, one new chunk each; with manifest
#                          format 3 this includes the directory objects; n/a
#                          if a record shows otherwise) and
#                          median manifest_len (the manifest before zstd)
#   repo growth / incr.    du -sb REPO before and after the small
#                          incrementals, divided by SNAPS (packs, index,
#                          snapshot records)
#   incremental of 100     100 files rewritten through MNT, then the time of
#                          `rewindfs snapshot -C MNT` (at chain depth
#                          SNAPS + 1), its cut pause and its stored/manifest
#                          bytes as above
#   daemon memory          VmRSS (steady: after 3 s idle, as the daemon
#                          returns freed memory 2 s after its last request)
#                          and VmHWM (peak) of the daemon
#                          (pid from `status --json`) after the first
#                          snapshot, after all the snapshots, and at the end
#   repository size        du -sb REPO after the snapshots and after gc
#   first ls -l            page cache dropped, `ls -l` of a 100-entry
#                          directory of the oldest (full) and of the newest
#                          snapshot through MNT/.snapshots/NAME/dXXX/dXXXXX;
#                          nothing of either snapshot was opened through the
#                          mount, nor read by another command, before
#   snapshots              `rewindfs snapshots -C MNT`: the first call right
#                          after the 100-file incremental (its unique sizes
#                          brought up to date by the daemon after the
#                          commit, or by the call if it comes first), then
#                          the median of ROUNDS
#   diff                   `rewindfs diff` of the two newest snapshots
#                          (adjacent: 100 files changed) and of the oldest and
#                          newest (distant)
#   stats                  `rewindfs stats`: the first call in the daemon
#                          (every figure computed whole), then FEW files
#                          rewritten and one more snapshot, then `stats`
#                          again (figures brought up to date from it)
#   restore one file       `rewindfs restore latest PATH --to DIR`
#   forget + gc            `rewindfs forget` of one snapshot in the middle of
#                          the chain, then `rewindfs gc`; then of a batch of
#                          the oldest incrementals (100, or half of those
#                          left when there are fewer than 200), then gc
#   verify                 `rewindfs verify` (references, not data), after gc
#   remount                page cache dropped, `rewindfs mount` again until
#                          status says the mount-time check is done; the
#                          daemon's RSS and peak; then FEW files rewritten
#                          through MNT and the time of `rewindfs snapshot`,
#                          RSS and peak after it
# Every timed command runs with the page cache dropped first (the daemon's
# own caches stay, as they would on a live mount). Those that change
# nothing (snapshots, diff, stats, restore, verify) give the median of
# ROUNDS (3) such runs; the others are measured once (a first snapshot, a
# first ls, a forget and a gc happen once).
#
# Figures that can be "n/a", and why: the forget batch when fewer than two
# incrementals are left to forget (SNAPS < 4); manifest bytes when a data
# block was not stored raw (then the data share of stored_bytes is not
# known exactly); a growth factor when a value is zero or n/a.
#
#   scripts/bench-scale.sh                                   # 10^4..10^6 files, 1000 snapshots
#   SIZES="10000 20000" SNAPS=20 scripts/bench-scale.sh      # quick
#
# Env: SIZES, SNAPS (1000), FEW (files rewritten per small snapshot, 10),
# ROUNDS (3), MOUNT_ARGS (more flags for both mounts, e.g. "--index-cache
# 2M" to see the daemon's memory outside the index's configured cache),
# BENCH_DIR (/var/tmp/rewindfs-bench-scale; datasets are kept there as
# data-N), OUT, REWINDFS_BIN (measure that build; default: cargo build
# --release). Needs root (drops the page cache, mounts) and fuse3.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
cmdline="$(for v in SIZES SNAPS FEW ROUNDS MOUNT_ARGS BENCH_DIR OUT REWINDFS_BIN; do
  [ -n "${!v:-}" ] && printf '%s="%s" ' "$v" "${!v}"; done)scripts/bench-scale.sh"
WORK=${BENCH_DIR:-/var/tmp/rewindfs-bench-scale}
OUT=${OUT:-$root/target/bench/scale.md}
SIZES=${SIZES:-10000 100000 1000000}
SNAPS=${SNAPS:-1000}
FEW=${FEW:-10}
ROUNDS=${ROUNDS:-3}
read -r -a mount_args <<< "${MOUNT_ARGS:-}"
[ "$(id -u)" = 0 ] || { echo "bench-scale.sh needs root (drop_caches, mounts)" >&2; exit 1; }
for n in $SIZES; do
  if [ "$n" -lt 1000 ] || [ $((n % 100)) -ne 0 ]; then
    echo "each size must be a multiple of 100, at least 1000 (got $n)" >&2; exit 1
  fi
done
[ "$SNAPS" -ge 2 ] || { echo "SNAPS must be at least 2" >&2; exit 1; }
if [ -n "${REWINDFS_BIN:-}" ]; then
  rw=$(readlink -f "$REWINDFS_BIN")
else
  cargo build --release --quiet
  rw=$root/target/release/rewindfs
fi
gen="python3 $root/scripts/lib/scale_gen.py"
mkdir -p "$WORK" "$(dirname "$OUT")"
res=$WORK/results.tsv
: > "$res"

cleanup() {
  for m in "$WORK"/mnt-*; do
    [ -d "$m" ] || continue
    grep -qs " $m " /proc/mounts || continue   # also a dead FUSE mount
    "$rw" umount "$m" >/dev/null 2>&1 || fusermount3 -u "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || true
  done
}
trap cleanup EXIT
cleanup

drop() { sync; echo 3 > /proc/sys/vm/drop_caches; }
now() { date +%s.%N; }
# secs CMD...: run CMD (stdout discarded), print its wall time in seconds.
secs() {
  local a b
  a=$(now)
  "$@" >/dev/null 2>"$WORK/err" || { echo "failed: $*" >&2; cat "$WORK/err" >&2; return 1; }
  b=$(now)
  awk -v a="$a" -v b="$b" 'BEGIN { printf "%.6f", b - a }'
}
# cold CMD...: secs, page cache dropped first; the program itself is
# loaded again before the clock starts (a cold exec of the 120 MB CLI costs
# ~20 ms here, which is not the repository's work).
cold() { drop; "$1" --version >/dev/null 2>&1 || true; secs "$@"; }
# cold3 CMD...: the median of ROUNDS cold runs (for commands that change
# nothing).
cold3() {
  local i v=()
  for i in $(seq 1 "$ROUNDS"); do v+=("$(cold "$@")") || return 1; done
  python3 -c 'import statistics,sys; print(statistics.median(map(float, sys.argv[1:])))' "${v[@]}"
}
ms() { awk -v s="$1" 'BEGIN { printf "%.3f", s * 1000 }'; }
put() { printf '%s\t%s\t%s\n' "$n" "$1" "$2" >> "$res"; }
jq_() { python3 -c "import json,sys; d=json.load(sys.stdin); print($1)"; }
status_json() { "$rw" status -C "$mnt" --json; }
proc() { awk -v k="$2:" '$1 == k { print $2 }' "/proc/$1/status"; }   # KiB
dirpath() { local d=$(($1 / 100)); printf 'd%03d/d%05d' $((d / 100)) "$d"; }

for n in $SIZES; do
  echo "== $n files" >&2
  data=$WORK/data-$n repo=$WORK/repo-$n mnt=$WORK/mnt-$n
  if [ "$(cat "$data.ok" 2>/dev/null)" != "v1 $n" ]; then
    echo "generating $n files in $data" >&2
    rm -rf "$data" "$data.tmp" "$data.ok"
    nice -n 10 $gen gen "$data.tmp" "$n"
    mv "$data.tmp" "$data"
    echo "v1 $n" > "$data.ok"
  fi
  rm -rf "$repo" "$WORK/restore-$n"; mkdir -p "$mnt"
  "$rw" init --repo "$repo" >/dev/null

  # First snapshot against a cold find of the same tree.
  t=$(cold find "$data" -printf '%s %T@\n'); put find_s "$t"
  drop
  a=$(now)
  "$rw" mount "$data" "$mnt" --repo "$repo" --every off --full-every off \
    --snapshot-on-unmount false ${mount_args[@]+"${mount_args[@]}"} >/dev/null
  "$rw" snapshot -C "$mnt" >/dev/null
  b=$(now)
  first=$(awk -v a="$a" -v b="$b" 'BEGIN { printf "%.6f", b - a }')
  put first_s "$first"
  put first_rate "$(awk -v n="$n" -v s="$first" 'BEGIN { printf "%.1f", n / s }')"
  put first_vs_find "$(awk -v f="$first" -v t="$t" 'BEGIN { printf "%.3f", f / t }')"
  st=$(status_json)
  [ "$(echo "$st" | jq_ 'd["flusher"]["last_snapshot"]')" = 1 ] || { echo "the first snapshot is not snapshot 1" >&2; exit 1; }
  put first_capture_s "$(echo "$st" | jq_ 'd["flusher"]["last_duration_ms"] / 1000')"
  put first_cut_ms "$(echo "$st" | jq_ 'd["flusher"]["last_cut_ms"]')"
  pid=$(echo "$st" | jq_ 'd["pid"]')
  sleep 3  # idle: the daemon returns freed memory 2 s after its last request
  put rss_first_mib "$(awk -v k="$(proc "$pid" VmRSS)" 'BEGIN { print k / 1024 }')"
  put hwm_first_mib "$(awk -v k="$(proc "$pid" VmHWM)" 'BEGIN { print k / 1024 }')"

  # SNAPS small-change incrementals through the mount.
  before=$(du -sb "$repo" | cut -f1)
  $gen snaps "$rw" "$mnt" "$n" "$SNAPS" "$FEW" 1000 "$WORK/snaps-$n.log"
  after=$(du -sb "$repo" | cut -f1)
  put small_snap_ms "$(python3 -c 'import statistics,sys; print(statistics.median(float(l.split()[0]) for l in open(sys.argv[1])) * 1000)' "$WORK/snaps-$n.log")"
  put small_cut_p50_ms "$(python3 -c 'import statistics,sys; print(statistics.median(float(l.split()[1]) for l in open(sys.argv[1])))' "$WORK/snaps-$n.log")"
  put small_cut_max_ms "$(python3 -c 'import sys; print(max(float(l.split()[1]) for l in open(sys.argv[1])))' "$WORK/snaps-$n.log")"
  put repo_growth_per_snap "$(( (after - before) / SNAPS ))"
  # Manifest share of what each small incremental stored (see the header).
  read -r sb mb ml < <(python3 - "$repo/snapshots" 2 $((SNAPS + 1)) <<'PY'
import json, os, statistics, sys
d, lo, hi = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
stored, man, mlen, exact = [], [], [], True
for i in range(lo, hi + 1):
    r = json.load(open(os.path.join(d, f"{i:010d}.json")))
    s = r["stats"]
    # Each changed 4 KiB random block is one new chunk stored raw (4096
    # bytes + its 88-byte header); the rest of stored_bytes is the
    # manifest (and, since manifest format 3, the directory objects).
    data_chunks = s["changed_blocks"]
    m = s["stored_bytes"] - data_chunks * (4096 + 88)
    if data_chunks > s["new_chunks"] or not 0 < m <= s["stored_bytes"]:
        exact = False
    stored.append(s["stored_bytes"]); man.append(m); mlen.append(r["manifest_len"])
print(statistics.median(stored), statistics.median(man) if exact else "n/a", statistics.median(mlen))
PY
)
  put small_stored_b "$sb"; put small_manifest_b "$mb"; put small_manifest_len "$ml"

  # An incremental of 100 files changed through the mount.
  $gen touch "$mnt" "$n" 100 999
  t=$(secs "$rw" snapshot -C "$mnt"); put incr100_ms "$(ms "$t")"
  st=$(status_json)
  put incr100_cut_ms "$(echo "$st" | jq_ 'd["flusher"]["last_cut_ms"]')"
  last=$(echo "$st" | jq_ 'd["flusher"]["last_snapshot"]')
  read -r sb mb < <(python3 - "$repo/snapshots/$(printf %010d "$last").json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1])); s = r["stats"]
data_chunks = s["changed_blocks"]
m = s["stored_bytes"] - data_chunks * (4096 + 88)
ok = data_chunks <= s["new_chunks"] and 0 < m <= s["stored_bytes"]
print(s["stored_bytes"], m if ok else "n/a")
PY
)
  put incr100_stored_b "$sb"; put incr100_manifest_b "$mb"
  # The first listing after a new snapshot: the daemon brings the cached
  # unique sizes up to date after each commit, in the background; a
  # listing that comes first does it itself (the chunks the new delta
  # names, looked up in the other deltas).
  t=$(cold "$rw" snapshots -C "$mnt"); put snapshots_first_ms "$(ms "$t")"
  sleep 1
  sleep 3  # idle: the daemon returns freed memory 2 s after its last request
  put rss_steady_mib "$(awk -v k="$(proc "$pid" VmRSS)" 'BEGIN { print k / 1024 }')"
  put hwm_snaps_mib "$(awk -v k="$(proc "$pid" VmHWM)" 'BEGIN { print k / 1024 }')"
  put repo_mib "$(du -sb "$repo" | awk '{ print $1 / 1048576 }')"

  # First ls -l in a snapshot, before any other command reads its
  # manifests (the names come from the snapshot records on disk).
  oldest=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["name"])' "$repo/snapshots/0000000001.json")
  newest=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["name"])' "$repo/snapshots/$(printf %010d "$last").json")
  t=$(cold ls -l "$mnt/.snapshots/$oldest/$(dirpath $((n / 4)))"); put ls_old_ms "$(ms "$t")"
  t=$(cold ls -l "$mnt/.snapshots/$newest/$(dirpath $((3 * n / 4)))"); put ls_new_ms "$(ms "$t")"
  [ "$(ls "$mnt/.snapshots/$newest/$(dirpath $((3 * n / 4)))" | wc -l)" = 100 ] || { echo "ls did not list 100 entries" >&2; exit 1; }

  # Other read-only commands.
  t=$(cold3 "$rw" snapshots -C "$mnt"); put snapshots_ms "$(ms "$t")"
  snaps_json=$("$rw" snapshots -C "$mnt" --json)
  [ "$(echo "$snaps_json" | jq_ 'd[-1]["name"]')" = "$newest" ] || { echo "the newest snapshot is not $newest" >&2; exit 1; }
  prev=$(echo "$snaps_json" | jq_ 'd[-2]["name"]')
  t=$(cold3 "$rw" diff -C "$mnt" "$prev" "$newest"); put diff_adj_ms "$(ms "$t")"
  t=$(cold3 "$rw" diff -C "$mnt" "$oldest" "$newest"); put diff_far_ms "$(ms "$t")"
  # stats: the first call in this daemon computes every figure whole;
  # after one more snapshot they are brought up to date from its change.
  t=$(cold "$rw" stats -C "$mnt"); put stats_first_ms "$(ms "$t")"
  $gen touch "$mnt" "$n" "$FEW" 998
  "$rw" snapshot -C "$mnt" >/dev/null
  t=$(cold "$rw" stats -C "$mnt"); put stats_ms "$(ms "$t")"
  f=$(dirpath $((n / 2)))/$(printf 'f%07d' $((n / 2)))
  t=$(cold3 "$rw" restore -C "$mnt" latest "$f" --to "$WORK/restore-$n" --overwrite); put restore_ms "$(ms "$t")"
  cmp -s "$WORK/restore-$n/$(basename "$f")" "$data/$f" || { echo "restored file differs" >&2; exit 1; }

  # forget + gc: one snapshot in the middle, then a batch of the oldest.
  ids=($(echo "$snaps_json" | jq_ '" ".join(str(s["id"]) for s in d)'))
  mid=${ids[$(( ${#ids[@]} / 2 ))]}
  t=$(cold "$rw" forget -C "$mnt" "$mid"); put forget1_ms "$(ms "$t")"
  t=$(cold "$rw" gc -C "$mnt"); put gc1_ms "$(ms "$t")"
  ids=($("$rw" snapshots -C "$mnt" --json | jq_ '" ".join(str(s["id"]) for s in d)'))
  cand=("${ids[@]:1:${#ids[@]}-2}")          # not the full, not the newest
  k=$(( ${#cand[@]} >= 200 ? 100 : ${#cand[@]} / 2 ))
  put forget_k "$k"
  if [ "$k" -ge 2 ]; then
    t=$(cold "$rw" forget -C "$mnt" "${cand[@]:0:$k}"); put forgetk_ms "$(ms "$t")"
    t=$(cold "$rw" gc -C "$mnt"); put gck_ms "$(ms "$t")"
  else
    put forgetk_ms n/a; put gck_ms n/a   # too few snapshots for a batch
  fi
  t=$(cold3 "$rw" verify -C "$mnt"); put verify_ms "$(ms "$t")"
  put repo_gc_mib "$(du -sb "$repo" | awk '{ print $1 / 1048576 }')"
  sleep 3  # idle: the daemon returns freed memory 2 s after its last request
  put rss_end_mib "$(awk -v k="$(proc "$pid" VmRSS)" 'BEGIN { print k / 1024 }')"
  put hwm_end_mib "$(awk -v k="$(proc "$pid" VmHWM)" 'BEGIN { print k / 1024 }')"
  # The daemon's own account of that memory (status --json "memory").
  mem_json=$("$rw" status -C "$mnt" --json)
  for f in heap_in_use_bytes heap_free_bytes view_bytes chunk_cache_bytes flusher_tree_bytes flusher_index_bytes index_cache_limit_bytes; do
    put "end_${f%_bytes}_mib" "$(echo "$mem_json" | jq_ "(d.get('memory') or {}).get('$f', 0) / 1048576")"
  done
  "$rw" umount "$mnt" >/dev/null

  # Remount, page cache dropped: the mount-time check compares BACKING
  # with the latest snapshot; then one incremental of FEW files.
  drop
  a=$(now)
  "$rw" mount "$data" "$mnt" --repo "$repo" --every off --full-every off \
    --snapshot-on-unmount false ${mount_args[@]+"${mount_args[@]}"} >/dev/null
  until status_json | jq_ 'd["startup_check"]' | grep -q '^done'; do
    status_json | jq_ 'd["startup_check"]' | grep -q '^failed' && { echo "mount-time check failed" >&2; exit 1; }
    sleep 0.2
  done
  b=$(now)
  put remount_check_s "$(awk -v a="$a" -v b="$b" 'BEGIN { printf "%.3f", b - a }')"
  pid=$(status_json | jq_ 'd["pid"]')
  sleep 3
  put rss_remount_mib "$(awk -v k="$(proc "$pid" VmRSS)" 'BEGIN { print k / 1024 }')"
  put hwm_remount_mib "$(awk -v k="$(proc "$pid" VmHWM)" 'BEGIN { print k / 1024 }')"
  for i in $(seq 1 "$FEW"); do
    f=$(dirpath $(( (i * 7919) % n )))/$(printf 'f%07d' $(( (i * 7919) % n )))
    head -c 4096 /dev/urandom > "$mnt/$f"
  done
  t=$(secs "$rw" snapshot -C "$mnt"); put remount_incr_ms "$(ms "$t")"
  sleep 3
  put rss_remount_incr_mib "$(awk -v k="$(proc "$pid" VmRSS)" 'BEGIN { print k / 1024 }')"
  put hwm_remount_incr_mib "$(awk -v k="$(proc "$pid" VmHWM)" 'BEGIN { print k / 1024 }')"
  "$rw" umount "$mnt" >/dev/null
  rm -rf "$repo" "$WORK/restore-$n"
done

python3 - "$res" "$SNAPS" "$FEW" "$ROUNDS" "$(nproc)" "$(uname -r)" "$(date -u +%Y-%m-%dT%H:%MZ)" "$rw" "$cmdline" <<'PY' | tee "$OUT"
import math, sys
res, snaps, few, rounds, cores, kernel, when, rw, cmdline = sys.argv[1:]
vals, sizes = {}, []
for line in open(res):
    n, k, v = line.rstrip("\n").split("\t")
    n = int(n)
    if n not in sizes:
        sizes.append(n)
    vals[(n, k)] = v
rows = [
    ("find_s", "cold `find -printf '%s %T@'` of the tree (s)", "s"),
    ("first_s", "first snapshot (full), mount to commit, cold (s)", "s"),
    ("first_rate", "first snapshot, files/s", "n"),
    ("first_vs_find", "first snapshot / cold find (x)", "x"),
    ("first_capture_s", "first snapshot, capture by the flusher (s)", "s"),
    ("first_cut_ms", "first snapshot, cut pause (ms)", "ms"),
    ("small_snap_ms", f"incremental of {few} files, `snapshot` median of {snaps} (ms)", "ms"),
    ("small_cut_p50_ms", f"incremental of {few} files, cut pause p50 (ms)", "ms"),
    ("small_cut_max_ms", f"incremental of {few} files, cut pause max (ms)", "ms"),
    ("small_stored_b", f"incremental of {few} files, stored bytes, median (data + manifest)", "n"),
    ("small_manifest_b", f"incremental of {few} files, manifest bytes stored, median", "n"),
    ("small_manifest_len", f"incremental of {few} files, manifest bytes before zstd, median", "n"),
    ("repo_growth_per_snap", f"repository growth per incremental of {few} files (du, bytes)", "n"),
    ("incr100_ms", f"incremental of 100 files (after {snaps}), `snapshot` (ms)", "ms"),
    ("incr100_cut_ms", "incremental of 100 files, cut pause (ms)", "ms"),
    ("incr100_stored_b", "incremental of 100 files, stored bytes (data + manifest)", "n"),
    ("incr100_manifest_b", "incremental of 100 files, manifest bytes stored", "n"),
    ("ls_old_ms", "first `ls -l` of 100 entries, oldest snapshot (ms)", "ms"),
    ("ls_new_ms", "first `ls -l` of 100 entries, newest snapshot (ms)", "ms"),
    ("snapshots_first_ms", "`snapshots`, first call after a new snapshot (ms)", "ms"),
    ("snapshots_ms", f"`snapshots` ({int(snaps) + 2} snapshots) (ms)", "ms"),
    ("diff_adj_ms", "`diff` adjacent snapshots (100 files changed) (ms)", "ms"),
    ("diff_far_ms", "`diff` oldest vs newest (ms)", "ms"),
    ("stats_first_ms", "`stats`, first call in the daemon (computed whole) (ms)", "ms"),
    ("stats_ms", f"`stats` after one more snapshot of {few} files (brought up to date) (ms)", "ms"),
    ("restore_ms", "`restore` of one file from latest (ms)", "ms"),
    ("forget1_ms", "`forget` of 1 snapshot (ms)", "ms"),
    ("gc1_ms", "`gc` after it (ms)", "ms"),
    ("forget_k", "snapshots in the forget batch", "n"),
    ("forgetk_ms", "`forget` of the batch (ms)", "ms"),
    ("gck_ms", "`gc` after it (ms)", "ms"),
    ("verify_ms", "`verify` after gc (ms)", "ms"),
    ("rss_first_mib", "daemon RSS after the first snapshot (MiB)", "mib"),
    ("hwm_first_mib", "daemon peak (VmHWM) after the first snapshot (MiB)", "mib"),
    ("rss_steady_mib", "daemon steady RSS after all snapshots (MiB)", "mib"),
    ("hwm_snaps_mib", "daemon peak (VmHWM) after all snapshots (MiB)", "mib"),
    ("hwm_end_mib", "daemon peak (VmHWM) at the end, after diff/stats/forget/gc/verify (MiB)", "mib"),
    ("rss_end_mib", "daemon RSS at the end (MiB)", "mib"),
    ("end_heap_in_use_mib", "of which heap in use, by the allocator's count (MiB)", "mib"),
    ("end_heap_free_mib", "heap free but held by the allocator (MiB)", "mib"),
    ("end_view_mib", "snapshot trees loaded for views, estimate (MiB)", "mib"),
    ("end_chunk_cache_mib", "chunk cache of the views (MiB)", "mib"),
    ("end_flusher_tree_mib", "flusher's trees, estimate (MiB)", "mib"),
    ("end_flusher_index_mib", "flusher's inode index in memory (MiB)", "mib"),
    ("end_index_cache_limit_mib", "index page cache limit, `--index-cache` (MiB)", "mib"),
    ("remount_check_s", "remount, cold: mount to the end of the mount-time check (s)", "s"),
    ("rss_remount_mib", "daemon RSS after the mount-time check (MiB)", "mib"),
    ("hwm_remount_mib", "daemon peak (VmHWM) after the mount-time check (MiB)", "mib"),
    ("remount_incr_ms", f"first incremental after the remount, {few} files (ms)", "ms"),
    ("rss_remount_incr_mib", "daemon RSS after it (MiB)", "mib"),
    ("hwm_remount_incr_mib", "daemon peak (VmHWM) after it (MiB)", "mib"),
    ("repo_mib", "repository size after the snapshots (MiB)", "mib"),
    ("repo_gc_mib", "repository size after forget + gc (MiB)", "mib"),
]


def num(v):
    try:
        return float(v)
    except (TypeError, ValueError):
        return None


def fmt(v, kind):
    x = num(v)
    if x is None:
        return "n/a"
    if kind == "x":
        return f"{x:.2f}"
    if kind == "n":
        return f"{x:,.0f}"
    if kind == "mib":
        return f"{x:,.1f}"
    a = abs(x)
    return f"{x:,.0f}" if a >= 100 else f"{x:.1f}" if a >= 10 else f"{x:.2f}" if a >= 1 else f"{x:.3f}"


def growth(a, b):
    # The value at the larger size over the one at the smaller: with sizes
    # 10x apart, the growth per 10x more files (1 = flat, 10 = linear).
    x, y = num(a), num(b)
    if x is None or y is None or x <= 0 or y <= 0:
        return "n/a"
    return f"{y / x:.2f}"


def label(n):
    e = math.log10(n)
    return f"10^{e:.0f}" if abs(e - round(e)) < 1e-9 else f"{n:,}"


pairs = list(zip(sizes, sizes[1:]))
print(f"{cores} cores, {kernel}, {when}; {rw}. Files of 4 KiB, 100 per directory; "
      f"{snaps} incremental snapshots of {few} files rewritten through the live mount; "
      f"page cache dropped before every timed command; snapshots, diff, stats, restore and verify "
      f"are medians of {rounds} runs, the rest single runs. Growth: value at the larger size / "
      "value at the smaller (with 10x more files: 1 = flat, 10 = linear).")
print()
print(f"`{cmdline}`")
print()
print("| measurement | " + " | ".join(f"{label(n)} files" for n in sizes)
      + "".join(f" | growth {label(a)}→{label(b)} (x{b / a:g} files)" for a, b in pairs) + " |")
print("| --- |" + " ---: |" * (len(sizes) + len(pairs)))
for key, text, kind in rows:
    cells = [fmt(vals.get((n, key)), kind) for n in sizes]
    cells += [growth(vals.get((a, key)), vals.get((b, key))) for a, b in pairs]
    print(f"| {text} | " + " | ".join(cells) + " |")
PY
