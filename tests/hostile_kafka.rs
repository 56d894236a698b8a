//! A hostile producer on the real broker (Apache Kafka; tansu with `CARESTREAM_TEST_BROKER=tansu`),
//! one bad case after another while a city of twelve homes reports movement every second:
//! oversized garbage, garbage, an unknown schema id, another record's schema, timestamps a
//! year ahead, a year behind and in 1970, absurd values, a tombstone on an event topic,
//! `alarms.toml` reordered and then shrunk while running, and a corrupt checkpoint manifest
//! and piece found by the next instance. After each, an emergency button must make its task
//! within seconds; at the end the desk must hold exactly the buttons' tasks (what the same
//! traffic without the bad cases makes), the processor must be ready, and the homes' phone
//! number must be in contact notifications only.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, AlterConfig, ResourceSpecifier};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::{Offset, TopicPartitionList};

use carestream::config::Config;
use carestream::model::*;

const YEAR: Millis = 365 * 24 * 3_600_000;
/// Every home's emergency contact: personal data that only contact notifications may carry.
const PHONE: &str = "13987654321";
const PARTITIONS: i32 = 3;

fn now() -> Millis {
    carestream::pipeline::wall_millis()
}

type Prod = ThreadedProducer<DefaultProducerContext>;

fn producer(bootstrap: &str) -> Prod {
    ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("message.max.bytes", "4000000")
        .set("partitioner", "murmur2_random")
        .set("linger.ms", "2")
        .create()
        .unwrap()
}

fn send(p: &Prod, topic: &str, key: &str, payload: Option<&[u8]>, timestamp: Millis) {
    let mut rec = BaseRecord::<str, [u8]>::to(topic)
        .key(key)
        .timestamp(timestamp);
    if let Some(v) = payload {
        rec = rec.payload(v);
    }
    while let Err((_, r)) = p.send(rec) {
        rec = r;
        std::thread::sleep(Duration::from_millis(1));
    }
    p.flush(Duration::from_secs(10)).unwrap();
}

fn motion(hh: &str, id: &str, t: Millis) -> Input {
    common::sensor(
        hh,
        id,
        DeviceKind::MOTION_PIR,
        t,
        Reading::Motion { detected: true },
    )
}

/// The `[[alarm]]` blocks of the shipped `alarms.toml`, and what comes before them.
fn alarm_blocks() -> (String, Vec<String>) {
    let text =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/rules/alarms.toml")).unwrap();
    let mut parts = text.split("[[alarm]]");
    let head = parts.next().unwrap().to_string();
    (head, parts.map(|b| format!("[[alarm]]{b}")).collect())
}

/// Tasks on the dispatch topics: (task id, rule, evidence event ids, tier, action).
fn dispatch(config: &Config) -> Vec<EscalationTask> {
    let codec = common::codec();
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &config.kafka.brokers)
        .set("group.id", common::unique("hostile-desk"))
        .create()
        .unwrap();
    let t = &config.topics;
    let mut tpl = TopicPartitionList::new();
    for topic in [&t.dispatch_critical, &t.dispatch_high, &t.dispatch_routine] {
        for p in 0..PARTITIONS {
            tpl.add_partition_offset(topic, p, Offset::Beginning)
                .unwrap();
        }
    }
    c.assign(&tpl).unwrap();
    let mut got = Vec::new();
    let mut quiet = 0;
    while quiet < 10 {
        match c.poll(Duration::from_millis(200)) {
            Some(Ok(m)) => {
                quiet = 0;
                if let Ok(Output::Task(task)) = codec.decode_output(m.payload().unwrap_or_default())
                {
                    got.push(task);
                }
            }
            _ => quiet += 1,
        }
    }
    got
}

/// Waits until the desk has the call for button event `event`.
fn wait_for_call(config: &Config, event: &str, limit: Duration) -> Option<Duration> {
    let start = Instant::now();
    while start.elapsed() < limit {
        let calls = dispatch(config);
        if calls.iter().any(|t| {
            t.action == Action::CALL_ELDER && t.evidence.iter().any(|e| e.event_id == event)
        }) {
            return Some(start.elapsed());
        }
    }
    None
}

