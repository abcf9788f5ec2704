#!/usr/bin/env bash
# Fuzzes what reads untrusted bytes (fuzz/fuzz_targets: decode_json, decode_protobuf,
# tokenizer, engine) with libFuzzer through cargo-fuzz, SECONDS_PER_TARGET each (default
# 60), on the nightly toolchain. Installs cargo-fuzz when missing. Crashes are kept in
# fuzz/artifacts/<target>/ and make the script fail.
#   scripts/fuzz.sh                       # every target, 60 s each
#   SECONDS_PER_TARGET=600 scripts/fuzz.sh decode_json
# Last line: key=value pairs, e.g. `targets=4 seconds_per_target=60 crashes=0`.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SECONDS_PER_TARGET=${SECONDS_PER_TARGET:-60}
cd "$ROOT/fuzz"
if ! cargo fuzz --version >/dev/null 2>&1; then
    cargo install --locked cargo-fuzz
fi
targets=("$@")
if [[ ${#targets[@]} -eq 0 ]]; then
    mapfile -t targets < <(cargo fuzz list)
fi
crashes=0
for target in "${targets[@]}"; do
    echo "== $target: ${SECONDS_PER_TARGET}s" >&2
    if ! cargo +nightly fuzz run "$target" -- -max_total_time="$SECONDS_PER_TARGET" \
        -rss_limit_mb=2048 -print_final_stats=1 2>&1 | tail -n 25 >&2; then
        crashes=$((crashes + 1))
    fi
done
echo "targets=${#targets[@]} seconds_per_target=$SECONDS_PER_TARGET crashes=$crashes"
[[ $crashes -eq 0 ]]
