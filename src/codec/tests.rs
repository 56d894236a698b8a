use std::path::Path;

use super::*;

fn codec() -> Codec {
    Codec::new(Catalogue::load(Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/schemas"))).unwrap())
}

fn sample_inputs() -> Vec<(InputKind, Input)> {
    let profile = crate::tools::simulate::household(5, 9);
    vec![
        (
            InputKind::SensorEvents,
            Input::Sensor(SensorEvent {
                event_id: "e1".into(),
                household_id: "hh-1".into(),
                device_id: "d1".into(),
                device_kind: DeviceKind::WEARABLE,
                event_time: 1_795_000_000_123,
                reading: Reading::Vitals {
                    heart_rate_bpm: Some(131),
                    respiration_rpm: None,
                    worn: true,
                },
                gateway_id: Some("gw".into()),
            }),
        ),
        (
            InputKind::SensorEvents,
            Input::Sensor(SensorEvent {
                event_id: "e2".into(),
                household_id: "hh-1".into(),
                device_id: "m1".into(),
                device_kind: DeviceKind::POWER_METER,
                event_time: 1,
                reading: Reading::Meter { cumulative: 1234.5 },
                gateway_id: None,
            }),
        ),
        (
            InputKind::Heartbeats,
            Input::Heartbeat(DeviceHeartbeat {
                household_id: "hh-1".into(),
                device_id: "d1".into(),
                device_kind: DeviceKind::BED_SENSOR,
                event_time: 5,
                battery_pct: None,
                mains_power: Some(true),
            }),
        ),
        (
            InputKind::CheckIns,
            Input::CheckIn(CheckIn {
                household_id: "hh-1".into(),
                event_time: 7,
                kind: CheckInKind::HOME_VISIT,
                visitor_id: Some("v-3".into()),
            }),
        ),
        (
            InputKind::Households,
            Input::Household {
                household_id: profile.household_id.clone(),
                profile: Some(profile),
            },
        ),
        (
            InputKind::WeatherAlerts,
            Input::Weather(WeatherAlert {
                alert_id: "w1".into(),
                region: "420102".into(),
                kind: WeatherKind::TYPHOON,
                level: WeatherLevel::ORANGE,
                issued_at: 10,
                expires_at: 20,
                cancelled: false,
            }),
        ),
        (
            InputKind::TaskUpdates,
            Input::TaskUpdate(TaskUpdate {
                task_id: "t1".into(),
                household_id: "hh-1".into(),
                status: TaskUpdateStatus::FALSE_ALARM,
                by: "desk-1".into(),
                at: 99,
                note: Some("误报".into()),
                outcome: None,
                snooze_until: None,
                assign_to: None,
            }),
        ),
    ]
}

#[test]
fn every_input_round_trips() {
    let c = codec();
    for (kind, input) in sample_inputs() {
        let bytes = c.encode_input(&input).unwrap().unwrap();
        assert_eq!(bytes[0], 0, "magic byte");
        assert_eq!(
            c.decode_input(kind, None, Some(&bytes)).unwrap(),
            input,
            "{kind:?}"
        );
    }
}

#[test]
fn every_output_round_trips() {
    let c = codec();
    let outputs = [
        Output::Task(EscalationTask {
            task_id: "t".into(),
            incident_id: Some("i".into()),
            household_id: "hh".into(),
            rule_id: "alarm.fall".into(),
            severity: Severity::HIGH,
            action: Action::ONSITE_VISIT,
            tier: 2,
            district: "d".into(),
            street: "s".into(),
            community: "c".into(),
            reason: "跌倒".into(),
            evidence: vec![Evidence {
                event_id: "e".into(),
                event_time: 3,
                summary: "x".into(),
            }],
            incident_time: 1,
            emitted_at: 2,
            respond_by: 3,
            repeat_count: None,
            assigned_to: None,
        }),
        Output::Notification(ContactNotification {
            notification_id: "n".into(),
            task_id: "t".into(),
            household_id: "hh".into(),
            rule_id: "r".into(),
            contacts: vec![Contact {
                name: "王".into(),
                relation: "son".into(),
                phone: "13900000000".into(),
            }],
            message: "m".into(),
            incident_time: 1,
            emitted_at: 2,
        }),
        Output::TaskEvent(TaskEvent {
            task_id: "t".into(),
            household_id: "hh".into(),
            rule_id: "r".into(),
            kind: TaskEventKind::ESCALATED,
            at: 4,
            reason: "r".into(),
            by: None,
            incident_id: Some("i".into()),
            tier: Some(1),
            outcome: None,
            repeat_count: None,
            until: None,
            assigned_to: None,
        }),
        // The fields of the desk's lifecycle (v3), all set.
        Output::TaskEvent(TaskEvent {
            task_id: "t".into(),
            household_id: "hh".into(),
            rule_id: "r".into(),
            kind: TaskEventKind::RESOLVED,
            at: 5,
            reason: "r".into(),
            by: Some("desk-1".into()),
            incident_id: Some("i".into()),
            tier: Some(0),
            outcome: Some(TaskOutcome::HOSPITAL),
            repeat_count: Some(3),
            until: Some(6),
            assigned_to: Some("team-east".into()),
        }),
        // A task sent again for a repeated alarm, reassigned.
        Output::Task(EscalationTask {
            task_id: "t".into(),
            incident_id: Some("i".into()),
            household_id: "hh".into(),
            rule_id: "alarm.emergency_button".into(),
            severity: Severity::CRITICAL,
            action: Action::CALL_ELDER,
            tier: 0,
            district: "d".into(),
            street: "s".into(),
            community: "c".into(),
            reason: "r".into(),
            evidence: vec![],
            incident_time: 1,
            emitted_at: 2,
            respond_by: 3,
            repeat_count: Some(2),
            assigned_to: Some("team-east".into()),
        }),
    ];
    for o in outputs {
        let bytes = c.encode_output(&o).unwrap();
        assert_eq!(c.decode_output(&bytes).unwrap(), o);
        // The same bytes as apache-avro's one-off encoding of the same value (the codec
        // keeps a writer with its schema resolved, and leaves that writer's header out),
        // again on a second use of the writer, under Confluent's header with the current id.
        let record = match o {
            Output::Task(_) => "EscalationTask",
            Output::Notification(_) => "ContactNotification",
            Output::TaskEvent(_) => "TaskEvent",
        };
        let value = c.decode_value(record, &bytes).unwrap();
        let schema = c.catalogue().reader(record).unwrap();
        let mut expected = vec![0];
        expected.extend(c.catalogue().current_id(record).to_be_bytes());
        expected.extend(apache_avro::to_avro_datum(schema, value).unwrap());
        assert_eq!(bytes, expected, "{record}");
        assert_eq!(c.encode_output(&o).unwrap(), expected, "{record}, again");
    }
}

#[test]
fn framing_errors_are_named() {
    let c = codec();
    let k = InputKind::SensorEvents;
    assert_eq!(c.decode_input(k, None, None), Err(DecodeError::Empty));
    assert_eq!(c.decode_input(k, None, Some(&[])), Err(DecodeError::Empty));
    assert_eq!(
        c.decode_input(k, None, Some(&[0, 0, 0])),
        Err(DecodeError::Truncated(3))
    );
    assert_eq!(
        c.decode_input(k, None, Some(b"{\"json\": true}")),
        Err(DecodeError::BadMagic(b'{'))
    );
    assert_eq!(
        c.decode_input(k, None, Some(&[0, 0, 0, 0x30, 0x39, 1, 2])),
        Err(DecodeError::UnknownSchemaId(12345))
    );
}

#[test]
fn wrong_record_trailing_bytes_and_garbage_bodies_are_rejected() {
    let c = codec();
    let (_, hb) = &sample_inputs()[2];
    let bytes = c.encode_input(hb).unwrap().unwrap();
    assert!(matches!(
        c.decode_input(InputKind::SensorEvents, None, Some(&bytes)),
        Err(DecodeError::WrongRecord {
            expected: "SensorEvent",
            ..
        })
    ));
    let mut longer = bytes.clone();
    longer.extend_from_slice(&[1, 2, 3]);
    assert_eq!(
        c.decode_input(InputKind::Heartbeats, None, Some(&longer)),
        Err(DecodeError::TrailingBytes(3))
    );
    // Cut inside household_id. (apache-avro 0.21 reads a union at end of input as null, so a
    // cut exactly before trailing nullable fields is not detectable with it: see decode_value.)
    let truncated = &bytes[..8];
    let r = c.decode_input(InputKind::Heartbeats, None, Some(truncated));
    assert!(matches!(r, Err(DecodeError::Avro(_))), "{r:?}");
    // A string length prefix claiming ~1 GiB must fail fast, not allocate.
    let mut huge = bytes[..5].to_vec();
    huge.extend_from_slice(&[0xfe, 0xff, 0xff, 0xff, 0x07]);
    assert!(matches!(
        c.decode_input(InputKind::Heartbeats, None, Some(&huge)),
        Err(DecodeError::Avro(_))
    ));
}

#[test]
fn tombstones_only_on_the_registry() {
    let c = codec();
    assert_eq!(
        c.decode_input(InputKind::Households, Some(b"hh-9"), None),
        Ok(Input::Household {
            household_id: "hh-9".into(),
            profile: None
        })
    );
    assert_eq!(
        c.decode_input(InputKind::Households, None, None),
        Err(DecodeError::TombstoneWithoutKey)
    );
    assert_eq!(
        c.decode_input(InputKind::CheckIns, Some(b"hh-9"), None),
        Err(DecodeError::Empty)
    );
}

#[test]
fn absurd_values_are_invalid() {
    let c = codec();
    let (_, input) = &sample_inputs()[0];
    let Input::Sensor(mut e) = input.clone() else {
        unreachable!()
    };
    e.reading = Reading::Vitals {
        heart_rate_bpm: Some(900),
        respiration_rpm: None,
        worn: true,
    };
    let bytes = c.encode_input(&Input::Sensor(e.clone())).unwrap().unwrap();
    let err = c
        .decode_input(InputKind::SensorEvents, None, Some(&bytes))
        .unwrap_err();
    assert_eq!(err.reason(), "invalid_value");
    assert!(err.to_string().contains("heart_rate_bpm = 900"), "{err}");
    e.reading = Reading::Meter { cumulative: 1.0 };
    let bytes = c.encode_input(&Input::Sensor(e.clone())).unwrap().unwrap();
    let err = c
        .decode_input(InputKind::SensorEvents, None, Some(&bytes))
        .unwrap_err();
    assert!(
        err.to_string().contains("WEARABLE cannot send a Meter"),
        "{err}"
    );
    e.reading = Reading::Alarm { active: true };
    e.household_id = String::new();
    let bytes = c.encode_input(&Input::Sensor(e)).unwrap().unwrap();
    let err = c
        .decode_input(InputKind::SensorEvents, None, Some(&bytes))
        .unwrap_err();
    assert!(err.to_string().contains("household_id is empty"), "{err}");
}

#[test]
fn older_writer_schema_resolves_to_the_current_reader() {
    let c = codec();
    let v1 = c.catalogue().writer(1).unwrap();
    assert_eq!((v1.record.as_str(), v1.is_reader), ("SensorEvent", false));
    // Encode with the v1 writer schema (no gateway_id) as an old gateway would.
    let value = apache_avro::types::Value::Record(vec![
        ("event_id".into(), avro_map::e_str("old-1")),
        ("household_id".into(), avro_map::e_str("hh-1")),
        ("device_id".into(), avro_map::e_str("b1")),
        ("device_kind".into(), avro_map::e_sym(4, "EMERGENCY_BUTTON")),
        ("event_time".into(), avro_map::e_ts(42)),
        (
            "reading".into(),
            apache_avro::types::Value::Union(
                4,
                Box::new(avro_map::record(vec![(
                    "active",
                    apache_avro::types::Value::Boolean(true),
                )])),
            ),
        ),
    ]);
    let mut bytes = vec![0, 0, 0, 0, 1];
    bytes.extend(apache_avro::to_avro_datum(&v1.schema, value).unwrap());
    let Input::Sensor(e) = c
        .decode_input(InputKind::SensorEvents, None, Some(&bytes))
        .unwrap()
    else {
        panic!()
    };
    assert_eq!(
        (e.event_id.as_str(), e.gateway_id, e.reading),
        ("old-1", None, Reading::Alarm { active: true })
    );
}

#[test]
fn the_desk_s_view_and_the_visit_plans_round_trip() {
    let c = codec();
    let incident = Incident {
        incident_id: "i".into(),
        household_id: "hh".into(),
        rule_id: "alarm.gas".into(),
        severity: Severity::CRITICAL,
        tier: 1,
        district: "420106".into(),
        street: "420106004".into(),
        community: "420106004012".into(),
        incident_time: 1,
        opened_at: 2,
        acknowledged_at: Some(3),
        snoozed_until: None,
        assigned_to: Some("team-east".into()),
        repeats: 2,
        clearing_since: None,
        task_ids: vec!["t0".into(), "t1".into()],
        reason: "燃气报警".into(),
    };
    let bytes = c.encode_incident(&incident).unwrap();
    assert_eq!(&bytes[1..5], &15u32.to_be_bytes());
    assert_eq!(c.decode_incident(&bytes).unwrap(), incident);
    let visit = |hh: &str, due_at| PlannedVisit {
        household_id: hh.into(),
        due_at,
        risk: 12.5,
    };
    let plan = VisitPlan {
        plan_id: "p".into(),
        district: "420106".into(),
        street: "420106004".into(),
        community: "420106004012".into(),
        day: 10,
        part: 2,
        parts: 6,
        capacity: 4,
        visits: vec![visit("hh-1", 1), visit("hh-2", 2)],
        beyond_capacity: vec![visit("hh-3", 3)],
        drawn_at: 11,
    };
    let bytes = c.encode_visit_plan(&plan).unwrap();
    assert_eq!(&bytes[1..5], &17u32.to_be_bytes());
    assert_eq!(c.decode_visit_plan(&bytes).unwrap(), plan);
    // Each on its own: a plan is not taken for an incident.
    assert!(c.decode_incident(&bytes).is_err());
}

#[test]
fn current_ids_are_the_catalogues() {
    let c = codec();
    assert_eq!(c.catalogue().current_id("SensorEvent"), 2);
    assert_eq!(c.catalogue().current_id("EscalationTask"), 13);
    assert_eq!(c.catalogue().current_id("TaskEvent"), 14);
    assert_eq!(c.catalogue().current_id("TaskUpdate"), 12);
    let bytes = c.encode_input(&sample_inputs()[0].1).unwrap().unwrap();
    assert_eq!(&bytes[..5], &[0, 0, 0, 0, 2]);
}

#[test]
fn catalogue_problems_are_all_reported() {
    let dir = std::env::temp_dir().join(format!("carestream-cat-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let src = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/schemas"));
    for f in ["sensor_event.avsc", "check_in.avsc"] {
        std::fs::copy(src.join(f), dir.join(f)).unwrap();
    }
    std::fs::write(dir.join("broken.avsc"), "{\"type\": \"record\"").unwrap();
    std::fs::write(
        dir.join("catalogue.toml"),
        "[[schema]]\nid = 2\nrecord = \"SensorEvent\"\nfile = \"sensor_event.avsc\"\n[[schema]]\nid = 2\nrecord = \"CheckIn\"\nfile = \"check_in.avsc\"\n[[schema]]\nid = 3\nrecord = \"TaskEvent\"\nfile = \"check_in.avsc\"\n",
    )
    .unwrap();
    let Err(CatalogueError::Invalid(problems)) = Catalogue::load(&dir) else {
        panic!()
    };
    let all = problems.join("\n");
    assert!(
        all.contains("broken.avsc: not a valid Avro schema"),
        "{all}"
    );
    assert!(all.contains("id 2 is used twice"), "{all}");
    assert!(all.contains("id 3 says record TaskEvent"), "{all}");
    assert!(
        all.contains("no schema in") && all.contains("defines record DeviceHeartbeat"),
        "{all}"
    );
}

mod fast_decoder {
    //! The hot-path decoder against apache-avro's reading of the same bytes.
    use proptest::prelude::*;

    use super::*;

    fn text() -> impl Strategy<Value = String> {
        prop_oneof![
            "[a-z0-9-]{1,24}",
            "\\PC{0,12}",
            Just(String::new()),
            "[a-z]{120,140}",
        ]
    }

    fn kind() -> impl Strategy<Value = DeviceKind> {
        proptest::sample::select(DeviceKind::ALL)
    }

    fn reading() -> impl Strategy<Value = Reading> {
        let int = proptest::option::of(-400..400i32);
        prop_oneof![
            any::<bool>().prop_map(|detected| Reading::Motion { detected }),
            any::<bool>().prop_map(|open| Reading::Door { open }),
            any::<bool>().prop_map(|occupied| Reading::Bed { occupied }),
            (int.clone(), int, any::<bool>()).prop_map(|(h, r, worn)| Reading::Vitals {
                heart_rate_bpm: h,
                respiration_rpm: r,
                worn
            }),
            any::<bool>().prop_map(|active| Reading::Alarm { active }),
            any::<f64>().prop_map(|cumulative| Reading::Meter { cumulative }),
            any::<bool>().prop_map(|dose_taken| Reading::PillBox { dose_taken }),
        ]
    }

    fn input() -> impl Strategy<Value = (InputKind, Input)> {
        let time = any::<i64>();
        prop_oneof![
            (
                (text(), text(), text()),
                kind(),
                time,
                reading(),
                proptest::option::of(text())
            )
                .prop_map(|((ev, hh, dev), k, t, r, gw)| (
                    InputKind::SensorEvents,
                    Input::Sensor(SensorEvent {
                        event_id: ev,
                        household_id: hh,
                        device_id: dev,
                        device_kind: k,
                        event_time: t,
                        reading: r,
                        gateway_id: gw,
                    })
                )),
            (
                text(),
                text(),
                kind(),
                time,
                proptest::option::of(any::<i32>()),
                proptest::option::of(any::<bool>())
            )
                .prop_map(|(hh, dev, k, t, b, m)| (
                    InputKind::Heartbeats,
                    Input::Heartbeat(DeviceHeartbeat {
                        household_id: hh,
                        device_id: dev,
                        device_kind: k,
                        event_time: t,
                        battery_pct: b,
                        mains_power: m,
                    })
                )),
            (
                text(),
                time,
                proptest::sample::select(CheckInKind::ALL),
                proptest::option::of(text())
            )
                .prop_map(|(hh, t, k, v)| (
                    InputKind::CheckIns,
                    Input::CheckIn(CheckIn {
                        household_id: hh,
                        event_time: t,
                        kind: k,
                        visitor_id: v,
                    })
                )),
        ]
    }

    /// Both readings of one payload. The fast one decodes into a scratch that holds other
    /// records already, as the pipeline's does.
    fn both(
        c: &Codec,
        kind: InputKind,
        bytes: &[u8],
        scratch: &mut Scratch,
    ) -> (Result<Input, DecodeError>, Result<Input, DecodeError>) {
        assert!(c.fast_layout(kind, Some(bytes)).is_some(), "read fast");
        let fast = c.decode_reusing(kind, None, Some(bytes), scratch).cloned();
        let generic = c
            .decode_generic(kind, None, Some(bytes))
            .and_then(|i| crate::codec::validate::input(&i).map(|()| i));
        (fast, generic)
    }

    /// A scratch that has decoded `input` (and each hot kind) already.
    fn filled(c: &Codec, input: &Input) -> Scratch {
        let mut scratch = Scratch::default();
        let samples = sample_inputs();
        for (kind, i) in samples[..4]
            .iter()
            .chain([(kind_of(input), input.clone())].iter())
        {
            let bytes = c.encode_input(i).unwrap().unwrap();
            let _ = c.decode_reusing(*kind, None, Some(&bytes), &mut scratch);
        }
        scratch
    }

    fn kind_of(input: &Input) -> InputKind {
        match input {
            Input::Sensor(_) => InputKind::SensorEvents,
            Input::Heartbeat(_) => InputKind::Heartbeats,
            _ => InputKind::CheckIns,
        }
    }

    fn same_nan_aware(a: &Input, b: &Input) -> bool {
        // NaN meter readings are equal bit for bit, not by `==`.
        format!("{a:?}") == format!("{b:?}")
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]

        #[test]
        fn agrees_with_apache_avro_on_every_record(
            (kind, input) in input(),
            (_, before) in input(),
        ) {
            let c = codec();
            let bytes = c.encode_input(&input).unwrap().unwrap();
            let mut scratch = filled(&c, &before);
            let (fast, generic) = both(&c, kind, &bytes, &mut scratch);
            match (&fast, &generic) {
                (Ok(f), Ok(g)) => {
                    prop_assert!(same_nan_aware(f, g), "{f:?} vs {g:?}");
                    prop_assert!(same_nan_aware(f, &input));
                }
                (Err(f), Err(g)) => prop_assert_eq!(f.reason(), g.reason()),
                _ => prop_assert!(false, "fast {fast:?} vs generic {generic:?}"),
            }
        }

        #[test]
        fn every_cut_is_an_error_and_damage_never_reads_differently(
            (kind, input) in input(),
            at in any::<prop::sample::Index>(),
            byte in any::<u8>(),
        ) {
            let c = codec();
            let bytes = c.encode_input(&input).unwrap().unwrap();
            let mut scratch = filled(&c, &input);
            // Every cut of the body fails (apache-avro accepts some: see decode_value).
            for end in 5..bytes.len() {
                let (fast, _) = both(&c, kind, &bytes[..end], &mut scratch);
                prop_assert!(fast.is_err(), "cut at {end} of {} read as {fast:?}", bytes.len());
            }
            // One byte of the body changed: what the fast decoder accepts, apache-avro
            // reads the same; what apache-avro rejects, the fast decoder rejects.
            let mut damaged = bytes.clone();
            let i = 5 + at.index(bytes.len() - 5);
            damaged[i] = byte;
            let (fast, generic) = both(&c, kind, &damaged, &mut scratch);
            match (&fast, &generic) {
                (Ok(f), Ok(g)) => prop_assert!(same_nan_aware(f, g), "{f:?} vs {g:?}"),
                (Ok(_), Err(_)) => prop_assert!(false, "fast {fast:?} vs generic {generic:?}"),
                _ => {}
            }
        }
    }

    #[test]
    fn a_version_1_writer_reads_as_apache_avro_resolves_it() {
        let c = codec();
        let (_, input) = &sample_inputs()[1];
        let Input::Sensor(mut e) = input.clone() else {
            panic!()
        };
        e.gateway_id = None;
        let v2 = c.encode_input(&Input::Sensor(e.clone())).unwrap().unwrap();
        // v1 is v2 without the trailing union (its "null" branch is the last byte).
        let mut v1 = vec![0, 0, 0, 0, 1];
        v1.extend_from_slice(&v2[5..v2.len() - 1]);
        let mut scratch = filled(
            &c,
            &Input::Sensor(SensorEvent {
                gateway_id: Some("left over".into()),
                ..e.clone()
            }),
        );
        let (fast, generic) = both(&c, InputKind::SensorEvents, &v1, &mut scratch);
        assert_eq!(fast, Ok(Input::Sensor(e)));
        assert_eq!(fast, generic);
    }

    #[test]
    fn registry_writers_equal_to_ours_are_read_fast_and_others_are_not() {
        let mut c = codec();
        let text = c
            .catalogue()
            .reader_text("DeviceHeartbeat")
            .unwrap()
            .to_string();
        c.catalogue_mut().insert_writer(900, &text).unwrap();
        let other = text.replace("\"FALL_DETECTOR\"", "\"FALL_DETECTOR\", \"DOORBELL\"");
        c.catalogue_mut().insert_writer(901, &other).unwrap();
        let (_, hb) = &sample_inputs()[2];
        let mut bytes = c.encode_input(hb).unwrap().unwrap();
        bytes[1..5].copy_from_slice(&900u32.to_be_bytes());
        assert!(c.fast_layout(InputKind::Heartbeats, Some(&bytes)).is_some());
        assert_eq!(
            c.decode_input(InputKind::Heartbeats, None, Some(&bytes))
                .as_ref(),
            Ok(hb)
        );
        bytes[1..5].copy_from_slice(&901u32.to_be_bytes());
        assert!(c.fast_layout(InputKind::Heartbeats, Some(&bytes)).is_none());
        assert_eq!(
            c.decode_input(InputKind::Heartbeats, None, Some(&bytes))
                .as_ref(),
            Ok(hb)
        );
        // The right writer on the wrong topic is still named as such.
        assert!(matches!(
            c.decode_input(InputKind::CheckIns, None, Some(&bytes)),
            Err(DecodeError::WrongRecord { .. })
        ));
    }
}

mod fast_encoder {
    //! The output encoder against apache-avro's writing of the same records.
    use proptest::prelude::*;

    use super::*;

    fn text() -> impl Strategy<Value = String> {
        // Lengths on both sides of a one-byte length (63) and of two bytes (8 191).
        prop_oneof![
            "[a-z0-9.-]{0,24}",
            "\\PC{0,40}",
            "[a-z]{60,70}",
            "[a-z]{8185,8200}",
        ]
    }

    fn time() -> impl Strategy<Value = Millis> {
        prop_oneof![any::<i64>(), -100_000i64..100_000, Just(i64::MIN)]
    }

    fn evidence() -> impl Strategy<Value = Vec<Evidence>> {
        proptest::collection::vec(
            (text(), time(), text()).prop_map(|(event_id, event_time, summary)| Evidence {
                event_id,
                event_time,
                summary,
            }),
            0..70,
        )
    }

    fn task() -> impl Strategy<Value = Output> {
        (
            (text(), proptest::option::of(text()), text(), text()),
            (
                proptest::sample::select(Severity::ALL),
                proptest::sample::select(Action::ALL),
                any::<i32>(),
            ),
            (text(), text(), text(), text()),
            evidence(),
            (time(), time(), time()),
        )
            .prop_map(
                |(
                    (task_id, incident_id, household_id, rule_id),
                    (severity, action, tier),
                    (district, street, community, reason),
                    evidence,
                    (incident_time, emitted_at, respond_by),
                )| {
                    Output::Task(EscalationTask {
                        task_id,
                        incident_id,
                        household_id,
                        rule_id,
                        severity,
                        action,
                        tier,
                        district,
                        street,
                        community,
                        reason,
                        evidence,
                        incident_time,
                        emitted_at,
                        respond_by,
                        repeat_count: None,
                        assigned_to: None,
                    })
                },
            )
    }

    fn notification() -> impl Strategy<Value = Output> {
        let contact = (text(), text(), text()).prop_map(|(name, relation, phone)| Contact {
            name,
            relation,
            phone,
        });
        (
            (text(), text(), text(), text()),
            proptest::collection::vec(contact, 0..5),
            (text(), time(), time()),
        )
            .prop_map(
                |(
                    (notification_id, task_id, household_id, rule_id),
                    contacts,
                    (message, incident_time, emitted_at),
                )| {
                    Output::Notification(ContactNotification {
                        notification_id,
                        task_id,
                        household_id,
                        rule_id,
                        contacts,
                        message,
                        incident_time,
                        emitted_at,
                    })
                },
            )
    }

    fn task_event() -> impl Strategy<Value = Output> {
        (
            (text(), proptest::option::of(text()), text(), text()),
            (
                proptest::sample::select(TaskEventKind::ALL),
                time(),
                text(),
                proptest::option::of(text()),
                proptest::option::of(any::<i32>()),
            ),
        )
            .prop_map(
                |((task_id, incident_id, household_id, rule_id), (kind, at, reason, by, tier))| {
                    Output::TaskEvent(TaskEvent {
                        task_id,
                        incident_id,
                        household_id,
                        rule_id,
                        kind,
                        at,
                        reason,
                        by,
                        tier,
                        outcome: None,
                        repeat_count: None,
                        until: None,
                        assigned_to: None,
                    })
                },
            )
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

        #[test]
        fn writes_what_apache_avro_writes(output in prop_oneof![task(), notification(), task_event()]) {
            let c = codec();
            prop_assert_eq!(c.fast_out, [true; 3], "the schemas in schemas/ are written fast");
            let fast = c.encode_output(&output).unwrap();
            let generic = c.encode_output_generic(&output).unwrap();
            prop_assert_eq!(&fast, &generic);
            prop_assert_eq!(c.decode_output(&fast).unwrap(), output);
        }
    }

    /// A reader schema the encoder was not written for (here a severity added) is written by
    /// apache-avro, and reads back; the other two records are still written fast.
    #[test]
    fn a_changed_schema_is_written_the_generic_way() {
        let dir = std::env::temp_dir().join(format!("carestream-out-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("history")).unwrap();
        let src = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/schemas"));
        for entry in walk(src) {
            let rel = entry.strip_prefix(src).unwrap();
            let text = std::fs::read_to_string(&entry).unwrap();
            let text = match rel.to_str() {
                Some("escalation_task.avsc") => {
                    let changed = text.replace("\"ROUTINE\"", "\"ROUTINE\", \"INFO\"");
                    assert_ne!(changed, text);
                    changed
                }
                _ => text,
            };
            std::fs::write(dir.join(rel), text).unwrap();
        }
        let c = Codec::new(Catalogue::load(&dir).unwrap());
        assert_eq!(c.fast_out, [false, true, true]);
        let task = Output::Task(EscalationTask {
            task_id: "t-1".into(),
            incident_id: None,
            household_id: "hh-1".into(),
            rule_id: "alarm.button".into(),
            severity: Severity::ROUTINE,
            action: Action::CALL_ELDER,
            tier: 0,
            district: "d".into(),
            street: "s".into(),
            community: "c".into(),
            reason: "r".into(),
            evidence: vec![],
            incident_time: 1,
            emitted_at: 2,
            respond_by: 3,
            repeat_count: None,
            assigned_to: None,
        });
        let bytes = c.encode_output(&task).unwrap();
        assert_eq!(bytes, c.encode_output_generic(&task).unwrap());
        assert_eq!(c.decode_output(&bytes).unwrap(), task);
        let _ = std::fs::remove_dir_all(&dir);
    }

    fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
        let mut files = Vec::new();
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                files.extend(walk(&path));
            } else {
                files.push(path);
            }
        }
        files
    }
}

