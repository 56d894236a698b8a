//! Restore time at city scale, on the real broker: 100 000 households with rule state spread
//! over 6 partitions are checkpointed to a tansu state topic, then read back and restored
//! into a fresh engine, as an instance taking the partitions on would. A measurement, so it
//! is ignored by default; it asserts only that the state came back whole. Run:
//!
//!     cargo test --release --test restore_scale -- --ignored --nocapture

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::producer::FutureProducer;

use carestream::checkpoint;
use carestream::engine::{Engine, Meta};
use carestream::model::*;
use carestream::rules::RuleSet;

const HOUSEHOLDS: usize = 100_000;
const PARTITIONS: i32 = 6;
const T0: Millis = 1_795_104_000_000;

fn profile(i: usize) -> Input {
    let id = format!("hh-{i:06}");
    Input::Household {
        household_id: id.clone(),
        profile: Some(HouseholdProfile {
            household_id: id,
            district: format!("4201{:02}", i % 13),
            street: format!("4201{:02}{:03}", i % 13, i % 17),
            community: format!("4201{:02}{:03}{:03}", i % 13, i % 17, i % 19),
            cohorts: vec![Cohort::LIVING_ALONE],
            ability_level: 2,
            age: 80,
            emergency_contacts: vec![],
            quiet_hours: None,
            away_until: None,
            timezone: "Asia/Shanghai".into(),
            last_visit_at: None,
        }),
    }
}

fn engine() -> Engine {
    let rules = Arc::new(RuleSet::load(&Path::new(common::MANIFEST).join("rules")).unwrap());
    let mut e = Engine::new(rules);
    let mut out = Vec::new();
    for i in 0..HOUSEHOLDS {
        e.process(
            &profile(i),
            Meta {
                partition: 0,
                arrival: T0,
            },
            &mut out,
        )
        .unwrap();
    }
    e
}

#[test]
#[ignore = "a measurement: run with --ignored --nocapture"]
fn restore_time_for_100k_households() {
    let mut live = engine();
    let mut out = Vec::new();
    // A few hours of motion, vitals and heartbeats per household; some alarms left open.
    for round in 0..6i64 {
        for i in 0..HOUSEHOLDS {
            let t = T0 + round * 1_800_000 + (i as i64 % 1_000) * 1_000;
            let hh = format!("hh-{i:06}");
            let meta = Meta {
                partition: (i % PARTITIONS as usize) as i32,
                arrival: t,
            };
            let reading = match (round, i % 500) {
                (5, 0) => Reading::Alarm { active: true },
                _ if round % 2 == 0 => Reading::Motion { detected: true },
                _ => Reading::Vitals {
                    heart_rate_bpm: Some(70),
                    respiration_rpm: Some(16),
                    worn: true,
                },
            };
            let kind = match reading {
                Reading::Alarm { .. } => DeviceKind::EMERGENCY_BUTTON,
                Reading::Motion { .. } => DeviceKind::MOTION_PIR,
                _ => DeviceKind::WEARABLE,
            };
            live.process(
                &Input::Sensor(SensorEvent {
                    event_id: format!("{hh}-{round}"),
                    household_id: hh.clone(),
                    device_id: format!("{hh}-{kind}"),
                    device_kind: kind,
                    event_time: t,
                    reading,
                    gateway_id: None,
                }),
                meta,
                &mut out,
            )
            .unwrap();
            live.process(
                &Input::Heartbeat(DeviceHeartbeat {
                    household_id: hh.clone(),
                    device_id: format!("{hh}-gw"),
                    device_kind: DeviceKind::MOTION_PIR,
                    event_time: t,
                    battery_pct: Some(80),
                    mains_power: Some(true),
                }),
                meta,
                &mut out,
            )
            .unwrap();
        }
    }
    let open = live.open_incidents();
    assert!(open > 0, "some incidents are open");

    let broker = common::Broker::start();
    let (config, _) = common::test_config(&broker.bootstrap(), "restore");
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(carestream::admin::create_topics(&config, PARTITIONS, 1))
        .unwrap();
    let producer: FutureProducer = carestream::kafka::reliable_producer_config(
        &carestream::kafka::base_client_config(&config),
    )
    .create()
    .unwrap();
    let mut writer =
        checkpoint::Writer::new(&config.topics.state, &config.kafka.group_id, PARTITIONS);
    let started = Instant::now();
    let mut bytes = 0;
    let mut snapshot_secs = 0.0;
    for p in 0..PARTITIONS {
        let s0 = Instant::now();
        let snap = live.snapshot(p);
        snapshot_secs += s0.elapsed().as_secs_f64();
        let m = rt
            .block_on(writer.write(&producer, &snap, BTreeMap::new(), 0))
            .unwrap();
        bytes += m.bytes;
    }
    let write_secs = started.elapsed().as_secs_f64();

    // A fresh instance: the registry is loaded before partitions are assigned.
    let mut fresh = engine();
    let partitions: Vec<i32> = (0..PARTITIONS).collect();
    let started = Instant::now();
    let loaded = checkpoint::load(&config, &partitions, Duration::from_secs(120)).unwrap();
    let read_secs = started.elapsed().as_secs_f64();
    assert!(loaded.damaged.is_empty());
    assert_eq!(loaded.restored.len(), PARTITIONS as usize);
    let started = Instant::now();
    let mut households = 0;
    for (_, r) in loaded.restored {
        households += r.manifest.households;
        fresh.restore(r.snapshot);
    }
    let restore_secs = started.elapsed().as_secs_f64();
    assert_eq!(households, HOUSEHOLDS);
    assert_eq!(fresh.open_incidents(), open);
    for p in 0..PARTITIONS {
        assert_eq!(
            fresh.snapshot(p),
            live.snapshot(p),
            "partition {p} came back whole"
        );
    }
    println!(
        "{HOUSEHOLDS} households, {PARTITIONS} partitions, {open} open incidents: checkpoint {:.1} MB \
         ({:.0} B/household); snapshot {snapshot_secs:.2} s + write {:.2} s; \
         restore: read {read_secs:.2} s + rebuild {restore_secs:.2} s = {:.2} s",
        bytes as f64 / 1e6,
        bytes as f64 / HOUSEHOLDS as f64,
        write_secs - snapshot_secs,
        read_secs + restore_secs
    );
}