/// Records of `topic` whose key, value or headers contain the phone number.
fn scan(config: &Config, topic: &str) -> usize {
    use rdkafka::message::Headers;
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &config.kafka.brokers)
        .set("group.id", common::unique("hostile-scan"))
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    for p in 0..PARTITIONS {
        tpl.add_partition_offset(topic, p, Offset::Beginning)
            .unwrap();
    }
    c.assign(&tpl).unwrap();
    let (mut found, mut quiet) = (0, 0);
    while quiet < 10 {
        match c.poll(Duration::from_millis(200)) {
            Some(Ok(m)) => {
                quiet = 0;
                let mut bytes = m.key().unwrap_or_default().to_vec();
                bytes.extend_from_slice(m.payload().unwrap_or_default());
                if let Some(h) = m.headers() {
                    for i in 0..h.count() {
                        bytes.extend_from_slice(h.get(i).value.unwrap_or_default());
                    }
                }
                found += String::from_utf8_lossy(&bytes).contains(PHONE) as usize;
            }
            _ => quiet += 1,
        }
    }
    found
}

/// The newest manifest of `partition` on the state topic, as JSON.
fn manifest(config: &Config, state_partitions: i32, partition: i32) -> Option<serde_json::Value> {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &config.kafka.brokers)
        .set("group.id", common::unique("hostile-state"))
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(
        &config.topics.state,
        partition % state_partitions,
        Offset::Beginning,
    )
    .unwrap();
    c.assign(&tpl).unwrap();
    let key = carestream::checkpoint::manifest_key(&config.kafka.group_id, partition);
    let mut newest = None;
    let mut quiet = 0;
    while quiet < 10 {
        match c.poll(Duration::from_millis(200)) {
            Some(Ok(m)) => {
                quiet = 0;
                if m.key() == Some(key.as_bytes()) {
                    newest = m.payload().and_then(|p| serde_json::from_slice(p).ok());
                }
            }
            _ => quiet += 1,
        }
    }
    newest
}

