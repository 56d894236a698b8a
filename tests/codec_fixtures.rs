//! Our decoder against bytes written by fastavro (tests/fixtures/make_fixtures.py): the
//! current, an older (v1) and a newer (v3, via a Schema Registry) writer schema.

mod common;

use carestream::codec::{DecodeError, RegistryClient, RegistryError};
use carestream::model::{Input, InputKind};

fn kind(stream: &str) -> InputKind {
    *InputKind::ALL.iter().find(|k| k.label() == stream).unwrap()
}

fn as_json(input: &Input) -> serde_json::Value {
    match input {
        Input::Sensor(e) => serde_json::to_value(e),
        Input::Heartbeat(h) => serde_json::to_value(h),
        Input::CheckIn(c) => serde_json::to_value(c),
        Input::Household { profile, .. } => serde_json::to_value(profile.as_ref().unwrap()),
        Input::Weather(w) => serde_json::to_value(w),
        Input::TaskUpdate(u) => serde_json::to_value(u),
        Input::Area { .. } => panic!("the fixtures hold no area signal (the processor's own)"),
    }
    .unwrap()
}

#[test]
fn fastavro_fixtures_decode_to_the_expected_values() {
    let codec = common::codec();
    let expected = common::expected();
    let mut checked = 0;
    for (name, case) in expected.as_object().unwrap() {
        let bytes = common::fixture(name);
        let id = case["schema_id"].as_u64().unwrap() as u32;
        assert_eq!(
            u32::from_be_bytes(bytes[1..5].try_into().unwrap()),
            id,
            "{name}"
        );
        if id == 1003 {
            // A newer producer: unknown here until a registry tells us its schema.
            assert_eq!(
                codec.decode_input(kind(case["stream"].as_str().unwrap()), None, Some(&bytes)),
                Err(DecodeError::UnknownSchemaId(1003))
            );
            continue;
        }
        let input = codec
            .decode_input(kind(case["stream"].as_str().unwrap()), None, Some(&bytes))
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(as_json(&input), case["value"], "{name}");
        checked += 1;
    }
    assert_eq!(checked, 12, "every fixture but the v3 one decodes locally");
}

#[test]
fn our_encoding_is_byte_identical_to_fastavros() {
    // Same schema, same values: Avro binary is canonical, so the bytes must match exactly.
    let codec = common::codec();
    for name in [
        "household",
        "heartbeat",
        "checkin",
        "weather",
        "task_update",
        "task_update_resolved",
        "sensor_v2_button",
        "sensor_v2_vitals",
        "sensor_v2_meter",
    ] {
        let bytes = common::fixture(name);
        let stream = common::expected()[name]["stream"]
            .as_str()
            .unwrap()
            .to_string();
        let input = codec
            .decode_input(kind(&stream), None, Some(&bytes))
            .unwrap();
        assert_eq!(
            codec.encode_input(&input).unwrap().unwrap(),
            bytes,
            "{name}"
        );
    }
}

#[test]
fn newer_writer_schema_is_learned_from_the_registry() {
    let (by_id, by_record) = common::registry_tables();
    let registry = common::FakeRegistry::start(by_id, by_record);
    let client = RegistryClient::new(&registry.url);
    let mut codec = common::codec();
    let bytes = common::fixture("sensor_v3_newer_fall");

    let schema = client.schema_by_id(1003).unwrap();
    codec.catalogue_mut().insert_writer(1003, &schema).unwrap();
    let input = codec
        .decode_input(InputKind::SensorEvents, None, Some(&bytes))
        .unwrap();
    assert_eq!(
        as_json(&input),
        common::expected()["sensor_v3_newer_fall"]["value"]
    );
    assert!(matches!(
        client.schema_by_id(424242),
        Err(RegistryError::NotFound(424242))
    ));
    assert_eq!(*registry.lookups.lock().unwrap(), vec![1003, 424242]);
    assert_eq!(
        client
            .register(
                "care.sensor-events-value",
                codec.catalogue().reader_text("SensorEvent").unwrap()
            )
            .unwrap(),
        2
    );

    let unreachable = RegistryClient::new(&format!("http://127.0.0.1:{}", common::free_port()));
    assert!(matches!(
        unreachable.schema_by_id(1),
        Err(RegistryError::Unavailable(_))
    ));
}
