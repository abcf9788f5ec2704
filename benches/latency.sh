#!/usr/bin/env bash
# benches/latency.sh [MAX_POSTS_PER_S] [SECONDS]: how soon signals are published once their
# window may close, under an open-loop load through the test broker.
#
# For each load (50% and 80% of MAX_POSTS_PER_S, default 159000: benches/kafka.sh's figure):
# a fresh broker (tansu), `dynsig run` with 1-second windows (200 ms allowed lateness), and
# `dynsig gen --realtime` producing the demo feed (posts with planted bursts, internal events
# with planted incidents) at its event times for SECONDS (default 120). Afterwards every
# output record is read back; its latency is its publish time (the record's CreateTime,
# stamped by dynsig's producer) minus the moment its window could close (window end +
# allowed lateness, in event time = the load's schedule, so a producer falling behind adds
# to the latency instead of hiding it: no coordinated omission). Alert path: anomalies and
# alerts; trend path: trend snapshots. Percentiles are exact over all records: the alert path
# has ~1 record per window, so a run shorter than 100 s makes its p99 the maximum (a single
# hiccup of the host), and p99.9 is the maximum or close to it anyway.
#
# Knobs (environment), defaults as in the operator guide's "Tuning for latency":
#   IDLE_MS (window.idle_timeout_ms, default 20): a partition counts as idle only when it
#     is also caught up, and the allowed lateness covers records still in flight, so a
#     short timeout closes windows sooner without making records late.
#   FETCH_WAIT_MS (librdkafka's fetch.wait.max.ms for the service's consumer, default 10;
#     the service's own default is 100): the test broker answers a fetch only at its
#     max wait unless much has arrived, which held records back 40 ms at the median.
#   SHARES (default "50 80"): the loads, in % of MAX_POSTS_PER_S.
# `FETCH_WAIT_MS=100 benches/latency.sh` measures the service's defaults.
#
# Last line (50% load, alert path): p50_ms=A p99_ms=B p999_ms=C
set -euo pipefail

MAX=${1:-159000}
SECONDS_OF_LOAD=${2:-120}
LATENESS_MS=200
source "$(dirname "${BASH_SOURCE[0]}")/broker_bench.sh"

# run LOAD_POSTS_PER_S: prints "<path> p50 p99 p999 count" lines for the alert and trend paths.
run() {
    local rate=$1 run broker http tansu service
    run=$(mktemp -d)
    broker=127.0.0.1:$(free_port)
    http=127.0.0.1:$(free_port)
    start_tansu "$broker" "$run/tansu.log"
    tansu=$!
    cat > "$run/dynsig.toml" <<TOML
[kafka]
group_id = "dynsig-latency"
partitions = 8
[kafka.client]
"session.timeout.ms" = "6000"
"fetch.wait.max.ms" = "${FETCH_WAIT_MS:-10}"
[window]
size_ms = 1000
allowed_lateness_ms = $LATENESS_MS
idle_timeout_ms = ${IDLE_MS:-20}
TOML
    sleep 1
    "$BIN" --log-level warn run --config "$run/dynsig.toml" --brokers "$broker" \
        --http-addr "$http" 2> "$run/dynsig.log" &
    service=$!
    # An interrupted run must not leave the service behind, retrying its broker forever.
    trap 'kill "$service" "$tansu" 2>/dev/null' EXIT INT TERM
    until curl -sf "http://$http/readyz" >/dev/null; do
        if ! kill -0 "$service" 2>/dev/null; then
            cat "$run/dynsig.log" >&2
            exit 1
        fi
        sleep 0.2
    done
    "$BIN" --log-level warn gen --brokers "$broker" --realtime --duration "${SECONDS_OF_LOAD}s" \
        --posts-per-sec "$rate" 2> "$run/gen.log"
    sleep 3 # the last windows close (idle timeout) and publish
    "$PY" - "$broker" "$LATENESS_MS" <<'PY'
import json, sys
from confluent_kafka import Consumer, TopicPartition
broker, lateness = sys.argv[1], int(sys.argv[2])
paths = {"signals.anomalies": "alert", "signals.alerts": "alert", "signals.trends": "trend"}
latencies = {"alert": [], "trend": []}
consumer = Consumer({"bootstrap.servers": broker, "group.id": "latency-reader",
                     "enable.auto.commit": False, "auto.offset.reset": "earliest"})
for topic, path in paths.items():
    partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
    consumer.assign([TopicPartition(topic, p, 0) for p in partitions])
    idle = 0
    while idle < 3:
        message = consumer.poll(1.0)
        if message is None:
            idle += 1
            continue
        if message.error():
            continue
        value = json.loads(message.value())
        window_end = value.get("window_end", value.get("updated_at"))
        if value.get("final") is False:
            continue  # an update snapshot of a window still open
        _, published = message.timestamp()
        latencies[path].append(published - (window_end + lateness))
    consumer.unassign()
consumer.close()
for path, values in latencies.items():
    values.sort()
    pick = lambda q: values[min(len(values) - 1, int(q * len(values)))] if values else float("nan")
    print(path, pick(0.5), pick(0.99), pick(0.999), len(values))
PY
    kill "$service" "$tansu" 2>/dev/null || true
    wait "$service" "$tansu" 2>/dev/null || true
    echo "load $rate posts/s: $(tail -1 "$run/gen.log")" >&2
    rm -rf "$run"
}

last=
for share in ${SHARES:-50 80}; do
    rate=$(( MAX * share / 100 ))
    while read -r path p50 p99 p999 count; do
        echo "load ${share}% (${rate} posts/s), $path path: p50=${p50} ms p99=${p99} ms p99.9=${p999} ms over $count records" >&2
        if [[ $share == 50 && $path == alert ]]; then
            last="p50_ms=$p50 p99_ms=$p99 p999_ms=$p999"
        fi
    done < <(run "$rate")
done
echo "$last"