#[test]
fn every_bad_case_in_turn_leaves_alarms_working_and_adds_no_task() {
    let broker = common::Broker::start();
    let (_, env) = common::test_config(&broker.bootstrap(), "hostile-all");
    let rules = common::rules_with("hostile-rules", &[]);
    let mut env = common::with_rules(&env, &rules);
    env.push((
        "CARESTREAM_PIPELINE__CHECKPOINT_INTERVAL_MS".into(),
        "2000".into(),
    ));
    let config = Config::load(None, env.clone()).unwrap();
    let t = config.topics.clone();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(carestream::admin::create_topics(&config, PARTITIONS, 1))
        .unwrap();
    // Records up to 4 MB and any timestamp are accepted by the topic (Kafka 4 refuses stamps
    // over an hour ahead by default; Kafka 3, or a topic set like this, does not).
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", broker.bootstrap())
        .create()
        .unwrap();
    let alter = AlterConfig::new(ResourceSpecifier::Topic(&t.sensor_events))
        .set("max.message.bytes", "4000000")
        .set("message.timestamp.after.max.ms", "9223372036854775807")
        .set("message.timestamp.before.max.ms", "9223372036854775807");
    for r in rt
        .block_on(admin.alter_configs(&[alter], &AdminOptions::new()))
        .unwrap()
    {
        r.unwrap();
    }
    let codec = common::codec();
    let p = producer(&broker.bootstrap());
    // A home of its own for each case's button: a second press in a home whose first call is
    // still open joins that incident.
    let homes: Vec<String> = (0..12)
        .map(|i| {
            let mut profile = carestream::tools::simulate::household(i, 3);
            for c in profile.emergency_contacts.iter_mut() {
                c.phone = PHONE.into();
            }
            let id = profile.household_id.clone();
            let reg = Input::Household {
                household_id: id.clone(),
                profile: Some(profile),
            };
            send(
                &p,
                &t.households,
                &id,
                Some(&common::enc(&codec, &reg)),
                now(),
            );
            id
        })
        .collect();
    let mut proc = common::Processor::start(&env);
    proc.wait_ready(Duration::from_secs(60));

    // Live traffic: every home moves every second, until the end.
    let stop = Arc::new(AtomicBool::new(false));
    let live = {
        let (stop, homes, topic, bootstrap) = (
            stop.clone(),
            homes.clone(),
            t.sensor_events.clone(),
            broker.bootstrap(),
        );
        std::thread::spawn(move || {
            let (p, codec) = (producer(&bootstrap), common::codec());
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                for hh in &homes {
                    n += 1;
                    let at = now();
                    let m = common::enc(&codec, &motion(hh, &format!("live-{n}"), at));
                    send(&p, &topic, hh, Some(&m), at);
                }
                std::thread::sleep(Duration::from_secs(1));
            }
        })
    };

    let (head, blocks) = alarm_blocks();
    let alarms_file = std::path::Path::new(&*rules).join("alarms.toml");
    let reloads = |proc: &common::Processor| {
        common::metric(
            &proc.get("/metrics").1,
            "carestream_rule_reloads_total{result=\"ok\"}",
        )
        .unwrap_or(0.0)
    };
    let mut pressed: Vec<String> = Vec::new();
    let cases = [
        "oversized garbage",
        "garbage",
        "unknown schema id",
        "another record's schema",
        "a year ahead",
        "a year behind",
        "1970",
        "absurd values",
        "tombstone on an event topic",
        "alarms.toml reordered",
        "alarms.toml shrunk",
        "corrupt checkpoint manifest and piece",
    ];
    for (k, case) in cases.iter().enumerate() {
        let hh = &homes[k % homes.len()];
        let s = &t.sensor_events;
        match *case {
            "oversized garbage" => send(&p, s, hh, Some(&vec![0x7f; 1_500_000]), now()),
            "garbage" => send(&p, s, hh, Some(b"\x00\x01 not avro"), now()),
            "unknown schema id" => send(&p, s, hh, Some(&[0, 0, 0, 0x30, 0x39, 2, 4]), now()),
            "another record's schema" => {
                send(&p, s, hh, Some(&common::fixture("heartbeat")), now())
            }
            "a year ahead" => {
                for (i, h) in homes.iter().enumerate() {
                    let at = now() + YEAR;
                    send(
                        &p,
                        s,
                        h,
                        Some(&common::enc(&codec, &motion(h, &format!("ahead-{i}"), at))),
                        at,
                    );
                }
            }
            "a year behind" => {
                let at = now() - YEAR;
                send(
                    &p,
                    s,
                    hh,
                    Some(&common::enc(&codec, &motion(hh, "behind", at))),
                    at,
                );
            }
            "1970" => send(
                &p,
                s,
                hh,
                Some(&common::enc(&codec, &motion(hh, "epoch", 1))),
                1,
            ),
            "absurd values" => {
                let hr = common::sensor(
                    hh,
                    "absurd-hr",
                    DeviceKind::WEARABLE,
                    now(),
                    Reading::Vitals {
                        heart_rate_bpm: Some(900),
                        respiration_rpm: Some(-3),
                        worn: true,
                    },
                );
                send(&p, s, hh, Some(&common::enc(&codec, &hr)), now());
                let meter = common::sensor(
                    hh,
                    "absurd-meter",
                    DeviceKind::WATER_METER,
                    now(),
                    Reading::Meter { cumulative: -1e300 },
                );
                send(&p, s, hh, Some(&common::enc(&codec, &meter)), now());
            }
            "tombstone on an event topic" => {
                send(&p, s, hh, None, now());
                send(&p, &t.heartbeats, hh, None, now());
            }
            "alarms.toml reordered" | "alarms.toml shrunk" => {
                let before = reloads(&proc);
                let mut b = blocks.clone();
                b.reverse();
                if *case == "alarms.toml shrunk" {
                    b.retain(|x| !x.contains("alarm.water_leak") && !x.contains("alarm.gas"));
                }
                std::fs::write(&alarms_file, format!("{head}{}", b.concat())).unwrap();
                let start = Instant::now();
                while reloads(&proc) <= before {
                    assert!(
                        start.elapsed() < Duration::from_secs(20),
                        "{case}: no reload"
                    );
                    std::thread::sleep(Duration::from_millis(200));
                }
            }
            "corrupt checkpoint manifest and piece" => {
                // The pieces of partition 1's newest checkpoint, before the instance goes.
                let state_partitions = PARTITIONS;
                assert!(proc
                    .terminate(Duration::from_secs(30))
                    .is_some_and(|s| s.success()));
                let m =
                    manifest(&config, state_partitions, 1).expect("a checkpoint of partition 1");
                let piece = format!(
                    "{}/chunk/1/{}/{}/0",
                    config.kafka.group_id,
                    m["writer"].as_str().unwrap(),
                    m["seq"]
                );
                let state = &t.state;
                let key0 = carestream::checkpoint::manifest_key(&config.kafka.group_id, 0);
                let rec = BaseRecord::<str, [u8]>::to(state)
                    .partition(0)
                    .key(&key0)
                    .payload(b"{ not a manifest");
                p.send(rec).map_err(|(e, _)| e).unwrap();
                let rec = BaseRecord::<str, [u8]>::to(state)
                    .partition(1 % state_partitions)
                    .key(&piece)
                    .payload(b"\x00garbage piece");
                p.send(rec).map_err(|(e, _)| e).unwrap();
                p.flush(Duration::from_secs(10)).unwrap();
                proc = common::Processor::start(&env);
                proc.wait_ready(Duration::from_secs(90));
                let scrape = proc.get("/metrics").1;
                let failed = common::metric(
                    &scrape,
                    "carestream_partition_restores_total{source=\"failed\"}",
                )
                .unwrap_or(0.0);
                assert!(
                    failed >= 2.0,
                    "{case}: the damaged checkpoints were not noticed ({failed})"
                );
            }
            other => unreachable!("{other}"),
        }
        let event = format!("sos-{k}");
        let b = common::sensor(
            hh,
            &event,
            DeviceKind::EMERGENCY_BUTTON,
            now(),
            Reading::Alarm { active: true },
        );
        send(&p, s, hh, Some(&common::enc(&codec, &b)), now());
        pressed.push(event.clone());
        let took = wait_for_call(&config, &event, Duration::from_secs(20));
        eprintln!("{case}: the button's task after {took:?}");
        assert!(
            took.is_some(),
            "{case}: no task for the button\n{}",
            common::tail(&proc.logs(), 40)
        );
        assert_eq!(proc.get("/health").0, 200, "{case}: not ready");
    }
    stop.store(true, Ordering::Relaxed);
    live.join().unwrap();

    // Exactly the buttons' tasks: one call (and its contact notification) for each press,
    // nothing else. Re-emissions after the restart carry the same ids.
    let tasks = dispatch(&config);
    let mut calls: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for task in &tasks {
        assert_eq!(
            task.rule_id, "alarm.emergency_button",
            "a task the same traffic without the bad cases does not make: {task:?}"
        );
        if task.action == Action::CALL_ELDER {
            for e in &task.evidence {
                calls
                    .entry(e.event_id.clone())
                    .or_default()
                    .insert(task.task_id.clone());
            }
        }
    }
    for event in &pressed {
        assert_eq!(
            calls.get(event).map(BTreeSet::len),
            Some(1),
            "{event}: {calls:?}"
        );
    }
    assert_eq!(calls.len(), pressed.len(), "{calls:?}");
    assert_eq!(proc.get("/health").0, 200);

    // The phone number is in the registry and in contact notifications, nowhere else: not in
    // tasks, task events, dead letters, checkpoints, logs or metrics.
    let notified = scan(&config, &t.contact_notifications);
    assert!(
        notified > 0,
        "no contact notification carries the number: the scan proves nothing"
    );
    for topic in [
        &t.dispatch_critical,
        &t.dispatch_high,
        &t.dispatch_routine,
        &t.task_events,
        &t.dead_letter,
        &t.state,
    ] {
        assert_eq!(scan(&config, topic), 0, "{topic} carries the phone number");
    }
    assert!(
        !proc.logs().contains(PHONE),
        "a log line carries the phone number"
    );
    assert!(
        !proc.get("/metrics").1.contains(PHONE),
        "a metric carries the phone number"
    );
    assert!(proc
        .terminate(Duration::from_secs(30))
        .is_some_and(|s| s.success()));
}
