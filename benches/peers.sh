#!/usr/bin/env bash
# dynsig against the peers' windowed top-20 job (../shared/peers): same 1M posts, same
# output checked window by window against rustbase, CPU time measured with the peers'
# measure.py for dynsig, rustbase and Bytewax in the same run.
# Last line: dynsig_vs_rustbase=X dynsig_vs_bytewax=Y identical=true|false
# (ratios of events per CPU-second; > 1 means dynsig is faster).
# Usage: benches/peers.sh [POSTS]   (default 1000000; takes a few minutes)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
PEERS=$(cd "$ROOT/../shared/peers" && pwd)
N=${1:-1000000}
CACHE=$ROOT/benches/.cache
mkdir -p "$CACHE"
DATA=$CACHE/peers-$N.jsonl
RUN=$(mktemp -d "$CACHE/peers-run.XXXX")
trap 'rm -rf "$RUN"' EXIT

if [ ! -s "$DATA" ]; then
  echo "generating $N posts into $DATA" >&2
  python3 "$PEERS/gen_data.py" "$N" "$DATA.tmp" >&2 && mv "$DATA.tmp" "$DATA"
fi
echo "building dynsig and rustbase (release)" >&2
cargo build --release -q -p dynsig
cargo build --release -q --manifest-path "$PEERS/rustbase/Cargo.toml" --target-dir "$CACHE/rustbase-target"
if [ ! -x "$CACHE/bytewax-venv/bin/python" ] || ! "$CACHE/bytewax-venv/bin/python" -c 'import bytewax' 2>/dev/null; then
  echo "installing bytewax 0.21.1 into $CACHE/bytewax-venv" >&2
  python3 -m venv "$CACHE/bytewax-venv"
  "$CACHE/bytewax-venv/bin/pip" install -q bytewax==0.21.1 >&2
fi

export MEASURE_LOG=$RUN/measure.tsv
measure() { python3 "$PEERS/measure.py" "$@" >&2; }
measure rustbase "$N" -- "$CACHE/rustbase-target/release/rustbase" "$DATA" "$RUN/rustbase.jsonl"
measure dynsig "$N" -- "$ROOT/target/release/dynsig" --log-level warn replay \
  --config "$ROOT/benches/peers.toml" --posts "$DATA" --output "$RUN/dynsig"
IN=$DATA OUT=$RUN/bytewax.jsonl measure bytewax "$N" -- \
  "$CACHE/bytewax-venv/bin/python" -m bytewax.run "$PEERS/bytewax_job.py" -w 1

python3 "$ROOT/benches/peers_to_jsonl.py" "$RUN/dynsig/signals.trends.jsonl" "$RUN/dynsig.jsonl"
COMPARE=$(python3 "$PEERS/compare.py" "$RUN/rustbase.jsonl" "$RUN/dynsig.jsonl")
echo "$COMPARE" >&2
identical=false
grep -q "identical_to_ref=True" <<<"$COMPARE" && identical=true

rate() { awk -F'\t' -v label="$1" '$1 == label { for (i = 2; i <= NF; i++) if ($i ~ /^ev_per_cpu_s=/) { sub("ev_per_cpu_s=", "", $i); print $i } }' "$MEASURE_LOG"; }
dynsig=$(rate dynsig); rustbase=$(rate rustbase); bytewax=$(rate bytewax)
echo "events per CPU-second: dynsig=$dynsig rustbase=$rustbase bytewax=$bytewax" >&2
awk -v d="$dynsig" -v r="$rustbase" -v b="$bytewax" -v same="$identical" \
  'BEGIN { printf "dynsig_vs_rustbase=%.2f dynsig_vs_bytewax=%.1f identical=%s\n", d / r, d / b, same }'
