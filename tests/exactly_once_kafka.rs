//! `pipeline.delivery = "exactly_once"` on Apache Kafka, one step at a time: an instance
//! raises tasks inside an open transaction and is killed with SIGKILL before it commits; its
//! restart, under the same transactional id, aborts that transaction, reads the alarms again
//! and raises the same tasks, which commit when it shuts down. A read-uncommitted reader sees
//! both copies of each task; a read-committed desk sees each once, the same bytes. (The
//! random kills of `tests/crash.rs` check the same against an uncrashed reference.)

mod common;

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

use carestream::model::{DeviceKind, Output, Reading};

/// Every record of `topic` now, read with the isolation level asked for.
fn read(bootstrap: &str, topic: &str, committed: bool) -> Vec<Vec<u8>> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", common::unique("reader"))
        .set("enable.auto.commit", "false")
        .set(
            "isolation.level",
            if committed {
                "read_committed"
            } else {
                "read_uncommitted"
            },
        )
        .create()
        .unwrap();
    let md = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    let mut ends = HashMap::new();
    for p in md.topics()[0].partitions() {
        let (_, high) = consumer
            .fetch_watermarks(topic, p.id(), Duration::from_secs(10))
            .unwrap();
        if high > 0 {
            ends.insert(p.id(), high);
            tpl.add_partition_offset(topic, p.id(), Offset::Beginning)
                .unwrap();
        }
    }
    let mut out = Vec::new();
    if ends.is_empty() {
        return out;
    }
    consumer.assign(&tpl).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !ends.is_empty() && Instant::now() < deadline {
        match consumer.poll(Duration::from_millis(200)) {
            Some(Ok(m)) => {
                if ends
                    .get(&m.partition())
                    .is_some_and(|h| m.offset() + 1 >= *h)
                {
                    ends.remove(&m.partition());
                }
                out.push(m.payload().unwrap_or_default().to_vec());
            }
            Some(Err(e)) => panic!("reading {topic}: {e}"),
            // Transaction markers (and, read committed, aborted or still open records) are
            // never handed over: where has the reader got to?
            None => {
                if let Ok(pos) = consumer.position() {
                    ends.retain(|p, high| {
                        !matches!(pos.find_partition(topic, *p).map(|e| e.offset()), Some(Offset::Offset(o)) if o >= *high)
                    });
                }
            }
        }
    }
    // Read committed, records of a transaction still open are behind the stable offset:
    // what was read by the deadline is the answer.
    out
}

/// Task id → every copy's bytes.
fn tasks(records: &[Vec<u8>]) -> BTreeMap<String, Vec<Vec<u8>>> {
    let codec = common::codec();
    let mut by_id: BTreeMap<String, Vec<Vec<u8>>> = BTreeMap::new();
    for r in records {
        match codec.decode_output(r) {
            Ok(Output::Task(t)) => by_id
                .entry(common::desk_key(&t))
                .or_default()
                .push(r.clone()),
            other => panic!("a dispatch record that is not a task: {other:?}"),
        }
    }
    by_id
}

/// Household `hh`'s emergency button pressed at `t` (its `i`-th press).
fn press(
    producer: &rdkafka::producer::ThreadedProducer<rdkafka::producer::DefaultProducerContext>,
    config: &carestream::config::Config,
    hh: &str,
    i: usize,
    t: i64,
) {
    let e = common::sensor(
        hh,
        &format!("press-{i}"),
        DeviceKind::EMERGENCY_BUTTON,
        t,
        Reading::Alarm { active: true },
    );
    let bytes = common::enc(&common::codec(), &e);
    common::produce(producer, &config.topics.sensor_events, hh, &bytes, t);
}

fn wait_for(what: &str, limit: Duration, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < limit, "{what}: not within {limit:?}");
        std::thread::sleep(Duration::from_millis(250));
    }
}

