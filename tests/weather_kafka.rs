//! Weather warnings on the real broker (Apache Kafka; tansu with `CARESTREAM_TEST_BROKER=tansu`):
//! a RED warning for a district of 120 registered homes (a third sending heartbeats only, a
//! third sensor events, a third nothing at all) and none for a neighbouring district of 30.
//! The warning comes before the processors start, while the homes send their first records,
//! or after; one instance or two share the partitions. In every variant every home of the
//! district is called exactly once, by the owner of its partition, most at risk first.
//! Homes that send nothing can only be reached through the producers' partitioner. The six
//! variants run twice.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use rdkafka::consumer::BaseConsumer;
use rdkafka::message::Message;
use rdkafka::producer::Producer;

use carestream::model::*;
use carestream::partition::Partitioner;
use carestream::rules::RuleSet;

const PARTITIONS: i32 = 4;
const WARNED: &str = "420106";
const SPARED: &str = "420111";

#[derive(Clone, Copy, Debug, PartialEq)]
enum When {
    /// On the topic before the processors start (a restart while a warning holds).
    BeforeStart,
    /// After half of the homes that send anything have sent their first records.
    DuringFirstRecords,
    /// After every such home has sent records for a while.
    AfterFirstRecords,
}

fn homes() -> Vec<HouseholdProfile> {
    (0..150)
        .map(|i| {
            let mut p = carestream::tools::simulate::household(i, 11);
            let district = if i < 120 { WARNED } else { SPARED };
            p.household_id = format!("wx-hh-{i:03}");
            p.district = district.into();
            p.street = format!("{district}001");
            p.community = format!("{district}001001");
            p
        })
        .collect()
}

/// One record from home `i` (by its index): heartbeats for the first third of each
/// district, motion for the second, nothing for the last.
fn traffic(
    codec: &carestream::codec::Codec,
    i: usize,
    p: &HouseholdProfile,
    t: Millis,
) -> Option<(bool, Vec<u8>)> {
    let id = &p.household_id;
    match i % 3 {
        0 => Some((
            false,
            common::enc(
                codec,
                &Input::Heartbeat(DeviceHeartbeat {
                    household_id: id.clone(),
                    device_id: format!("{id}-gw"),
                    device_kind: DeviceKind::MOTION_PIR,
                    event_time: t,
                    battery_pct: Some(90),
                    mains_power: Some(true),
                }),
            ),
        )),
        1 => Some((
            true,
            common::enc(
                codec,
                &common::sensor(
                    id,
                    &format!("{id}-m-{t}"),
                    DeviceKind::MOTION_PIR,
                    t,
                    Reading::Motion { detected: true },
                ),
            ),
        )),
        _ => None,
    }
}

/// Welfare calls on the dispatch topics so far: household → the calls' `emitted_at`.
fn welfare_calls(consumer: &BaseConsumer, calls: &mut BTreeMap<String, Vec<Millis>>, for_ms: u64) {
    let codec = common::codec();
    let until = Instant::now() + Duration::from_millis(for_ms);
    while Instant::now() < until {
        let Some(Ok(m)) = consumer.poll(Duration::from_millis(100)) else {
            continue;
        };
        if let Ok(Output::Task(t)) = codec.decode_output(m.payload().unwrap_or_default()) {
            if t.rule_id == "weather_welfare" && t.action == Action::WELFARE_CALL {
                calls.entry(t.household_id).or_default().push(t.emitted_at);
            }
        }
    }
}

