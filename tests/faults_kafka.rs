//! Faults on the real broker (Apache Kafka by default): a huge bad record and a producer clock
//! a year ahead must not stop alarms or flood the desk, and shutdown must end when outputs
//! cannot be delivered, leaving the undelivered work to the next instance with the same ids.

mod common;

use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, AlterConfig, ResourceSpecifier};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message, OwnedMessage};
use rdkafka::producer::{FutureProducer, FutureRecord};

use carestream::codec::Codec;
use carestream::config::Config;
use carestream::engine::ids;
use carestream::model::*;

const HOUR: Millis = 3_600_000;
const PHONE: &str = "13912345678";

fn now() -> Millis {
    carestream::pipeline::wall_millis()
}

fn producer(bootstrap: &str) -> FutureProducer {
    ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("message.max.bytes", "4000000")
        .create()
        .unwrap()
}

async fn send(p: &FutureProducer, topic: &str, key: &str, payload: &[u8], timestamp: Millis) {
    p.send(
        FutureRecord::to(topic)
            .key(key)
            .payload(payload)
            .timestamp(timestamp),
        Duration::from_secs(20),
    )
    .await
    .map_err(|(e, _)| e)
    .expect("produce");
}

fn button(hh: &str, event_id: &str, t: Millis) -> Input {
    common::sensor(
        hh,
        event_id,
        DeviceKind::EMERGENCY_BUTTON,
        t,
        Reading::Alarm { active: true },
    )
}

/// An emergency button pressed now in `hh`.
async fn press(p: &FutureProducer, codec: &Codec, topic: &str, hh: &str, event: &str) {
    let b = button(hh, event, now());
    send(p, topic, hh, &common::enc(codec, &b), now()).await;
}

/// The tasks a fresh desk first finds on `topic` (waiting up to 30 s for any).
fn first_tasks(bootstrap: &str, codec: &Codec, topic: &str) -> Vec<EscalationTask> {
    let c = desk(bootstrap, &[topic]);
    tasks(
        codec,
        &read_until(&c, Duration::from_secs(30), |m| !m.is_empty()),
    )
}

async fn register(p: &FutureProducer, codec: &Codec, config: &Config, n: usize) -> Vec<String> {
    let mut ids = Vec::new();
    for i in 0..n {
        let profile = carestream::tools::simulate::household(i, 1);
        let id = profile.household_id.clone();
        let input = Input::Household {
            household_id: id.clone(),
            profile: Some(profile),
        };
        send(
            p,
            &config.topics.households,
            &id,
            &common::enc(codec, &input),
            now(),
        )
        .await;
        ids.push(id);
    }
    ids
}

fn desk(bootstrap: &str, topics: &[&str]) -> BaseConsumer {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", common::unique("desk"))
        .set("auto.offset.reset", "earliest")
        .create()
        .unwrap();
    c.subscribe(topics).unwrap();
    c
}

/// Polls `c` until `done` says the records so far are enough, or `limit` passes.
fn read_until(
    c: &BaseConsumer,
    limit: Duration,
    mut done: impl FnMut(&[OwnedMessage]) -> bool,
) -> Vec<OwnedMessage> {
    let start = Instant::now();
    let mut got = Vec::new();
    while start.elapsed() < limit && !done(&got) {
        if let Some(Ok(m)) = c.poll(Duration::from_millis(200)) {
            got.push(m.detach());
        }
    }
    got
}

fn tasks(codec: &Codec, msgs: &[OwnedMessage]) -> Vec<EscalationTask> {
    msgs.iter()
        .filter_map(|m| match codec.decode_output(m.payload()?) {
            Ok(Output::Task(t)) => Some(t),
            _ => None,
        })
        .collect()
}

fn header(m: &OwnedMessage, key: &str) -> Option<String> {
    let h = m.headers()?;
    (0..h.count())
        .map(|i| h.get(i))
        .find(|h| h.key == key)
        .and_then(|h| h.value)
        .map(|v| String::from_utf8_lossy(v).into_owned())
}

