//! Storm control on the real broker (Apache Kafka; tansu with `CARESTREAM_TEST_BROKER=tansu`),
//! two instances sharing four partitions, so a community's homes are found silent by both
//! and the area's owner hears of them only through `care.area-signals`. A community of 20
//! homes loses power at once; a neighbouring community of 16 homes goes on; two homes of a
//! third community go silent on their own. Times are short (home silence after 8 s, a wait of
//! 8 s) and event time is the wall clock.
//!
//! The desk gets one grouped task for the dark community (its homes in evidence) and no task
//! or family message for its homes while it lasts; the two lone homes get their own tasks;
//! when 14 of the 20 come back the area's incident resolves itself and the 6 still dark get
//! their own tasks, each once.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use rdkafka::consumer::BaseConsumer;
use rdkafka::message::Message;
use rdkafka::producer::Producer;

use carestream::model::*;

const PARTITIONS: i32 = 4;
const DARK: &str = "420106001001";
const LIT: &str = "420106001002";
const LONE: &str = "420106001003";

fn homes() -> Vec<HouseholdProfile> {
    let communities = [(DARK, 20), (LIT, 16), (LONE, 2)];
    let mut all = Vec::new();
    for (c, n) in communities {
        for i in 0..n {
            let mut p = carestream::tools::simulate::household(all.len(), 7);
            p.household_id = format!("st-{c}-{i:02}");
            p.district = "420106".into();
            p.street = "420106001".into();
            p.community = c.into();
            all.push(p);
        }
    }
    all
}

#[derive(Default)]
struct Seen {
    tasks: Vec<EscalationTask>,
    events: Vec<TaskEvent>,
    told: Vec<ContactNotification>,
}

fn read(consumer: &BaseConsumer, seen: &mut Seen, for_ms: u64) {
    let codec = common::codec();
    let until = Instant::now() + Duration::from_millis(for_ms);
    while Instant::now() < until {
        let Some(Ok(m)) = consumer.poll(Duration::from_millis(100)) else {
            continue;
        };
        match codec.decode_output(m.payload().unwrap_or_default()) {
            Ok(Output::Task(t)) => seen.tasks.push(t),
            Ok(Output::TaskEvent(e)) => seen.events.push(e),
            Ok(Output::Notification(n)) => seen.told.push(n),
            Err(_) => {}
        }
    }
}

#[test]
fn a_community_losing_power_is_one_task_for_the_desk_across_instances() {
    let broker = common::Broker::start();
    let rules = common::rules_with(
        "storm-rules",
        &[
            (
                "engine.toml",
                "out_of_orderness = \"30s\"",
                "out_of_orderness = \"1s\"",
            ),
            ("home_silence.toml", "after = \"30m\"", "after = \"8s\""),
            (
                "area_silence.toml",
                "group_wait = \"3m\"",
                "group_wait = \"8s\"",
            ),
            ("area_silence.toml", "window = \"15m\"", "window = \"1m\""),
        ],
    );
    let (config, env) = common::environment_with_topics(&broker, "storm", &rules, PARTITIONS);
    let t = config.topics.clone();
    let producer = common::platform_producer(&broker.bootstrap());
    let codec = common::codec();
    let homes = homes();
    common::register(&producer, &config, &homes, common::now());
    producer.flush(Duration::from_secs(10)).unwrap();
    let mut procs = common::start_instances(&env, 2);
    // Everyone reports for 4 s; then the dark community and the two lone homes stop; 30 s
    // later 14 of the dark homes come back.
    let back: BTreeSet<String> = (0..14).map(|i| format!("st-{DARK}-{i:02}")).collect();
    let began = Instant::now();
    let beat = |p: &HouseholdProfile, at: Millis| {
        let hb = Input::Heartbeat(DeviceHeartbeat {
            household_id: p.household_id.clone(),
            device_id: format!("{}-gw", p.household_id),
            device_kind: DeviceKind::MOTION_PIR,
            event_time: at,
            battery_pct: Some(90),
            mains_power: Some(true),
        });
        common::produce(
            &producer,
            &t.heartbeats,
            &p.household_id,
            &common::enc(&codec, &hb),
            at,
        );
    };
    while began.elapsed() < Duration::from_secs(52) {
        let s = began.elapsed().as_secs();
        let at = common::now();
        for p in &homes {
            let sends = p.community == LIT
                || s < 4
                || (p.community == DARK && s >= 34 && back.contains(&p.household_id));
            if sends {
                beat(p, at);
            }
        }
        producer.flush(Duration::from_secs(10)).unwrap();
        std::thread::sleep(Duration::from_millis(500));
    }

    let reader = common::reader_from_start(
        &broker.bootstrap(),
        "storm-desk",
        &[
            &t.dispatch_critical,
            &t.dispatch_high,
            &t.dispatch_routine,
            &t.task_events,
            &t.contact_notifications,
        ],
        PARTITIONS,
    );
    let mut seen = Seen::default();
    read(&reader, &mut seen, 5_000);
    let logs = || {
        procs
            .iter()
            .map(|p| common::tail(&p.logs(), 40))
            .collect::<Vec<_>>()
            .join("\n-----\n")
    };

    let area: Vec<&EscalationTask> = seen
        .tasks
        .iter()
        .filter(|t| t.rule_id == "area_silence")
        .collect();
    assert_eq!(area.len(), 1, "one grouped task: {area:#?}\n{}", logs());
    let a = area[0];
    assert_eq!(a.household_id, format!("area:{DARK}"));
    assert_eq!((a.severity, a.community.as_str()), (Severity::HIGH, DARK));
    let named: BTreeSet<&str> = a.evidence[1..]
        .iter()
        .map(|e| e.event_id.as_str())
        .collect();
    assert!(named.len() >= 5, "{named:?}");
    assert!(
        named.iter().all(|h| h.starts_with(&format!("st-{DARK}-"))),
        "{named:?}"
    );
    let resolved = seen
        .events
        .iter()
        .filter(|e| e.rule_id == "area_silence" && e.kind == TaskEventKind::AUTO_RESOLVED)
        .count();
    assert_eq!(
        resolved,
        1,
        "the area's incident resolved itself\n{}",
        logs()
    );

    // Each home's own call, by household: the 6 still dark, and the two lone homes.
    let mut own: BTreeMap<String, usize> = BTreeMap::new();
    for t in &seen.tasks {
        if t.rule_id == "home_silence" && t.action == Action::CALL_ELDER {
            *own.entry(t.household_id.clone()).or_default() += 1;
        }
    }
    let mut expected: BTreeMap<String, usize> =
        (14..20).map(|i| (format!("st-{DARK}-{i:02}"), 1)).collect();
    expected.extend((0..2).map(|i| (format!("st-{LONE}-{i:02}"), 1)));
    assert_eq!(own, expected, "\n{}", logs());
    // No family of a home that came back was told anything.
    let told: Vec<&str> = seen
        .told
        .iter()
        .filter(|n| back.contains(&n.household_id))
        .map(|n| n.household_id.as_str())
        .collect();
    assert!(told.is_empty(), "told while held: {told:?}");
    let mut reported = 0.0;
    for p in procs.iter_mut() {
        let scrape = p.get("/metrics").1;
        reported += common::metric(&scrape, "carestream_area_homes_reported_total").unwrap_or(0.0);
        assert!(p
            .terminate(Duration::from_secs(30))
            .is_some_and(|s| s.success()));
    }
    assert_eq!(
        reported, 22.0,
        "the dark community's 20 and the 2 lone homes"
    );
}
