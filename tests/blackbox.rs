//! Black-box: the real `carestream` binary against a real broker (tansu, sqlite storage).
//! A real client produces alarm events (bytes from fastavro and from our encoder) and bad
//! records; the test plays the dispatch desk and asserts the exact tasks, notifications,
//! lifecycle events and dead-letters that come out, the metrics, and a clean shutdown.

mod common;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer, StreamConsumer};
use rdkafka::message::{Headers, Message, OwnedMessage};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};

use carestream::codec::Codec;
use carestream::config::Config;
use carestream::engine::ids;
use carestream::model::*;

struct Sent {
    partition: i32,
    offset: i64,
    timestamp: i64,
}

async fn send(
    producer: &FutureProducer,
    topic: &str,
    key: &str,
    payload: Option<&[u8]>,
    timestamp: i64,
) -> Sent {
    let mut rec: FutureRecord<'_, str, [u8]> =
        FutureRecord::to(topic).key(key).timestamp(timestamp);
    if let Some(p) = payload {
        rec = rec.payload(p);
    }
    let d = producer
        .send(rec, Duration::from_secs(10))
        .await
        .map_err(|(e, _)| e)
        .expect("produce");
    Sent {
        partition: d.partition,
        offset: d.offset,
        timestamp,
    }
}

/// Reads every record of `topics` (a fresh group from the start) until `want` records per
/// topic have arrived, then keeps listening for `settle` to catch anything extra.
async fn collect(
    config: &Config,
    topics: &[&str],
    want: &HashMap<&str, usize>,
    settle: Duration,
) -> HashMap<String, Vec<OwnedMessage>> {
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", &config.kafka.brokers)
        .set("group.id", common::unique("desk"))
        .set("auto.offset.reset", "earliest")
        .set("session.timeout.ms", "6000")
        .set("heartbeat.interval.ms", "1000")
        .create()
        .unwrap();
    consumer.subscribe(topics).unwrap();
    let mut got: HashMap<String, Vec<OwnedMessage>> = HashMap::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    let done = |got: &HashMap<String, Vec<OwnedMessage>>| {
        want.iter()
            .all(|(t, n)| got.get(*t).map_or(0, Vec::len) >= *n)
    };
    while !done(&got) {
        match tokio::time::timeout_at(deadline, consumer.recv()).await {
            Ok(Ok(m)) => got
                .entry(m.topic().to_string())
                .or_default()
                .push(m.detach()),
            Ok(Err(e)) => panic!("consume: {e}"),
            Err(_) => panic!(
                "timed out; have {:?}",
                got.iter()
                    .map(|(t, v)| (t.clone(), v.len()))
                    .collect::<Vec<_>>()
            ),
        }
    }
    while let Ok(Ok(m)) = tokio::time::timeout(settle, consumer.recv()).await {
        got.entry(m.topic().to_string())
            .or_default()
            .push(m.detach());
    }
    got
}

