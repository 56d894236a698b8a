//! A checkpoint written by the previous release (`a7592fa`, before storm control) restores
//! in this one and goes on as that release went on: the same tasks, with the same ids, for
//! the next 28 hours of the same city. The fixture was written by that release from the
//! city below (`tests/fixtures/checkpoint/`: the partition's snapshot after two hours, and
//! the tasks that release made in the hours after; written by a test like this one run on
//! that commit).

use std::path::Path;
use std::sync::Arc;

use carestream::engine::{Engine, Meta, PartitionSnapshot};
use carestream::model::*;
use carestream::rules::RuleSet;

// The city both releases run: 20 homes of the simulator on partition 0, each with a motion
// sensor sending heartbeats and motion every 5 minutes from T0; home 7 stops moving after
// 30 minutes (its heartbeats go on), home 3 presses its button at 1 h. `before`: the first
// two hours, after which the checkpoint is taken; `after`: the 28 hours that follow.
const T0: Millis = 1_795_104_000_000; // 2026-11-20 00:00 +08:00
const MIN: Millis = 60_000;
const HOMES: usize = 20;

fn city_profiles() -> Vec<Input> {
    (0..HOMES)
        .map(|i| {
            let mut p = carestream::tools::simulate::household(i, 19);
            p.last_visit_at = None;
            Input::Household {
                household_id: p.household_id.clone(),
                profile: Some(p),
            }
        })
        .collect()
}

fn city_events(from: Millis, to: Millis) -> Vec<Input> {
    let mut out = Vec::new();
    let mut t = from;
    while t < to {
        for i in 0..HOMES {
            let id = carestream::tools::simulate::household_id(i);
            let at = t + i as Millis * 1_000;
            out.push(Input::Heartbeat(DeviceHeartbeat {
                household_id: id.clone(),
                device_id: format!("{id}-pir"),
                device_kind: DeviceKind::MOTION_PIR,
                event_time: at,
                battery_pct: Some(90),
                mains_power: Some(true),
            }));
            if i != 7 || at < T0 + 30 * MIN {
                out.push(Input::Sensor(SensorEvent {
                    event_id: format!("{id}-m-{at}"),
                    household_id: id.clone(),
                    device_id: format!("{id}-pir"),
                    device_kind: DeviceKind::MOTION_PIR,
                    event_time: at,
                    reading: Reading::Motion { detected: true },
                    gateway_id: None,
                }));
            }
            if i == 3 && t <= T0 + 60 * MIN && T0 + 60 * MIN < t + 5 * MIN {
                out.push(Input::Sensor(SensorEvent {
                    event_id: format!("{id}-sos"),
                    household_id: id.clone(),
                    device_id: format!("{id}-button"),
                    device_kind: DeviceKind::EMERGENCY_BUTTON,
                    event_time: at,
                    reading: Reading::Alarm { active: true },
                    gateway_id: None,
                }));
            }
        }
        t += 5 * MIN;
    }
    out
}

fn feed(engine: &mut Engine, inputs: &[Input], out: &mut Vec<Output>) {
    for input in inputs {
        let arrival = match input {
            Input::Heartbeat(h) => h.event_time,
            Input::Sensor(s) => s.event_time,
            _ => T0,
        };
        let meta = Meta {
            partition: 0,
            arrival,
        };
        engine.process(input, meta, out).unwrap();
    }
}

/// What the desk would see of the outputs: each task's id, rule, tier and time.
fn tasks_of(out: &[Output]) -> Vec<(String, String, i32, Millis)> {
    out.iter()
        .filter_map(|o| match o {
            Output::Task(t) => Some((t.task_id.clone(), t.rule_id.clone(), t.tier, t.emitted_at)),
            _ => None,
        })
        .collect()
}

#[test]
fn a_checkpoint_of_the_previous_release_restores_and_goes_on_the_same() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/checkpoint");
    let snapshot: PartitionSnapshot =
        serde_json::from_str(&std::fs::read_to_string(dir.join("a7592fa.snapshot.json")).unwrap())
            .expect("the previous release's checkpoint reads");
    let expected: Vec<(String, String, i32, Millis)> =
        serde_json::from_str(&std::fs::read_to_string(dir.join("a7592fa.tasks.json")).unwrap())
            .unwrap();
    assert!(
        expected.iter().any(|t| t.1 == "no_movement"),
        "the fixture holds the finding the restored state carries: {expected:?}"
    );
    let rules =
        Arc::new(RuleSet::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("rules")).unwrap());
    let mut e = Engine::new(rules);
    let mut out = Vec::new();
    feed(&mut e, &city_profiles(), &mut out);
    e.restore(snapshot);
    assert_eq!(e.household_count(), HOMES);
    assert_eq!(e.open_incidents(), 1, "home 3's alarm, still open");
    let mut after = Vec::new();
    feed(
        &mut e,
        &city_events(T0 + 120 * MIN, T0 + 30 * 60 * MIN),
        &mut after,
    );
    assert_eq!(tasks_of(&after), expected);
}
