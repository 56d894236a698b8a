"""The second peer of the end-to-end benchmark: the same no-movement and heart-rate rules
(`rules.py`) written with Bytewax (https://github.com/bytewax/bytewax): its Kafka input, keyed
by household, one `stateful_map` per rule, alerts as JSON to the output topic, one worker in
this process. Started by `benches/e2e.rs`; set up by `setup.sh`. It prints `peer: started` at
its first record and `peer: <records> records in <s> s` when it has processed `--expect`
records, then exits (a Bytewax flow reading Kafka has no end of its own).

    python bytewax_peer.py --bootstrap 127.0.0.1:9092 --expect 300000 \
        --topics care.sensor_events care.heartbeats care.checkins --output peer.alerts
"""

import json
import os
import time

import bytewax.operators as op
from bytewax.connectors.kafka import KafkaSinkMessage
from bytewax.connectors.kafka import operators as kop
from bytewax.dataflow import Dataflow
from bytewax.testing import run_main

from rules import arguments, decode, heart_rate, no_movement


class State:
    """A rule's state for one household, as `rules.py` reads and writes it."""

    def __init__(self, d):
        self.d = d

    def get(self, key, default=None):
        return self.d.get(key, default)

    def set(self, key, value):
        self.d[key] = value


def per_key(rule):
    def mapper(state, event):
        s = State(state or {})
        return s.d, rule(event, s)

    return mapper


def main():
    args, schemas = arguments("bytewax-peer")

    seen = {"n": 0, "first": None}

    def count(event):
        seen["n"] += 1
        if seen["first"] is None:
            seen["first"] = time.monotonic()
            print("peer: started", flush=True)
        if seen["n"] == args.expect:
            took = time.monotonic() - seen["first"]
            print(f"peer: {seen['n']} records in {took:.2f} s", flush=True)
            # Alive a moment more: the bench reads this process's CPU time now.
            time.sleep(1)
            os._exit(0)
        return event

    flow = Dataflow("carestream_peer")
    kafka = kop.input(
        "in",
        flow,
        brokers=[args.bootstrap],
        topics=args.topics,
        add_config={"group.id": args.group},
    )
    events = op.map("decode", kafka.oks, lambda m: count(decode(schemas, m.value)))
    keyed = op.key_on("household", events, lambda e: e["household_id"])
    moved = op.stateful_map("no_movement", keyed, per_key(no_movement))
    vitals = op.stateful_map("heart_rate", keyed, per_key(heart_rate))
    alerts = op.filter("alerts", op.merge("both", moved, vitals), lambda kv: kv[1] is not None)
    out = op.map(
        "json",
        alerts,
        lambda kv: KafkaSinkMessage(kv[0].encode(), json.dumps(kv[1]).encode()),
    )
    kop.output("out", out, brokers=[args.bootstrap], topic=args.output)
    run_main(flow)


if __name__ == "__main__":
    main()