#[test]
fn area_signals_round_trip_by_their_key_and_a_bad_key_is_refused() {
    let c = codec();
    let member = Input::Area {
        key: AreaKey::Member("hh-000042".into()),
        signal: Some(AreaSignal {
            area: "420102001003".into(),
            household_id: Some("hh-000042".into()),
            silent_since: 1_795_000_000_000,
            at: 1_795_001_800_000,
            incident_id: None,
            homes: 0,
        }),
    };
    let area = Input::Area {
        key: AreaKey::Area("420102001003".into()),
        signal: Some(AreaSignal {
            area: "420102001003".into(),
            household_id: None,
            silent_since: 1_795_000_000_000,
            at: 1_795_001_900_000,
            incident_id: Some("inc-1".into()),
            homes: 37,
        }),
    };
    for input in [&member, &area] {
        let Input::Area { key, .. } = input else {
            unreachable!()
        };
        let bytes = c.encode_input(input).unwrap().unwrap();
        let back = c
            .decode_input(InputKind::AreaSignals, Some(&key.to_bytes()), Some(&bytes))
            .unwrap();
        assert_eq!(&back, input);
    }
    // A tombstone is read by its key alone.
    let gone = Input::Area {
        key: AreaKey::Member("hh-000042".into()),
        signal: None,
    };
    assert_eq!(c.encode_input(&gone).unwrap(), None);
    assert_eq!(
        c.decode_input(InputKind::AreaSignals, Some(b"m:hh-000042"), None),
        Ok(gone)
    );
    for bad in [None, Some(&b"hh-000042"[..]), Some(b"m:"), Some(b"x:1")] {
        assert_eq!(
            c.decode_input(InputKind::AreaSignals, bad, None)
                .map_err(|e| e.reason()),
            Err("invalid_value"),
            "{bad:?}"
        );
    }
    // Found before its silence began: refused.
    let Input::Area {
        signal: Some(mut s),
        key,
    } = member
    else {
        unreachable!()
    };
    s.at = s.silent_since - 1;
    let bytes = c
        .encode_input(&Input::Area {
            key: key.clone(),
            signal: Some(s),
        })
        .unwrap()
        .unwrap();
    assert_eq!(
        c.decode_input(InputKind::AreaSignals, Some(&key.to_bytes()), Some(&bytes))
            .map_err(|e| e.reason()),
        Err("invalid_value")
    );
}
