#!/usr/bin/env bash
# Run every check CI runs: the module layering, formatting, clippy, unit
# and integration tests, and the fault-injection tests (built with the
# failpoints feature).
set -euo pipefail
cd "$(dirname "$0")/.."
python3 scripts/check-layers.py
cargo fmt --all -- --check
cargo clippy --all-targets -- -D warnings
cargo clippy --all-targets --features failpoints -- -D warnings
cargo test --all-targets
cargo test --features failpoints --test faults
