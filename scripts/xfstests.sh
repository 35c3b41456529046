#!/usr/bin/env bash
# Run the kernel's filesystem suite (xfstests) against a rewindfs live mount,
# or against a baseline (ext4 on loop devices, bindfs), on a list of tests.
#
#   scripts/xfstests.sh [--fs rewindfs|ext4|bindfs] [--list FILE | TESTS...]
#                       [--bin PATH] [--results DIR]
#
# Default: the CI list (tests/conformance/xfstests.list) on rewindfs, with
# target/debug/rewindfs (built by `cargo test`). The suite's source comes
# from $XFSTESTS_SRC (a directory or a .tar.gz) or ../shared/xfstests/
# beside the project root; it is built once under $XFSTESTS_WORK
# (default /var/tmp/rewindfs-xfstests). It is not packaged in Debian and
# not part of this repository: without it this script says so on one line
# and exits 0. Build dependencies come from Debian (.ci/run installs them).
#
# rewindfs is mounted through its mount(8) helper, /sbin/mount.fuse.rewindfs
# (a symlink to the binary), as an fstab line would: xfstests runs
# `mount -t fuse.rewindfs -o source=DATA REPO MNT` and unmounts by source.
#
# Exit status: 0 when every test passed or was not run (a test the
# filesystem cannot run, e.g. it needs a feature FUSE lacks), 1 otherwise.
# A summary line "xfstests FS: N passed, N failed, N not run" is printed
# and the per-test results are in RESULTS/summary.tsv.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

fs=rewindfs
list=""
bin="$root/target/debug/rewindfs"
results=""
tests=()
while [ $# -gt 0 ]; do
  case "$1" in
    --fs) fs=$2; shift 2 ;;
    --list) list=$2; shift 2 ;;
    --bin) bin=$(realpath "$2"); shift 2 ;;
    --results) results=$2; shift 2 ;;
    -h|--help) sed -n '2,22p' "$0"; exit 0 ;;
    -*) echo "unknown option $1" >&2; exit 2 ;;
    *) tests+=("$1"); shift ;;
  esac
