"""The peer of the end-to-end benchmark: the no-movement and heart-rate rules written with
Quix Streams (https://github.com/quixio/quix-streams), reading the same topics of the same
broker as `carestream run`. Started by `benches/e2e.rs`; set up by `setup.sh`.

The rules, as Quix Streams expresses them (stateful `apply` per household key, no timers):
- no movement: an event of a household whose last motion is older than 12 h (the default
  `after` of rules/no_movement.toml) raises one alert until motion is seen again;
- heart rate: a worn wearable's heart rate or breathing outside 45-120 bpm / 8-30 rpm for
  10 minutes of readings (rules/vitals.toml defaults) raises one alert until it recovers.
Alerts go to the output topic as JSON. It prints `peer: <records> records in <s> s` when it
has processed `--expect` records.

    python peer.py --bootstrap 127.0.0.1:9092 --expect 300000 \
        --topics care.sensor_events care.heartbeats care.checkins --output peer.alerts
"""

import argparse
import io
import json
import time

from fastavro import parse_schema, schemaless_reader
from quixstreams import Application
from quixstreams.models.serializers import Deserializer

NO_MOVEMENT_MS = 12 * 3600 * 1000
HR, RR, SUSTAINED_MS = (45, 120), (8, 30), 10 * 60 * 1000


class ConfluentAvro(Deserializer):
    """The Confluent wire format: magic byte, 4-byte schema id, Avro body."""

    def __init__(self, schemas):
        super().__init__()
        self.schemas = schemas

    def __call__(self, value, ctx):
        schema = self.schemas[int.from_bytes(value[1:5], "big")]
        return schemaless_reader(io.BytesIO(value[5:]), schema, None)


def plain(schema):
    """The schema without logical types: times stay epoch milliseconds, as the rules use them."""
    if isinstance(schema, dict):
        return {k: plain(v) for k, v in schema.items() if k != "logicalType"}
    if isinstance(schema, list):
        return [plain(s) for s in schema]
    return schema


def no_movement(event, state):
    t, reading = event["event_time"], event.get("reading")
    if isinstance(reading, dict) and reading.get("detected"):
        state.set("last_motion", t)
        state.set("alerted", False)
        return None
    last = state.get("last_motion")
    if last is None:
        state.set("last_motion", t)
        return None
    if t - last > NO_MOVEMENT_MS and not state.get("alerted", False):
        state.set("alerted", True)
        return {"rule": "no_movement", "household_id": event["household_id"], "at": t}
    return None


def heart_rate(event, state):
    reading = event.get("reading")
    if not isinstance(reading, dict) or "worn" not in reading or not reading["worn"]:
        return None
    hr, rr, t = reading.get("heart_rate_bpm"), reading.get("respiration_rpm"), event["event_time"]
    bad = (hr is not None and not HR[0] <= hr <= HR[1]) or (
        rr is not None and not RR[0] <= rr <= RR[1]
    )
    if not bad:
        state.set("since", None)
        state.set("alerted", False)
        return None
    since = state.get("since")
    if since is None:
        since = t
        state.set("since", t)
    if t - since >= SUSTAINED_MS and not state.get("alerted", False):
        state.set("alerted", True)
        return {"rule": "abnormal_vitals", "household_id": event["household_id"], "at": t}
    return None


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bootstrap", required=True)
    ap.add_argument("--group", default="quix-peer")
    ap.add_argument("--schemas", required=True, help="id=path.avsc,... (the catalogue)")
    ap.add_argument("--topics", nargs="+", required=True)
    ap.add_argument("--output", required=True)
    ap.add_argument("--expect", type=int, required=True)
    args = ap.parse_args()

    schemas = {}
    for pair in args.schemas.split(","):
        sid, path = pair.split("=", 1)
        with open(path) as f:
            schemas[int(sid)] = parse_schema(plain(json.load(f)))

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
        if seen["n"] == args.expect:
            took = time.monotonic() - seen["first"]
            print(f"peer: {seen['n']} records in {took:.2f} s", flush=True)
            app.stop()

    sdf = sdf.update(count)
    alerts = sdf.apply(no_movement, stateful=True).filter(lambda a: a is not None)
    alerts.to_topic(output)
    vitals = sdf.apply(heart_rate, stateful=True).filter(lambda a: a is not None)
    vitals.to_topic(output)
    app.run()


if __name__ == "__main__":
    main()