/// Sets a topic's configuration to `pairs` (the rest back to the broker's defaults).
async fn set_topic_config(config: &Config, topic: &str, pairs: &[(&str, &str)]) {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", &config.kafka.brokers)
        .create()
        .unwrap();
    let mut alter = AlterConfig::new(ResourceSpecifier::Topic(topic));
    for (k, v) in pairs {
        alter = alter.set(k, v);
    }
    for r in admin
        .alter_configs(&[alter], &AdminOptions::new())
        .await
        .unwrap()
    {
        r.unwrap_or_else(|e| panic!("alter {topic}: {e:?}"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_huge_bad_record_and_a_clock_a_year_ahead_do_not_stop_alarms_or_flood_the_desk() {
    let broker = common::Broker::start();
    let (config, env) = common::test_config(&broker.bootstrap(), "hostile");
    carestream::admin::create_topics(&config, 3, 1)
        .await
        .unwrap();
    // The input topic takes records up to 4 MB (a producer may write what the processor's own
    // dead letter could not carry whole) and any timestamp: Kafka 4 refuses stamps over an
    // hour ahead by default, Kafka 3 and a topic set like this do not.
    set_topic_config(
        &config,
        &config.topics.sensor_events,
        &[
            ("max.message.bytes", "4000000"),
            ("message.timestamp.after.max.ms", "9223372036854775807"),
        ],
    )
    .await;
    let codec = common::codec();
    let p = producer(&broker.bootstrap());
    let homes = register(&p, &codec, &config, 12).await;
    let mut proc = common::Processor::start(&env);
    proc.wait_ready(Duration::from_secs(60));
    let t0 = now();
    // Every home alive, with movement now.
    let motion_everywhere = |tag: &str, at: Millis| {
        let (p, codec, topic) = (&p, &codec, &config.topics.sensor_events);
        let tag = tag.to_string();
        let homes = homes.clone();
        async move {
            for (i, hh) in homes.iter().enumerate() {
                let m = common::sensor(
                    hh,
                    &format!("{tag}-{i}"),
                    DeviceKind::MOTION_PIR,
                    at,
                    Reading::Motion { detected: true },
                );
                send(p, topic, hh, &common::enc(codec, &m), at).await;
            }
        }
    };
    motion_everywhere("m", t0).await;
    // 1.5 MB of garbage (a bad magic byte) on the sensor topic.
    let huge = vec![0x7fu8; 1_500_000];
    send(&p, &config.topics.sensor_events, &homes[0], &huge, now()).await;
    // Motion stamped a year ahead, record timestamp and event time alike, for every home.
    let ahead = now() + 365 * 24 * HOUR;
    motion_everywhere("future", ahead).await;
    // A registry record broken after its magic byte's place, and a desk update for a task
    // never issued, both carrying a phone number.
    let mut profile = carestream::tools::simulate::household(99, 1);
    profile.emergency_contacts[0].phone = PHONE.into();
    let registered = Input::Household {
        household_id: profile.household_id.clone(),
        profile: Some(profile.clone()),
    };
    let mut broken = common::enc(&codec, &registered);
    broken[0] = 7;
    send(
        &p,
        &config.topics.households,
        &profile.household_id,
        &broken,
        now(),
    )
    .await;
    let update = Input::TaskUpdate(TaskUpdate {
        task_id: "no-such-task".into(),
        household_id: homes[1].clone(),
        status: TaskUpdateStatus::RESOLVED,
        by: "desk-7".into(),
        at: now(),
        note: Some(format!("son says call {PHONE}")),
        outcome: None,
        snooze_until: None,
        assign_to: None,
    });
    send(
        &p,
        &config.topics.task_updates,
        &homes[1],
        &common::enc(&codec, &update),
        now(),
    )
    .await;
    // Then a call for help from every home.
    for (i, hh) in homes.iter().enumerate() {
        let b = button(hh, &format!("sos-{i}"), now());
        send(
            &p,
            &config.topics.sensor_events,
            hh,
            &common::enc(&codec, &b),
            now(),
        )
        .await;
    }
    let t = &config.topics;
    let c = desk(
        &broker.bootstrap(),
        &[&t.dispatch_critical, &t.dispatch_high, &t.dispatch_routine],
    );
    let msgs = read_until(&c, Duration::from_secs(45), |m| {
        tasks(&codec, m)
            .iter()
            .filter(|t| t.tier == 0 && t.action == Action::CALL_ELDER)
            .count()
            >= homes.len()
    });
    // Anything else (a deadline fired by the future clock) would show within a few seconds.
    let mut msgs = msgs;
    msgs.extend(read_until(&c, Duration::from_secs(4), |_| false));
    let got = tasks(&codec, &msgs);
    for (i, hh) in homes.iter().enumerate() {
        assert!(
            got.iter().any(|t| &t.household_id == hh
                && t.severity == Severity::CRITICAL
                && t.evidence.iter().any(|e| e.event_id == format!("sos-{i}"))),
            "no task for the button of {hh}; tasks: {:?}\n{}",
            got.iter()
                .map(|t| (&t.household_id, &t.rule_id))
                .collect::<Vec<_>>(),
            common::tail(&proc.logs(), 40)
        );
    }
    let others: Vec<_> = got
        .iter()
        .filter(|t| t.severity != Severity::CRITICAL)
        .map(|t| (&t.household_id, &t.rule_id, t.tier))
        .collect();
    assert!(
        others.is_empty(),
        "tasks the clean traffic does not make: {others:?}"
    );
    let scrape = proc.get("/metrics").1;
    assert!(
        common::metric(&scrape, "carestream_clock_skew_clamped_total") >= Some(homes.len() as f64),
        "the year-ahead stamps were not counted"
    );
    // The bad record is dead-lettered, cut to a bounded size that says what was cut.
    let dl = desk(&broker.bootstrap(), &[&t.dead_letter]);
    let dead = read_until(&dl, Duration::from_secs(30), |m| m.len() >= 3);
    assert_eq!(dead.len(), 3, "three dead letters");
    // Personal data: the registry's and the desk's dead letters keep no value, and no log
    // line, metric or dead letter carries the phone number.
    for m in &dead {
        let mut bytes = m.payload().unwrap_or_default().to_vec();
        if let Some(h) = m.headers() {
            for i in 0..h.count() {
                bytes.extend_from_slice(h.get(i).value.unwrap_or_default());
            }
        }
        assert!(
            !String::from_utf8_lossy(&bytes).contains(PHONE),
            "a dead letter carries the phone number"
        );
    }
    for (topic, reason) in [
        (&t.households, "bad_magic_byte"),
        (&t.task_updates, "unknown_task"),
    ] {
        let d = dead
            .iter()
            .find(|m| header(m, "source_topic").as_deref() == Some(topic.as_str()))
            .unwrap_or_else(|| panic!("no dead letter from {topic}"));
        assert_eq!(header(d, "error_type").as_deref(), Some(reason));
        assert_eq!(header(d, "redacted").as_deref(), Some("personal data"));
        assert_eq!(d.payload().map_or(0, |p| p.len()), 0);
    }
    assert!(
        !proc.logs().contains(PHONE),
        "a log line carries the phone number"
    );
    assert!(!scrape.contains(PHONE), "a metric carries the phone number");
    let d = dead
        .iter()
        .find(|m| header(m, "source_topic").as_deref() == Some(t.sensor_events.as_str()))
        .expect("the huge record's dead letter");
    assert_eq!(header(d, "error_type").as_deref(), Some("bad_magic_byte"));
    assert_eq!(header(d, "original_size").as_deref(), Some("1500000"));
    assert_eq!(header(d, "truncated").as_deref(), Some("true"));
    assert_eq!(
        d.payload().map_or(0, |p| p.len()),
        carestream::pipeline::DEAD_LETTER_MAX_VALUE
    );
    assert_eq!(proc.get("/health").0, 200, "ready after it all");
    assert_eq!(
        common::metric(
            &scrape,
            "carestream_outputs_undeliverable_total{kind=\"dead_letter\"}"
        ),
        Some(0.0)
    );
    assert!(proc
        .terminate(Duration::from_secs(30))
        .is_some_and(|s| s.success()));
}

/// Deletes `topic`, waiting until the broker no longer lists it.
async fn delete_topic(config: &Config, topic: &str) {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", &config.kafka.brokers)
        .create()
        .unwrap();
    for r in admin
        .delete_topics(&[topic], &AdminOptions::new())
        .await
        .unwrap()
    {
        r.unwrap();
    }
}

/// A processor whose critical tasks cannot be delivered (their topic deleted): `/health` says
/// stuck, SIGTERM ends it within `shutdown_timeout_ms` (non-zero, saying why), a second signal
/// at once; a later instance re-does the alarm from the committed offsets with the same id.
/// Checkpoints fall due meanwhile (every second): none may cover the undelivered task.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_ends_when_outputs_cannot_be_delivered_and_the_next_instance_redoes_them() {
    let broker = common::Broker::start();
    let (config, mut env) = common::test_config(&broker.bootstrap(), "stuck");
    env.push((
        "CARESTREAM_PIPELINE__CHECKPOINT_INTERVAL_MS".into(),
        "1000".into(),
    ));
    env.push((
        "CARESTREAM_PIPELINE__SHUTDOWN_TIMEOUT_MS".into(),
        "3000".into(),
    ));
    env.push(("CARESTREAM_PIPELINE__STUCK_AFTER_MS".into(), "2000".into()));
    carestream::admin::create_topics(&config, 2, 1)
        .await
        .unwrap();
    let codec = common::codec();
    let p = producer(&broker.bootstrap());
    let homes = register(&p, &codec, &config, 4).await;
    let t = config.topics.clone();

    let mut first = common::Processor::start(&env);
    first.wait_ready(Duration::from_secs(60));
    press(&p, &codec, &t.sensor_events, &homes[0], "sos-1").await;
    let got = first_tasks(&broker.bootstrap(), &codec, &t.dispatch_critical);
    assert_eq!(got.len(), 1, "the first alarm's task");
    let expected_id = |hh: &str, event: &str| {
        ids::task_id(
            &ids::incident_id(hh, &got[0].rule_id, event),
            0,
            Action::CALL_ELDER,
        )
    };
    assert_eq!(got[0].task_id, expected_id(&homes[0], "sos-1"));

    // The critical topic goes away; the next alarm's task cannot be delivered.
    delete_topic(&config, &t.dispatch_critical).await;
    press(&p, &codec, &t.sensor_events, &homes[1], "sos-2").await;
    let start = Instant::now();
    loop {
        let (status, body) = first.get("/health");
        if status == 503 && body.contains("stuck") {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "/health never said stuck: {status} {body}\n{}",
            common::tail(&first.logs(), 30)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let signalled = Instant::now();
    let status = first.terminate(Duration::from_secs(20));
    let took = signalled.elapsed();
    let status = status.unwrap_or_else(|| {
        panic!(
            "still running 20 s after SIGTERM:\n{}",
            common::tail(&first.logs(), 30)
        )
    });
    assert!(!status.success(), "exited 0 with a task undelivered");
    assert!(
        took < Duration::from_millis(3000 + 2000),
        "took {took:?} for a 3 s shutdown timeout"
    );
    assert!(
        first.logs().contains("shutdown cut short"),
        "no reason given:\n{}",
        common::tail(&first.logs(), 20)
    );

    // Stuck again, with a long timeout: the second signal ends it at once.
    let mut env_long = env.clone();
    env_long.push((
        "CARESTREAM_PIPELINE__SHUTDOWN_TIMEOUT_MS".into(),
        "120000".into(),
    ));
    for (k, v) in env_long.iter_mut() {
        if k == "CARESTREAM_HTTP__LISTEN" {
            *v = format!("127.0.0.1:{}", common::free_port());
        }
    }
    let mut second = common::Processor::start(&env_long);
    second.wait_ready(Duration::from_secs(60));
    press(&p, &codec, &t.sensor_events, &homes[2], "sos-3").await;
    let start = Instant::now();
    while second.get("/health").0 != 503 {
        assert!(start.elapsed() < Duration::from_secs(30), "never stuck");
        std::thread::sleep(Duration::from_millis(200));
    }
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &second.child.id().to_string()])
        .status();
    std::thread::sleep(Duration::from_millis(500));
    let signalled = Instant::now();
    let status = second.terminate(Duration::from_secs(20));
    assert!(
        status.is_some_and(|s| !s.success()),
        "second signal: {status:?}\n{}",
        common::tail(&second.logs(), 30)
    );
    assert!(
        signalled.elapsed() < Duration::from_secs(3),
        "the second signal took {:?}",
        signalled.elapsed()
    );

    // The topic back; a new instance of the group re-does both alarms, with the same ids.
    carestream::admin::create_topics(&config, 2, 1)
        .await
        .unwrap();
    let mut env_third = env.clone();
    for (k, v) in env_third.iter_mut() {
        if k == "CARESTREAM_HTTP__LISTEN" {
            *v = format!("127.0.0.1:{}", common::free_port());
        }
    }
    let mut third = common::Processor::start(&env_third);
    third.wait_ready(Duration::from_secs(60));
    let c = desk(&broker.bootstrap(), &[&t.dispatch_critical]);
    let calls = |m: &[OwnedMessage]| {
        tasks(&codec, m)
            .into_iter()
            .filter(|t| t.action == Action::CALL_ELDER)
            .collect::<Vec<_>>()
    };
    let got = calls(&read_until(&c, Duration::from_secs(45), |m| {
        calls(m).len() >= 2
    }));
    let mut ids_got: Vec<&str> = got.iter().map(|t| t.task_id.as_str()).collect();
    ids_got.sort_unstable();
    let mut want = vec![
        expected_id(&homes[1], "sos-2"),
        expected_id(&homes[2], "sos-3"),
    ];
    want.sort_unstable();
    assert_eq!(
        ids_got,
        want,
        "the undelivered alarms, re-done\n{}",
        common::tail(&third.logs(), 30)
    );
    assert!(third
        .terminate(Duration::from_secs(30))
        .is_some_and(|s| s.success()));
}

/// A table partition written to and then emptied (retention; here DeleteRecords) has a
/// start offset equal to its end: nothing is left to read, and the processor must become
/// ready all the same, and raise alarms.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_table_partition_emptied_by_retention_does_not_keep_the_processor_from_ready() {
    use rdkafka::{Offset, TopicPartitionList};
    let broker = common::Broker::start();
    let (config, env) = common::test_config(&broker.bootstrap(), "emptied");
    carestream::admin::create_topics(&config, 2, 1)
        .await
        .unwrap();
    let codec = common::codec();
    let p = producer(&broker.bootstrap());
    let homes = register(&p, &codec, &config, 2).await;
    let t = config.topics.clone();
    for (i, region) in ["420102", "420103", "420104", "420105"].iter().enumerate() {
        let alert = Input::Weather(WeatherAlert {
            alert_id: format!("w-{i}"),
            region: region.to_string(),
            kind: WeatherKind::COLD,
            level: WeatherLevel::BLUE,
            issued_at: now() - 2 * HOUR,
            expires_at: now() - HOUR,
            cancelled: false,
        });
        send(
            &p,
            &t.weather_alerts,
            region,
            &common::enc(&codec, &alert),
            now(),
        )
        .await;
    }
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", &config.kafka.brokers)
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    for part in 0..2 {
        tpl.add_partition_offset(&t.weather_alerts, part, Offset::End)
            .unwrap();
    }
    let deleted = admin
        .delete_records(&tpl, &AdminOptions::new())
        .await
        .unwrap();
    assert!(
        deleted
            .elements()
            .iter()
            .any(|e| matches!(e.offset(), Offset::Offset(o) if o > 0)),
        "nothing was deleted: {deleted:?}"
    );
    let mut proc = common::Processor::start(&env);
    proc.wait_ready(Duration::from_secs(60));
    press(&p, &codec, &t.sensor_events, &homes[0], "sos-emptied").await;
    let got = first_tasks(&broker.bootstrap(), &codec, &t.dispatch_critical);
    assert!(
        got.iter().any(|t| t.household_id == homes[0]),
        "no task for the alarm"
    );
    assert!(proc
        .terminate(Duration::from_secs(30))
        .is_some_and(|s| s.success()));
}