#[test]
fn tasks_of_a_transaction_killed_before_its_commit_reach_the_desk_once() {
    let broker = common::Broker::start();
    let bootstrap = broker.bootstrap();
    let (config, mut env) = common::test_config(&bootstrap, "eos");
    let group = config.kafka.group_id.clone();
    env.extend([
        (
            "CARESTREAM_PIPELINE__DELIVERY".to_string(),
            "exactly_once".to_string(),
        ),
        // Nothing commits on its own while the test looks: only at shutdown.
        (
            "CARESTREAM_PIPELINE__COMMIT_INTERVAL_MS".to_string(),
            "60000".to_string(),
        ),
        (
            "CARESTREAM_KAFKA__TRANSACTIONAL_ID".to_string(),
            format!("{group}-0"),
        ),
    ]);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(carestream::admin::create_topics(&config, 6, 1))
        .unwrap();
    let mut first = common::Processor::start(&env);
    first.wait_ready(Duration::from_secs(60));

    let producer: rdkafka::producer::ThreadedProducer<_> = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .create()
        .unwrap();
    let now = carestream::pipeline::wall_millis();
    const ALARMS: usize = 5;
    for i in 0..ALARMS {
        press(
            &producer,
            &config,
            &format!("hh-eos-{i}"),
            i,
            now + i as i64,
        );
    }
    rdkafka::producer::Producer::flush(&producer, Duration::from_secs(10)).unwrap();

    let critical = &config.topics.dispatch_critical;
    wait_for(
        "the first instance's tasks, sent in its open transaction",
        Duration::from_secs(30),
        || tasks(&read(&bootstrap, critical, false)).len() >= ALARMS,
    );
    assert!(
        read(&bootstrap, critical, true).is_empty(),
        "a read-committed desk sees tasks of a transaction not yet committed"
    );
    // Each alarm's tasks (a call and, beside it, the contacts' notice) have gone out.
    std::thread::sleep(Duration::from_secs(1));
    let sent_first = tasks(&read(&bootstrap, critical, false));

    first.child.kill().unwrap();
    first.child.wait().unwrap();
    let mut second = common::Processor::start(&env);
    second.wait_ready(Duration::from_secs(60));
    wait_for(
        "the restarted instance's tasks",
        Duration::from_secs(30),
        || {
            tasks(&read(&bootstrap, critical, false))
                .values()
                .all(|copies| copies.len() == 2)
        },
    );
    let status = second.terminate(Duration::from_secs(30));
    assert!(
        status.is_some_and(|s| s.success()),
        "SIGTERM: {status:?}\n{}",
        second.logs()
    );

    let all = tasks(&read(&bootstrap, critical, false));
    let desk = tasks(&read(&bootstrap, critical, true));
    assert_eq!(
        all.keys().collect::<Vec<_>>(),
        sent_first.keys().collect::<Vec<_>>(),
        "the restart raised the same tasks"
    );
    assert!(
        all.values().all(|copies| copies.len() == 2),
        "each task sent twice (once aborted): {:?}",
        all.values().map(Vec::len).collect::<Vec<_>>()
    );
    assert_eq!(
        desk.keys().collect::<Vec<_>>(),
        all.keys().collect::<Vec<_>>(),
        "the desk has every task"
    );
    for (id, copies) in &desk {
        assert_eq!(
            copies.len(),
            1,
            "task {id} reached the desk {} times",
            copies.len()
        );
        assert_eq!(
            copies[0], sent_first[id][0],
            "task {id}: the committed copy differs from the aborted one"
        );
    }
}

