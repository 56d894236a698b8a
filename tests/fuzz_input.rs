//! Fuzzing the input path: valid records of every kind with bytes flipped, cut and spliced,
//! and plain random bytes, decoded as each input topic and, when they decode, applied to the
//! engine at arbitrary arrival times. Nothing may panic (the debug build panics on integer
//! overflow too), and what decodes must then process or be refused with a reason. Run briefly
//! in CI (`PROPTEST_CASES` sets more).

#[path = "../benches/workload/mod.rs"]
mod workload;

use std::sync::Arc;

use proptest::prelude::*;

use carestream::codec::Scratch;
use carestream::engine::{Engine, Meta};
use carestream::model::*;

/// One valid record of each input kind, encoded: the seeds the mutations start from.
fn seeds() -> Vec<(InputKind, Vec<u8>)> {
    let codec = workload::codec();
    let mut out = Vec::new();
    for i in workload::stream(50, 400, workload::T0, 100, 9) {
        let kind = match &i {
            Input::Sensor(_) => InputKind::SensorEvents,
            Input::Heartbeat(_) => InputKind::Heartbeats,
            Input::CheckIn(_) => InputKind::CheckIns,
            _ => continue,
        };
        out.push((kind, codec.encode_input(&i).unwrap().unwrap()));
    }
    let p = carestream::tools::simulate::household(3, 1);
    let id = p.household_id.clone();
    let reg = Input::Household {
        household_id: id.clone(),
        profile: Some(p),
    };
    out.push((
        InputKind::Households,
        codec.encode_input(&reg).unwrap().unwrap(),
    ));
    let update = Input::TaskUpdate(TaskUpdate {
        task_id: "t-1".into(),
        household_id: id,
        status: TaskUpdateStatus::ACKNOWLEDGED,
        by: "desk".into(),
        at: workload::T0,
        note: Some("note".into()),
        outcome: None,
        snooze_until: None,
        assign_to: None,
    });
    out.push((
        InputKind::TaskUpdates,
        codec.encode_input(&update).unwrap().unwrap(),
    ));
    let alert = Input::Weather(WeatherAlert {
        alert_id: "w-1".into(),
        region: "420102".into(),
        kind: WeatherKind::HEAT,
        level: WeatherLevel::RED,
        issued_at: workload::T0,
        expires_at: workload::T0 + 3_600_000,
        cancelled: false,
    });
    out.push((
        InputKind::WeatherAlerts,
        codec.encode_input(&alert).unwrap().unwrap(),
    ));
    out
}

#[derive(Debug, Clone)]
enum Mutation {
    Flip { at: usize, bits: u8 },
    Set { at: usize, byte: u8 },
    Cut { at: usize },
    Insert { at: usize, bytes: Vec<u8> },
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<usize>(), 1u8..=255).prop_map(|(at, bits)| Mutation::Flip { at, bits }),
        (any::<usize>(), any::<u8>()).prop_map(|(at, byte)| Mutation::Set { at, byte }),
        any::<usize>().prop_map(|at| Mutation::Cut { at }),
        (
            any::<usize>(),
            proptest::collection::vec(any::<u8>(), 1..12)
        )
            .prop_map(|(at, bytes)| Mutation::Insert { at, bytes }),
    ]
}

fn apply(bytes: &mut Vec<u8>, m: &Mutation) {
    if bytes.is_empty() {
        return;
    }
    match m {
        Mutation::Flip { at, bits } => {
            let i = at % bytes.len();
            bytes[i] ^= bits;
        }
        Mutation::Set { at, byte } => {
            let i = at % bytes.len();
            bytes[i] = *byte;
        }
        Mutation::Cut { at } => bytes.truncate(at % bytes.len()),
        Mutation::Insert { at, bytes: b } => {
            let i = at % (bytes.len() + 1);
            bytes.splice(i..i, b.iter().copied());
        }
    }
}

/// Decodes `payload` as `kind` and, if it decodes, processes it; a refusal is fine, a panic
/// is not.
fn feed(engine: &mut Engine, kind: InputKind, payload: &[u8], arrival: i64, partition: i32) {
    let codec = workload::codec();
    let mut scratch = Scratch::default();
    let key = b"hh-000001";
    if let Ok(input) = codec.decode_reusing(kind, Some(&key[..]), Some(payload), &mut scratch) {
        let mut out = Vec::new();
        let meta = Meta { partition, arrival };
        let _ = engine.process(input, meta, &mut out);
        engine.tick(partition, arrival, &mut out);
        for o in &out {
            // Every output still encodes.
            codec.encode_output(o).unwrap();
        }
    }
}

fn engine() -> Engine {
    let rules = carestream::rules::RuleSet::load(
        &std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("rules"),
    )
    .unwrap();
    let mut e = Engine::new(Arc::new(rules));
    let mut out = Vec::new();
    // The seeds' households registered, so mutated events reach the rules.
    for (kind, bytes) in seeds()
        .into_iter()
        .filter(|(k, _)| *k == InputKind::Households)
    {
        feed(&mut e, kind, &bytes, workload::T0, 0);
    }
    for i in 0..50 {
        let p = carestream::tools::simulate::household(i, 1);
        let reg = Input::Household {
            household_id: carestream::tools::simulate::household_id(i),
            profile: Some(HouseholdProfile {
                household_id: carestream::tools::simulate::household_id(i),
                ..p
            }),
        };
        let _ = e.process(
            &reg,
            Meta {
                partition: 0,
                arrival: workload::T0,
            },
            &mut out,
        );
    }
    e
}

/// A brief run in CI; `PROPTEST_CASES=5000` for a long one.
fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|c| c.parse().ok())
        .unwrap_or(64)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases()))]

    #[test]
    fn mutated_records_never_panic_the_decoder_or_the_engine(
        picks in proptest::collection::vec((any::<usize>(), proptest::collection::vec(mutation(), 0..4), any::<i64>(), 0i32..4), 1..24),
    ) {
        let seeds = seeds();
        let mut e = engine();
        for (pick, mutations, arrival, partition) in picks {
            let (kind, mut bytes) = seeds[pick % seeds.len()].clone();
            for m in &mutations {
                apply(&mut bytes, m);
            }
            // Arrival times as the pipeline hands them over: a positive record timestamp no
            // later than its own clock, 1970 included; the device times inside the records
            // are whatever the mutations made of them.
            let now = carestream::pipeline::wall_millis();
            let arrival = match arrival.rem_euclid(4) {
                0 => workload::T0 + arrival.rem_euclid(86_400_000),
                1 => 1 + arrival.rem_euclid(now),
                2 => now,
                _ => 1,
            };
            feed(&mut e, kind, &bytes, arrival, partition);
        }
    }

    #[test]
    fn random_bytes_never_panic_the_decoder(
        kind in 0usize..6,
        bytes in proptest::collection::vec(any::<u8>(), 0..300),
    ) {
        let mut e = engine();
        feed(&mut e, InputKind::ALL[kind], &bytes, workload::T0, 0);
        // With the wire format's framing in front, so the body reaches the Avro decoder.
        let mut framed = vec![0u8, 0, 0, 0, 2];
        framed.extend_from_slice(&bytes);
        feed(&mut e, InputKind::ALL[kind], &framed, workload::T0, 0);
    }
}
