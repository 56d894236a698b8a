//! Engine workers on the real broker (Apache Kafka; tansu with `CARESTREAM_TEST_BROKER=tansu`)
//! fed by gateways that place households with another partitioner than the one configured
//! (librdkafka's default, CRC-32, against the contract's murmur2): many homes' records then
//! come on a partition of another worker than the one holding their registry entry. Two
//! workers, four partitions; every home reports movement, then presses its button. Every
//! movement must be applied (nothing dead-lettered) and every button must make a task that
//! carries its home's district from the registry.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::message::Message;
use rdkafka::producer::{DefaultProducerContext, Producer, ThreadedProducer};

use carestream::model::*;
use carestream::partition::Partitioner;

const HOMES: usize = 40;
const PARTITIONS: i32 = 4;

#[test]
fn homes_placed_by_another_partitioner_are_served_by_the_worker_of_their_records() {
    let broker = common::Broker::start();
    let rules = format!("{}/rules", common::MANIFEST);
    let (config, mut env) = common::environment_with_topics(&broker, "workers", &rules, PARTITIONS);
    env.push(("CARESTREAM_PIPELINE__WORKERS".into(), "2".into()));
    let homes: Vec<HouseholdProfile> = (0..HOMES)
        .map(|i| carestream::tools::simulate::household(i, 5))
        .collect();
    // Worker of a partition: p % 2.
    let worker = |by: Partitioner, id: &str| by.partition(id.as_bytes(), PARTITIONS) % 2;
    let elsewhere = homes
        .iter()
        .filter(|h| {
            worker(Partitioner::Murmur2, &h.household_id)
                != worker(Partitioner::Crc32, &h.household_id)
        })
        .count();
    assert!(
        elsewhere > 0,
        "no home's records land on another worker: the test would prove nothing"
    );

    let platform = common::platform_producer(&broker.bootstrap());
    common::register(&platform, &config, &homes, common::now() - 60_000);
    platform.flush(Duration::from_secs(10)).unwrap();
    let mut proc = common::Processor::start(&env);
    proc.wait_ready(Duration::from_secs(60));

    let gateway: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
        .set("bootstrap.servers", broker.bootstrap())
        .set("partitioner", "consistent_random")
        .set("linger.ms", "5")
        .create()
        .unwrap();
    let codec = common::codec();
    let t = common::now() - 5_000;
    for (i, h) in homes.iter().enumerate() {
        let id = &h.household_id;
        let events = [
            (
                format!("move-{i}"),
                DeviceKind::MOTION_PIR,
                Reading::Motion { detected: true },
            ),
            (
                format!("button-{i}"),
                DeviceKind::EMERGENCY_BUTTON,
                Reading::Alarm { active: true },
            ),
        ];
        for (n, (event, kind, reading)) in events.into_iter().enumerate() {
            let input = common::sensor(id, &event, kind, t + n as i64, reading);
            common::produce(
                &gateway,
                &config.topics.sensor_events,
                id,
                &common::enc(&codec, &input),
                t + n as i64,
            );
        }
    }
    gateway.flush(Duration::from_secs(10)).unwrap();

    let reader = common::reader_from_start(
        &broker.bootstrap(),
        "workers-desk",
        &[&config.topics.dispatch_critical],
        PARTITIONS,
    );
    let mut tasks: BTreeMap<String, EscalationTask> = BTreeMap::new();
    let start = Instant::now();
    while tasks.len() < HOMES && start.elapsed() < Duration::from_secs(60) {
        if let Some(Ok(m)) = reader.poll(Duration::from_millis(200)) {
            if let Ok(Output::Task(task)) = codec.decode_output(m.payload().unwrap_or_default()) {
                tasks.insert(task.household_id.clone(), task);
            }
        }
    }
    let logs = common::tail(&proc.logs(), 40);
    for h in &homes {
        let task = tasks
            .get(&h.household_id)
            .unwrap_or_else(|| panic!("no task for {}\n{logs}", h.household_id));
        assert_eq!(
            task.district, h.district,
            "{}: the task lacks its registry entry",
            h.household_id
        );
    }
    // The engine's counters reach the metrics once a second.
    std::thread::sleep(Duration::from_millis(2_500));
    let scrape = proc.get("/metrics").1;
    assert_eq!(
        common::metric(&scrape, "carestream_engine_workers"),
        Some(2.0)
    );
    assert_eq!(
        common::input_records_in(&scrape),
        2.0 * HOMES as f64,
        "every event taken in once"
    );
    let dead: Vec<&str> = scrape
        .lines()
        .filter(|l| l.starts_with("carestream_dead_letters_total") && !l.ends_with(" 0"))
        .collect();
    assert!(dead.is_empty(), "dead letters: {dead:?}\n{logs}");
    assert_eq!(
        common::metric(&scrape, "carestream_unknown_household_alarms_total"),
        Some(0.0)
    );
    assert!(
        common::metric(&scrape, "carestream_partitioner_mismatches_total").unwrap_or(0.0) > 0.0,
        "the gateways' placement was not seen as another partitioner's"
    );
    assert!(proc
        .terminate(Duration::from_secs(30))
        .is_some_and(|s| s.success()));
}