done
if [ ${#tests[@]} -eq 0 ]; then
  list=${list:-tests/conformance/xfstests.list}
  mapfile -t tests < <(grep -v '^\s*#' "$list" | awk 'NF {print $1}')
fi

work=${XFSTESTS_WORK:-/var/tmp/rewindfs-xfstests}
src=${XFSTESTS_SRC:-}
if [ -z "$src" ]; then
  src=$(ls -d "$root"/../shared/xfstests/xfstests-*.tar.gz 2>/dev/null | head -1 || true)
fi
if [ -z "$src" ] || [ ! -e "$src" ]; then
  echo "xfstests: not available (no ../shared/xfstests/ and no XFSTESTS_SRC): skipped"
  exit 0
fi

# Build once (make -j2: about 2 minutes).
suite="$work/xfstests"
if [ ! -x "$suite/ltp/fsstress" ]; then
  mkdir -p "$work"
  rm -rf "$suite"
  if [ -d "$src" ]; then
    cp -a "$src" "$suite"
  else
    tar -C "$work" -xzf "$src"
  fi
  echo "xfstests: building in $suite" >&2
  make -C "$suite" -j"$(nproc)" >"$work/build.log" 2>&1 ||
    { tail -30 "$work/build.log"; echo "xfstests: build failed (see $work/build.log)"; exit 1; }
fi

# The users and group the suite expects.
# (with home directories: tests `su` to them)
getent group fsgqa >/dev/null || groupadd fsgqa
id -u fsgqa >/dev/null 2>&1 || useradd -g fsgqa -m -s /bin/bash fsgqa
id -u fsgqa2 >/dev/null 2>&1 || useradd -m -s /bin/bash fsgqa2
id -u 123456-fsgqa >/dev/null 2>&1 || useradd --badname -m -s /bin/bash 123456-fsgqa 2>/dev/null ||
  useradd -m -s /bin/bash 123456-fsgqa
for u in fsgqa fsgqa2 123456-fsgqa; do
  h=$(getent passwd "$u" | cut -d: -f6)
  [ -n "$h" ] && [ ! -d "$h" ] && mkdir -p "$h" && chown "$u" "$h"
done

run="$work/run-$fs"
results=${results:-$work/results-$fs}
helper=/sbin/mount.fuse.rewindfs
saved_helper=""
cleanup() {
  # The helper installed for the run goes; one that was there comes back.
  if [ "$fs" = rewindfs ] && [ -L "$helper" ] && [ "$(readlink "$helper")" = "$bin" ]; then
    rm -f "$helper"
    if [ -n "$saved_helper" ]; then mv -f "$saved_helper" "$helper"; fi
  fi
  for m in "$run/test" "$run/scratch" "$run/data" "$run/repos"; do
    mountpoint -q "$m" 2>/dev/null && { umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || true; }
  done
  # Daemons of FUSE mounts that were detached still hold their files.
  pkill -f "mount.fuse.(rewindfs|bindfsxt) .*$run" 2>/dev/null || true
  for l in "${loops[@]:-}"; do [ -n "$l" ] && losetup -d "$l" 2>/dev/null || true; done
}
loops=()
trap cleanup EXIT
cleanup
rm -rf "$run" "$results"
mkdir -p "$run" "$results"
# Every dummy user must be able to walk down to the mounts.
chmod 0755 "$work" "$run"
mkdir -p "$run/test" "$run/scratch"

# An ext4 of its own (a sparse image on a loop device) mounted at $1: tests
# that fill the filesystem fill it, never the machine's disk. ea_inode
# lets xattr values reach 64 KiB, as xfstests expects of a FUSE
# filesystem.
loopfs() {
  local dir=$1 size=$2 img="$run/$(basename "$1").img" l
  truncate -s "$size" "$img"
  l=$(losetup -f --show "$img")
  loops+=("$l")
  mkfs.ext4 -q -F -O ea_inode "$l"
  mkdir -p "$dir"
  mount "$l" "$dir"
  chmod 0755 "$dir"
}

case "$fs" in
  rewindfs)
    [ -x "$bin" ] || { echo "xfstests: $bin is missing (cargo build first)"; exit 1; }
    if { [ -e "$helper" ] || [ -L "$helper" ]; } && [ "$(readlink "$helper" 2>/dev/null)" != "$bin" ]; then
      saved_helper="$work/mount.fuse.rewindfs.saved"
      mv -f "$helper" "$saved_helper"
    fi
    ln -sf "$bin" "$helper"
    # Data on one filesystem, the repositories on another (a test that
    # fills the data filesystem does not starve the snapshots).
    loopfs "$run/data" 12G
    loopfs "$run/repos" 12G
    mkdir -p "$run/data/test" "$run/data/scratch"
    chmod 0755 "$run/data/test" "$run/data/scratch"
    # The repositories are the devices (the mounts' source). The policy is
    # the default but for the cadence (snapshots at unmount, on request);
    # device nodes are honoured (`allow_dev`: off by default, tests make them).
    cat >"$suite/local.config" <<EOF
export FSTYP=fuse
export FUSE_SUBTYP=.rewindfs
export TEST_DEV=rewindfs:$run/repos/test
export TEST_DIR=$run/test
export SCRATCH_DEV=rewindfs:$run/repos/scratch
export SCRATCH_MNT=$run/scratch
export TEST_FS_MOUNT_OPTS="-osource=$run/data/test,allow_other,default_permissions,allow_dev,every=off,full-every=off"
export MOUNT_OPTIONS="-osource=$run/data/scratch,allow_other,default_permissions,allow_dev,every=off,full-every=off"
EOF
    ;;
  bindfs)
    command -v bindfs >/dev/null || { echo "xfstests: bindfs is not installed (apt-get install bindfs)"; exit 1; }
    # bindfs shows its source directory as the mount's source: that
    # directory is the device, and umount(8) is told not to take it for a
    # mountpoint (-c).
    cat >/sbin/mount.fuse.bindfsxt <<'EOF'
