//! Checkpoint hygiene on the real broker: the pieces of a checkpoint whose writer died before
//! its manifest are found when the partition is next restored and tombstoned with the next
//! checkpoint, while the pieces of one another instance may still be writing are kept.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::ClientConfig;

use carestream::checkpoint;
use carestream::engine::{Engine, Meta};
use carestream::model::*;
use carestream::rules::RuleSet;

fn engine_with_households(n: usize) -> Engine {
    let rules = Arc::new(RuleSet::load(&Path::new(common::MANIFEST).join("rules")).unwrap());
    let mut e = Engine::new(rules);
    let mut out = Vec::new();
    let now = carestream::pipeline::wall_millis();
    for i in 0..n {
        let profile = carestream::tools::simulate::household(i, 1);
        let id = profile.household_id.clone();
        let motion = Input::Sensor(SensorEvent {
            event_id: format!("{id}-m"),
            household_id: id.clone(),
            device_id: format!("{id}-pir"),
            device_kind: DeviceKind::MOTION_PIR,
            event_time: now,
            reading: Reading::Motion { detected: true },
            gateway_id: None,
        });
        let profile = Input::Household {
            household_id: id,
            profile: Some(profile),
        };
        for input in [profile, motion] {
            let meta = Meta {
                partition: 0,
                arrival: now,
            };
            e.process(&input, meta, &mut out).unwrap();
        }
    }
    e
}

/// Every record of the state topic's one partition, last value per key (None: tombstone).
fn last_values(bootstrap: &str, topic: &str) -> HashMap<String, Option<Vec<u8>>> {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", common::unique("state-dump"))
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .create()
        .unwrap();
    let (_, high) = c
        .fetch_watermarks(topic, 0, Duration::from_secs(10))
        .unwrap();
    let mut tpl = rdkafka::TopicPartitionList::new();
    tpl.add_partition_offset(topic, 0, rdkafka::Offset::Beginning)
        .unwrap();
    c.assign(&tpl).unwrap();
    let mut last = HashMap::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut next = 0;
    while next < high {
        assert!(Instant::now() < deadline, "read {next} of {high} records");
        if let Some(m) = c.poll(Duration::from_millis(200)) {
            let m = m.unwrap();
            let key = String::from_utf8(m.key().unwrap().to_vec()).unwrap();
            last.insert(key, m.payload().map(<[u8]>::to_vec));
            next = m.offset() + 1;
        }
    }
    last
}

/// A broker with the topics of a config of its own (one partition each), a runtime, and a
/// producer set up as the processor's.
fn state_topic(
    tag: &str,
) -> (
    common::Broker,
    carestream::config::Config,
    tokio::runtime::Runtime,
    FutureProducer,
) {
    let broker = common::Broker::start();
    let (config, _) = common::test_config(&broker.bootstrap(), tag);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(carestream::admin::create_topics(&config, 1, 1))
        .unwrap();
    let producer: FutureProducer = carestream::kafka::reliable_producer_config(
        &carestream::kafka::base_client_config(&config),
    )
    .create()
    .unwrap();
    (broker, config, rt, producer)
}

/// `writer`'s checkpoint of `engine`'s partition 0, written now, covering no offsets.
fn write_now(
    rt: &tokio::runtime::Runtime,
    writer: &mut checkpoint::Writer,
    producer: &FutureProducer,
    engine: &Engine,
) -> checkpoint::Manifest {
    let now = carestream::pipeline::wall_millis();
    rt.block_on(writer.write(producer, &engine.snapshot(0), BTreeMap::new(), now))
        .unwrap()
}

/// Every one of `keys` is tombstoned on the state topic.
fn assert_tombstoned<'a>(bootstrap: &str, topic: &str, keys: impl IntoIterator<Item = &'a String>) {
    let last = last_values(bootstrap, topic);
    for key in keys {
        assert_eq!(last.get(key), Some(&None), "{key} tombstoned");
    }
}

#[test]
fn orphaned_pieces_of_a_dead_writer_are_tombstoned_and_a_live_writers_are_kept() {
    let (broker, config, rt, producer) = state_topic("orphans");
    let (topic, group) = (&config.topics.state, &config.kafka.group_id);
    let live = engine_with_households(20);

    // The first owner checkpoints partition 0.
    let mut first = checkpoint::Writer::new(topic, group, 1);
    let now = carestream::pipeline::wall_millis();
    let m1 = rt
        .block_on(first.write(&producer, &live.snapshot(0), BTreeMap::new(), now))
        .unwrap();
    // Pieces no manifest names: two of a writer that died an hour ago, one of a writer
    // writing right now.
    let piece = |key: &str, at: Millis| {
        let rec: FutureRecord<'_, str, [u8]> = FutureRecord::to(topic)
            .partition(0)
            .key(key)
            .payload(&b"{\"partial\":"[..])
            .timestamp(at);
        rt.block_on(producer.send(rec, Duration::from_secs(10)))
            .unwrap();
    };
    let dead: Vec<String> = (0..2)
        .map(|i| format!("{group}/chunk/0/dead-writer/7/{i}"))
        .collect();
    for key in &dead {
        piece(key, now - 3_600_000);
    }
    let busy = format!("{group}/chunk/0/busy-writer/3/0");
    piece(&busy, now);

    // The next owner restores: the checkpoint is whole, and the dead writer's pieces, and
    // only those, are named as orphans.
    let loaded = checkpoint::load(&config, &[0], Duration::from_secs(60)).unwrap();
    assert!(loaded.damaged.is_empty());
    let restored = &loaded.restored[&0];
    assert_eq!(restored.manifest, m1);
    assert_eq!(restored.orphans, dead);
    let mut fresh = Engine::new(Arc::new(
        RuleSet::load(&Path::new(common::MANIFEST).join("rules")).unwrap(),
    ));
    fresh.restore(restored.snapshot.clone());
    assert_eq!(fresh.snapshot(0), live.snapshot(0));

    // Its first checkpoint retires the one it restored and the orphans.
    let mut next = checkpoint::Writer::new(topic, group, 1);
    next.adopt(restored);
    let m2 = write_now(&rt, &mut next, &producer, &fresh);
    let m1_keys = m1.chunk_keys(group);
    assert_tombstoned(&broker.bootstrap(), topic, dead.iter().chain(&m1_keys));
    let last = last_values(&broker.bootstrap(), topic);
    assert!(matches!(last.get(&busy), Some(Some(_))), "{busy} kept");
    for key in m2.chunk_keys(group) {
        assert!(matches!(last.get(&key), Some(Some(_))), "{key} kept");
    }
    // And the partition restores from the new checkpoint with nothing left to clean.
    let again = checkpoint::load(&config, &[0], Duration::from_secs(60)).unwrap();
    assert_eq!(again.restored[&0].manifest, m2);
    assert!(again.restored[&0].orphans.is_empty());
}

