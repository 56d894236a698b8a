"""The rules both peers of the end-to-end benchmark run (`peer.py`, Quix Streams, and
`bytewax_peer.py`, Bytewax), written once against a small state interface (`get`, `set`),
which each framework's per-key state provides:

- no movement: an event of a household whose last motion is older than 12 h (the default
  `after` of rules/no_movement.toml) raises one alert until motion is seen again;
- heart rate: a worn wearable's heart rate or breathing outside 45-120 bpm / 8-30 rpm for
  10 minutes of readings (rules/vitals.toml defaults) raises one alert until it recovers.
"""

import argparse
import io
import json

from fastavro import parse_schema, schemaless_reader

NO_MOVEMENT_MS = 12 * 3600 * 1000
HR, RR, SUSTAINED_MS = (45, 120), (8, 30), 10 * 60 * 1000


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


def decode(schemas, value):
    """The Confluent wire format: magic byte, 4-byte schema id, Avro body."""
    schema = schemas[int.from_bytes(value[1:5], "big")]
    return schemaless_reader(io.BytesIO(value[5:]), schema, None)


def arguments(group):
    """Both peers' command line, and the catalogue's schemas by id."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--bootstrap", required=True)
    ap.add_argument("--group", default=group)
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
    return args, schemas