fn header(m: &OwnedMessage, key: &str) -> String {
    let h = m.headers().expect("dead letters carry headers");
    (0..h.count())
        .map(|i| h.get(i))
        .find(|h| h.key == key)
        .and_then(|h| h.value)
        .map(|v| String::from_utf8(v.to_vec()).unwrap())
        .unwrap_or_else(|| panic!("no header {key}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alarms_and_bad_records_end_to_end() {
    let broker = common::Broker::start();
    let (config, env) = common::test_config(&broker.bootstrap(), "bb");
    let t = config.topics.clone();
    carestream::admin::create_topics(&config, 3, 1)
        .await
        .unwrap();
    let codec = common::codec();
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", broker.bootstrap())
        .create()
        .unwrap();
    // Arrival timestamps are set on every record, a minute after the fixtures' event times,
    // so the run means the same whatever today's date is.
    let base = 1_795_000_060_000;
    let mut ts = base;
    let mut next_ts = || {
        ts += 10;
        ts
    };

    // The registry: one household written by fastavro, two by our encoder.
    send(
        &producer,
        &t.households,
        "hh-fx-1",
        Some(&common::fixture("household")),
        next_ts(),
    )
    .await;
    for (i, hh) in ["hh-bb-1", "hh-bb-2"].iter().enumerate() {
        let mut p = carestream::tools::simulate::household(i, 7);
        p.household_id = hh.to_string();
        let input = Input::Household {
            household_id: hh.to_string(),
            profile: Some(p),
        };
        send(
            &producer,
            &t.households,
            hh,
            Some(&common::enc(&codec, &input)),
            next_ts(),
        )
        .await;
    }

    let mut proc = common::Processor::start(&env);
    proc.wait_ready(Duration::from_secs(60));

    // Events that must raise tasks (and their arrival timestamps).
    let fx_button = send(
        &producer,
        &t.sensor_events,
        "hh-fx-1",
        Some(&common::fixture("sensor_v2_button")),
        next_ts(),
    )
    .await;
    let fx_smoke = send(
        &producer,
        &t.sensor_events,
        "hh-fx-1",
        Some(&common::fixture("sensor_v1_smoke")),
        next_ts(),
    )
    .await;
    let mut sensor_records = 2;
    for f in ["sensor_v2_vitals", "sensor_v2_meter"] {
        send(
            &producer,
            &t.sensor_events,
            "hh-fx-1",
            Some(&common::fixture(f)),
            next_ts(),
        )
        .await;
        sensor_records += 1;
    }
    let press = common::sensor(
        "hh-bb-1",
        "bb-press-1",
        DeviceKind::EMERGENCY_BUTTON,
        base,
        Reading::Alarm { active: true },
    );
    let bb_press = send(
        &producer,
        &t.sensor_events,
        "hh-bb-1",
        Some(&common::enc(&codec, &press)),
        next_ts(),
    )
    .await;
    let again = common::sensor(
        "hh-bb-1",
        "bb-press-2",
        DeviceKind::EMERGENCY_BUTTON,
        base + 30_000,
        Reading::Alarm { active: true },
    );
    send(
        &producer,
        &t.sensor_events,
        "hh-bb-1",
        Some(&common::enc(&codec, &again)),
        next_ts(),
    )
    .await;
    send(
        &producer,
        &t.sensor_events,
        "hh-bb-1",
        Some(&common::enc(&codec, &press)),
        next_ts(),
    )
    .await; // redelivered
            // A gas detector whose clock was reset to 1970.
    let gas = common::sensor(
        "hh-bb-2",
        "bb-gas-1",
        DeviceKind::GAS_ALARM,
        0,
        Reading::Alarm { active: true },
    );
    let bb_gas = send(
        &producer,
        &t.sensor_events,
        "hh-bb-2",
        Some(&common::enc(&codec, &gas)),
        next_ts(),
    )
    .await;
    sensor_records += 4;
    send(
        &producer,
        &t.heartbeats,
        "hh-fx-1",
        Some(&common::fixture("heartbeat")),
        next_ts(),
    )
    .await;

    // Bad records, each with the dead-letter reason it must get.
    let heartbeat_bytes = common::fixture("heartbeat");
    let absurd = common::sensor(
        "hh-bb-1",
        "bb-vit-1",
        DeviceKind::WEARABLE,
        base,
        Reading::Vitals {
            heart_rate_bpm: Some(900),
            respiration_rpm: None,
            worn: true,
        },
    );
    let stranger = common::sensor(
        "hh-nobody",
        "nb-1",
        DeviceKind::MOTION_PIR,
        base,
        Reading::Motion { detected: true },
    );
    // Seven hours behind the partition's watermark (past `allowed_lateness`), stamped now.
    let ancient = common::sensor(
        "hh-bb-1",
        "bb-old-1",
        DeviceKind::MOTION_PIR,
        base - 7 * 3_600_000,
        Reading::Motion { detected: true },
    );
    let bad: Vec<(&str, &str, Vec<u8>)> = vec![
        ("too_late", &t.sensor_events, common::enc(&codec, &ancient)),
        (
            "bad_magic_byte",
            &t.sensor_events,
            b"not avro at all".to_vec(),
        ),
        (
            "unknown_schema_id",
            &t.sensor_events,
            vec![0, 0, 0, 0x30, 0x39, 2, 4],
        ),
        ("truncated_header", &t.sensor_events, vec![0, 0]),
        (
            "invalid_value",
            &t.sensor_events,
            common::enc(&codec, &absurd),
        ),
        (
            "unknown_household",
            &t.sensor_events,
            common::enc(&codec, &stranger),
        ),
        ("wrong_record_type", &t.sensor_events, heartbeat_bytes),
        ("malformed_avro", &t.sensor_events, {
            let mut b = common::enc(&codec, &press);
            b.truncate(9);
            b
        }),
    ];
    let mut expected_dead = BTreeMap::new();
    for (reason, topic, payload) in &bad {
        let s = send(&producer, topic, "hh-bb-1", Some(payload), next_ts()).await;
        expected_dead.insert(
            (topic.to_string(), s.partition, s.offset),
            (*reason, payload.clone()),
        );
        sensor_records += 1;
    }

    // The desk sees four incidents: each a call and (CRITICAL ladder) a NOTIFY_CONTACT; and
    // bb-1's call once more, for the button pressed again.
    let tasks_seen = collect(
        &config,
        &[&t.dispatch_critical],
        &HashMap::from([(t.dispatch_critical.as_str(), 9)]),
        Duration::from_millis(500),
    )
    .await;
    let tasks: Vec<EscalationTask> = tasks_seen[&t.dispatch_critical]
        .iter()
        .map(
            |m| match codec.decode_output(m.payload().unwrap()).unwrap() {
                Output::Task(task) => {
                    assert_eq!(
                        m.key(),
                        Some(task.household_id.as_bytes()),
                        "keyed by household"
                    );
                    task
                }
                other => panic!("{other:?}"),
            },
        )
        .collect();
    let want = [
        (
            "hh-fx-1",
            "alarm.emergency_button",
            "fx-btn-1",
            1_795_000_000_000,
            fx_button.timestamp,
            300_000,
        ),
        (
            "hh-fx-1",
            "alarm.smoke",
            "fx-smoke-1",
            1_795_000_001_000,
            fx_smoke.timestamp,
            180_000,
        ),
        (
            "hh-bb-1",
            "alarm.emergency_button",
            "bb-press-1",
            base,
            bb_press.timestamp,
            300_000,
        ),
        (
            "hh-bb-2",
            "alarm.gas",
            "bb-gas-1",
            bb_gas.timestamp,
            bb_gas.timestamp,
            180_000,
        ),
    ];
    let (resent, tasks): (Vec<EscalationTask>, Vec<EscalationTask>) =
        tasks.into_iter().partition(|x| x.repeat_count.is_some());
    let (tasks, notify): (Vec<EscalationTask>, Vec<EscalationTask>) = tasks
        .into_iter()
        .partition(|x| x.action != Action::NOTIFY_CONTACT);
    assert_eq!(tasks.len(), 4, "{tasks:#?}");
    for n in &notify {
        let call = tasks
            .iter()
            .find(|c| c.incident_id == n.incident_id)
            .expect("a NOTIFY_CONTACT beside each call");
        assert_eq!(
            (n.tier, n.task_id.clone()),
            (
                0,
                ids::task_id(
                    call.incident_id.as_ref().unwrap(),
                    0,
                    Action::NOTIFY_CONTACT
                )
            )
        );
    }
    let mut task_ids = HashMap::new();
    let mut incidents = HashMap::new();
    for (hh, rule, event, incident_time, emitted, respond) in want {
        let incident = ids::incident_id(hh, rule, event);
        let id = ids::task_id(&incident, 0, Action::CALL_ELDER);
        incidents.insert(event, incident.clone());
        let task = tasks
            .iter()
            .find(|t| t.task_id == id)
            .unwrap_or_else(|| panic!("no task for {hh} {rule}: {tasks:#?}"));
        assert_eq!(
            (
                task.household_id.as_str(),
                task.rule_id.as_str(),
                task.severity,
                task.action,
                task.tier
            ),
            (hh, rule, Severity::CRITICAL, Action::CALL_ELDER, 0)
        );
        assert_eq!(
            (task.incident_time, task.emitted_at, task.respond_by),
            (incident_time, emitted, emitted + respond),
            "{rule}"
        );
        assert_eq!(task.incident_id.as_deref(), Some(incident.as_str()));
        assert_eq!(task.evidence.len(), 1);
        assert_eq!(task.evidence[0].event_id, event);
        task_ids.insert(event, id);
    }
    // The press again, 30 s on: the same task sent again with the count and the new press.
    let [again] = &resent[..] else {
        panic!("one task sent again: {resent:#?}")
    };
    assert_eq!(
        (
            again.task_id.as_str(),
            again.repeat_count,
            again.evidence[0].event_id.as_str()
        ),
        (task_ids["bb-press-1"].as_str(), Some(1), "bb-press-2")
    );
    let fx_task = tasks.iter().find(|t| t.household_id == "hh-fx-1").unwrap();
    assert_eq!(
        (
            fx_task.district.as_str(),
            fx_task.street.as_str(),
            fx_task.community.as_str()
        ),
        ("420106", "420106004", "420106004012")
    );

    // The desk answers: acknowledges one task, resolves another, and sends one for a task
    // that does not exist.
    let desk_update = |task_id: &str, hh: &str, status| TaskUpdate {
        task_id: task_id.into(),
        household_id: hh.into(),
        status,
        by: "desk-3".into(),
        at: base,
        // The desk's free text carries personal data; it must go nowhere.
        note: Some("家属李秀英已到场，电话 13912345678".into()),
        outcome: None,
        snooze_until: None,
        assign_to: None,
    };
    let update = |task_id: &str, hh: &str, status| {
        common::enc(&codec, &Input::TaskUpdate(desk_update(task_id, hh, status)))
    };
    send(
        &producer,
        &t.task_updates,
        "hh-bb-1",
        Some(&update(
            &task_ids["bb-press-1"],
            "hh-bb-1",
            TaskUpdateStatus::ACKNOWLEDGED,
        )),
        next_ts(),
    )
    .await;
    send(
        &producer,
        &t.task_updates,
        "hh-fx-1",
        Some(&update(
            &task_ids["fx-smoke-1"],
            "hh-fx-1",
            TaskUpdateStatus::RESOLVED,
        )),
        next_ts(),
    )
    .await;
    let ghost = update("no-such-task", "hh-bb-1", TaskUpdateStatus::RESOLVED);
    let s = send(
        &producer,
        &t.task_updates,
        "hh-bb-1",
        Some(&ghost),
        next_ts(),
    )
    .await;
    // A desk update's dead letter keeps no value: its note is free text (personal data).
    assert!(!ghost.is_empty());
    expected_dead.insert(
        (t.task_updates.clone(), s.partition, s.offset),
        ("unknown_task", Vec::new()),
    );
    // Desk actions on bb-1's open incident: a snooze far past CRITICAL's 30 min and a
    // reassignment naming no team are refused and change nothing; a reassignment to a team
    // is recorded.
    let mut snooze = desk_update(&task_ids["bb-press-1"], "hh-bb-1", TaskUpdateStatus::SNOOZE);
    snooze.snooze_until = Some(base + 2 * 3_600_000);
    let nobody = desk_update(
        &task_ids["bb-press-1"],
        "hh-bb-1",
        TaskUpdateStatus::REASSIGN,
    );
    let mut east = nobody.clone();
    east.assign_to = Some("team-east".into());
    for (u, refused) in [
        (snooze, Some("bad_task_update")),
        (nobody, Some("invalid_value")),
        (east, None),
    ] {
        let bytes = common::enc(&codec, &Input::TaskUpdate(u));
        let s = send(
            &producer,
            &t.task_updates,
            "hh-bb-1",
            Some(&bytes),
            next_ts(),
        )
        .await;
        if let Some(reason) = refused {
            expected_dead.insert(
                (t.task_updates.clone(), s.partition, s.offset),
                (reason, Vec::new()),
            );
        }
    }

    let want = HashMap::from([
        (t.dispatch_critical.as_str(), 9),
        // One per alarm, and one telling fx-1's contacts the smoke alarm was resolved.
        (t.contact_notifications.as_str(), 5),
        (t.task_events.as_str(), 13),
        (t.dead_letter.as_str(), expected_dead.len()),
    ]);
    let all = [
        t.dispatch_critical.as_str(),
        t.dispatch_high.as_str(),
        t.dispatch_routine.as_str(),
        t.contact_notifications.as_str(),
        t.task_events.as_str(),
        t.dead_letter.as_str(),
    ];
    let got = collect(&config, &all, &want, Duration::from_secs(3)).await;
    for topic in all {
        let n = got.get(topic).map_or(0, Vec::len);
        assert_eq!(
            n,
            want.get(topic).copied().unwrap_or(0),
            "exactly this many records on {topic}"
        );
    }

    // One notification per task, carrying the contacts (the only output that may), and one
    // more when the desk resolved fx-1's smoke alarm.
    let mut resolved = Vec::new();
    let mut notified: Vec<String> = got[&t.contact_notifications]
        .iter()
        .filter_map(
            |m| match codec.decode_output(m.payload().unwrap()).unwrap() {
                Output::Notification(n) => {
                    assert!(!n.contacts.is_empty());
                    if n.household_id == "hh-fx-1" {
                        assert_eq!(n.contacts[0].phone, "13912345678");
                    }
                    if n.notification_id == ids::resolution_notification_id(&n.task_id) {
                        resolved.push(n.task_id);
                        return None;
                    }
                    assert_eq!(n.notification_id, ids::notification_id(&n.task_id));
                    Some(n.task_id)
                }
                other => panic!("{other:?}"),
            },
        )
        .collect();
    assert_eq!(resolved, vec![task_ids["fx-smoke-1"].clone()]);
    notified.sort();
    let mut all_ids: Vec<String> = task_ids.values().cloned().collect();
    all_ids.sort();
    assert_eq!(notified, all_ids);

    // Lifecycle: two OPENED per incident, one REPEATED (bb-1's press again), one ACKNOWLEDGED
    // (the acknowledged call, by the desk), RESOLVED for both tasks of the resolved incident,
    // and bb-1's reassignment.
    let mut lifecycle: Vec<(String, TaskEventKind, Option<String>)> = got[&t.task_events]
        .iter()
        .map(
            |m| match codec.decode_output(m.payload().unwrap()).unwrap() {
                Output::TaskEvent(e) => (e.task_id, e.kind, e.by),
                other => panic!("{other:?}"),
            },
        )
        .collect();
    lifecycle.sort();
    let notify_id = |event: &str| ids::task_id(&incidents[event], 0, Action::NOTIFY_CONTACT);
    let mut want_lifecycle: Vec<(String, TaskEventKind, Option<String>)> = Vec::new();
    for (event, call) in &task_ids {
        want_lifecycle.push((call.clone(), TaskEventKind::OPENED, None));
        want_lifecycle.push((notify_id(event), TaskEventKind::OPENED, None));
    }
    let desk = Some("desk-3".to_string());
    want_lifecycle.push((
        task_ids["bb-press-1"].clone(),
        TaskEventKind::ACKNOWLEDGED,
        desk.clone(),
    ));
    want_lifecycle.push((
        task_ids["fx-smoke-1"].clone(),
        TaskEventKind::RESOLVED,
        desk.clone(),
    ));
    want_lifecycle.push((
        notify_id("fx-smoke-1"),
        TaskEventKind::RESOLVED,
        desk.clone(),
    ));
    want_lifecycle.push((
        task_ids["bb-press-1"].clone(),
        TaskEventKind::REPEATED,
        None,
    ));
    want_lifecycle.push((
        task_ids["bb-press-1"].clone(),
        TaskEventKind::REASSIGNED,
        desk,
    ));
    want_lifecycle.sort();
    assert_eq!(lifecycle, want_lifecycle);

    // Dead letters: the raw bytes, with the source's topic, partition, offset and error.
    let mut dead = BTreeMap::new();
    for m in &got[&t.dead_letter] {
        let source = (
            header(m, "source_topic"),
            header(m, "source_partition").parse().unwrap(),
            header(m, "source_offset").parse().unwrap(),
        );
        assert!(!header(m, "error").is_empty());
        if header(m, "error_type") == "too_late" {
            let lateness: i64 = header(m, "lateness_ms").parse().unwrap();
            let watermark: i64 = header(m, "watermark_ms").parse().unwrap();
            assert!(lateness > 6 * 3_600_000, "{lateness}");
            assert_eq!(watermark - lateness, base - 7 * 3_600_000);
        }
        dead.insert(
            source,
            (
                header(m, "error_type"),
                m.payload().unwrap_or_default().to_vec(),
            ),
        );
    }
    let expected_dead: BTreeMap<_, _> = expected_dead
        .into_iter()
        .map(|(k, (r, p))| (k, (r.to_string(), p)))
        .collect();
    assert_eq!(dead, expected_dead);

    // Metrics.
    let (status, scrape) = proc.get("/metrics");
    assert_eq!(status, 200);
    let m = |series: &str| {
        common::metric(&scrape, series).unwrap_or_else(|| panic!("no series {series}"))
    };
    assert_eq!(
        m(r#"carestream_input_records_total{stream="sensor_events"}"#),
        sensor_records as f64
    );
    assert_eq!(
        m(r#"carestream_input_records_total{stream="households"}"#),
        3.0
    );
    assert_eq!(
        m(r#"carestream_input_records_total{stream="task_updates"}"#),
        6.0
    );
    assert_eq!(
        m(r#"carestream_tasks_emitted_total{rule="alarm.emergency_button",severity="CRITICAL"}"#),
        4.0
    );
    assert_eq!(
        m(r#"carestream_tasks_emitted_total{rule="alarm.gas",severity="CRITICAL"}"#),
        2.0
    );
    assert_eq!(
        m(r#"carestream_incident_to_task_ack_seconds_count{severity="CRITICAL"}"#),
        8.0
    );
    // The processor's share of the same: one observation per task as well.
    assert_eq!(
        m(r#"carestream_record_to_task_ack_seconds_count{severity="CRITICAL"}"#),
        8.0
    );
    assert_eq!(
        m(r#"carestream_record_to_task_sent_seconds_count{severity="CRITICAL"}"#),
        8.0
    );
    assert_eq!(m("carestream_contact_notifications_total"), 5.0);
    assert_eq!(m("carestream_duplicate_events_total"), 1.0);
    assert_eq!(m("carestream_suppressed_repeats_total"), 1.0);
    assert_eq!(m("carestream_task_resends_total"), 1.0);
    assert_eq!(m("carestream_clock_skew_clamped_total"), 1.0);
    for (reason, stream) in [
        ("bad_magic_byte", "sensor_events"),
        ("unknown_household", "sensor_events"),
        ("unknown_task", "task_updates"),
        ("bad_task_update", "task_updates"),
        ("invalid_value", "task_updates"),
        ("malformed_avro", "sensor_events"),
    ] {
        assert_eq!(
            m(&format!(
                r#"carestream_dead_letters_total{{reason="{reason}",stream="{stream}"}}"#
            )),
            1.0,
            "{reason}"
        );
    }
    assert_eq!(
        m(r#"carestream_decode_errors_total{reason="unknown_schema_id",stream="sensor_events"}"#),
        1.0
    );
    assert_eq!(m("carestream_ready"), 1.0);

    // The desk's view: the three incidents still open, bb-1's with what the desk did to it.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let open = loop {
        let (status, body) = proc.get("/incidents?severity=CRITICAL");
        assert_eq!(status, 200, "{body}");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        let bb1 = v["incidents"]
            .as_array()
            .unwrap()
            .iter()
            .find(|i| i["incident_id"] == incidents["bb-press-1"].as_str())
            .cloned();
        if bb1
            .as_ref()
            .is_some_and(|i| i["assigned_to"] == "team-east")
            || std::time::Instant::now() > deadline
        {
            break (v, bb1);
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let mut ids: Vec<&str> = open.0["incidents"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["incident_id"].as_str().unwrap())
        .collect();
    ids.sort();
    let mut want_open = vec![
        incidents["fx-btn-1"].as_str(),
        incidents["bb-press-1"].as_str(),
        incidents["bb-gas-1"].as_str(),
    ];
    want_open.sort();
    assert_eq!(ids, want_open);
    let bb1 = open.1.expect("bb-1's incident is open");
    assert_eq!(
        (
            &bb1["repeats"],
            &bb1["assigned_to"],
            bb1["acknowledged_at"].is_i64()
        ),
        (&serde_json::json!(1), &serde_json::json!("team-east"), true)
    );
    let (_, body) = proc.get("/incidents?district=420106");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["matching"], 1, "fx-1's button alone is in 420106: {body}");
    assert_eq!(proc.get("/incidents?severity=SOON").0, 400);
    // The same view on the compacted care.incidents: the last record of each incident, a
    // tombstone for the one resolved.
    let got = collect(
        &config,
        &[&t.incidents],
        &HashMap::from([(t.incidents.as_str(), 4)]),
        Duration::from_secs(3),
    )
    .await;
    let mut last: BTreeMap<String, Option<Incident>> = BTreeMap::new();
    for m in &got[&t.incidents] {
        let key = String::from_utf8(m.key().unwrap().to_vec()).unwrap();
        let view = m.payload().map(|p| codec.decode_incident(p).unwrap());
        if let Some(v) = &view {
            assert_eq!(v.incident_id, key, "keyed by incident");
        }
        last.insert(key, view);
    }
    let want_keys: BTreeSet<&str> = ["fx-btn-1", "fx-smoke-1", "bb-press-1", "bb-gas-1"]
        .iter()
        .map(|e| incidents[e].as_str())
        .collect();
    assert_eq!(
        last.keys().map(String::as_str).collect::<BTreeSet<_>>(),
        want_keys
    );
    assert_eq!(last[&incidents["fx-smoke-1"]], None, "closed: a tombstone");
    let bb1 = last[&incidents["bb-press-1"]].clone().expect("open");
    assert_eq!(
        (
            bb1.repeats,
            bb1.assigned_to.as_deref(),
            bb1.acknowledged_at.is_some()
        ),
        (1, Some("team-east"), true)
    );
    assert!(last[&incidents["bb-gas-1"]].is_some() && last[&incidents["fx-btn-1"]].is_some());
    // The scrape follows Prometheus conventions (promtool's linter finds nothing).
    let mut lint = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool is needed: run scripts/install-tools.sh");
    use std::io::Write as _;
    lint.stdin
        .take()
        .unwrap()
        .write_all(scrape.as_bytes())
        .unwrap();
    let lint = lint.wait_with_output().unwrap();
    assert!(
        lint.status.success() && lint.stdout.is_empty() && lint.stderr.is_empty(),
        "promtool check metrics: {}{}",
        String::from_utf8_lossy(&lint.stdout),
        String::from_utf8_lossy(&lint.stderr)
    );

    // Graceful shutdown: SIGTERM drains, commits and exits 0.
    let status = proc
        .terminate(Duration::from_secs(20))
        .expect("exits within 20 s of SIGTERM");
    assert!(status.success(), "{status}\n{}", proc.logs());

    // Offsets were committed past every record, so a restart would not re-read them.
    let group: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", broker.bootstrap())
        .set("group.id", &config.kafka.group_id)
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    for p in 0..3 {
        tpl.add_partition(&t.sensor_events, p);
    }
    let committed = group
        .committed_offsets(tpl, Duration::from_secs(10))
        .unwrap();
    let total: i64 = committed
        .elements()
        .iter()
        .map(|e| match e.offset() {
            Offset::Offset(o) => o,
            _ => 0,
        })
        .sum();
    assert_eq!(
        total, sensor_records as i64,
        "committed offsets cover every sensor record"
    );

    // No personal data in the logs.
    let logs = proc.logs();
    assert!(logs.contains("registry loaded"), "{logs}");
    for secret in ["李秀英", "13912345678", "联系人"] {
        assert!(!logs.contains(secret), "personal data in logs: {secret}");
        assert!(
            !scrape.contains(secret),
            "personal data in metrics: {secret}"
        );
    }
}

fn copy_rules(tag: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(common::unique(tag));
    std::fs::create_dir_all(&dir).unwrap();
    for e in std::fs::read_dir(std::path::Path::new(common::MANIFEST).join("rules"))
        .unwrap()
        .flatten()
    {
        std::fs::copy(e.path(), dir.join(e.file_name())).unwrap();
    }
    dir
}

fn edit(path: &std::path::Path, from: &str, to: &str) {
    let text = std::fs::read_to_string(path).unwrap();
    assert!(text.contains(from), "{} has no {from:?}", path.display());
    std::fs::write(path, text.replacen(from, to, 1)).unwrap();
}

/// A broker, a copy of the rules whose event time stays synthetic (the wall clock does not
/// move partitions on), the topics, a codec and a producer.
struct Synthetic {
    broker: common::Broker,
    rules: std::path::PathBuf,
    config: Config,
    env: Vec<(String, String)>,
    codec: Codec,
    producer: FutureProducer,
}

async fn synthetic(tag: &str) -> Synthetic {
    let broker = common::Broker::start();
    let rules = copy_rules(&format!("{tag}-rules"));
    edit(
        &rules.join("engine.toml"),
        "idle_timeout = \"1m\"",
        "idle_timeout = \"1h\"",
    );
    let (config, mut env) = common::test_config(&broker.bootstrap(), tag);
    env.retain(|(k, _)| k != "CARESTREAM_RULES__DIR");
    env.push(("CARESTREAM_RULES__DIR".into(), rules.display().to_string()));
    carestream::admin::create_topics(&config, 3, 1)
        .await
        .unwrap();
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", broker.bootstrap())
        .create()
        .unwrap();
    Synthetic {
        broker,
        rules,
        config,
        env,
        codec: common::codec(),
        producer,
    }
}

async fn wait_metric(proc: &common::Processor, series: &str, want: f64) {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let (_, scrape) = proc.get("/metrics");
        if common::metric(&scrape, series) == Some(want) {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{series} never reached {want}:\n{}",
            proc.logs()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rules_reload_while_running_and_windowed_rules_fire() {
    let Synthetic {
        broker: _broker,
        rules,
        config,
        env,
        codec,
        producer,
    } = synthetic("reload").await;
    let t = config.topics.clone();
    let base: Millis = 1_795_000_060_000;
    let hour: Millis = 3_600_000;

    let mut p = carestream::tools::simulate::household(3, 7);
    p.household_id = "hh-r-1".into();
    p.cohorts = vec![Cohort::EMPTY_NEST];
    p.age = 70;
    let profile = Input::Household {
        household_id: "hh-r-1".into(),
        profile: Some(p),
    };
    send(
        &producer,
        &t.households,
        "hh-r-1",
        Some(&common::enc(&codec, &profile)),
        base,
    )
    .await;
    let mut proc = common::Processor::start(&env);
    proc.wait_ready(Duration::from_secs(60));

    let beat = |at: Millis| {
        common::enc(
            &codec,
            &Input::Heartbeat(DeviceHeartbeat {
                household_id: "hh-r-1".into(),
                device_id: "hh-r-1-pir".into(),
                device_kind: DeviceKind::MOTION_PIR,
                event_time: at,
                battery_pct: Some(70),
                mains_power: None,
            }),
        )
    };
    let moved = common::sensor(
        "hh-r-1",
        "r-motion-1",
        DeviceKind::MOTION_PIR,
        base,
        Reading::Motion { detected: true },
    );
    send(
        &producer,
        &t.sensor_events,
        "hh-r-1",
        Some(&common::enc(&codec, &moved)),
        base,
    )
    .await;
    // Two quiet hours on, under the 12 h default: nothing.
    for i in 1..=8 {
        send(
            &producer,
            &t.heartbeats,
            "hh-r-1",
            Some(&beat(base + i * 15 * 60_000)),
            base + i * 15 * 60_000,
        )
        .await;
    }
    wait_metric(
        &proc,
        r#"carestream_input_records_total{stream="heartbeats"}"#,
        8.0,
    )
    .await;
    let (_, scrape) = proc.get("/metrics");
    assert_eq!(
        common::metric(&scrape, "carestream_incidents_opened_total"),
        Some(0.0)
    );

    // The city lowers the threshold to 1 h while the processor runs.
    edit(
        &rules.join("no_movement.toml"),
        "after = \"12h\"",
        "after = \"1h\"",
    );
    wait_metric(&proc, r#"carestream_rule_reloads_total{result="ok"}"#, 1.0).await;
    send(
        &producer,
        &t.heartbeats,
        "hh-r-1",
        Some(&beat(base + 2 * hour + 60_000)),
        base + 2 * hour + 60_000,
    )
    .await;
    let got = collect(
        &config,
        &[&t.dispatch_high, &t.contact_notifications],
        &HashMap::from([
            (t.dispatch_high.as_str(), 3),
            (t.contact_notifications.as_str(), 1),
        ]),
        Duration::from_secs(2),
    )
    .await;
    // The call and NOTIFY_CONTACT at +1 h, and (no acknowledgement by +1 h 30) ONSITE_VISIT.
    assert_eq!(got[&t.dispatch_high].len(), 3);
    let mut rungs: Vec<(i32, Action, Millis)> = got[&t.dispatch_high]
        .iter()
        .map(
            |m| match codec.decode_output(m.payload().unwrap()).unwrap() {
                Output::Task(x) => (x.tier, x.action, x.emitted_at),
                o => panic!("{o:?}"),
            },
        )
        .collect();
    rungs.sort_by_key(|r| (r.0, r.1));
    assert_eq!(
        rungs,
        vec![
            (0, Action::CALL_ELDER, base + hour),
            (0, Action::NOTIFY_CONTACT, base + hour),
            (1, Action::ONSITE_VISIT, base + hour + 30 * 60_000)
        ]
    );
    let task = got[&t.dispatch_high]
        .iter()
        .find_map(
            |m| match codec.decode_output(m.payload().unwrap()).unwrap() {
                Output::Task(x) if x.action != Action::NOTIFY_CONTACT => Some(x),
                _ => None,
            },
        )
        .expect("the call");
    assert_eq!(
        (task.rule_id.as_str(), task.severity, task.action),
        ("no_movement", Severity::HIGH, Action::CALL_ELDER)
    );
    assert_eq!(
        (task.incident_time, task.emitted_at),
        (base + hour, base + hour),
        "deadline in event time"
    );
    let incident = ids::incident_id("hh-r-1", "no_movement", &format!("since:{base}"));
    assert_eq!(task.task_id, ids::task_id(&incident, 0, Action::CALL_ELDER));
    wait_metric(&proc, "carestream_incidents_opened_total", 1.0).await;
    let (_, scrape) = proc.get("/metrics");
    assert!(common::metric(&scrape, "carestream_state_bytes").unwrap() > 0.0);

    // A broken edit is reported and the rules that worked stay in force.
    edit(
        &rules.join("vitals.toml"),
        "heart_rate_high = 120",
        "heart_rate_high = \"very\"",
    );
    wait_metric(
        &proc,
        r#"carestream_rule_reloads_total{result="error"}"#,
        1.0,
    )
    .await;
    assert_eq!(proc.get("/health").0, 200);
    assert!(
        proc.logs().contains("heart_rate_high: expected a number"),
        "the log names the problem"
    );
    let status = proc
        .terminate(Duration::from_secs(20))
        .expect("exits on SIGTERM");
    assert!(status.success());
    let _ = std::fs::remove_dir_all(&rules);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dispatch_desk_loop_and_a_weather_warning() {
    let Synthetic {
        broker: _broker,
        rules,
        config,
        env,
        codec,
        producer,
    } = synthetic("desk").await;
    let t = config.topics.clone();
    let base: Millis = 1_795_000_060_000;
    let min: Millis = 60_000;

    for (i, (hh, district)) in [
        ("hh-d-1", "420106"),
        ("hh-d-2", "420106"),
        ("hh-d-3", "420111"),
    ]
    .iter()
    .enumerate()
    {
        let mut p = carestream::tools::simulate::household(i, 3);
        p.household_id = hh.to_string();
        p.district = district.to_string();
        let input = Input::Household {
            household_id: hh.to_string(),
            profile: Some(p),
        };
        send(
            &producer,
            &t.households,
            hh,
            Some(&common::enc(&codec, &input)),
            base,
        )
        .await;
    }
    let mut proc = common::Processor::start(&env);
    proc.wait_ready(Duration::from_secs(60));
    let beat = |hh: &str, at: Millis| {
        common::enc(
            &codec,
            &Input::Heartbeat(DeviceHeartbeat {
                household_id: hh.into(),
                device_id: format!("{hh}-pir"),
                device_kind: DeviceKind::MOTION_PIR,
                event_time: at,
                battery_pct: None,
                mains_power: None,
            }),
        )
    };
    for hh in ["hh-d-1", "hh-d-2", "hh-d-3"] {
        send(&producer, &t.heartbeats, hh, Some(&beat(hh, base)), base).await;
    }

    // The button, and nobody answering for six minutes (event time).
    let press = common::sensor(
        "hh-d-1",
        "d-press",
        DeviceKind::EMERGENCY_BUTTON,
        base,
        Reading::Alarm { active: true },
    );
    send(
        &producer,
        &t.sensor_events,
        "hh-d-1",
        Some(&common::enc(&codec, &press)),
        base,
    )
    .await;
    // Every device reports every few minutes, as real ones do.
    let beats = |at: Millis| {
        let producer = &producer;
        let beat = &beat;
        let t = &t;
        async move {
            for hh in ["hh-d-1", "hh-d-2", "hh-d-3"] {
                send(producer, &t.heartbeats, hh, Some(&beat(hh, at)), at).await;
            }
        }
    };
    beats(base + 6 * min).await;
    let incident = ids::incident_id("hh-d-1", "alarm.emergency_button", "d-press");
    let call = ids::task_id(&incident, 0, Action::CALL_ELDER);
    let onsite = ids::task_id(&incident, 1, Action::ONSITE_VISIT);
    let seen = collect(
        &config,
        &[&t.dispatch_critical],
        &HashMap::from([(t.dispatch_critical.as_str(), 3)]),
        Duration::from_millis(500),
    )
    .await;
    let tasks: Vec<EscalationTask> = seen[&t.dispatch_critical]
        .iter()
        .map(
            |m| match codec.decode_output(m.payload().unwrap()).unwrap() {
                Output::Task(x) => x,
                o => panic!("{o:?}"),
            },
        )
        .collect();
    let mut got: Vec<(i32, Action)> = tasks.iter().map(|x| (x.tier, x.action)).collect();
    got.sort();
    assert_eq!(
        got,
        vec![
            (0, Action::CALL_ELDER),
            (0, Action::NOTIFY_CONTACT),
            (1, Action::ONSITE_VISIT)
        ]
    );
    let tier1 = tasks.iter().find(|x| x.tier == 1).unwrap();
    assert_eq!(
        (tier1.task_id.as_str(), tier1.emitted_at, tier1.respond_by),
        (onsite.as_str(), base + 5 * min, base + 20 * min)
    );

    // The desk acknowledges the call at +7 min: the 20-minute rung never comes.
    let update = |status, at| {
        common::enc(
            &codec,
            &Input::TaskUpdate(TaskUpdate {
                task_id: call.clone(),
                household_id: "hh-d-1".into(),
                status,
                by: "desk-9".into(),
                at,
                note: None,
                outcome: None,
                snooze_until: None,
                assign_to: None,
            }),
        )
    };
    send(
        &producer,
        &t.task_updates,
        "hh-d-1",
        Some(&update(TaskUpdateStatus::ACKNOWLEDGED, base + 7 * min)),
        base + 7 * min,
    )
    .await;
    // Kafka orders nothing across topics: on a live stream event time tracks arrival, but
    // this test jumps 18 minutes at once, so it lets the acknowledgement land first.
    wait_metric(
        &proc,
        r#"carestream_input_records_total{stream="task_updates"}"#,
        1.0,
    )
    .await;
    for m in [10, 15, 20, 25] {
        beats(base + m * min).await;
    }
    // Resolved from the command line, with an outcome code.
    let cli = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_carestream"))
            .args(args)
            .envs(env.iter().cloned())
            .env("RUST_LOG", "warn")
            .output()
            .expect("the carestream binary runs");
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        let err = String::from_utf8_lossy(&out.stderr).to_string();
        (out.status.success(), text, err)
    };
    let resolved_at = (base + 26 * min).to_string();
    let resolve = [
        "resolve",
        call.as_str(),
        "--household",
        "hh-d-1",
        "--by",
        "desk-9",
        "--outcome",
        "CALLED_OK",
        "--at-ms",
        &resolved_at,
    ];
    // A mistyped outcome is refused before anything is sent.
    let mut typo = resolve;
    typo[7] = "CALLED";
    let (ok, _, err) = cli(&typo);
    assert!(!ok && err.contains("CALLED_OK"), "{err}");
    let (ok, text, err) = cli(&resolve);
    assert!(ok, "{err}");
    assert!(text.starts_with("RESOLVED hh-d-1"), "{text}");

    // A YELLOW heat warning for 420106: one welfare call for each of its two households.
    let warning = Input::Weather(WeatherAlert {
        alert_id: "wx-heat-1".into(),
        region: "420106".into(),
        kind: WeatherKind::HEAT,
        level: WeatherLevel::YELLOW,
        issued_at: base + 27 * min,
        expires_at: base + 24 * 60 * min,
        cancelled: false,
    });
    send(
        &producer,
        &t.weather_alerts,
        "420106",
        Some(&common::enc(&codec, &warning)),
        base + 27 * min,
    )
    .await;
    wait_metric(
        &proc,
        r#"carestream_input_records_total{stream="weather_alerts"}"#,
        1.0,
    )
    .await;
    for hh in ["hh-d-1", "hh-d-2", "hh-d-3"] {
        send(
            &producer,
            &t.heartbeats,
            hh,
            Some(&beat(hh, base + 28 * min)),
            base + 28 * min,
        )
        .await;
    }

    let want = HashMap::from([
        (t.dispatch_critical.as_str(), 3),
        (t.dispatch_routine.as_str(), 2),
        (t.task_events.as_str(), 9),
    ]);
    let all = [
        t.dispatch_critical.as_str(),
        t.dispatch_high.as_str(),
        t.dispatch_routine.as_str(),
        t.task_events.as_str(),
    ];
    let got = collect(&config, &all, &want, Duration::from_secs(3)).await;
    for topic in all {
        assert_eq!(
            got.get(topic).map_or(0, Vec::len),
            want.get(topic).copied().unwrap_or(0),
            "exactly this many on {topic}: {:?}",
            got.get(topic).map(|v| v
                .iter()
                .map(
                    |m| codec.decode_output(m.payload().unwrap()).map(|o| match o {
                        Output::Task(x) => format!(
                            "{} {} tier {} {}",
                            x.household_id, x.rule_id, x.tier, x.action
                        ),
                        other => format!("{other:?}").chars().take(80).collect(),
                    })
                )
                .collect::<Vec<_>>())
        );
    }
    let mut welfare: Vec<String> = got[&t.dispatch_routine]
        .iter()
        .map(
            |m| match codec.decode_output(m.payload().unwrap()).unwrap() {
                Output::Task(x) => {
                    assert_eq!(
                        (x.rule_id.as_str(), x.action, x.severity),
                        ("weather_welfare", Action::WELFARE_CALL, Severity::ROUTINE)
                    );
                    x.household_id
                }
                o => panic!("{o:?}"),
            },
        )
        .collect();
    welfare.sort();
    assert_eq!(welfare, vec!["hh-d-1", "hh-d-2"]);

    // The after-action record: who handled the incident, when, and how it ended.
    let mut history: Vec<(TaskEventKind, i32, Option<String>, Millis)> = got[&t.task_events]
        .iter()
        .filter_map(
            |m| match codec.decode_output(m.payload().unwrap()).unwrap() {
                Output::TaskEvent(e) if e.incident_id.as_deref() == Some(incident.as_str()) => {
                    let closing = matches!(e.kind, TaskEventKind::RESOLVED);
                    assert_eq!(
                        e.outcome,
                        closing.then_some(TaskOutcome::CALLED_OK),
                        "{e:?}"
                    );
                    Some((e.kind, e.tier.unwrap(), e.by, e.at))
                }
                _ => None,
            },
        )
        .collect();
    history.sort_by_key(|(k, tier, _, at)| (*at, *tier, *k));
    let desk = Some("desk-9".to_string());
    assert_eq!(
        history,
        vec![
            (TaskEventKind::OPENED, 0, None, base),
            (TaskEventKind::OPENED, 0, None, base),
            (TaskEventKind::ESCALATED, 1, None, base + 5 * min),
            (TaskEventKind::ACKNOWLEDGED, 0, desk.clone(), base + 7 * min),
            (TaskEventKind::RESOLVED, 0, desk.clone(), base + 26 * min),
            (TaskEventKind::RESOLVED, 0, desk.clone(), base + 26 * min),
            (TaskEventKind::RESOLVED, 1, desk, base + 26 * min),
        ]
    );
    let (_, scrape) = proc.get("/metrics");
    let m = |s: &str| common::metric(&scrape, s).unwrap_or_else(|| panic!("no {s}"));
    assert_eq!(m(r#"carestream_escalations_total{tier="1"}"#), 1.0);
    assert_eq!(m(r#"carestream_escalations_total{tier="2"}"#), 0.0);
    assert_eq!(m("carestream_weather_welfare_calls_total"), 2.0);
    wait_metric(
        &proc,
        r#"carestream_time_to_acknowledge_seconds_count{severity="CRITICAL"}"#,
        1.0,
    )
    .await;
    wait_metric(
        &proc,
        r#"carestream_open_incidents_by_district{district="420106",severity="ROUTINE"}"#,
        2.0,
    )
    .await;
    // A home visit, counted by the household's community.
    let community = carestream::tools::simulate::household(1, 3).community;
    let visit = Input::CheckIn(CheckIn {
        household_id: "hh-d-2".into(),
        event_time: base + 28 * min,
        kind: CheckInKind::HOME_VISIT,
        visitor_id: Some("v-7".into()),
    });
    send(
        &producer,
        &t.checkins,
        "hh-d-2",
        Some(&common::enc(&codec, &visit)),
        base + 28 * min,
    )
    .await;
    wait_metric(
        &proc,
        &format!(r#"carestream_visits_done_total{{community="{community}"}}"#),
        1.0,
    )
    .await;
    // What `carestream tail` shows the desk: every task, with the id and household to act on.
    let (ok, text, err) = cli(&["tail", "--from-beginning", "--idle-secs", "3"]);
    assert!(ok, "{err}");
    for m in got[&t.dispatch_critical]
        .iter()
        .chain(&got[&t.dispatch_routine])
    {
        let Ok(Output::Task(x)) = codec.decode_output(m.payload().unwrap()) else {
            panic!()
        };
        assert!(
            text.lines()
                .any(|l| l.contains(&x.task_id) && l.contains(&x.household_id)),
            "{} not in:\n{text}",
            x.task_id
        );
    }
    assert_eq!(text.lines().count(), 5, "{text}");
    let status = proc
        .terminate(Duration::from_secs(20))
        .expect("exits on SIGTERM");
    assert!(status.success());
    let _ = std::fs::remove_dir_all(&rules);
}
