#!/usr/bin/env bash
# Runs every check and test: formatting, clippy, unit tests and the end-to-end tests against
# real containerd, docker-registry and Prometheus. Needs root (containerd's CRI plugin, mount
# namespaces); installs its Debian packages itself.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
cargo fmt --all -- --check
cargo clippy --all-targets --locked -- -D warnings
# Bounded: a hang must fail the run, not eat the CI budget.
timeout 2400 cargo test --locked --lib --bins --tests --examples
# The image build needs a container engine, which this machine kind does not run.
if docker info >/dev/null 2>&1; then
  cargo test --locked --test e2e -- --ignored deploy::dockerfile_builds_where_an_engine_runs
else
  echo "skipped: deploy::dockerfile_builds_where_an_engine_runs (no container engine: docker info failed)"
fi
cargo build --locked --benches   # benches/proxy.rs is a measurement: built here, run by `cargo bench`
# Fuzzing: a short bounded run of every target (the saved corpus is replayed by
# tests/fuzz_corpus.rs above, on stable, in every run).
FUZZ_SECONDS="${FUZZ_SECONDS:-30}" timeout 1800 bash scripts/fuzz.sh
