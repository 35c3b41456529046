#!/usr/bin/env bash
# Run every check CI runs: the module layering, formatting, clippy, unit
# and integration tests, the fault-injection tests (built with the
# failpoints feature), and the kernel's filesystem suite (xfstests) on the
# live mount when its source is beside the project (../shared/xfstests;
# otherwise that step says so on one line and is skipped).
set -euo pipefail
cd "$(dirname "$0")/.."
python3 scripts/check-layers.py
cargo fmt --all -- --check
cargo clippy --all-targets -- -D warnings
cargo clippy --all-targets --features failpoints -- -D warnings
cargo test --all-targets
cargo test --features failpoints --test faults
scripts/xfstests.sh --list tests/conformance/xfstests.list