#!/bin/sh
# mount.fuse.bindfsxt DIR MNT -o opts: bindfs DIR MNT -o opts
src=$1; mnt=$2; shift 2; opts=""
while [ $# -gt 0 ]; do
  case "$1" in
    -o) opts=$2; shift 2 ;;
    -o*) opts=${1#-o}; shift ;;
    *) shift ;;
  esac
done
keep=$(echo "$opts" | tr ',' '\n' | grep -v -e '^rw$' -e '^defaults$' | paste -sd, -)
exec bindfs "$src" "$mnt" ${keep:+-o "$keep"}
EOF
    chmod +x /sbin/mount.fuse.bindfsxt
    printf '#!/bin/sh\nexec umount -c "$@"\n' >"$work/umount-c"
    chmod +x "$work/umount-c"
    loopfs "$run/data" 12G
    mkdir -p "$run/data/test" "$run/data/scratch"
    chmod 0755 "$run/data/test" "$run/data/scratch"
    cat >"$suite/local.config" <<EOF
export FSTYP=fuse
export FUSE_SUBTYP=.bindfsxt
export TEST_DEV=$run/data/test
export TEST_DIR=$run/test
export SCRATCH_DEV=$run/data/scratch
export SCRATCH_MNT=$run/scratch
export TEST_FS_MOUNT_OPTS="-oallow_other,default_permissions"
export MOUNT_OPTIONS="-oallow_other,default_permissions"
export UMOUNT_PROG=$work/umount-c
EOF
    ;;
  ext4)
    for d in test scratch; do
      truncate -s 12G "$run/$d.img"
      l=$(losetup -f --show "$run/$d.img")
      loops+=("$l")
      mkfs.ext4 -q -F "$l"
      eval "${d}_dev=$l"
    done
    cat >"$suite/local.config" <<EOF
export FSTYP=ext4
export TEST_DEV=$test_dev
export TEST_DIR=$run/test
export SCRATCH_DEV=$scratch_dev
export SCRATCH_MNT=$run/scratch
EOF
    ;;
  *) echo "unknown --fs $fs" >&2; exit 2 ;;
esac

start=$(date +%s)
rm -rf "$suite/results"
set +e
(cd "$suite" && ./check -d "${tests[@]}") >"$results/check.log" 2>&1
set -e
cp "$suite/results/check.time" "$results/" 2>/dev/null || true
# The suite's own result files are the truth: RESULT_BASE/check.log lists
# Passed/Failures/Not run.
base="$suite/results"
passed=0; failed=0; notrun=0
: >"$results/summary.tsv"
for t in "${tests[@]}"; do
  name=${t#tests/}
  if [ -f "$base/$name.notrun" ]; then
    r="notrun"; why=$(head -1 "$base/$name.notrun"); notrun=$((notrun + 1))
  elif [ -f "$base/$name.out.bad" ] || [ -f "$base/$name.dmesg" ] || [ -f "$base/$name.full.bad" ]; then
    r="failed"; why=""; failed=$((failed + 1))
    cp "$base/$name".* "$results/" 2>/dev/null || true
  elif grep -q "^$name " "$results/check.log" 2>/dev/null || grep -q "^$name\b" "$results/check.log"; then
    r="passed"; why=""; passed=$((passed + 1))
  else
    r="failed"; why="no result"; failed=$((failed + 1))
  fi
  printf '%s\t%s\t%s\n' "$name" "$r" "$why" >>"$results/summary.tsv"
done
# A test can pass its output check and still be listed among the failures.
fails=$(grep -E '^Failures:' "$results/check.log" | sed 's/^Failures://' || true)
for f in $fails; do
  if grep -q "^$f	passed" "$results/summary.tsv"; then
    sed -i "s|^$f	passed	|$f	failed	|" "$results/summary.tsv"
    passed=$((passed - 1)); failed=$((failed + 1))
  fi
done
echo "xfstests $fs: $passed passed, $failed failed, $notrun not run ($(( $(date +%s) - start )) s; $results/summary.tsv)"
if [ "$failed" -gt 0 ]; then
  grep -P '\tfailed\t' "$results/summary.tsv" | cut -f1 | tr '\n' ' '
  echo
  exit 1
fi
