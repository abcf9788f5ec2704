#!/usr/bin/env bash
# The in-process pipeline (issue 8, benchmark 2): `dynsig replay` with the full default
# pipeline (tokenizer with stopwords and bigrams, trends with baselines, anomalies,
# alerts) over 1M posts from ../shared/peers/gen_data.py, on one thread and on two
# (`--threads 2 --shards 2`: each shard's engine on a thread of its own), alternated
# ROUNDS times so that both see the same host; medians reported.
# Last line: posts_per_cpu_s=N one_thread_wall_s=A two_threads_wall_s=B speedup=X
# (posts_per_cpu_s: one thread, posts per CPU-second; speedup: A / B).
# Usage: benches/replay.sh [ROUNDS]   (default 5; about 10 s per round)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
ROUNDS=${1:-5}
N=1000000
CACHE=$ROOT/benches/.cache
mkdir -p "$CACHE"
DATA=$CACHE/peers-$N.jsonl
RUN=$(mktemp -d)
trap 'rm -rf "$RUN"' EXIT

if [ ! -s "$DATA" ]; then
  echo "generating $N posts into $DATA" >&2
  python3 "$ROOT/../shared/peers/gen_data.py" "$N" "$DATA.tmp" >&2 && mv "$DATA.tmp" "$DATA"
fi
cargo build --release -q -p dynsig
BIN=$ROOT/target/release/dynsig

# Appends "wall cpu" of one replay to $1.
timed() {
  local log=$1; shift
  /usr/bin/time -f "%e %U %S" -o "$RUN/time" "$BIN" --log-level warn replay \
    --posts "$DATA" --output "$RUN/out" "$@" 2>/dev/null
  awk '{ printf "%s %.3f\n", $1, $2 + $3 }' "$RUN/time" >> "$log"
}
for round in $(seq "$ROUNDS"); do
  timed "$RUN/one"
  timed "$RUN/two" --threads 2 --shards 2
  echo "round $round: one thread $(tail -1 "$RUN/one"), two threads $(tail -1 "$RUN/two") (wall s, CPU s)" >&2
done
median() { sort -n | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
one_wall=$(cut -d' ' -f1 "$RUN/one" | median)
one_cpu=$(cut -d' ' -f2 "$RUN/one" | median)
two_wall=$(cut -d' ' -f1 "$RUN/two" | median)
awk -v n="$N" -v cpu="$one_cpu" -v a="$one_wall" -v b="$two_wall" \
  'BEGIN { printf "posts_per_cpu_s=%.0f one_thread_wall_s=%.2f two_threads_wall_s=%.2f speedup=%.2f\n", n / cpu, a, b, a / b }'
