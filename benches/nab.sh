#!/usr/bin/env bash
# benches/nab.sh DATA_DIR OUT_DIR: the Numenta Anomaly Benchmark (or any directory of
# <category>/<file>.csv series with timestamp,value columns) through the service's anomaly
# detector.
#
# Builds the release binary, runs `dynsig backtest DATA_DIR OUT_DIR` (one scored CSV per
# input, same layout), then, when the scorer and the label windows are found, scores all
# three NAB profiles. The last line is key=value pairs:
#   nab_standard=.. nab_low_fp=.. nab_low_fn=.. threshold=..   (scored)
#   files=.. rows=..                                            (no scorer or labels)
#
# Scorer and labels (override with NAB_SCORER / NAB_WINDOWS):
#   ../shared/tools/nab_score.py, DATA_DIR/../combined_windows.json
# Extra scorer arguments (e.g. --holdout realKnownCause) can go in NAB_SCORER_ARGS; the
# reported threshold is the standard profile's optimum.
set -euo pipefail

if [[ $# -ne 2 ]]; then
    echo "usage: $0 DATA_DIR OUT_DIR" >&2
    exit 2
fi
data=$1
out=$2
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
scorer=${NAB_SCORER:-$root/../shared/tools/nab_score.py}
windows=${NAB_WINDOWS:-$data/../combined_windows.json}

cargo build --release --quiet --manifest-path "$root/Cargo.toml" -p dynsig
mkdir -p "$out"
"$root/target/release/dynsig" backtest "$data" "$out"

if [[ ! -f $scorer || ! -f $windows ]]; then
    echo "no scorer ($scorer) or labels ($windows): scores written, not scored" >&2
    files=$(find "$out" -name '*.csv' | wc -l)
    rows=$(find "$out" -name '*.csv' -exec tail -n +2 {} + | grep -c ',' || true)
    echo "files=$files rows=$rows"
    exit 0
fi

scores=$(mktemp)
trap 'rm -f "$scores"' EXIT
# shellcheck disable=SC2086 # NAB_SCORER_ARGS is a list of words on purpose
python3 "$scorer" --data "$data" --windows "$windows" --json "$scores" \
    ${NAB_SCORER_ARGS:-} "$out"
python3 - "$scores" <<'EOF'
import json, sys
results = json.load(open(sys.argv[1]))
(sets,) = results.values()
label, r = next(iter(sets.items()))  # the first set: all files, or the dev set of --holdout
print("nab_standard=%.2f nab_low_fp=%.2f nab_low_fn=%.2f threshold=%s" % (
    r["standard"]["score"], r["reward_low_FP_rate"]["score"], r["reward_low_FN_rate"]["score"],
    r["standard"]["threshold"]))
EOF
