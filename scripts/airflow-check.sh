#!/usr/bin/env bash
# Load and run examples/airflow/rewindfs_dag.py in real Airflow against a
# temporary live mount: every DAG is run once with `airflow dags test`,
# then the snapshots they took are checked.
#
# Not part of scripts/test.sh: installing Airflow into a virtualenv takes
# minutes and pulls hundreds of packages. Run it by hand (or in a nightly
# job); it needs root (FUSE) and PyPI.
#
#   scripts/airflow-check.sh            # venv in /var/tmp/rewindfs-airflow-venv
#   AIRFLOW_VENV=DIR scripts/airflow-check.sh
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
venv=${AIRFLOW_VENV:-/var/tmp/rewindfs-airflow-venv}
version=${AIRFLOW_VERSION:-2.10.5}

if [ ! -x "$venv/bin/airflow" ]; then
  echo "== installing apache-airflow $version into $venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q "apache-airflow==$version"
fi

t=$(mktemp -d /var/tmp/rewindfs-airflow.XXXXXX)
bin=$root/target/debug/rewindfs
cleanup() {
  "$bin" umount "$t/mnt" >/dev/null 2>&1 || true
  rm -rf "$t"
}
trap cleanup EXIT

echo "== building rewindfs and its Python package"
cargo build -q
mkdir -p "$t/py"
cp -r python/pyproject.toml python/README.md python/rewindfs "$t/py/"
"$venv/bin/pip" install -q "$t/py"

echo "== a live mount to protect"
mkdir -p "$t/data/ckpt" "$t/mnt"
head -c 1048576 /dev/urandom > "$t/data/ckpt/model.bin"
"$bin" mount "$t/data" "$t/mnt" --repo "$t/repo" --every off

export AIRFLOW_HOME=$t/airflow
export AIRFLOW__CORE__DAGS_FOLDER=$root/examples/airflow
export AIRFLOW__CORE__LOAD_EXAMPLES=False
export AIRFLOW_VAR_REWINDFS_MOUNT=$t/mnt
export AIRFLOW_VAR_REWINDFS_BIN=$bin
export AIRFLOW_VAR_REWINDFS_KEEP="--keep-last 50"
airflow=$venv/bin/airflow
"$airflow" db migrate >/dev/null

echo "== the DAG file loads"
errors=$("$airflow" dags list-import-errors 2>/dev/null || true)
if echo "$errors" | grep -q "rewindfs_dag.py"; then
  echo "$errors"; exit 1
fi
"$airflow" dags list 2>/dev/null | grep rewindfs_

for dag in rewindfs_hourly_incremental rewindfs_daily_full rewindfs_daily_differential rewindfs_training_pipeline; do
  echo "== airflow dags test $dag"
  echo "change before $dag" > "$t/mnt/$dag.txt"
  "$airflow" dags test "$dag" 2026-12-01T02:00:00+00:00 > "$t/$dag.log" 2>&1 || {
    tail -50 "$t/$dag.log"; echo "FAILED: $dag"; exit 1; }
  grep -E "DagRun Finished: .*state=success" "$t/$dag.log" | cut -c1-160 || {
    tail -50 "$t/$dag.log"; echo "FAILED: $dag did not succeed"; exit 1; }
done

echo "== the snapshots the DAGs took"
"$bin" snapshots -C "$t/mnt"
labels=$("$bin" snapshots -C "$t/mnt" --json | python3 -c 'import json,sys; print("\n".join(s["label"] or "" for s in json.load(sys.stdin)))')
for want in airflow-incremental- airflow-full- airflow-differential- \
            rewindfs_training_pipeline-prepare_data- rewindfs_training_pipeline-train- \
            rewindfs_training_pipeline-evaluate-; do
  echo "$labels" | grep -q "^$want" || { echo "FAILED: no snapshot labelled $want*"; exit 1; }
done
kinds=$("$bin" snapshots -C "$t/mnt" --json | python3 -c 'import json,sys; print(" ".join(sorted({s["kind"] for s in json.load(sys.stdin)})))')
[ "$kinds" = "differential full incremental" ] || { echo "FAILED: kinds $kinds"; exit 1; }
test -s "$t/mnt/.snapshots/latest/pipeline/20261201/evaluate.txt" || { echo "FAILED: evaluate.txt not in the latest snapshot"; exit 1; }
echo "airflow check: ok (every DAG ran; snapshots of every kind and stage exist)"