#[test]
fn a_corrupt_manifest_damages_its_own_partition_only() {
    let (_broker, config, rt, producer) = state_topic("corrupt");
    let (topic, group) = (&config.topics.state, &config.kafka.group_id);
    let live = engine_with_households(20);
    let mut writer = checkpoint::Writer::new(topic, group, 1);
    let now = carestream::pipeline::wall_millis();
    let m0 = rt
        .block_on(writer.write(&producer, &live.snapshot(0), BTreeMap::new(), now))
        .unwrap();
    // Partition 1's manifest is garbage (a bad disk, a hostile writer).
    let key = format!("{group}/manifest/1");
    let rec: FutureRecord<'_, str, [u8]> = FutureRecord::to(topic)
        .partition(0)
        .key(key.as_str())
        .payload(&b"{\"writer\": 12, not json"[..]);
    rt.block_on(producer.send(rec, Duration::from_secs(10)))
        .unwrap();
    let loaded = checkpoint::load(&config, &[0, 1], Duration::from_secs(60))
        .expect("one corrupt manifest must not fail the whole restore");
    assert_eq!(loaded.restored[&0].manifest, m0, "partition 0 restores");
    assert!(!loaded.restored.contains_key(&1));
    assert_eq!(
        loaded.damaged.iter().map(|(p, _)| *p).collect::<Vec<_>>(),
        [1],
        "only partition 1 is damaged"
    );
}

#[test]
fn a_checkpoint_sent_beside_processing_holds_the_state_it_was_taken_at() {
    let (broker, config, rt, producer) = state_topic("beside");
    let (topic, group) = (&config.topics.state, &config.kafka.group_id);
    let mut live = engine_with_households(20);
    let mut writer = checkpoint::Writer::new(topic, group, 1);
    let m1 = write_now(&rt, &mut writer, &producer, &live);

    // The pipeline copies the state, hands the rest to a task and goes on processing.
    let taken = live.snapshot(0);
    let offsets = BTreeMap::from([("sensor".to_string(), 42)]);
    let prepared = writer.prepare_owned(
        live.capture(0),
        offsets.clone(),
        carestream::pipeline::wall_millis(),
    );
    let sending = {
        let producer = producer.clone();
        rt.spawn(async move { prepared.send(&producer).await })
    };
    let later = carestream::pipeline::wall_millis() + 1_000;
    let alarm = Input::Sensor(SensorEvent {
        event_id: "beside-button".into(),
        household_id: carestream::tools::simulate::household_id(3),
        device_id: "beside-button-dev".into(),
        device_kind: DeviceKind::EMERGENCY_BUTTON,
        event_time: later,
        reading: Reading::Alarm { active: true },
        gateway_id: None,
    });
    let meta = Meta {
        partition: 0,
        arrival: later,
    };
    let mut out = Vec::new();
    live.process(&alarm, meta, &mut out).unwrap();
    assert!(
        !out.is_empty(),
        "the button raised a task while the checkpoint was sent"
    );
    assert_ne!(
        live.snapshot(0),
        taken,
        "processing went on past the snapshot"
    );

    let sent = rt.block_on(sending).unwrap().unwrap();
    let m2 = writer.written(sent);
    assert_eq!(m2.seq, m1.seq + 1);
    assert_eq!(m2.offsets, offsets);
    assert!(
        m2.chunks > 0 && m2.bytes > 0,
        "its pieces counted once encoded"
    );

    // Restored: the state at the snapshot with its offsets, not what came after.
    let loaded = checkpoint::load(&config, &[0], Duration::from_secs(60)).unwrap();
    let restored = &loaded.restored[&0];
    assert_eq!(restored.manifest, m2);
    assert_eq!(restored.snapshot, taken);
    // And the one before is retired.
    assert_tombstoned(&broker.bootstrap(), topic, &m1.chunk_keys(group));
    // The next checkpoint retires this one's pieces in turn.
    let m3 = write_now(&rt, &mut writer, &producer, &live);
    assert_tombstoned(&broker.bootstrap(), topic, &m2.chunk_keys(group));
    assert_eq!(
        checkpoint::load(&config, &[0], Duration::from_secs(60))
            .unwrap()
            .restored[&0]
            .manifest,
        m3
    );
}
