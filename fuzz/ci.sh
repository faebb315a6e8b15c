#!/usr/bin/env bash
# CI smoke run of every fuzz target on the stable toolchain (docs/FUZZING.md).
#
# CI has only the stable toolchain. With `--sanitizer none` cargo-fuzz 0.13
# passes only stable `-C` flags (sancov instrumentation), so stable builds
# the targets; RUSTC_BOOTSTRAP=1 is set anyway because that is the
# configuration measured and tested (docs/FUZZING.md), and it makes
# cargo-fuzz treat the compiler as nightly should a later version need a
# `-Z` flag. Only AddressSanitizer is lost, which safe Rust barely needs; the
# targets still catch panics, failed assertions, hangs and runaway memory.
#
# Each target runs FUZZ_SECONDS (default 20) from the committed seeds
# (seeds/<target>/, and the format test vectors for decode_file); new inputs
# go to corpus/<target>/ (not committed). A crash fails the run and leaves
# the input in artifacts/<target>/.
set -euo pipefail
cd "$(dirname "$0")"
seconds=${FUZZ_SECONDS:-20}
targets=(decode_file sftp_requests authorized_keys users_file eaas_reply scp_command)

if ! cargo fuzz --version >/dev/null 2>&1; then
    cargo install --locked cargo-fuzz --version 0.13.2
fi
export RUSTC_BOOTSTRAP=1
./seed_corpus.sh
cargo fuzz build --sanitizer none
for t in "${targets[@]}"; do
    mkdir -p "corpus/$t"
    seeds=()
    if [[ -d "seeds/$t" ]]; then
        seeds=("seeds/$t")
    fi
    echo "== fuzz target $t for ${seconds}s"
    # -timeout: an input running 30 s is a hang; -rss_limit_mb: a runaway
    # allocation is a finding, not an out-of-memory kill of the CI machine.
    cargo fuzz run --sanitizer none "$t" "corpus/$t" "${seeds[@]}" -- \
        -max_total_time="$seconds" -timeout=30 -rss_limit_mb=2048 -print_final_stats=1
done
