"""The peer of the end-to-end benchmark: the no-movement and heart-rate rules written with
Quix Streams (https://github.com/quixio/quix-streams), reading the same topics of the same
broker as `carestream run`. Started by `benches/e2e.rs`; set up by `setup.sh`.

The rules (`rules.py`) run as Quix Streams expresses them: stateful `apply` per household
key, no timers. Alerts go to the output topic as JSON. It prints `peer: started` at its first
record and `peer: <records> records in <s> s` when it has processed `--expect` records.

    python peer.py --bootstrap 127.0.0.1:9092 --expect 300000 \
        --topics care.sensor_events care.heartbeats care.checkins --output peer.alerts
"""

import time

from quixstreams import Application
from quixstreams.models.serializers import Deserializer

from rules import arguments, decode, heart_rate, no_movement


class ConfluentAvro(Deserializer):
    """The Confluent wire format, as a Quix Streams deserializer."""

    def __init__(self, schemas):
        super().__init__()
        self.schemas = schemas

    def __call__(self, value, ctx):
        return decode(self.schemas, value)


def main():
    args, schemas = arguments("quix-peer")

    app = Application(
        broker_address=args.bootstrap,
        consumer_group=args.group,
        auto_offset_reset="earliest",
        loglevel="WARNING",
        # State stays in local RocksDB, no changelog topics: tansu 0.6 does not report the
        # topic configs (`retention.ms`) Quix Streams sizes them from.
        use_changelog_topics=False,
    )
    decode = ConfluentAvro(schemas)
    inputs = [app.topic(t, value_deserializer=decode) for t in args.topics]
    for t in inputs:
        # Read even without changelogs; tansu 0.6 leaves it out (Kafka's default: 7 days).
        t.broker_config.extra_config.setdefault("retention.ms", "604800000")
    output = app.topic(args.output, value_serializer="json")

    sdf = app.dataframe(inputs[0])
    for topic in inputs[1:]:
        sdf = sdf.concat(app.dataframe(topic))

    seen = {"n": 0, "first": None}

    def count(_):
        seen["n"] += 1
        if seen["first"] is None:
            seen["first"] = time.monotonic()
            print("peer: started", flush=True)
        if seen["n"] == args.expect:
            took = time.monotonic() - seen["first"]
            print(f"peer: {seen['n']} records in {took:.2f} s", flush=True)
            # Alive a moment more: the bench reads this process's CPU time now.
            time.sleep(1)
            app.stop()

    sdf = sdf.update(count)
    alerts = sdf.apply(no_movement, stateful=True).filter(lambda a: a is not None)
    alerts.to_topic(output)
    vitals = sdf.apply(heart_rate, stateful=True).filter(lambda a: a is not None)
    vitals.to_topic(output)
    app.run()


if __name__ == "__main__":
    main()
