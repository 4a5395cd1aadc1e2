#!/usr/bin/env bash
# Run every cargo-fuzz target of wsloop (the protocol core, and `connection`: a whole server
# connection over loopback) for a bounded time; fail if any crashes.
#
#   fuzz/run.sh [SECONDS_PER_TARGET] [TARGET...]
#
# SECONDS_PER_TARGET defaults to 60; TARGET defaults to every target in fuzz/Cargo.toml.
# Installs cargo-fuzz from crates.io if it is missing. Works with the stable toolchain alone:
# cargo-fuzz passes nightly-only flags (-Zsanitizer=address, coverage options) to rustc, and
# RUSTC_BOOTSTRAP=1 lets a stable rustc accept them. Set FUZZ_SANITIZER=none for a faster run
# without AddressSanitizer (wsloop itself is #![forbid(unsafe_code)]; its dependencies are not).
#
# Corpora grow in fuzz/corpus/<target> (git-ignored) and start from the committed seeds in
# fuzz/seeds/<target>; crashes are written to fuzz/artifacts/<target> (git-ignored).
set -euo pipefail

secs="${1:-60}"
shift || true
cd "$(dirname "$0")"

if ! [[ "$secs" =~ ^[0-9]+$ ]] || [ "$secs" -lt 1 ]; then
    echo "usage: $0 [SECONDS_PER_TARGET] [TARGET...]" >&2
    exit 2
fi

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "== installing cargo-fuzz from crates.io"
    cargo install cargo-fuzz --locked
fi

export RUSTC_BOOTSTRAP=1
sanitizer="${FUZZ_SANITIZER:-address}"

if [ "$#" -gt 0 ]; then
    targets=("$@")
else
    mapfile -t targets < <(cargo fuzz list)
fi

echo "== building ${targets[*]} (sanitizer: $sanitizer)"
cargo fuzz build --sanitizer "$sanitizer"

failed=()
summary=()
for t in "${targets[@]}"; do
    mkdir -p "corpus/$t" "artifacts/$t"
    args=(-max_total_time="$secs" -timeout=10 -print_final_stats=1)
    case "$t" in
        handshake_*) args+=(-dict=http.dict) ;;
        # LeakSanitizer is off for `connection`: the server thread's write queues hold `BytesMut`s
        # whose only pointer can sit one past the end of their allocation once fully written, which
        # LSan takes for a leak (see README.md); loop_stats and the RSS limit watch memory instead.
        connection) args+=(-dict=http.dict -detect_leaks=0) ;;
    esac
    seeds=()
    [ -d "seeds/$t" ] && seeds=("seeds/$t")
    before=$(find "artifacts/$t" -type f | wc -l)
    log="$(mktemp)"
    echo "== fuzzing $t for ${secs}s"
    set +e
    cargo fuzz run --sanitizer "$sanitizer" "$t" "corpus/$t" "${seeds[@]}" -- "${args[@]}" >"$log" 2>&1
    status=$?
    set -e
    after=$(find "artifacts/$t" -type f | wc -l)
    runs=$(grep -oE 'stat::number_of_executed_units: *[0-9]+' "$log" | grep -oE '[0-9]+$' | tail -1)
    corpus=$(find "corpus/$t" -type f | wc -l)
    if [ "$status" -ne 0 ] || [ "$after" -gt "$before" ]; then
        echo "!! $t FAILED (exit $status); last lines of its log:"
        tail -n 60 "$log"
        failed+=("$t")
        summary+=("$t: CRASH (exit $status), artifacts in fuzz/artifacts/$t")
    else
        summary+=("$t: ${runs:-?} executions in ${secs}s, corpus $corpus inputs, no crash")
    fi
    rm -f "$log"
done

echo "== summary"
printf '%s\n' "${summary[@]}"
if [ "${#failed[@]}" -gt 0 ]; then
    echo "== ${#failed[@]} target(s) crashed: ${failed[*]}"
    exit 1
fi
echo "== all ${#targets[@]} targets ran ${secs}s each without a crash"
