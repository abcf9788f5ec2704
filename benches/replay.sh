#!/usr/bin/env bash
# The in-process pipeline (issue 8, benchmark 2): `dynsig replay` with the full default
# pipeline (tokenizer with stopwords and bigrams, trends with baselines, anomalies,
# alerts) over a feed of posts, on one thread and on two (`--threads 2 --shards 2`: each
# shard's engine on a thread of its own), alternated ROUNDS times so that both see the
# same host; medians reported.
# FEED=peers (default): 1M posts from ../shared/peers/gen_data.py (random words, Zipf).
# FEED=demo: 2M posts of dynsig's own demo feed (`dynsig gen`: English-like text with
#   stopwords, hashtags, actors and planted bursts; the feed benches/kafka.sh uses).
# Last line: posts_per_cpu_s=N one_thread_wall_s=A two_threads_wall_s=B speedup=X
# (posts_per_cpu_s: one thread, posts per CPU-second; speedup: A / B).
# Usage: [FEED=demo] benches/replay.sh [ROUNDS]   (default 5; 10-20 s per round)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
ROUNDS=${1:-5}
FEED=${FEED:-peers}
CACHE=$ROOT/benches/.cache
mkdir -p "$CACHE"
RUN=$(mktemp -d)
trap 'rm -rf "$RUN"' EXIT
cargo build --release -q -p dynsig
BIN=$ROOT/target/release/dynsig

case $FEED in
  peers)
    N=1000000
    DATA=$CACHE/peers-$N.jsonl
    if [ ! -s "$DATA" ]; then
      echo "generating $N posts into $DATA" >&2
      python3 "$ROOT/../shared/peers/gen_data.py" "$N" "$DATA.tmp" >&2 && mv "$DATA.tmp" "$DATA"
    fi
    ;;
  demo)
    DATA=$CACHE/demo-20m-1666.jsonl
    if [ ! -s "$DATA" ]; then
      echo "generating the demo feed into $DATA" >&2
      "$BIN" --log-level warn gen --start 1800000000000 --duration 20m --posts-per-sec 1666 \
        --events-per-sec 0 --posts "$DATA.tmp" --events "$RUN/events.jsonl" && mv "$DATA.tmp" "$DATA"
    fi
    N=$(wc -l < "$DATA")
    ;;
  *) echo "FEED must be peers or demo" >&2; exit 2 ;;
esac

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
