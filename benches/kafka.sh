#!/usr/bin/env bash
# benches/kafka.sh [POSTS]: dynsig through a real broker. Starts the test broker (tansu,
# memory storage) on a free port, creates `posts` with 8 partitions, preloads POSTS
# synthetic posts (default 5,000,000; `dynsig gen --brokers`, 1-minute windows' worth of
# event time spread evenly), then starts `dynsig run` and times it from start until every
# post is consumed and every window closed and published. Measures the service's and the
# broker's CPU (from /proc) and the service's peak RSS.
#
# SHARDS=N (default 1) runs the one instance with `[scale] shards = N`: every post goes
# through `dynsig.repartition` to N shard engines (what scaling out costs one instance).
#
# Last line: posts_per_s=N service_cpu_s=C peak_rss_mb=M broker_cpu_s=B wall_s=W, then
# where the wall time went: join_s (start to the first record: the consumer group join),
# read_s (first record to the last one consumed), tail_s (then until the last window is
# closed and published: idle timeout and allowed lateness), and max_open_windows (sampled
# every 50 ms).
set -euo pipefail

POSTS=${1:-5000000}
SHARDS=${SHARDS:-1}
source "$(dirname "${BASH_SOURCE[0]}")/broker_bench.sh"
RUN=$(mktemp -d)
HTTP=127.0.0.1:$(free_port)
BROKER=127.0.0.1:$(free_port)
start_tansu "$BROKER" "$RUN/tansu.log"
TANSU=$!
SERVICE=
cleanup() {
    local status=$?
    if (( status != 0 )) && [[ -f $RUN/dynsig.log ]]; then tail -20 "$RUN/dynsig.log" >&2; fi
    [[ -n $SERVICE ]] && kill "$SERVICE" 2>/dev/null
    kill "$TANSU" 2>/dev/null; wait 2>/dev/null; rm -rf "$RUN"
}
trap cleanup EXIT

"$PY" - "$BROKER" <<'PY'
import sys, time
from confluent_kafka.admin import AdminClient, NewTopic
admin = AdminClient({"bootstrap.servers": sys.argv[1]})
for attempt in range(50):
    try:
        admin.list_topics(timeout=1)
        break
    except Exception:
        time.sleep(0.2)
for f in admin.create_topics([NewTopic("posts", 8, 1), NewTopic("events", 1, 1)]).values():
    f.result()
PY

# Event time: one hour before now, 1-minute windows; POSTS spread over 20 minutes.
START=$(( ($(date +%s) - 3600) / 60 * 60 * 1000 ))
RATE=$(( POSTS / 1200 ))
t0=$(date +%s.%N)
"$BIN" --log-level warn gen --brokers "$BROKER" --start "$START" --duration 20m \
    --posts-per-sec "$RATE" --events-per-sec 0 2> "$RUN/gen.log"
t1=$(date +%s.%N)
# The demo feed plants bursts on top of the background rate: count what was produced.
POSTS=$(sed -n 's/^generated \([0-9]*\) posts.*/\1/p' "$RUN/gen.log")
echo "preloaded $POSTS posts in $(echo "$t1 - $t0" | bc) s" >&2

cat > "$RUN/dynsig.toml" <<TOML
[kafka]
group_id = "dynsig-bench"
partitions = 8
[kafka.client]
"session.timeout.ms" = "6000"
[window]
size_ms = 60000
allowed_lateness_ms = 5000
idle_timeout_ms = 2000
[scale]
shards = $SHARDS
TOML
cpu_of() { awk '{print $14 + $15}' "/proc/$1/stat"; }
broker_cpu0=$(cpu_of "$TANSU")
t0=$(date +%s.%N)
"$BIN" --log-level warn run --config "$RUN/dynsig.toml" --brokers "$BROKER" --http-addr "$HTTP" \
    2> "$RUN/dynsig.log" &
SERVICE=$!
# Done when every post is consumed and no window is open any more (the last ones close
# 2 s of idle time after the input ends, and their signals are published with them).
"$PY" - "$HTTP" "$POSTS" "$SERVICE" "$RUN/phases" <<'PY'
import os, sys, time, urllib.request
http, posts, service, phases = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
start = time.time()
def metric(text, name):
    total = None
    for line in text.splitlines():
        if line.startswith(name + ("" if "{" in name else "{")) or line.startswith(name + " "):
            total = (total or 0) + float(line.rsplit(" ", 1)[1])
    return total
deadline = time.time() + 1800
first = read_all = None
max_open = 0
while time.time() < deadline:
    try:
        text = urllib.request.urlopen(f"http://{http}/metrics", timeout=2).read().decode()
        consumed = metric(text, 'dynsig_events_consumed_total{topic="posts"}') or 0
        if consumed and first is None:
            first = time.time()
            print(f"first record consumed {first - start:.2f} s after start (group join)", file=sys.stderr)
        open_windows = metric(text, "dynsig_open_windows")
        max_open = max(max_open, open_windows or 0)
        if consumed >= posts and read_all is None:
            read_all = time.time()
        if consumed >= posts and open_windows == 0:
            done = time.time()
            print(f"done {done - first:.2f} s after the first record", file=sys.stderr)
            with open(phases, "w") as out:
                print(f"join_s={first - start:.2f} read_s={read_all - first:.2f} "
                      f"tail_s={done - read_all:.2f} max_open_windows={max_open:.0f}", file=out)
            checkpoints = metric(text, "dynsig_checkpoints_total") or 0
            if checkpoints:
                seconds = metric(text, "dynsig_checkpoint_duration_seconds_sum") or 0
                size = (metric(text, "dynsig_checkpoint_size_bytes") or 0) / 1e6
                print(f"{checkpoints:.0f} checkpoints, {seconds:.2f} s in all, the last {size:.1f} MB", file=sys.stderr)
            sys.exit(0)
    except OSError:
        if not os.path.exists(f"/proc/{service}"):
            sys.exit("the service exited (the end of its log follows)")
    time.sleep(0.05)
sys.exit("not done within 30 minutes")
PY
t1=$(date +%s.%N)
ticks=$(getconf CLK_TCK)
service_cpu=$(echo "scale=2; $(cpu_of "$SERVICE") / $ticks" | bc)
broker_cpu=$(echo "scale=2; ($(cpu_of "$TANSU") - $broker_cpu0) / $ticks" | bc)
peak_kb=$(awk '/VmHWM/ {print $2}' "/proc/$SERVICE/status")
wall=$(printf "%.2f" "$(echo "$t1 - $t0" | bc)")
rate=$(echo "$POSTS / $wall" | bc)
echo "service: $(tail -3 "$RUN/dynsig.log" | tr '\n' ' ')" >&2
echo "posts_per_s=$rate service_cpu_s=$service_cpu peak_rss_mb=$((peak_kb / 1024)) broker_cpu_s=$broker_cpu wall_s=$wall $(cat "$RUN/phases")"
