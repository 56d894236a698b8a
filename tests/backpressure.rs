//! Backpressure on the real broker: the critical dispatch topic does not exist yet (tansu
//! creates no topic on produce, so every alarm task waits, retried). The processor must stop
//! consuming after a bounded amount instead of buffering the input in memory, and once the
//! topic appears, every alarm's task must go out: slowed, nothing lost.

mod common;
#[path = "../benches/workload/mod.rs"]
mod workload;

use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::message::Message;
use rdkafka::producer::{DefaultProducerContext, Producer, ThreadedProducer};

use carestream::model::*;

const HOUSEHOLDS: usize = 2_000;

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap()
}

#[test]
fn a_missing_dispatch_topic_stops_consumption_and_loses_nothing() {
    let broker = common::Broker::start();
    let (config, env) = common::test_config(&broker.bootstrap(), "slow");
    let rt = tokio::runtime::Runtime::new().unwrap();
    // Every topic but the critical dispatch topic.
    let mut without = config.clone();
    without.topics.dispatch_critical = format!("{}-made-elsewhere", config.topics.dead_letter);
    rt.block_on(carestream::admin::create_topics(&without, 3, 1))
        .unwrap();
    let codec = workload::codec();
    let prod: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
        .set("bootstrap.servers", broker.bootstrap())
        .set("linger.ms", "5")
        .create()
        .unwrap();
    let t = &config.topics;
    let send = |topic: &str, key: &str, input: &Input, ts: i64| {
        let bytes = codec.encode_input(input).unwrap().unwrap();
        common::produce(&prod, topic, key, &bytes, ts);
    };
    for i in 0..HOUSEHOLDS {
        let p = carestream::tools::simulate::household(i, 1);
        let id = p.household_id.clone();
        let input = Input::Household {
            household_id: id.clone(),
            profile: Some(p),
        };
        send(&t.households, &id, &input, workload::T0);
    }
    let mut env = env;
    env.push((
        "CARESTREAM_PIPELINE__FETCH_QUEUE_RECORDS".into(),
        "4000".into(),
    ));
    env.push((
        "CARESTREAM_PIPELINE__BATCH_MAX_RECORDS".into(),
        "500".into(),
    ));
    let mut proc = common::Processor::start(&env);
    proc.wait_ready(Duration::from_secs(60));
    let pid = proc.child.id();
    let rss_start = rss_kib(pid);

    let produce = |n: usize, tag: u64| {
        let start = carestream::pipeline::wall_millis();
        let stream = workload::stream(HOUSEHOLDS, n, start, 20_000, tag);
        let mut alarms = 0;
        for i in &stream {
            let (topic, key) = match i {
                Input::Heartbeat(h) => (&t.heartbeats, &h.household_id),
                Input::CheckIn(c) => (&t.checkins, &c.household_id),
                Input::Sensor(e) => {
                    if matches!(e.reading, Reading::Alarm { .. }) {
                        alarms += 1;
                    }
                    (&t.sensor_events, &e.household_id)
                }
                _ => unreachable!(),
            };
            send(topic, key, i, workload::time_of(i));
        }
        prod.flush(Duration::from_secs(60)).unwrap();
        alarms
    };
    let mut alarms = produce(60_000, 1);
    // The processor stalls: what it has processed stops growing while the input waits.
    let mut last = common::input_records(&proc);
    let mut flat_since = Instant::now();
    let deadline = Instant::now() + Duration::from_secs(60);
    while flat_since.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(500));
        let now = common::input_records(&proc);
        if now != last {
            last = now;
            flat_since = Instant::now();
        }
        assert!(
            Instant::now() < deadline,
            "the processor never stalled:\n{}",
            proc.logs()
        );
    }
    let stalled_at = last;
    // More input arrives; none of it is taken in.
    alarms += produce(60_000, 2);
    std::thread::sleep(Duration::from_secs(5));
    let still = common::input_records(&proc);
    let rss_stalled = rss_kib(pid);
    println!(
        "stalled after {stalled_at} of 120 000 records ({still} after 60 000 more); RSS {rss_start} KiB at start, {rss_stalled} KiB stalled"
    );
    assert!(
        stalled_at < 60_000.0,
        "the stall came only after all the input: {stalled_at}"
    );
    assert!(
        still - stalled_at < 20_000.0,
        "it kept consuming while stalled: {stalled_at} then {still}"
    );
    assert!(
        rss_stalled < rss_start + 300 * 1024,
        "memory grew while stalled: {rss_start} KiB to {rss_stalled} KiB"
    );

    // The topic appears: everything goes out, every alarm gets its task.
    rt.block_on(carestream::admin::create_topics(&config, 3, 1))
        .unwrap();
    let desk = common::desk(&broker.bootstrap(), &t.dispatch_critical);
    let mut incidents = std::collections::HashSet::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    let repeats_now = || {
        common::metric(
            &proc.get("/metrics").1,
            "carestream_suppressed_repeats_total",
        )
        .unwrap_or(0.0) as usize
    };
    let mut scraped = Instant::now();
    let mut repeats = repeats_now();
    while incidents.len() + repeats < alarms && Instant::now() < deadline {
        if let Some(Ok(m)) = desk.poll(Duration::from_millis(200)) {
            if let Ok(Output::Task(task)) = codec.decode_output(m.payload().unwrap()) {
                incidents.insert(task.incident_id.unwrap_or_default());
            }
        }
        if scraped.elapsed() >= Duration::from_secs(1) {
            scraped = Instant::now();
            repeats = repeats_now();
        }
    }
    // The processor's counters reach /metrics once a second: anything more shows by then.
    std::thread::sleep(Duration::from_millis(1_500));
    while let Some(Ok(m)) = desk.poll(Duration::from_millis(500)) {
        if let Ok(Output::Task(task)) = codec.decode_output(m.payload().unwrap()) {
            incidents.insert(task.incident_id.unwrap_or_default());
        }
    }
    let repeats = repeats_now();
    println!(
        "{alarms} alarms produced, {} incidents on the dispatch topic, {repeats} repeats absorbed",
        incidents.len()
    );
    assert_eq!(
        incidents.len() + repeats,
        alarms,
        "every alarm makes an incident or joins an open one"
    );
    assert!(proc
        .terminate(Duration::from_secs(30))
        .is_some_and(|s| s.success()));
}
