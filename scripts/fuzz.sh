#!/usr/bin/env bash
# Bounded coverage-guided fuzzing of every target in fuzz/ (cargo-fuzz + libFuzzer + ASan):
# FUZZ_SECONDS per target (default 30), starting from the saved corpus fuzz/corpus/<target>/.
# New interesting inputs go to a temporary directory, or with FUZZ_KEEP=1 into fuzz/corpus/.
# A crash stops the run with the input in fuzz/artifacts/<target>/ (exit status non-zero).
# The machine has only a stable toolchain: RUSTC_BOOTSTRAP=1 lets it take cargo-fuzz's -Z flags.
# After a long run, shrink the corpus before committing: cargo fuzz cmin -O <target>.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${FUZZ_SECONDS:-30}"
if ! cargo fuzz --version >/dev/null 2>&1; then
    cargo install cargo-fuzz --locked --version 0.13.2
fi
export RUSTC_BOOTSTRAP=1
targets=$(cargo fuzz list --fuzz-dir fuzz)
cargo fuzz build -O --fuzz-dir fuzz
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
for t in $targets; do
    echo "fuzz: $t for ${seconds}s"
    # libFuzzer writes new inputs to the first corpus directory it is given.
    if [ "${FUZZ_KEEP:-0}" = 1 ]; then dirs=("fuzz/corpus/$t"); else
        mkdir -p "$scratch/$t"; dirs=("$scratch/$t" "fuzz/corpus/$t"); fi
    # -timeout: one input taking over 10 s is a hang, and a finding. libFuzzer's progress lines
    # go to a log; on a crash its end (input, stack) is printed.
    log="$scratch/$t.log"
    if ! cargo fuzz run -O --fuzz-dir fuzz "$t" "${dirs[@]}" -- -max_total_time="$seconds" -timeout=10 >"$log" 2>&1; then
        tail -n 60 "$log"
        echo "fuzz: $t FAILED; the input is in fuzz/artifacts/$t/" >&2
        exit 1
    fi
    grep -E '^Done [0-9]+ runs' "$log" || true
done
echo "fuzz: every target ran ${seconds}s without a crash"
