#!/usr/bin/env bash
# Runs every check and test: formatting, clippy, unit tests and the end-to-end tests against
# real containerd, docker-registry and Prometheus, the bench build and a bounded fuzzing run.
# Needs root (containerd's CRI plugin, mount namespaces); installs its Debian packages itself.
#
#   ./scripts/test.sh            everything (what CI runs)
#   ./scripts/test.sh --quick    skips fuzzing and the benchmark build (~12 of ~20 min here),
#                                for local runs; PULLWATCH_QUICK=1 does the same
#   ./scripts/test.sh --dry-run  prints the phases it would run, runs none
set -euo pipefail
cd "$(dirname "$0")/.."
QUICK="${PULLWATCH_QUICK:-}"
DRY_RUN=
for arg in "$@"; do
  case "$arg" in
    --quick) QUICK=1 ;;
    --dry-run) DRY_RUN=1 ;;
    *) echo "test.sh: unknown argument $arg (use --quick or --dry-run)" >&2; exit 64 ;;
  esac
done
if [ -z "$DRY_RUN" ]; then
  source scripts/as-root.sh
fi

# The kernel tap's BPF programs are part of what CI proves: a missing clang fails the build.
export PULLWATCH_REQUIRE_BPF=1
STARTED=$SECONDS
PHASES=(deps fmt clippy tests dockerfile)
[ -n "$QUICK" ] || PHASES+=(benches fuzz)
N=0
# phase NAME DESCRIPTION COMMAND...: a banner with the phase number, the time and what it does.
phase() {
  local name=$1 what=$2
  shift 2
  N=$((N + 1))
  printf '\n==> [%d/%d] %s: %s (%s, %ds in)\n' "$N" "${#PHASES[@]}" "$name" "$what" "$(date +%T)" "$((SECONDS - STARTED))"
  [ -n "$DRY_RUN" ] || "$@"
}

phase deps "Debian packages and Python tools" bash scripts/install-deps.sh
phase fmt "cargo fmt --check" cargo fmt --all -- --check
phase clippy "cargo clippy -D warnings" cargo clippy --all-targets --locked -- -D warnings
# Bounded: a hang must fail the run, not eat the CI budget.
phase tests "unit, docs and end-to-end tests (real containerd, registry, Prometheus)" \
  timeout 2400 cargo test --locked --lib --bins --tests --examples
# The image build needs a container engine, which this machine kind does not run.
dockerfile() {
  if docker info >/dev/null 2>&1; then
    cargo test --locked --test e2e -- --ignored deploy::dockerfile_builds_where_an_engine_runs
  else
    echo "skipped: deploy::dockerfile_builds_where_an_engine_runs (no container engine: docker info failed)"
  fi
}
phase dockerfile "the container image build, where an engine runs" dockerfile
if [ -z "$QUICK" ]; then
  # benches/proxy.rs is a measurement: built here, run by `cargo bench`.
  phase benches "benchmark build" cargo build --locked --benches
  # A short bounded run of every target (the saved corpus is replayed by the unit tests of
  # src/fuzzing.rs above, on stable, in every run).
  phase fuzz "30 s of libFuzzer per target" env FUZZ_SECONDS="${FUZZ_SECONDS:-30}" timeout 1800 bash scripts/fuzz.sh
else
  echo
  echo "quick mode: skipped the benchmark build and fuzzing (CI runs them)"
fi
if [ -n "$DRY_RUN" ]; then
  printf '\n==> dry run: %d phases listed, none run\n' "${#PHASES[@]}"
else
  printf '\n==> all %d phases passed in %dm%02ds\n' "${#PHASES[@]}" "$(((SECONDS - STARTED) / 60))" "$(((SECONDS - STARTED) % 60))"
fi
