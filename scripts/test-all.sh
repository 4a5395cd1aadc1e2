#!/usr/bin/env bash
# Runs every test of wsloop: formatting and lints, the interop peers' installation, the whole
# `cargo test` suite (unit, property, runtime, conformance and interop tests, doc tests), the
# examples' build, rustdoc without warnings and the benchmarks' build. Works on a fresh machine
# with only the Rust toolchain, Python 3 and Node.js (the interop peers are installed from PyPI
# and npm into git-ignored folders). Fails loudly:
# any step that fails stops the run with a non-zero exit status.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*"; }
start=$(date +%s)

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy --all-targets -- -D warnings"
cargo clippy --all-targets -- -D warnings

step "install interop peers (Python websockets, Node ws)"
bash scripts/install-peers.sh

step "cargo test (unit, integration, doc tests; examples built)"
cargo test --no-fail-fast

step "rustdoc without warnings (broken or private intra-doc links)"
RUSTDOCFLAGS="-D warnings" cargo doc --no-deps --quiet

step "benchmarks compile"
cargo bench --no-run --quiet

echo
echo "all tests passed in $(( $(date +%s) - start )) s"
