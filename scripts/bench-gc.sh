#!/usr/bin/env bash
# gc after forget, incremental against full, on a tree laid out by
# scripts/bench-scale.sh (DATA/dNNN/dNNNNN/fNNNNNNN, 100 files per
# directory, two levels): a first snapshot through a live mount, a gc (the first one
# marks everything and starts gc's candidate list), six incrementals of
# ten files in ten directories, then: forget a middle snapshot + gc
# (incremental), forget another + gc --full, forget the first (full)
# snapshot + gc (incremental). Prints each command's wall time and the
# gc reports. Not a test.
#
#   DATA=/var/tmp/rewindfs-bench-scale/data-1000000 REWINDFS_BIN=target/release/rewindfs scripts/bench-gc.sh
set -euo pipefail
DATA=${DATA:?set DATA to a tree made by scripts/bench-scale.sh}
rw=${REWINDFS_BIN:-target/release/rewindfs}
work=$(mktemp -d /var/tmp/rewindfs-bench-gc.XXXXXX)
repo=$work/repo mnt=$work/mnt
mkdir -p "$mnt"
cleanup() { fusermount3 -u "$mnt" 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
"$rw" init --repo "$repo" >/dev/null
"$rw" mount "$DATA" "$mnt" --repo "$repo" --every off --full-every off --snapshot-on-unmount false >/dev/null
t() {
    local a b
    a=$(date +%s.%N)
    "$@" >"$work/out" 2>&1
    b=$(date +%s.%N)
    printf '%8.3f s  %s\n' "$(echo "$b - $a" | bc)" "${*#"$rw" }"
    if grep -q '"mode"' "$work/out"; then
        python3 -c 'import json,sys; r=json.load(open(sys.argv[1])); print("          mode=%s candidates=%d deleted=%d packs_deleted=%d repacked=%d gc_seconds=%.3f" % (r["mode"], r["candidates"], r["deleted_chunks"], r["packs_deleted"], r["packs_repacked"], r["seconds"]))' "$work/out"
    fi
}
t "$rw" snapshot -C "$mnt"
t "$rw" gc -C "$mnt" --json
mapfile -t inner < <(cd "$DATA" && ls -d d*/d* | head -1000)
n=${#inner[@]}
for i in 1 2 3 4 5 6; do
    for k in 0 1 2 3 4 5 6 7 8 9; do
        d=${inner[$(((k * 97 + i) % n))]}
        f=$(ls "$DATA/$d" | sed -n "${i}p")
        echo "x$i" >>"$mnt/$d/$f"
    done
    "$rw" snapshot -C "$mnt" >/dev/null
done
t "$rw" forget -C "$mnt" 3
t "$rw" gc -C "$mnt" --json
t "$rw" forget -C "$mnt" 5
t "$rw" gc -C "$mnt" --full --json
t "$rw" forget -C "$mnt" 1
t "$rw" gc -C "$mnt" --json