fn variant(broker: &common::Broker, when: When, instances: usize) {
    let what = format!("{when:?} with {instances} instance(s)");
    eprintln!("--- {what}");
    // Calls paced fast and event time close behind, so a variant takes seconds.
    let rules_dir = common::rules_with(
        "wx-rules",
        &[
            (
                "engine.toml",
                "out_of_orderness = \"30s\"",
                "out_of_orderness = \"2s\"",
            ),
            (
                "weather.toml",
                "calls_per_minute = 200",
                "calls_per_minute = 6000",
            ),
        ],
    );
    let rules = RuleSet::load(std::path::Path::new(&*rules_dir)).unwrap();
    let (config, env) = common::environment_with_topics(broker, "wx", &rules_dir, PARTITIONS);
    let t = config.topics.clone();
    let producer = common::platform_producer(&broker.bootstrap());
    let codec = common::codec();
    let homes = homes();
    common::register(&producer, &config, &homes, common::now());
    let warn = |at: Millis| {
        let alert = Input::Weather(WeatherAlert {
            alert_id: format!("wx-{}", common::unique("alert")),
            region: WARNED.into(),
            kind: WeatherKind::TYPHOON,
            level: WeatherLevel::RED,
            issued_at: at,
            expires_at: at + 6 * 3_600_000,
            cancelled: false,
        });
        common::produce(
            &producer,
            &t.weather_alerts,
            WARNED,
            &common::enc(&codec, &alert),
            at,
        );
        producer.flush(Duration::from_secs(10)).unwrap();
    };
    if when == When::BeforeStart {
        warn(common::now());
    }
    producer.flush(Duration::from_secs(10)).unwrap();
    let mut procs = common::start_instances(&env, instances);
    let senders: Vec<usize> = (0..homes.len()).filter(|i| i % 3 != 2).collect();
    let began = Instant::now();
    let mut warned = when == When::BeforeStart;
    let mut round = 0;
    while began.elapsed() < Duration::from_secs(12) {
        let at = common::now();
        let elapsed = began.elapsed();
        // During: half of the senders start first, the warning, then the rest.
        let active = match when {
            When::DuringFirstRecords if elapsed < Duration::from_secs(3) => senders.len() / 2,
            _ => senders.len(),
        };
        if !warned
            && ((when == When::DuringFirstRecords && round == 2)
                || (when == When::AfterFirstRecords && elapsed >= Duration::from_secs(3)))
        {
            warn(at);
            warned = true;
        }
        for &i in &senders[..active] {
            if let Some((sensor, bytes)) = traffic(&codec, i, &homes[i], at) {
                let topic = if sensor {
                    &t.sensor_events
                } else {
                    &t.heartbeats
                };
                common::produce(&producer, topic, &homes[i].household_id, &bytes, at);
            }
        }
        round += 1;
        std::thread::sleep(Duration::from_millis(500));
    }
    assert!(warned);
    producer.flush(Duration::from_secs(10)).unwrap();

    let reader = common::reader_from_start(
        &broker.bootstrap(),
        "wx-reader",
        &[&t.dispatch_critical, &t.dispatch_high, &t.dispatch_routine],
        PARTITIONS,
    );
    let mut calls = BTreeMap::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while calls.len() < 120 && Instant::now() < deadline {
        welfare_calls(&reader, &mut calls, 500);
    }
    // Anything more (a second call) would come now.
    welfare_calls(&reader, &mut calls, 3_000);

    let by = Partitioner::Murmur2;
    let warned_homes: Vec<&HouseholdProfile> =
        homes.iter().filter(|p| p.district == WARNED).collect();
    let missing: Vec<&str> = warned_homes
        .iter()
        .filter(|p| !calls.contains_key(&p.household_id))
        .map(|p| p.household_id.as_str())
        .collect();
    let logs = || {
        procs
            .iter()
            .map(|p| common::tail(&p.logs(), 30))
            .collect::<Vec<_>>()
            .join("\n-----\n")
    };
    assert!(
        missing.is_empty(),
        "{what}: never called: {missing:?}\n{}",
        logs()
    );
    let twice: Vec<(&String, usize)> = calls
        .iter()
        .filter(|(_, c)| c.len() != 1)
        .map(|(h, c)| (h, c.len()))
        .collect();
    assert!(twice.is_empty(), "{what}: called more than once: {twice:?}");
    assert_eq!(
        calls.len(),
        120,
        "{what}: a home outside the warned district was called"
    );
    // Each partition's homes most at risk first.
    let profile: HashMap<&str, &HouseholdProfile> =
        homes.iter().map(|p| (p.household_id.as_str(), p)).collect();
    for part in 0..PARTITIONS {
        let mut order: Vec<(Millis, f64)> = calls
            .iter()
            .filter(|(h, _)| by.partition(h.as_bytes(), PARTITIONS) == part)
            .map(|(h, c)| (c[0], rules.weather.risk(profile[h.as_str()])))
            .collect();
        order.sort_by_key(|(at, _)| *at);
        assert!(
            order.windows(2).all(|w| w[0].1 >= w[1].1),
            "{what}: partition {part} not called in risk order: {order:?}"
        );
    }
    std::thread::sleep(Duration::from_millis(1_500));
    for p in procs.iter_mut() {
        let scrape = p.get("/metrics").1;
        assert_eq!(
            common::metric(&scrape, "carestream_partitioner_mismatches_total"),
            Some(0.0),
            "{what}: homes seen on another partition than the partitioner gives"
        );
        assert!(p
            .terminate(Duration::from_secs(30))
            .is_some_and(|s| s.success()));
    }
}

#[test]
fn a_warning_calls_every_registered_home_of_its_region_once_whatever_the_timing() {
    let broker = common::Broker::start();
    for instances in [1, 2] {
        for when in [
            When::BeforeStart,
            When::DuringFirstRecords,
            When::AfterFirstRecords,
        ] {
            variant(&broker, when, instances);
        }
    }
}
