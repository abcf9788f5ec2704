"""Read dynsig's trend snapshots from Kafka with confluent-kafka.

The example of docs/python-consumer.md, run as it is by tests/prometheus.rs against the test
broker. Each record of `signals.trends` is one TrendSnapshot as JSON, keyed
`<window>@<window_start>`; a window may be published several times (revision 1, 2, ... with
`window.emit = "updates"`), and the record with `"final": true` closes it.

    python consume_trends.py --bootstrap kafka:9092 [--topic signals.trends] [--group marketing]
                             [--proto-dir GENERATED] [--max-windows N] [--timeout SECONDS]
                             [-X librdkafka.property=value ...]

With --proto-dir (the output of `python -m grpc_tools.protoc --python_out`), each snapshot is
also loaded into the generated `dynsig.v1.TrendSnapshot` class. Prints one JSON line per
closed window: {"key", "window_start", "events", "top": [[term, kind, count, score], ...]}.
"""

import argparse
import json
import sys
import time

from confluent_kafka import Consumer, KafkaError


def to_proto(snapshot, signals_pb2):
    """A JSON TrendSnapshot as the generated protobuf class.

    dynsig's JSON uses the proto field names, but enum values in lower case without their
    prefix ("hashtag" for TERM_KIND_HASHTAG): restore the proto names, then let json_format
    check every field against the schema (an unknown field raises ParseError).
    """
    from google.protobuf import json_format

    entries = []
    for entry in snapshot.get("entries", []):
        entry = dict(entry)
        entry["kind"] = "TERM_KIND_" + entry["kind"].upper()
        entry["status"] = "TREND_STATUS_" + entry["status"].upper()
        entries.append(entry)
    return json_format.ParseDict(
        dict(snapshot, entries=entries), signals_pb2.TrendSnapshot()
    )


def make_consumer(bootstrap, group, topic, properties=()):
    """A consumer of `topic` in the consumer group `group`; `properties` are extra
    librdkafka settings as "name=value" (SASL credentials, timeouts...)."""
    config = {
        "bootstrap.servers": bootstrap,
        "group.id": group,
        # A new group starts at the oldest snapshot still on the (compacted) topic.
        "auto.offset.reset": "earliest",
    }
    config.update(dict(p.split("=", 1) for p in properties))
    consumer = Consumer(config)
    consumer.subscribe([topic])
    return consumer


def snapshots(consumer):
    """Yields (key, snapshot) per record read, and None when nothing came for 0.5 s."""
    while True:
        msg = consumer.poll(0.5)
        if msg is None:
            yield None
            continue
        if msg.error():
            # The client retries transient errors (a broker restarting) by itself.
            if msg.error().code() != KafkaError._PARTITION_EOF:
                print(f"consumer error: {msg.error()}", file=sys.stderr)
            continue
        yield msg.key().decode(), json.loads(msg.value())


def summary(key, snapshot):
    """What a marketing tool might keep of a closed window: its five leading terms."""
    return {
        "key": key,
        "window_start": snapshot["window_start"],
        "events": snapshot["events"],
        "top": [
            [e["term"], e["kind"], e["count"], round(e["score"], 2)]
            for e in snapshot["entries"][:5]
        ],
    }


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--topic", default="signals.trends")
    parser.add_argument("--group", default="marketing-trends")
    parser.add_argument("--proto-dir")
    parser.add_argument("--max-windows", type=int, default=0, help="0: run until stopped")
    parser.add_argument("--timeout", type=float, default=0, help="seconds; 0: no limit")
    parser.add_argument("-X", action="append", default=[], metavar="PROPERTY=VALUE")
    args = parser.parse_args()

    signals_pb2 = None
    if args.proto_dir:
        sys.path.insert(0, args.proto_dir)
        from dynsig.v1 import signals_pb2

    consumer = make_consumer(args.bootstrap, args.group, args.topic, args.X)
    deadline = time.monotonic() + args.timeout if args.timeout else None
    closed = 0
    try:
        for item in snapshots(consumer):
            if deadline and time.monotonic() > deadline:
                print(f"timeout after {closed} closed windows", file=sys.stderr)
                return 1
            if item is None:
                continue
            key, snapshot = item
            if signals_pb2 is not None:
                typed = to_proto(snapshot, signals_pb2)
                assert typed.window_start == snapshot["window_start"]
            # Updates of a window still open are previews: act on the final one.
            if not snapshot.get("final", True):
                continue
            print(json.dumps(summary(key, snapshot)), flush=True)
            closed += 1
            if closed == args.max_windows:
                return 0
    finally:
        # Leaves the group at once (committing its offsets) instead of after the session
        # timeout.
        consumer.close()


if __name__ == "__main__":
    sys.exit(main())