/// A paused instance (SIGSTOP: a long GC pause, a frozen VM) is evicted from the group and
/// its partitions move; when it wakes, its transaction is refused (its group generation is
/// gone) and it stops, without a single task of its reaching the desk twice or being lost.
#[test]
fn a_paused_instance_woken_after_its_partitions_moved_is_fenced() {
    let broker = common::Broker::start();
    let bootstrap = broker.bootstrap();
    let (config, env) = common::test_config(&bootstrap, "eos-fence");
    let group = config.kafka.group_id.clone();
    let instance = |i: usize| {
        let mut env = env.clone();
        for (k, v) in env.iter_mut() {
            if k == "CARESTREAM_HTTP__LISTEN" {
                *v = format!("127.0.0.1:{}", common::free_port());
            }
        }
        env.extend([
            (
                "CARESTREAM_PIPELINE__DELIVERY".to_string(),
                "exactly_once".to_string(),
            ),
            (
                "CARESTREAM_KAFKA__TRANSACTIONAL_ID".to_string(),
                format!("{group}-{i}"),
            ),
        ]);
        // `a` commits only on a rebalance or at shutdown, so its transaction is sure to hold
        // tasks when it is paused (with nothing to commit, a woken instance just rejoins).
        if i == 0 {
            env.push((
                "CARESTREAM_PIPELINE__COMMIT_INTERVAL_MS".to_string(),
                "60000".to_string(),
            ));
        }
        env
    };
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(carestream::admin::create_topics(&config, 6, 1))
        .unwrap();
    let mut a = common::Processor::start(&instance(0));
    a.wait_ready(Duration::from_secs(60));
    let mut b = common::Processor::start(&instance(1));
    b.wait_ready(Duration::from_secs(60));

    let producer: rdkafka::producer::ThreadedProducer<_> = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .create()
        .unwrap();
    // An alarm from a new household every 200 ms for 30 s, while `a` is paused at 5 s and
    // woken at 20 s (its session times out after 6 s).
    let started = Instant::now();
    let (mut paused, mut woken) = (false, false);
    let mut households = Vec::new();
    for i in 0..150 {
        let hh = format!("hh-fence-{i}");
        press(
            &producer,
            &config,
            &hh,
            i,
            carestream::pipeline::wall_millis(),
        );
        households.push(hh);
        if !paused && started.elapsed() > Duration::from_secs(5) {
            signal(&a, "-STOP");
            paused = true;
        }
        if !woken && started.elapsed() > Duration::from_secs(20) {
            signal(&a, "-CONT");
            woken = true;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    rdkafka::producer::Producer::flush(&producer, Duration::from_secs(10)).unwrap();

    // The woken instance finds its generation gone: its commit is refused and it stops.
    let start = Instant::now();
    let status = loop {
        if let Ok(Some(s)) = a.child.try_wait() {
            break s;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "the fenced instance did not stop:\n{}",
            common::tail(&a.logs(), 30)
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(!status.success(), "the fenced instance exited cleanly");
    let logs = a.logs();
    for line in logs.lines().filter(|l| l.contains("exactly-once commit")) {
        eprintln!("fenced: {line}");
    }
    assert!(
        logs.contains("exactly-once commit"),
        "stopped for another reason:\n{}",
        common::tail(&logs, 30)
    );
    // `b` has every partition now; it commits what it raised when it shuts down.
    wait_for("b to take in every alarm", Duration::from_secs(60), || {
        let critical = &config.topics.dispatch_critical;
        let codec = common::codec();
        let mut seen = std::collections::BTreeSet::new();
        for r in read(&bootstrap, critical, true) {
            if let Ok(Output::Task(t)) = codec.decode_output(&r) {
                seen.insert(t.household_id);
            }
        }
        seen.len() == households.len()
    });
    // Its commits wrote the state of the partitions that changed, each snapshot timed.
    let (_, scrape) = b.get("/metrics");
    let snapshots = common::metric(&scrape, "carestream_checkpoint_snapshot_seconds_count");
    assert!(
        snapshots.is_some_and(|n| n > 0.0),
        "snapshots in the commits: {snapshots:?}"
    );
    let status = b.terminate(Duration::from_secs(30));
    assert!(status.is_some_and(|s| s.success()), "{}", b.logs());
    let desk = tasks(&read(&bootstrap, &config.topics.dispatch_critical, true));
    let all = tasks(&read(&bootstrap, &config.topics.dispatch_critical, false));
    for (id, copies) in &desk {
        assert_eq!(
            copies.len(),
            1,
            "task {id} reached the desk {} times",
            copies.len()
        );
    }
    let written = all.values().map(Vec::len).sum::<usize>();
    eprintln!(
        "{} tasks at the desk, {written} records written in all (the rest aborted)",
        desk.len()
    );
    assert!(
        written > desk.len(),
        "the paused instance's open transaction held no task: nothing was fenced"
    );
}

fn signal(p: &common::Processor, sig: &str) {
    let ok = std::process::Command::new("kill")
        .args([sig, &p.child.id().to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill {sig}");
}
