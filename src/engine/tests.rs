use std::path::Path;
use std::sync::Arc;

use super::*;

const T0: Millis = 1_795_000_000_000;

fn engine() -> Engine {
    let rules = RuleSet::load(Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/rules"))).unwrap();
    Engine::new(Arc::new(rules))
}

fn profile(id: &str, contacts: usize) -> Input {
    Input::Household {
        household_id: id.into(),
        profile: Some(HouseholdProfile {
            household_id: id.into(),
            district: "420102".into(),
            street: "420102001".into(),
            community: "420102001003".into(),
            cohorts: vec![Cohort::LIVING_ALONE],
            ability_level: 2,
            age: 84,
            emergency_contacts: (0..contacts)
                .map(|i| Contact {
                    name: format!("张{i}"),
                    relation: "daughter".into(),
                    phone: format!("1380000000{i}"),
                })
                .collect(),
            // No quiet hours: these tests are about time, not sleep (see the test below).
            quiet_hours: Some(QuietHours {
                start_minute: 0,
                end_minute: 0,
            }),
            away_until: None,
            timezone: "Asia/Shanghai".into(),
            last_visit_at: None,
        }),
    }
}

/// The profile `profile(id, 1)` registers, to change before registering it.
fn profile_of(id: &str) -> HouseholdProfile {
    match profile(id, 1) {
        Input::Household {
            profile: Some(p), ..
        } => p,
        _ => unreachable!(),
    }
}

fn bed_at(hh: &str, id: &str, t: Millis, occupied: bool) -> Input {
    sensor(hh, id, DeviceKind::BED_SENSOR, t, Reading::Bed { occupied })
}

fn door_at(hh: &str, id: &str, t: Millis, open: bool) -> Input {
    sensor(hh, id, DeviceKind::DOOR_CONTACT, t, Reading::Door { open })
}

fn moving_at(hh: &str, id: &str, t: Millis) -> Input {
    let moving = Reading::Motion { detected: true };
    sensor(hh, id, DeviceKind::MOTION_PIR, t, moving)
}

/// A sensor event processed at its own time, the clock ticked to it first.
fn at_its_time(e: &mut Engine, input: &Input, out: &mut Vec<Output>) {
    let Input::Sensor(s) = input else {
        unreachable!("sensor events only")
    };
    e.tick(0, s.event_time, out);
    e.process(input, on(0, s.event_time), out).unwrap();
}

fn sensor(hh: &str, id: &str, kind: DeviceKind, t: Millis, reading: Reading) -> Input {
    Input::Sensor(SensorEvent {
        event_id: id.into(),
        household_id: hh.into(),
        device_id: format!("{hh}-{kind}"),
        device_kind: kind,
        event_time: t,
        reading,
        gateway_id: None,
    })
}

fn press(hh: &str, id: &str, t: Millis) -> Input {
    sensor(
        hh,
        id,
        DeviceKind::EMERGENCY_BUTTON,
        t,
        Reading::Alarm { active: true },
    )
}

fn m(arrival: Millis) -> Meta {
    Meta {
        partition: 0,
        arrival,
    }
}

fn run(e: &mut Engine, input: &Input, now: Millis) -> Vec<Output> {
    let mut out = Vec::new();
    e.process(input, m(now), &mut out).unwrap();
    out
}

/// The tasks that call someone: each incident's own action (the ladder's extra
/// NOTIFY_CONTACT task at tier 0 is counted separately where it matters).
fn tasks(out: &[Output]) -> Vec<&EscalationTask> {
    out.iter()
        .filter_map(|o| match o {
            Output::Task(t) if t.action != Action::NOTIFY_CONTACT => Some(t),
            _ => None,
        })
        .collect()
}

#[test]
fn button_press_raises_critical_task_notification_and_opened_event() {
    let mut e = engine();
    run(&mut e, &profile("hh-1", 2), T0);
    let out = run(&mut e, &press("hh-1", "ev-1", T0 + 1_000), T0 + 1_200);
    // Tier 0 of a CRITICAL incident: the call and the ladder's NOTIFY_CONTACT, the contacts'
    // notification, and an OPENED event for each task.
    assert_eq!(out.len(), 5, "{out:#?}");
    let incident = ids::incident_id("hh-1", "alarm.emergency_button", "ev-1");
    let Output::Task(notify) = &out[1] else {
        panic!("{out:?}")
    };
    assert_eq!(
        (notify.action, notify.tier, notify.task_id.clone()),
        (
            Action::NOTIFY_CONTACT,
            0,
            ids::task_id(&incident, 0, Action::NOTIFY_CONTACT)
        )
    );
    assert!(matches!(
        &out[4],
        Output::TaskEvent(TaskEvent {
            kind: TaskEventKind::OPENED,
            ..
        })
    ));
    let task_id = ids::task_id(&incident, 0, Action::CALL_ELDER);
    let Output::Task(t) = &out[0] else {
        panic!("{out:?}")
    };
    assert_eq!(
        t,
        &EscalationTask {
            task_id: task_id.clone(),
            incident_id: Some(incident),
            household_id: "hh-1".into(),
            rule_id: "alarm.emergency_button".into(),
            severity: Severity::CRITICAL,
            action: Action::CALL_ELDER,
            tier: 0,
            district: "420102".into(),
            street: "420102001".into(),
            community: "420102001003".into(),
            reason: "Emergency call button pressed / 紧急呼叫按钮被按下".into(),
            evidence: vec![Evidence {
                event_id: "ev-1".into(),
                event_time: T0 + 1_000,
                summary: "EMERGENCY_BUTTON hh-1-EMERGENCY_BUTTON alarm active".into(),
            }],
            incident_time: T0 + 1_000,
            emitted_at: T0 + 1_200,
            respond_by: T0 + 1_200 + 300_000,
            repeat_count: None,
            assigned_to: None,
        }
    );
    let Output::Notification(n) = &out[2] else {
        panic!("{out:?}")
    };
    assert_eq!(n.task_id, task_id);
    assert_eq!(n.notification_id, ids::notification_id(&task_id));
    assert_eq!(n.contacts.len(), 2);
    assert_eq!(n.contacts[1].phone, "13800000001");
    assert!(
        !n.message.contains("1380"),
        "no phone number in the message"
    );
    let Output::TaskEvent(ev) = &out[3] else {
        panic!("{out:?}")
    };
    assert_eq!(
        (ev.kind, ev.task_id.as_str(), ev.at),
        (TaskEventKind::OPENED, task_id.as_str(), T0 + 1_200)
    );
    assert_eq!(e.open_incidents(), 1);
}

#[test]
fn every_instant_alarm_kind_fires_and_other_readings_do_not() {
    let mut e = engine();
    run(&mut e, &profile("hh-1", 1), T0);
    let expect = [
        (DeviceKind::EMERGENCY_BUTTON, "alarm.emergency_button"),
        (DeviceKind::WEARABLE, "alarm.wearable_sos"),
        (DeviceKind::FALL_DETECTOR, "alarm.fall"),
        (DeviceKind::SMOKE_ALARM, "alarm.smoke"),
        (DeviceKind::GAS_ALARM, "alarm.gas"),
        (DeviceKind::WATER_LEAK, "alarm.water_leak"),
    ];
    for (i, (kind, rule)) in expect.iter().enumerate() {
        let out = run(
            &mut e,
            &sensor(
                "hh-1",
                &format!("a{i}"),
                *kind,
                T0,
                Reading::Alarm { active: true },
            ),
            T0,
        );
        let t = tasks(&out);
        assert_eq!(t.len(), 1, "{kind}");
        assert_eq!(
            (t[0].rule_id.as_str(), t[0].severity),
            (*rule, Severity::CRITICAL)
        );
    }
    // An alarm clearing, motion and vitals raise nothing here.
    for (i, input) in [
        sensor(
            "hh-1",
            "c1",
            DeviceKind::SMOKE_ALARM,
            T0,
            Reading::Alarm { active: false },
        ),
        sensor(
            "hh-1",
            "c2",
            DeviceKind::MOTION_PIR,
            T0,
            Reading::Motion { detected: true },
        ),
        sensor(
            "hh-1",
            "c3",
            DeviceKind::WEARABLE,
            T0,
            Reading::Vitals {
                heart_rate_bpm: Some(70),
                respiration_rpm: None,
                worn: true,
            },
        ),
    ]
    .iter()
    .enumerate()
    {
        assert!(run(&mut e, input, T0).is_empty(), "input {i}");
    }
}

#[test]
fn a_repeat_while_open_is_appended_and_sent_again_and_fires_anew_after_resolution() {
    let mut e = engine();
    run(&mut e, &profile("hh-1", 1), T0);
    let first = run(&mut e, &press("hh-1", "p1", T0), T0);
    let task_id = tasks(&first)[0].task_id.clone();
    // Pressed again a minute later: appended to the incident with the count, and the same
    // task sent to the desk again.
    let out = run(&mut e, &press("hh-1", "p2", T0 + 60_000), T0 + 60_000);
    let [Output::TaskEvent(ev), Output::Task(t)] = &out[..] else {
        panic!("{out:?}")
    };
    assert_eq!(
        (ev.kind, ev.task_id.as_str(), ev.repeat_count),
        (TaskEventKind::REPEATED, task_id.as_str(), Some(1))
    );
    assert_eq!(
        (t.task_id.as_str(), t.tier, t.repeat_count, t.emitted_at),
        (task_id.as_str(), 0, Some(1), T0 + 60_000)
    );
    assert_eq!(t.evidence[0].event_id, "p2");
    // Again a minute on: appended, but the next re-send waits twice as long (a stuck device
    // must not flood the desk).
    let out = run(&mut e, &press("hh-1", "p3", T0 + 120_000), T0 + 120_000);
    assert!(
        matches!(
            &out[..],
            [Output::TaskEvent(TaskEvent {
                kind: TaskEventKind::REPEATED,
                repeat_count: Some(2),
                ..
            })]
        ),
        "{out:?}"
    );
    assert_eq!(e.stats().suppressed_repeats, 2);
    // A different alarm in the same home is a different incident.
    assert_eq!(
        tasks(&run(
            &mut e,
            &sensor(
                "hh-1",
                "s1",
                DeviceKind::SMOKE_ALARM,
                T0,
                Reading::Alarm { active: true }
            ),
            T0
        ))
        .len(),
        1
    );

    let ack = Input::TaskUpdate(TaskUpdate {
        task_id: task_id.clone(),
        household_id: "hh-1".into(),
        status: TaskUpdateStatus::ACKNOWLEDGED,
        by: "desk-7".into(),
        at: T0 + 130_000,
        note: None,
        outcome: None,
        snooze_until: None,
        assign_to: None,
    });
    let out = run(&mut e, &ack, T0 + 130_000);
    assert!(matches!(
        &out[..],
        [Output::TaskEvent(TaskEvent {
            kind: TaskEventKind::ACKNOWLEDGED,
            ..
        })]
    ));
    let out = run(&mut e, &press("hh-1", "p4", T0 + 140_000), T0 + 140_000);
    assert!(
        matches!(
            &out[..],
            [Output::TaskEvent(TaskEvent {
                kind: TaskEventKind::REPEATED,
                repeat_count: Some(3),
                ..
            })]
        ),
        "acknowledged is still open: {out:?}"
    );
    // Two minutes after the last re-send, the desk is told again.
    let out = run(&mut e, &press("hh-1", "p4b", T0 + 180_000), T0 + 180_000);
    assert_eq!(
        tasks(&out)
            .iter()
            .map(|t| t.repeat_count)
            .collect::<Vec<_>>(),
        [Some(4)]
    );

    let resolve = Input::TaskUpdate(TaskUpdate {
        status: TaskUpdateStatus::RESOLVED,
        note: Some("家属已到场 phone 13800000000".into()),
        ..match ack {
            Input::TaskUpdate(u) => u,
            _ => unreachable!(),
        }
    });
    let out = run(&mut e, &resolve, T0 + 200_000);
    let Output::TaskEvent(ev) = &out[0] else {
        panic!()
    };
    assert_eq!(
        (ev.kind, ev.by.as_deref()),
        (TaskEventKind::RESOLVED, Some("desk-7"))
    );
    assert!(
        !ev.reason.contains("1380"),
        "the desk's free text is not copied"
    );
    // The contacts told of the alarm are told it was resolved; not the desk's note.
    let told: Vec<&ContactNotification> = out
        .iter()
        .filter_map(|o| match o {
            Output::Notification(n) => Some(n),
            _ => None,
        })
        .collect();
    assert_eq!(told.len(), 1, "{out:?}");
    assert_eq!(
        (told[0].task_id.as_str(), told[0].notification_id.clone()),
        (task_id.as_str(), ids::resolution_notification_id(&task_id))
    );
    assert!(told[0].message.contains("Resolved by the care centre"));
    assert!(!told[0].message.contains("1380") && !told[0].message.contains("家属已到场"));
    assert_eq!(told[0].contacts.len(), 1);
    let again = run(&mut e, &press("hh-1", "p5", T0 + 300_000), T0 + 300_000);
    let t = tasks(&again);
    assert_eq!(t.len(), 1);
    assert_ne!(t[0].task_id, task_id, "a new incident gets a new id");
}

#[test]
fn contacts_told_of_an_incident_are_told_when_its_condition_clears_or_it_was_a_false_alarm() {
    let mut e = engine();
    run(&mut e, &profile("hh-1", 2), T0);
    moved_at(&mut e, &["hh-1"], T0, &mut Vec::new());
    // No movement (HIGH, told at once), then movement again: resolved after `clear_for`.
    let mut out = Vec::new();
    e.tick(0, T0 + 11 * HOUR, &mut out);
    assert_eq!(no_movement_found(&out).len(), 1);
    let first = tasks(&out)[0].task_id.clone();
    let again = sensor(
        "hh-1",
        "m-again",
        DeviceKind::MOTION_PIR,
        T0 + 11 * HOUR,
        Reading::Motion { detected: true },
    );
    e.process(&again, on(0, T0 + 11 * HOUR), &mut out).unwrap();
    out.clear();
    e.tick(0, T0 + 12 * HOUR, &mut out);
    let notices: Vec<&ContactNotification> = out
        .iter()
        .filter_map(|o| match o {
            Output::Notification(n) => Some(n),
            _ => None,
        })
        .collect();
    assert_eq!(notices.len(), 1, "{out:?}");
    assert_eq!(
        notices[0].notification_id,
        ids::resolution_notification_id(&first)
    );
    assert!(notices[0].message.contains("the condition has cleared"));
    // A button pressed, then found a false alarm by the desk: told so.
    let out = run(&mut e, &press("hh-1", "p1", T0 + 13 * HOUR), T0 + 13 * HOUR);
    let alarm = tasks(&out)[0].task_id.clone();
    let update = Input::TaskUpdate(TaskUpdate {
        task_id: alarm.clone(),
        household_id: "hh-1".into(),
        status: TaskUpdateStatus::FALSE_ALARM,
        by: "desk-7".into(),
        at: T0 + 13 * HOUR + 60_000,
        note: None,
        outcome: None,
        snooze_until: None,
        assign_to: None,
    });
    let out = run(&mut e, &update, T0 + 13 * HOUR + 60_000);
    assert!(out.iter().any(|o| matches!(o, Output::Notification(n)
        if n.notification_id == ids::resolution_notification_id(&alarm)
            && n.message.contains("a false alarm"))));
}

#[test]
fn stale_open_incident_is_superseded_by_a_new_alarm() {
    let mut e = engine();
    run(&mut e, &profile("hh-1", 0), T0);
    run(&mut e, &press("hh-1", "p1", T0), T0);
    let seven_hours = 7 * 3_600_000;
    let out = run(
        &mut e,
        &press("hh-1", "p2", T0 + seven_hours),
        T0 + seven_hours,
    );
    assert!(matches!(
        &out[0],
        Output::TaskEvent(TaskEvent {
            kind: TaskEventKind::AUTO_RESOLVED,
            ..
        })
    ));
    assert_eq!(tasks(&out).len(), 1);
    assert_eq!(e.stats().stale_incidents, 1);
    assert_eq!(e.open_incidents(), 1);
    // No contacts registered: no notification.
    assert!(!out.iter().any(|o| matches!(o, Output::Notification(_))));
}

#[test]
fn duplicate_event_ids_are_dropped() {
    let mut e = engine();
    run(&mut e, &profile("hh-1", 1), T0);
    let out = run(&mut e, &press("hh-1", "same", T0), T0);
    let task_id = tasks(&out)[0].task_id.clone();
    e.process(
        &Input::TaskUpdate(TaskUpdate {
            task_id,
            household_id: "hh-1".into(),
            status: TaskUpdateStatus::FALSE_ALARM,
            by: "desk".into(),
            at: T0,
            note: None,
            outcome: None,
            snooze_until: None,
            assign_to: None,
        }),
        m(T0),
        &mut Vec::new(),
    )
    .unwrap();
    // The same device event delivered again must not reopen a closed incident.
    assert!(run(&mut e, &press("hh-1", "same", T0), T0 + 5_000).is_empty());
    assert_eq!(e.stats().duplicate_events, 1);
}

#[test]
fn unknown_household_alarm_still_fires_other_events_are_rejected() {
    let mut e = engine();
    let out = run(&mut e, &press("hh-x", "p1", T0), T0);
    let t = tasks(&out);
    assert_eq!(t.len(), 1);
    assert!(t[0].reason.contains("not in the registry"));
    assert_eq!(t[0].district, "");
    assert_eq!(e.stats().unknown_household_alarms, 1);
    let motion = sensor(
        "hh-y",
        "m1",
        DeviceKind::MOTION_PIR,
        T0,
        Reading::Motion { detected: true },
    );
    assert_eq!(
        e.process(&motion, m(T0), &mut Vec::new()),
        Err(EngineError::UnknownHousehold)
    );
}

#[test]
fn skewed_device_clock_uses_arrival_time() {
    let mut e = engine();
    run(&mut e, &profile("hh-1", 1), T0);
    // The watch thinks it is 1970.
    let out = run(&mut e, &press("hh-1", "p1", 0), T0);
    let t = tasks(&out)[0];
    assert_eq!(t.incident_time, T0);
    assert_eq!(
        t.evidence[0].event_time, 0,
        "the device's own time is kept as evidence"
    );
    assert!(t.evidence[0].summary.contains("device clock off"));
    assert_eq!(e.stats().clock_skew_clamped, 1);
    // Within the allowed skew the device time stands.
    let out = run(
        &mut e,
        &sensor(
            "hh-1",
            "g1",
            DeviceKind::GAS_ALARM,
            T0 + 60_000,
            Reading::Alarm { active: true },
        ),
        T0,
    );
    assert_eq!(tasks(&out)[0].incident_time, T0 + 60_000);
    // Late (a gateway's backlog, a day old) keeps the device time.
    let out = run(
        &mut e,
        &sensor(
            "hh-1",
            "f1",
            DeviceKind::FALL_DETECTOR,
            T0 - 86_400_000,
            Reading::Alarm { active: true },
        ),
        T0,
    );
    assert_eq!(tasks(&out)[0].incident_time, T0 - 86_400_000);
    // An hour ahead is a fast clock.
    let out = run(
        &mut e,
        &sensor(
            "hh-1",
            "s1",
            DeviceKind::SMOKE_ALARM,
            T0 + 3_600_000,
            Reading::Alarm { active: true },
        ),
        T0,
    );
    assert_eq!(tasks(&out)[0].incident_time, T0);
    assert_eq!(e.stats().clock_skew_clamped, 2);
}

#[test]
fn task_updates_for_unknown_tasks_are_rejected() {
    let mut e = engine();
    run(&mut e, &profile("hh-1", 1), T0);
    let out = run(&mut e, &press("hh-1", "p1", T0), T0);
    let real = tasks(&out)[0].task_id.clone();
    let upd = |task: &str, hh: &str| {
        Input::TaskUpdate(TaskUpdate {
            task_id: task.into(),
            household_id: hh.into(),
            status: TaskUpdateStatus::RESOLVED,
            by: "desk".into(),
            at: T0,
            note: None,
            outcome: None,
            snooze_until: None,
            assign_to: None,
        })
    };
    assert_eq!(
        e.process(&upd("nope", "hh-1"), m(T0), &mut Vec::new()),
        Err(EngineError::UnknownTask)
    );
    assert_eq!(
        e.process(&upd(&real, "hh-2"), m(T0), &mut Vec::new()),
        Err(EngineError::UnknownTask)
    );
    assert!(e
        .process(&upd(&real, "hh-1"), m(T0), &mut Vec::new())
        .is_ok());
    // Once closed, a further update is kept in the record, not dead-lettered.
    let mut out = Vec::new();
    assert_eq!(e.process(&upd(&real, "hh-1"), m(T0), &mut out), Ok(()));
    assert!(
        matches!(&out[..], [Output::TaskEvent(TaskEvent { kind: TaskEventKind::RESOLVED, reason, .. })] if reason.contains("after the incident had closed"))
    );
    assert_eq!(
        e.process(&upd(&real, "hh-2"), m(T0), &mut Vec::new()),
        Err(EngineError::UnknownTask),
        "not that household's"
    );
}

#[test]
fn registry_removal_drops_state_but_open_tasks_stay_answerable() {
    let mut e = engine();
    run(&mut e, &profile("hh-1", 1), T0);
    run(&mut e, &profile("hh-2", 1), T0);
    let out = run(&mut e, &press("hh-1", "p1", T0), T0);
    let task_id = tasks(&out)[0].task_id.clone();
    for hh in ["hh-1", "hh-2"] {
        run(
            &mut e,
            &Input::Household {
                household_id: hh.into(),
                profile: None,
            },
            T0,
        );
    }
    assert_eq!(
        e.household_count(),
        1,
        "hh-2 gone, hh-1 kept for its open task"
    );
    let heartbeat = Input::Heartbeat(DeviceHeartbeat {
        household_id: "hh-1".into(),
        device_id: "d".into(),
        device_kind: DeviceKind::MOTION_PIR,
        event_time: T0,
        battery_pct: Some(80),
        mains_power: None,
    });
    assert_eq!(
        e.process(&heartbeat, m(T0), &mut Vec::new()),
        Err(EngineError::UnknownHousehold)
    );
    let resolve = Input::TaskUpdate(TaskUpdate {
        task_id,
        household_id: "hh-1".into(),
        status: TaskUpdateStatus::RESOLVED,
        by: "desk".into(),
        at: T0,
        note: None,
        outcome: None,
        snooze_until: None,
        assign_to: None,
    });
    // Resolving closes both of the incident's tasks (the call and NOTIFY_CONTACT).
    assert_eq!(run(&mut e, &resolve, T0).len(), 2);
    assert_eq!(e.household_count(), 0);
}

#[test]
fn same_input_gives_same_outputs() {
    let inputs = [
        profile("hh-1", 1),
        press("hh-1", "p1", T0),
        sensor(
            "hh-1",
            "f1",
            DeviceKind::FALL_DETECTOR,
            T0 + 5,
            Reading::Alarm { active: true },
        ),
        press("hh-2", "q1", T0 + 9),
    ];
    let run_all = || {
        let mut e = engine();
        let mut out = Vec::new();
        for (i, input) in inputs.iter().enumerate() {
            e.process(input, m(T0 + i as i64), &mut out).unwrap();
        }
        out
    };
    let a = run_all();
    assert_eq!(tasks(&a).len(), 3);
    assert_eq!(a, run_all());
}

// ---- event time ----

const HOUR: Millis = 3_600_000;

fn on(partition: i32, arrival: Millis) -> Meta {
    Meta { partition, arrival }
}

fn heartbeat(hh: &str, t: Millis) -> Input {
    Input::Heartbeat(DeviceHeartbeat {
        household_id: hh.into(),
        device_id: format!("{hh}-pir"),
        device_kind: DeviceKind::MOTION_PIR,
        event_time: t,
        battery_pct: Some(90),
        mains_power: None,
    })
}

/// Registers `p` at T0 and hears from its home at `t` (a heartbeat), so its rules run.
fn register_seen(e: &mut Engine, p: HouseholdProfile, t: Millis, out: &mut Vec<Output>) {
    let hh = p.household_id.clone();
    let input = Input::Household {
        household_id: hh.clone(),
        profile: Some(p),
    };
    e.process(&input, on(0, T0), out).unwrap();
    e.process(&heartbeat(&hh, t), on(0, t), out).unwrap();
}

/// Incidents opened: one entry per incident, however many tier-0 tasks it has.
fn opened(out: &[Output]) -> Vec<(String, String, Millis)> {
    let mut seen = std::collections::HashSet::new();
    out.iter()
        .filter_map(|o| match o {
            Output::TaskEvent(e)
                if e.kind == TaskEventKind::OPENED && seen.insert(e.incident_id.clone()) =>
            {
                Some((e.household_id.clone(), e.rule_id.clone(), e.at))
            }
            _ => None,
        })
        .collect()
}

#[test]
fn a_quiet_partition_neither_stalls_nor_fires_early() {
    let mut e = engine();
    let mut out = Vec::new();
    for hh in ["busy", "quiet"] {
        e.process(&profile(hh, 1), on(0, T0), &mut out).unwrap();
    }
    let motion = |hh: &str, id: &str, t| {
        sensor(
            hh,
            id,
            DeviceKind::MOTION_PIR,
            t,
            Reading::Motion { detected: true },
        )
    };
    // "quiet" moves once at T0 on partition 1, then its partition hears nothing.
    e.process(&motion("quiet", "q0", T0), on(1, T0), &mut out)
        .unwrap();
    // Partition 0 runs a whole day ahead: its time must not fire partition 1's timers.
    for i in 0..48 {
        let t = T0 + i * HOUR / 2;
        e.process(&motion("busy", &format!("b{i}"), t), on(0, t), &mut out)
            .unwrap();
    }
    let quiet = |out: &[Output]| {
        opened(out)
            .into_iter()
            .filter(|(h, _, _)| h == "quiet")
            .collect::<Vec<_>>()
    };
    assert!(quiet(&out).is_empty(), "{out:#?}");
    assert_eq!(e.watermark(1), Some(T0 - 30_000));
    // The clock moves partition 1 on: just before the deadline nothing, at it the task
    // (living alone, 84: the 10 h cohort threshold).
    e.tick(1, T0 + 10 * HOUR - 1, &mut out);
    assert!(quiet(&out).is_empty());
    e.tick(1, T0 + 10 * HOUR, &mut out);
    assert_eq!(
        quiet(&out),
        vec![(
            "quiet".to_string(),
            "no_movement".to_string(),
            T0 + 10 * HOUR
        )]
    );
    // Ticks never move time back.
    e.tick(1, T0, &mut out);
    assert_eq!(e.watermark(1), Some(T0 + 10 * HOUR));
}

#[test]
fn a_fast_device_clock_does_not_drag_the_watermark() {
    let mut e = engine();
    let mut out = Vec::new();
    e.process(&profile("hh-1", 1), on(0, T0), &mut out).unwrap();
    // Nine minutes ahead (inside max_clock_skew, so its time is kept as event time)...
    e.process(
        &sensor(
            "hh-1",
            "x",
            DeviceKind::MOTION_PIR,
            T0 + 9 * 60_000,
            Reading::Motion { detected: true },
        ),
        on(0, T0),
        &mut out,
    )
    .unwrap();
    // ...but time only moves as far as the record's arrival allows.
    assert_eq!(e.watermark(0), Some(T0 - 30_000));
    // Far ahead: placed at arrival and counted.
    e.process(
        &sensor(
            "hh-1",
            "y",
            DeviceKind::MOTION_PIR,
            T0 + 5 * HOUR,
            Reading::Motion { detected: true },
        ),
        on(0, T0 + 1_000),
        &mut out,
    )
    .unwrap();
    assert_eq!(e.watermark(0), Some(T0 + 1_000 - 30_000));
    assert_eq!(e.stats().clock_skew_clamped, 1);
}

#[test]
fn late_events_are_counted_and_used_where_order_does_not_matter() {
    let mut e = engine();
    let mut out = Vec::new();
    e.process(&profile("hh-1", 1), on(0, T0), &mut out).unwrap();
    e.process(&heartbeat("hh-1", T0 + HOUR), on(0, T0 + HOUR), &mut out)
        .unwrap();
    // Motion from 50 minutes ago: late, but activity is a maximum, so it still counts.
    e.process(
        &sensor(
            "hh-1",
            "m",
            DeviceKind::MOTION_PIR,
            T0 + 10 * 60_000,
            Reading::Motion { detected: true },
        ),
        on(0, T0 + HOUR),
        &mut out,
    )
    .unwrap();
    // Vitals from then: late, and the household's first reading: used (the rule keeps the
    // household's own order, not the partition's). Then, arriving after it, one from before
    // it: out of order for the household: dropped. (Late records arriving at the same moment
    // would be taken in their own time order.)
    for (id, minute, arrival) in [("v", 10, T0 + HOUR), ("v0", 9, T0 + HOUR + 1)] {
        let reading = Reading::Vitals {
            heart_rate_bpm: Some(150),
            respiration_rpm: None,
            worn: true,
        };
        let t = T0 + minute * 60_000;
        let v = sensor("hh-1", id, DeviceKind::WEARABLE, t, reading);
        e.process(&v, on(0, arrival), &mut out).unwrap();
    }
    // Seven hours late: past allowed_lateness, refused for the caller to dead-letter.
    let refused = e.process(
        &sensor(
            "hh-1",
            "old",
            DeviceKind::MOTION_PIR,
            T0 - 6 * HOUR,
            Reading::Motion { detected: true },
        ),
        on(0, T0 + HOUR),
        &mut out,
    );
    let watermark = e.watermark(0).unwrap();
    assert_eq!(
        refused,
        Err(EngineError::TooLate {
            late_by: watermark - (T0 - 6 * HOUR),
            watermark
        })
    );
    // Late events wait at their arrival until the watermark passes it.
    let s = e.stats();
    assert_eq!((s.late_events, s.late_dropped), (3, 1), "{s:?}");
    e.tick(0, T0 + HOUR + 1, &mut out);
    let s = e.stats();
    assert_eq!(
        (s.late_events, s.late_dropped, s.late_out_of_order),
        (3, 1, 1),
        "{s:?}"
    );
    // The late motion moved the no-movement deadline (10 h for this cohort) to 10 h after
    // T0 + 10 min, not after T0.
    let still = |out: &[Output]| {
        opened(out)
            .into_iter()
            .filter(|(_, r, _)| r == "no_movement")
            .collect::<Vec<_>>()
    };
    e.tick(0, T0 + 10 * HOUR + 5 * 60_000, &mut out);
    assert!(still(&out).is_empty(), "{:?}", opened(&out));
    e.tick(0, T0 + 10 * HOUR + 10 * 60_000, &mut out);
    assert_eq!(
        still(&out),
        vec![(
            "hh-1".to_string(),
            "no_movement".to_string(),
            T0 + 10 * HOUR + 10 * 60_000
        )]
    );
}

#[test]
fn a_wearable_whose_clock_runs_slow_still_raises_abnormal_vitals() {
    // hh-slow's watch runs two minutes slow: every reading arrives 90 s behind the
    // watermark that hh-fast's sensors move, yet each comes after the last.
    let mut e = engine();
    let mut out = Vec::new();
    for hh in ["hh-fast", "hh-slow"] {
        e.process(&profile(hh, 1), on(0, T0), &mut out).unwrap();
    }
    let vitals = |id: String, t: Millis, hr: i32| {
        sensor(
            "hh-slow",
            &id,
            DeviceKind::WEARABLE,
            t,
            Reading::Vitals {
                heart_rate_bpm: Some(hr),
                respiration_rpm: None,
                worn: true,
            },
        )
    };
    for minute in 1..=20 {
        let now = T0 + minute * 60_000;
        let motion = Reading::Motion { detected: true };
        let pir = sensor(
            "hh-fast",
            &format!("m{minute}"),
            DeviceKind::MOTION_PIR,
            now,
            motion,
        );
        e.process(&pir, on(0, now), &mut out).unwrap();
        e.process(
            &vitals(format!("v{minute}"), now - 2 * 60_000, 150),
            on(0, now),
            &mut out,
        )
        .unwrap();
    }
    let s = e.stats();
    assert!(
        s.late_events >= 18,
        "the readings were behind the watermark: {s:?}"
    );
    assert_eq!(s.late_dropped, 0, "{s:?}");
    let found: Vec<_> = opened(&out)
        .into_iter()
        .filter(|(hh, r, _)| hh == "hh-slow" && r == "abnormal_vitals")
        .collect();
    // Out of range from minute 1 (device time T0 - 1 min), sustained 10 min: raised with the
    // reading of device time T0 + 9 min.
    assert_eq!(
        found,
        [("hh-slow".into(), "abnormal_vitals".into(), T0 + 9 * 60_000)],
        "{:?}",
        opened(&out)
    );

    // A reading from before the newest one applied is out of order for the household: it
    // neither counts towards a run nor resolves one.
    let now = T0 + 21 * 60_000;
    e.process(&vitals("back".into(), T0, 70), on(0, now), &mut out)
        .unwrap();
    e.tick(0, now, &mut out);
    assert_eq!(e.stats().late_out_of_order, 1);
    assert!(
        !out.iter()
            .any(|o| matches!(o, Output::TaskEvent(t) if t.kind == TaskEventKind::RESOLVED)),
        "an out-of-order reading resolved the incident"
    );
}

/// A registry entry with the night's quiet hours, 22:00-06:30.
fn sleeping_nights(hh: &str) -> Input {
    let mut p = profile_of(hh);
    p.quiet_hours = Some(QuietHours {
        start_minute: 22 * 60,
        end_minute: 6 * 60 + 30,
    });
    Input::Household {
        household_id: hh.into(),
        profile: Some(p),
    }
}

#[test]
fn night_exits_from_slow_device_clocks_are_caught_and_a_backlog_hours_late_is_not_judged() {
    // Quiet hours 22:00-06:30; from midnight (2026-11-20, CST) hh-fast's motion sensor moves
    // the watermark; hh-slow's mattress and door contact run two minutes slow (every event
    // 90 s behind the watermark); hh-late's gateway flushes a backlog 35-45 minutes late.
    let midnight = 1_795_104_000_000;
    let mut e = engine();
    let mut out = Vec::new();
    e.process(&profile("hh-fast", 1), on(0, midnight), &mut out)
        .unwrap();
    for hh in ["hh-slow", "hh-late"] {
        e.process(&sleeping_nights(hh), on(0, midnight), &mut out)
            .unwrap();
    }
    let at = |minute: i64| midnight + minute * 60_000;
    let (bed, motion) = (bed_at, moving_at);
    let door = |hh: &str, id: &str, t: Millis| door_at(hh, id, t, true);
    for minute in 1..=60 {
        let now = at(minute);
        let mut arriving = vec![motion("hh-fast", &format!("f{minute}"), now)];
        match minute {
            // Out of bed at 00:03 by its clock, and not back.
            5 => arriving.push(bed("hh-slow", "s-out", now - 2 * 60_000, false)),
            // The front door at 00:08 by its clock, and no movement after it.
            10 => arriving.push(door("hh-slow", "s-door", now - 2 * 60_000)),
            // The backlog: out of bed at 00:05, back at 00:10, the door at 00:12, movement
            // indoors at 00:13: nothing to raise, and too late to judge anyway.
            50 => arriving.extend([
                bed("hh-late", "l-out", at(5), false),
                bed("hh-late", "l-in", at(10), true),
                door("hh-late", "l-door", at(12)),
                motion("hh-late", "l-m", at(13)),
            ]),
            _ => {}
        }
        for input in &arriving {
            e.process(input, on(0, now), &mut out).unwrap();
        }
    }
    let mut found: Vec<_> = opened(&out)
        .into_iter()
        .filter(|(hh, _, _)| hh != "hh-fast")
        .map(|(hh, rule, at)| (hh, rule, (at - midnight) / 60_000))
        .collect();
    found.sort();
    assert_eq!(
        found,
        [
            ("hh-slow".into(), "night_bed_exit".into(), 33),
            ("hh-slow".into(), "night_door".into(), 23),
        ],
        "raised at their deadlines by the devices' clocks"
    );
    let s = e.stats();
    assert_eq!(
        (s.late_out_of_order, s.late_dropped),
        (1, 0),
        "hh-late's exit, past its deadline: {s:?}"
    );
    assert!(s.late_events >= 6, "{s:?}");
}

/// A night of `homes` (quiet hours 22:00-06:30; those named `hh-severe…` severely
/// disabled) from `midnight`: each event at its own time, the clock ticked to it first, and
/// on to `until`; the night rules' incidents opened, by minutes after midnight.
fn a_night(
    midnight: Millis,
    homes: &[&str],
    events: &[Input],
    until: Millis,
) -> (Vec<(String, String, Millis)>, Vec<Output>) {
    let mut e = engine();
    let mut out = Vec::new();
    for hh in homes {
        let mut registered = sleeping_nights(hh);
        if let Input::Household {
            profile: Some(p), ..
        } = &mut registered
        {
            if hh.starts_with("hh-severe") {
                p.cohorts = vec![Cohort::SEVERE_DISABILITY];
            }
        }
        e.process(&registered, on(0, midnight), &mut out).unwrap();
    }
    for input in events {
        at_its_time(&mut e, input, &mut out);
    }
    e.tick(0, until, &mut out);
    let found = opened(&out)
        .into_iter()
        .filter(|(_, r, _)| r.starts_with("night_"))
        .map(|(hh, r, t)| (hh, r, (t - midnight) / 60_000))
        .collect();
    (found, out)
}

#[test]
fn getting_up_for_the_day_before_the_quiet_hours_end_is_not_a_night_exit() {
    // Quiet hours 22:00-06:30 (2026-11-20, CST). hh-early gets up at 06:10 and goes out at
    // 06:20: morning, not night. hh-night gets up at 05:50 and is not back by 06:20: night.
    // The next night hh-early is out of bed at 02:00 and not back: night again, though its
    // return to bed in the evening went unreported.
    let midnight = 1_795_104_000_000;
    let at = |h: i64, m: i64| midnight + h * HOUR + m * 60_000;
    let day = [
        bed_at("hh-night", "n-out", at(5, 50), false),
        bed_at("hh-early", "e-out", at(6, 10), false),
        door_at("hh-early", "door", at(6, 20), true),
        bed_at("hh-early", "e-out2", at(26, 0), false),
    ];
    let (found, _) = a_night(midnight, &["hh-early", "hh-night"], &day, at(27, 0));
    assert_eq!(
        found,
        [
            ("hh-night".into(), "night_bed_exit".into(), 6 * 60 + 20),
            ("hh-early".into(), "night_bed_exit".into(), 26 * 60 + 30),
        ]
    );
}

#[test]
fn up_before_the_quiet_hours_end_and_moving_about_is_getting_up_not_a_night_exit() {
    // Quiet hours 22:00-06:30 (2026-11-20, CST), `rising_within` 90 min: from 05:00 leaving
    // bed and moving about is getting up. hh-rise is up at 05:10 and moves about every four
    // minutes: nothing. hh-fell is up at 05:10, moves until 05:20, then nothing: raised half
    // an hour after its last movement. hh-wander is up at 02:00 and moves about all night:
    // raised half an hour after leaving bed, movement or not. hh-rise moves about all day,
    // is still up at 23:30 and then goes quiet: its morning's exit is long over (not raised
    // at midnight).
    let midnight = 1_795_104_000_000;
    let at = |h: i64, m: i64| midnight + h * HOUR + m * 60_000;
    let mut day = vec![
        (at(5, 10), "hh-rise", Reading::Bed { occupied: false }),
        (at(5, 10), "hh-fell", Reading::Bed { occupied: false }),
        (at(2, 0), "hh-wander", Reading::Bed { occupied: false }),
    ];
    let moving = Reading::Motion { detected: true };
    for m in (4..=280).step_by(4) {
        let t = at(2, m);
        if t > at(5, 10) {
            day.push((t, "hh-rise", moving.clone()));
        }
        if t > at(5, 10) && t <= at(5, 20) {
            day.push((t, "hh-fell", moving.clone()));
        }
        day.push((t, "hh-wander", moving.clone()));
    }
    for m in (6 * 60 + 44..=23 * 60 + 30).step_by(4) {
        day.push((at(0, m), "hh-rise", moving.clone()));
    }
    day.sort_by_key(|(t, hh, _)| (*t, *hh));
    let events: Vec<_> = day
        .into_iter()
        .enumerate()
        .map(|(n, (t, hh, reading))| {
            let kind = match reading {
                Reading::Bed { .. } => DeviceKind::BED_SENSOR,
                _ => DeviceKind::MOTION_PIR,
            };
            sensor(hh, &format!("e{n}"), kind, t, reading)
        })
        .collect();
    let homes = ["hh-rise", "hh-fell", "hh-wander"];
    let (found, out) = a_night(midnight, &homes, &events, at(25, 0));
    assert_eq!(
        found,
        [
            ("hh-wander".into(), "night_bed_exit".into(), 2 * 60 + 30),
            ("hh-fell".into(), "night_bed_exit".into(), 5 * 60 + 50),
        ]
    );
    let fell = tasks(&out)
        .into_iter()
        .find(|t| t.household_id == "hh-fell")
        .unwrap();
    assert_eq!(
        fell.evidence[0].summary,
        "out of bed at night for 40 min, no activity for 30 min"
    );
}

#[test]
fn going_out_for_a_morning_walk_once_up_is_not_a_night_door() {
    // Quiet hours 22:00-06:30, `rising_within` 90 min. hh-walk is up at 05:10, moves about,
    // and goes out of the door at 05:40: a morning walk. hh-gone's door opens at 05:20 with
    // nothing before it since bed, hh-night's at 03:00 after moving about, and hh-severe's
    // (who cannot go out alone: `rising_within` 1 min) at 05:40 after moving about from
    // 05:15: each raised 15 min after the door. hh-walk2's door opens at 05:50 and its contact
    // repeats "closed" at that same instant: a walk too.
    let midnight = 1_795_104_000_000;
    let at = |h: i64, m: i64| midnight + h * HOUR + m * 60_000;
    let (moving, contact) = (moving_at, door_at);
    let door = |hh: &str, id: &str, t: Millis| door_at(hh, id, t, true);
    let night = [
        moving("hh-night", "n1", at(2, 50)),
        door("hh-night", "n2", at(3, 0)),
        bed_at("hh-walk", "w0", at(5, 10), false),
        moving("hh-walk", "w1", at(5, 15)),
        door("hh-gone", "g1", at(5, 20)),
        moving("hh-severe", "s1", at(5, 15)),
        moving("hh-walk", "w2", at(5, 30)),
        door("hh-walk", "w3", at(5, 40)),
        door("hh-severe", "s2", at(5, 40)),
        moving("hh-walk2", "v1", at(5, 45)),
        door("hh-walk2", "v2", at(5, 50)),
        contact("hh-walk2", "v3", at(5, 50), false),
    ];
    let homes = ["hh-walk", "hh-gone", "hh-night", "hh-severe", "hh-walk2"];
    let (found, _) = a_night(midnight, &homes, &night, at(7, 0));
    assert_eq!(
        found,
        [
            ("hh-night".into(), "night_door".into(), 3 * 60 + 15),
            ("hh-gone".into(), "night_door".into(), 5 * 60 + 35),
            ("hh-severe".into(), "night_door".into(), 5 * 60 + 55),
        ]
    );
}

#[test]
fn leaving_at_night_to_stay_with_family_is_not_a_night_exit() {
    // At 22:52 the elder leaves bed and the door to stay with family; the registry's
    // `away_until` arrives just after the mattress and the door: neither night rule raises.
    let midnight = 1_795_104_000_000;
    let t = midnight + 22 * HOUR + 52 * 60_000;
    let mut e = engine();
    let mut out = Vec::new();
    e.process(&sleeping_nights("hh-1"), on(0, midnight), &mut out)
        .unwrap();
    let inputs = [
        bed_at("hh-1", "b0", t - HOUR, true),
        bed_at("hh-1", "b1", t, false),
        door_at("hh-1", "d1", t, true),
    ];
    for input in &inputs {
        at_its_time(&mut e, input, &mut out);
    }
    let mut away = sleeping_nights("hh-1");
    if let Input::Household {
        profile: Some(p), ..
    } = &mut away
    {
        p.away_until = Some(t + 2 * 24 * HOUR);
    }
    e.process(&away, on(0, t + 1_000), &mut out).unwrap();
    e.tick(0, t + 2 * HOUR, &mut out);
    assert_eq!(opened(&out), vec![], "away by the deadlines");
}

#[test]
fn the_water_silence_window_counts_waking_time_only() {
    // Dinner's water at 18:15 (2026-11-20, CST), then none: twelve waking hours are 3 h 45
    // min before the quiet hours (22:00-06:30) and 8 h 15 min after, so 14:45 the next day,
    // not 06:15 the next morning.
    let midnight = 1_795_104_000_000;
    let mut e = engine();
    let mut out = Vec::new();
    e.process(&sleeping_nights("hh-1"), on(0, midnight), &mut out)
        .unwrap();
    for quarter in 0..=(22 * 4) {
        let t = midnight + 18 * HOUR + quarter * 15 * 60_000;
        let cumulative = if quarter == 0 { 1.0 } else { 1.02 };
        let meter = sensor(
            "hh-1",
            &format!("w{quarter}"),
            DeviceKind::WATER_METER,
            t,
            Reading::Meter { cumulative },
        );
        e.process(&meter, on(0, t), &mut out).unwrap();
    }
    let found: Vec<_> = opened(&out)
        .into_iter()
        .filter(|(_, r, _)| r == "water_silence")
        .map(|(_, _, t)| (t - midnight) / 60_000)
        .collect();
    assert_eq!(found, [38 * 60 + 45]);
}

#[test]
fn state_per_household_stays_under_1_kib() {
    let mut e = engine();
    let mut out = Vec::new();
    let n = 20_000;
    for i in 0..n {
        let hh = format!("hh-{i:06}");
        e.process(&profile(&hh, 2), on(0, T0), &mut out).unwrap();
        // A busy steady state: heartbeats from two devices, motion, vitals, a meter, a bed.
        for (j, input) in [
            heartbeat(&hh, T0),
            Input::Heartbeat(DeviceHeartbeat {
                household_id: hh.clone(),
                device_id: format!("{hh}-bed"),
                device_kind: DeviceKind::BED_SENSOR,
                event_time: T0,
                battery_pct: None,
                mains_power: Some(true),
            }),
            sensor(
                &hh,
                &format!("{hh}-m"),
                DeviceKind::MOTION_PIR,
                T0,
                Reading::Motion { detected: true },
            ),
            sensor(
                &hh,
                &format!("{hh}-v"),
                DeviceKind::WEARABLE,
                T0,
                Reading::Vitals {
                    heart_rate_bpm: Some(70),
                    respiration_rpm: Some(15),
                    worn: true,
                },
            ),
            sensor(
                &hh,
                &format!("{hh}-w"),
                DeviceKind::WATER_METER,
                T0,
                Reading::Meter { cumulative: 3.0 },
            ),
            sensor(
                &hh,
                &format!("{hh}-b"),
                DeviceKind::BED_SENSOR,
                T0,
                Reading::Bed { occupied: true },
            ),
        ]
        .iter()
        .enumerate()
        {
            e.process(input, on(0, T0 + j as i64), &mut out).unwrap();
        }
    }
    e.tick(0, T0 + 60_000, &mut out);
    let per = e.state_bytes() / n;
    eprintln!("state: {per} bytes per household over {n} households");
    assert!(per < 1024, "{per} bytes per household");
    assert!(per > 200, "{per}: the estimate counts the state");
}

#[test]
fn households_that_left_are_forgotten_after_the_ttl() {
    let mut e = engine();
    let mut out = Vec::new();
    e.process(&profile("hh-1", 1), on(0, T0), &mut out).unwrap();
    e.process(&heartbeat("hh-1", T0), on(0, T0), &mut out)
        .unwrap();
    // An alarm from a household the registry never had keeps a slot while its task is open.
    e.process(&press("hh-x", "p", T0), on(0, T0), &mut out)
        .unwrap();
    e.process(
        &Input::Household {
            household_id: "hh-1".into(),
            profile: None,
        },
        on(0, T0),
        &mut out,
    )
    .unwrap();
    assert_eq!(
        e.household_count(),
        1,
        "hh-1 left the registry with nothing open"
    );
    e.sweep(T0 + 31 * 24 * HOUR);
    assert_eq!(e.household_count(), 1, "hh-x has an open task");
}

#[test]
fn reloaded_rules_take_effect_on_existing_households() {
    let mut e = engine();
    let mut out = Vec::new();
    e.process(&profile("hh-1", 1), on(0, T0), &mut out).unwrap();
    e.process(
        &sensor(
            "hh-1",
            "m",
            DeviceKind::MOTION_PIR,
            T0,
            Reading::Motion { detected: true },
        ),
        on(0, T0),
        &mut out,
    )
    .unwrap();
    let dir = std::env::temp_dir().join(format!("carestream-reload-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let shipped = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/rules"));
    for f in std::fs::read_dir(shipped).unwrap().flatten() {
        std::fs::copy(f.path(), dir.join(f.file_name())).unwrap();
    }
    let text = std::fs::read_to_string(dir.join("no_movement.toml"))
        .unwrap()
        .replace("after = \"10h\"", "after = \"2h\"");
    std::fs::write(dir.join("no_movement.toml"), text).unwrap();
    e.set_rules(Arc::new(RuleSet::load(&dir).unwrap()));
    e.tick(0, T0 + 2 * HOUR, &mut out);
    assert_eq!(
        opened(&out),
        vec![("hh-1".to_string(), "no_movement".to_string(), T0 + 2 * HOUR)]
    );
}

fn rules_with(edit: impl Fn(&Path)) -> Arc<RuleSet> {
    let dir = std::env::temp_dir().join(format!(
        "carestream-rules-with-{}-{:?}",
        std::process::id(),
        std::thread::current().id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    for f in std::fs::read_dir(Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/rules")))
        .unwrap()
        .flatten()
    {
        std::fs::copy(f.path(), dir.join(f.file_name())).unwrap();
    }
    edit(&dir);
    Arc::new(RuleSet::load(&dir).unwrap())
}

#[test]
fn maintenance_windows_hold_the_windowed_rules_but_never_alarms() {
    // hh-1 in a window from T0 to T0 + 20 h; district 420102 (hh-2's) for home silence only.
    let window = |start: &str, end: &str| {
        format!("start = \"{start}\"\nend = \"{end}\"\nreason = \"gateway replacement\"\n")
    };
    let rules = rules_with(|dir| {
        let text = format!(
            "[[window]]\nhousehold = \"hh-1\"\n{}\n[[window]]\nregion = \"420102\"\nrules = [\"home_silence\"]\n{}",
            window("2026-11-18T19:06:40+08:00", "2026-11-19T15:06:40+08:00"),
            window("2026-11-18T19:06:40+08:00", "2026-11-19T15:06:40+08:00"),
        );
        std::fs::write(dir.join("suppressions.toml"), text).unwrap();
    });
    assert_eq!(rules.suppressions[0].start, T0, "the window starts at T0");
    let mut e = Engine::new(rules);
    let mut out = Vec::new();
    for hh in ["hh-1", "hh-2"] {
        e.process(&profile(hh, 1), on(0, T0), &mut out).unwrap();
        e.process(&heartbeat(hh, T0), on(0, T0), &mut out).unwrap();
        e.process(
            &sensor(
                hh,
                &format!("{hh}-m"),
                DeviceKind::MOTION_PIR,
                T0,
                Reading::Motion { detected: true },
            ),
            on(0, T0),
            &mut out,
        )
        .unwrap();
    }
    // An alarm inside the window still raises its task.
    e.process(&press("hh-1", "p", T0 + HOUR), on(0, T0 + HOUR), &mut out)
        .unwrap();
    e.tick(0, T0 + 11 * HOUR, &mut out);
    let rules_opened: Vec<(String, String)> =
        opened(&out).into_iter().map(|(h, r, _)| (h, r)).collect();
    assert!(rules_opened.contains(&("hh-1".into(), "alarm.emergency_button".into())));
    assert!(
        !rules_opened
            .iter()
            .any(|(h, r)| h == "hh-1" && !r.starts_with("alarm.")),
        "{rules_opened:?}"
    );
    // hh-2's window covers home silence only: its no-movement (10 h, living alone 84) fires.
    assert!(
        !rules_opened.contains(&("hh-2".into(), "home_silence".into())),
        "{rules_opened:?}"
    );
    assert!(
        rules_opened.contains(&("hh-2".into(), "no_movement".into())),
        "{rules_opened:?}"
    );
    assert!(e.stats().suppressed_by_window >= 2);
    // The window ends at T0 + 20 h with hh-1 still not moving: reported then.
    e.tick(0, T0 + 21 * HOUR, &mut out);
    assert!(
        opened(&out).contains(&(
            "hh-1".to_string(),
            "no_movement".to_string(),
            T0 + 20 * HOUR
        )),
        "{:?}",
        opened(&out)
    );
}

#[test]
fn a_nights_sleep_is_not_no_movement() {
    // Severely disabled: 6 h. Asleep from 21:00 (2026-11-19, CST) with quiet hours 22:00-06:30.
    let evening = 1_795_104_000_000 - 3 * HOUR;
    let mut e = engine();
    let mut out = Vec::new();
    let mut p = profile_of("hh-1");
    p.cohorts = vec![Cohort::SEVERE_DISABILITY];
    p.quiet_hours = Some(QuietHours {
        start_minute: 22 * 60,
        end_minute: 6 * 60 + 30,
    });
    e.process(
        &Input::Household {
            household_id: "hh-1".into(),
            profile: Some(p),
        },
        on(0, evening),
        &mut out,
    )
    .unwrap();
    e.process(
        &sensor(
            "hh-1",
            "m",
            DeviceKind::MOTION_PIR,
            evening,
            Reading::Motion { detected: true },
        ),
        on(0, evening),
        &mut out,
    )
    .unwrap();
    // Through the night and the early morning: nothing (1 h before the night, 5 h after).
    e.tick(0, evening + 14 * HOUR + 29 * 60_000, &mut out);
    assert!(
        opened(&out).iter().all(|(_, r, _)| r != "no_movement"),
        "{:?}",
        opened(&out)
    );
    // 11:30 the next day: six waking hours without a movement.
    e.tick(0, evening + 14 * HOUR + 30 * 60_000, &mut out);
    assert!(
        opened(&out).contains(&(
            "hh-1".to_string(),
            "no_movement".to_string(),
            evening + 14 * HOUR + 30 * 60_000
        )),
        "{:?}",
        opened(&out)
    );
}

#[test]
fn the_night_pauses_no_movement_only_where_the_devices_say_it_is_sleep() {
    // Living alone, 84: 10 h. Quiet hours 22:00-06:30; `midnight` is 2026-11-20 00:00 CST.
    let midnight = 1_795_104_000_000;
    let at = |h: i64, m: i64| midnight + h * HOUR + m * 60_000;
    let mut e = engine();
    let mut out = Vec::new();
    let homes = [
        "in-bed",
        "late-riser",
        "up",
        "up-moving",
        "no-bed-day",
        "no-bed-evening",
    ];
    for hh in homes {
        let mut p = profile_of(hh);
        p.quiet_hours = Some(QuietHours {
            start_minute: 22 * 60,
            end_minute: 6 * 60 + 30,
        });
        let registry = Input::Household {
            household_id: hh.into(),
            profile: Some(p),
        };
        e.process(&registry, on(0, at(-12, 0)), &mut out).unwrap();
    }
    let mut events: Vec<(Millis, &str, DeviceKind, Reading)> = vec![
        (
            at(-3, 0),
            "in-bed",
            DeviceKind::MOTION_PIR,
            Reading::Motion { detected: true },
        ),
        (
            at(-3, 0),
            "late-riser",
            DeviceKind::MOTION_PIR,
            Reading::Motion { detected: true },
        ),
        (
            at(9, 15),
            "late-riser",
            DeviceKind::BED_SENSOR,
            Reading::Bed { occupied: false },
        ),
        (
            at(-6, 0),
            "up",
            DeviceKind::MOTION_PIR,
            Reading::Motion { detected: true },
        ),
        (
            at(-10, 0),
            "no-bed-day",
            DeviceKind::MOTION_PIR,
            Reading::Motion { detected: true },
        ),
        (
            at(-3, 0),
            "no-bed-evening",
            DeviceKind::MOTION_PIR,
            Reading::Motion { detected: true },
        ),
    ];
    // The mattresses repeat their state every 20 minutes; one elder is up and about till 2:00.
    for k in 0..(14 * 3) {
        let t = at(-2, 0) + k * 20 * 60_000;
        for (hh, occupied) in [("in-bed", true), ("up", false), ("up-moving", false)] {
            events.push((t, hh, DeviceKind::BED_SENSOR, Reading::Bed { occupied }));
        }
        if t < at(9, 15) {
            events.push((
                t,
                "late-riser",
                DeviceKind::BED_SENSOR,
                Reading::Bed { occupied: true },
            ));
        }
        if t <= at(2, 0) {
            events.push((
                t,
                "up-moving",
                DeviceKind::MOTION_PIR,
                Reading::Motion { detected: true },
            ));
        }
    }
    events.sort_by_key(|e| e.0);
    for (i, (t, hh, kind, reading)) in events.into_iter().enumerate() {
        let input = sensor(hh, &format!("e{i}"), kind, t, reading);
        e.process(&input, on(0, t), &mut out).unwrap();
    }
    e.tick(0, at(16, 0), &mut out);
    let mut found = no_movement_found(&out);
    found.sort_by_key(|f| f.1);
    assert_eq!(
        found,
        vec![
            // No mattress, last seen at 14:00: the night is no reason to wait for morning.
            ("no-bed-day".to_string(), at(0, 0)),
            // The mattress says not in bed: three hours into the night, still for an hour.
            ("up".to_string(), at(1, 0)),
            // Up and about till 2:00, then not in bed and still for an hour.
            ("up-moving".to_string(), at(3, 0)),
            // In bed since before 21:00, not up three hours after the quiet hours ended.
            ("in-bed".to_string(), at(9, 30)),
            // No mattress, last seen at 21:00 as if going to bed: one waking hour before the
            // night, nine after it.
            ("no-bed-evening".to_string(), at(15, 30)),
        ]
    );
    let summary = |hh: &str| {
        out.iter()
            .find_map(|o| match o {
                Output::Task(t) if t.household_id == hh && t.rule_id == "no_movement" => {
                    Some(t.evidence[0].summary.clone())
                }
                _ => None,
            })
            .unwrap()
    };
    assert!(
        summary("in-bed").starts_with("still in bed 3 h after the quiet hours ended"),
        "{}",
        summary("in-bed")
    );
    assert!(
        summary("up").starts_with("not in bed 3 h into the quiet hours"),
        "{}",
        summary("up")
    );
    assert!(
        summary("no-bed-day").starts_with("no activity for 10 h"),
        "{}",
        summary("no-bed-day")
    );
}

#[test]
fn only_a_registered_device_reporting_after_the_silence_ends_it() {
    let mut e = engine();
    let mut out = Vec::new();
    e.process(&profile("hh-1", 1), on(0, T0), &mut out).unwrap();
    e.process(&heartbeat("hh-1", T0), on(0, T0), &mut out)
        .unwrap();
    let wait = e.rules().area.group_wait;
    e.tick(0, T0 + 31 * 60_000, &mut out);
    assert_eq!(opened(&out), vec![], "reported to its area, waiting");
    e.tick(0, T0 + 30 * 60_000 + wait, &mut out);
    assert_eq!(
        opened(&out),
        vec![(
            "hh-1".to_string(),
            "home_silence".to_string(),
            T0 + 30 * 60_000 + wait
        )]
    );
    // A motion sensor that never sent a heartbeat, and an old heartbeat: the silence stands.
    let motion = sensor(
        "hh-1",
        "m",
        DeviceKind::MOTION_PIR,
        T0 + 35 * 60_000,
        Reading::Motion { detected: true },
    );
    e.process(&motion, on(0, T0 + 35 * 60_000), &mut out)
        .unwrap();
    e.process(
        &heartbeat("hh-1", T0 - 60_000),
        on(0, T0 + 36 * 60_000),
        &mut out,
    )
    .unwrap();
    e.tick(0, T0 + 60 * 60_000 + wait, &mut out);
    let closed = |out: &[Output]| {
        out.iter().filter(|o| matches!(o, Output::TaskEvent(ev) if ev.kind == TaskEventKind::AUTO_RESOLVED && ev.rule_id == "home_silence")).count()
    };
    assert_eq!(closed(&out), 0, "{out:#?}");
    // The registered device reports: clear, then resolved 10 min later, and not reopened.
    e.process(
        &heartbeat("hh-1", T0 + 61 * 60_000 + wait),
        on(0, T0 + 61 * 60_000 + wait),
        &mut out,
    )
    .unwrap();
    e.tick(0, T0 + 75 * 60_000 + wait, &mut out);
    assert_eq!(
        closed(&out),
        3,
        "the call, NOTIFY_CONTACT and the 30-minute rung"
    );
    assert_eq!(opened(&out).len(), 1, "{:?}", opened(&out));
}

/// A motion event at `t` from each household's PIR.
fn moved_at(e: &mut Engine, households: &[&str], t: Millis, out: &mut Vec<Output>) {
    for hh in households {
        let motion = sensor(
            hh,
            &format!("m-{hh}"),
            DeviceKind::MOTION_PIR,
            t,
            Reading::Motion { detected: true },
        );
        e.process(&motion, on(0, t), out).unwrap();
    }
}

/// The no-movement incidents opened in `out`: household and incident time.
fn no_movement_found(out: &[Output]) -> Vec<(String, Millis)> {
    opened(out)
        .into_iter()
        .filter(|(_, r, _)| r == "no_movement")
        .map(|(h, _, t)| (h, t))
        .collect()
}

#[test]
fn parameters_follow_household_overrides_and_profile_changes() {
    // The engine works out each household's parameters once (by id, profile and rules), not
    // per event: an override must reach only its household, and a registry update that
    // changes the cohort must change the threshold.
    let rules = rules_with(|dir| {
        let text = std::fs::read_to_string(dir.join("no_movement.toml")).unwrap()
            + "\n[[household]]\nid = \"hh-2\"\nparams = { after = \"3h\" }\n";
        std::fs::write(dir.join("no_movement.toml"), text).unwrap();
    });
    let mut e = Engine::new(rules);
    let mut out = Vec::new();
    for hh in ["hh-1", "hh-2", "hh-3"] {
        e.process(&profile(hh, 1), on(0, T0), &mut out).unwrap();
    }
    // hh-3 becomes severely disabled (6 h) by a registry update.
    let mut p = profile_of("hh-3");
    p.cohorts = vec![Cohort::SEVERE_DISABILITY];
    e.process(
        &Input::Household {
            household_id: "hh-3".into(),
            profile: Some(p),
        },
        on(0, T0),
        &mut out,
    )
    .unwrap();
    moved_at(&mut e, &["hh-1", "hh-2", "hh-3"], T0, &mut out);
    e.tick(0, T0 + 11 * HOUR, &mut out);
    let mut found = no_movement_found(&out);
    found.sort();
    assert_eq!(
        found,
        vec![
            ("hh-1".to_string(), T0 + 10 * HOUR), // living alone, 84: the 10 h cohort
            ("hh-2".to_string(), T0 + 3 * HOUR),  // its own override
            ("hh-3".to_string(), T0 + 6 * HOUR),  // severe disability after the update
        ]
    );
}

#[test]
fn away_in_the_registry_pauses_no_movement() {
    // hh-1 is in hospital until T0 + 20 h (the registry's away_until); hh-2 is home. Both last
    // moved at T0 and both are in the 10 h cohort.
    let mut e = engine();
    let mut out = Vec::new();
    let mut p = profile_of("hh-1");
    p.away_until = Some(T0 + 20 * HOUR);
    let away = Input::Household {
        household_id: "hh-1".into(),
        profile: Some(p),
    };
    e.process(&away, on(0, T0), &mut out).unwrap();
    e.process(&profile("hh-2", 1), on(0, T0), &mut out).unwrap();
    moved_at(&mut e, &["hh-1", "hh-2"], T0, &mut out);
    e.tick(0, T0 + 19 * HOUR, &mut out);
    assert_eq!(
        no_movement_found(&out),
        vec![("hh-2".to_string(), T0 + 10 * HOUR)]
    );
    // Back home and still no movement: now it counts.
    e.tick(0, T0 + 40 * HOUR, &mut out);
    let later = no_movement_found(&out);
    assert!(
        later
            .iter()
            .any(|(h, t)| h == "hh-1" && *t >= T0 + 20 * HOUR),
        "{later:?}"
    );
}

#[test]
fn the_index_finds_short_and_long_ids_and_forgets_them() {
    let mut e = engine();
    let mut out = Vec::new();
    // Short ids live inline in the household, long ones on the heap; both must be found,
    // told apart when one is a prefix of the other, and forgotten when the registry drops them.
    let ids = [
        "hh-1".to_string(),
        "hh-10".to_string(),
        "420102-0001-0002-0003-0004-0005".to_string(),
        "420102-0001-0002-0003-0004-00051".to_string(),
    ];
    for hh in &ids {
        e.process(&profile(hh, 1), on(0, T0), &mut out).unwrap();
    }
    for _ in 0..3 {
        for i in 0..2000 {
            let hh = format!("filler-{i}");
            e.process(&profile(&hh, 1), on(0, T0), &mut out).unwrap();
        }
        for i in 0..2000 {
            let gone = Input::Household {
                household_id: format!("filler-{i}"),
                profile: None,
            };
            e.process(&gone, on(0, T0), &mut out).unwrap();
        }
    }
    assert_eq!(e.household_count(), ids.len());
    for (i, hh) in ids.iter().enumerate() {
        let motion = |n: usize| {
            sensor(
                hh,
                &format!("{hh}-{n}"),
                DeviceKind::MOTION_PIR,
                T0 + n as Millis,
                Reading::Motion { detected: true },
            )
        };
        assert_eq!(
            e.process(&motion(i), on(0, T0 + 10), &mut out),
            Ok(()),
            "{hh}"
        );
        let gone = Input::Household {
            household_id: hh.clone(),
            profile: None,
        };
        e.process(&gone, on(0, T0), &mut out).unwrap();
        assert_eq!(
            e.process(&motion(i + 10), on(0, T0 + 10), &mut out),
            Err(EngineError::UnknownHousehold),
            "{hh} forgotten"
        );
        for other in &ids[i + 1..] {
            assert_eq!(
                e.process(&motion_of(other, i), on(0, T0 + 10), &mut out),
                Ok(()),
                "{other} kept"
            );
        }
    }
    assert_eq!(e.household_count(), 0);
}

fn motion_of(hh: &str, n: usize) -> Input {
    sensor(
        hh,
        &format!("{hh}-other-{n}"),
        DeviceKind::MOTION_PIR,
        T0 + n as Millis,
        Reading::Motion { detected: true },
    )
}

#[test]
fn a_gateway_backlog_is_judged_the_same_however_far_time_has_moved_when_it_is_read() {
    // hh-1's gateway drops out after T0: home silence is found at T0 + 30 min. At T0 + 45 min
    // it reconnects and flushes its backlog in one burst: a heartbeat every 5 minutes and a
    // motion every 10 s, up to a minute before. hh-2, on the same partition, keeps time
    // moving. A live run reads the burst as it arrives; a replay may read hh-2's next records
    // first (each topic is fetched on its own), and the burst's heartbeats and motions in
    // either order. Every order must decide the same; and the burst, which shows the home
    // alive to T0 + 45 min, raises no second silence from its first records (it did: one
    // "silent since" the first of them that the watermark had passed by 30 min, and where
    // that fell depended on the order).
    const MIN: Millis = 60_000;
    let flush = T0 + 45 * MIN;
    let pir = |hh: &str, t: Millis| {
        Input::Sensor(SensorEvent {
            event_id: format!("{hh}-{t}"),
            household_id: hh.into(),
            device_id: format!("{hh}-pir"),
            device_kind: DeviceKind::MOTION_PIR,
            event_time: t,
            reading: Reading::Motion { detected: true },
            gateway_id: None,
        })
    };
    // The gateway sends its backlog in its own order, one record a millisecond; the two
    // topics may then be read in any order.
    let mut burst: Vec<(Millis, Input)> = (1..=8)
        .map(|i| (T0 + i * 5 * MIN, heartbeat("hh-1", T0 + i * 5 * MIN)))
        .chain((1..=264).map(|i| (T0 + i * 10_000, pir("hh-1", T0 + i * 10_000))))
        .collect();
    burst.sort_by_key(|(t, _)| *t);
    let burst: Vec<(Input, Millis)> = burst
        .into_iter()
        .enumerate()
        .map(|(i, (_, r))| (r, flush + i as Millis))
        .collect();
    let heartbeats: Vec<_> = burst
        .iter()
        .filter(|(r, _)| matches!(r, Input::Heartbeat(_)))
        .collect();
    let motions: Vec<_> = burst
        .iter()
        .filter(|(r, _)| matches!(r, Input::Sensor(_)))
        .collect();
    let run = |hh2_first: bool, motions_first: bool| {
        let mut e = engine();
        let mut out = Vec::new();
        for hh in ["hh-1", "hh-2"] {
            e.process(&profile(hh, 1), on(0, T0), &mut out).unwrap();
            e.process(&heartbeat(hh, T0), on(0, T0), &mut out).unwrap();
        }
        for m in 1..=45 {
            let t = T0 + m * MIN;
            e.process(&pir("hh-2", t), on(0, t), &mut out).unwrap();
        }
        let next = pir("hh-2", flush + 25_000);
        if hh2_first {
            e.process(&next, on(0, flush + 25_000), &mut out).unwrap();
        }
        let (a, b) = if motions_first {
            (&motions, &heartbeats)
        } else {
            (&heartbeats, &motions)
        };
        for (r, arrival) in a.iter().chain(b) {
            e.process(r, on(0, *arrival), &mut out).unwrap();
        }
        if !hh2_first {
            e.process(&next, on(0, flush + 25_000), &mut out).unwrap();
        }
        for m in 46..=120 {
            let t = T0 + m * MIN;
            e.process(&pir("hh-2", t), on(0, t), &mut out).unwrap();
            e.process(&pir("hh-1", t), on(0, t), &mut out).unwrap();
        }
        (out, e.stats())
    };
    let (reference, stats) = run(false, false);
    assert_eq!(stats.late_events, 272, "{stats:?}");
    let silences: Vec<_> = opened(&reference)
        .into_iter()
        .filter(|(_, r, _)| r == "home_silence")
        .collect();
    // Found at 30 min; its task goes out once its area's wait is over (storm control).
    let wait = engine().rules().area.group_wait;
    assert_eq!(
        silences,
        [("hh-1".into(), "home_silence".into(), T0 + 30 * MIN + wait)],
        "{:?}",
        opened(&reference)
    );
    // The backlog shows hh-1 alive again: the incident clears and resolves.
    assert!(reference.iter().any(|o| matches!(o,
        Output::TaskEvent(ev) if ev.kind == TaskEventKind::AUTO_RESOLVED && ev.rule_id == "home_silence")));
    for (hh2_first, motions_first) in [(true, false), (false, true), (true, true)] {
        let (out, _) = run(hh2_first, motions_first);
        assert_eq!(
            out, reference,
            "read with hh-2 first: {hh2_first}, motions first: {motions_first}"
        );
    }
}

#[test]
fn an_away_until_at_the_end_of_time_raises_nothing_and_does_not_overflow() {
    let mut e = engine();
    let mut out = Vec::new();
    for (i, until) in [Millis::MAX, Millis::MAX - 1, Millis::MAX / 2 + 1]
        .iter()
        .enumerate()
    {
        let hh = format!("hh-far-{i}");
        let mut p = profile_of(&hh);
        p.away_until = Some(*until);
        register_seen(&mut e, p, T0, &mut out);
    }
    // Two days on: the devices went silent and nobody moved, but everyone is away.
    e.tick(0, T0 + 48 * HOUR, &mut out);
    let found = opened(&out);
    let absence: Vec<_> = found
        .iter()
        .filter(|(_, r, _)| !r.starts_with("visit") && !r.starts_with("missed_daily"))
        .collect();
    assert!(absence.is_empty(), "{absence:?}");
}

#[test]
fn another_devices_event_with_the_same_id_does_not_hide_an_alarm() {
    // Event ids are unique per device: two devices may count from the same number.
    let mut e = engine();
    let mut out = Vec::new();
    e.process(&profile("hh-1", 1), on(0, T0), &mut out).unwrap();
    let motion = sensor(
        "hh-1",
        "42",
        DeviceKind::MOTION_PIR,
        T0,
        Reading::Motion { detected: true },
    );
    e.process(&motion, on(0, T0), &mut out).unwrap();
    let button = sensor(
        "hh-1",
        "42",
        DeviceKind::EMERGENCY_BUTTON,
        T0 + 1_000,
        Reading::Alarm { active: true },
    );
    e.process(&button, on(0, T0 + 1_000), &mut out).unwrap();
    assert!(
        out.iter()
            .any(|o| matches!(o, Output::Task(t) if t.severity == Severity::CRITICAL)),
        "the button's alarm was taken for a duplicate of the motion event"
    );
    // The same device's event redelivered is still a duplicate.
    let before = out.len();
    e.process(&button, on(0, T0 + 2_000), &mut out).unwrap();
    assert_eq!(out.len(), before);
    assert_eq!(e.stats().duplicate_events, 1);
}

#[test]
fn a_registry_entry_with_fields_out_of_range_is_repaired_not_refused() {
    let mut e = engine();
    let mut out = Vec::new();
    let mut p = profile_of("hh-odd");
    p.age = 200;
    p.ability_level = 9;
    p.quiet_hours = Some(QuietHours {
        start_minute: 5_000,
        end_minute: 60,
    });
    let input = Input::Household {
        household_id: "hh-odd".into(),
        profile: Some(p),
    };
    crate::codec::validate::input(&input).expect("a repairable entry passes validation");
    e.process(&input, on(0, T0), &mut out).unwrap();
    assert_eq!(e.stats().profile_fields_repaired, 3);
    // Watched, not just for alarms: its motion is taken, not refused as unknown.
    let motion = sensor(
        "hh-odd",
        "m1",
        DeviceKind::MOTION_PIR,
        T0,
        Reading::Motion { detected: true },
    );
    e.process(&motion, on(0, T0), &mut out).unwrap();
    e.process(&heartbeat("hh-odd", T0), on(0, T0), &mut out)
        .unwrap();
    // Living alone and (repaired) over 80: no movement after 10 h of waking time; the
    // broken quiet hours gave way to the default night (T0 is 19:06 local: 13:06 next day).
    e.tick(0, T0 + 18 * HOUR + 60_000, &mut out);
    assert!(
        opened(&out)
            .iter()
            .any(|(hh, r, _)| hh == "hh-odd" && r == "no_movement"),
        "{:?}",
        opened(&out)
    );
}

/// The shipped rules with `alarms.toml`'s `[[alarm]]` blocks kept as `order` says (indexes
/// into the shipped order).
fn rules_with_alarms(tag: &str, order: &[usize]) -> Arc<RuleSet> {
    let src = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/rules"));
    let dir = std::env::temp_dir().join(format!("carestream-alarms-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for f in std::fs::read_dir(src).unwrap().flatten() {
        std::fs::copy(f.path(), dir.join(f.file_name())).unwrap();
    }
    let text = std::fs::read_to_string(src.join("alarms.toml")).unwrap();
    let mut parts = text.split("[[alarm]]");
    let head = parts.next().unwrap().to_string();
    let blocks: Vec<&str> = parts.collect();
    let body: String = order
        .iter()
        .map(|i| format!("[[alarm]]{}", blocks[*i]))
        .collect();
    std::fs::write(dir.join("alarms.toml"), head + &body).unwrap();
    let rules = RuleSet::load(&dir).unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    Arc::new(rules)
}

#[test]
fn reordered_or_removed_alarm_rules_keep_open_alarms_apart_and_escalating() {
    let leak = |id: &str, t: Millis| {
        sensor(
            "hh-1",
            id,
            DeviceKind::WATER_LEAK,
            t,
            Reading::Alarm { active: true },
        )
    };
    // Reordered: the water leak's incident is open; the button moves to the leak's old place.
    let mut e = engine();
    let mut out = Vec::new();
    e.process(&profile("hh-1", 1), on(0, T0), &mut out).unwrap();
    e.process(&leak("leak-1", T0), on(0, T0), &mut out).unwrap();
    e.set_rules(rules_with_alarms("reorder", &[5, 1, 2, 3, 4, 0]));
    e.process(
        &press("hh-1", "press-1", T0 + 60_000),
        on(0, T0 + 60_000),
        &mut out,
    )
    .unwrap();
    assert!(
        out.iter()
            .any(|o| matches!(o, Output::Task(t) if t.rule_id == "alarm.emergency_button")),
        "the button press was taken for a repeat of the water leak"
    );
    // The leak's incident still escalates as a water leak.
    e.tick(0, T0 + HOUR, &mut out);
    assert!(out.iter().any(|o| matches!(o,
        Output::TaskEvent(ev) if ev.kind == TaskEventKind::ESCALATED && ev.rule_id == "alarm.water_leak")));

    // Removed: the water leak's rule is gone while its incident is open; it escalates on.
    let mut e = engine();
    let mut out = Vec::new();
    e.process(&profile("hh-1", 1), on(0, T0), &mut out).unwrap();
    e.process(&leak("leak-2", T0), on(0, T0), &mut out).unwrap();
    e.set_rules(rules_with_alarms("shrink", &[0, 1, 2]));
    e.tick(0, T0 + HOUR, &mut out);
    assert!(out.iter().any(|o| matches!(o,
        Output::TaskEvent(ev) if ev.kind == TaskEventKind::ESCALATED && ev.rule_id == "alarm.water_leak")));
}

#[test]
fn an_acknowledgement_left_unresolved_climbs_one_rung_per_hour_and_a_resolution_stops_it() {
    let mut e = engine();
    run(&mut e, &profile("hh-1", 1), T0);
    let first = run(&mut e, &press("hh-1", "p1", T0), T0);
    let task_id = tasks(&first)[0].task_id.clone();
    let update = |status, at| {
        Input::TaskUpdate(TaskUpdate {
            task_id: task_id.clone(),
            household_id: "hh-1".into(),
            status,
            by: "desk-7".into(),
            // The desk's clock is far ahead: the wait counts in event time all the same.
            at: at + 24 * HOUR,
            note: None,
            outcome: None,
            snooze_until: None,
            assign_to: None,
        })
    };
    let mut out = Vec::new();
    e.tick(0, T0 + 2 * 60_000, &mut out);
    e.process(
        &update(TaskUpdateStatus::ACKNOWLEDGED, T0 + 2 * 60_000),
        on(0, T0 + 2 * 60_000),
        &mut out,
    )
    .unwrap();
    // The desk's stamp, a day ahead, counts as no later than max_clock_skew past the watermark.
    let acked_at = e.watermark(0).unwrap() + e.rules().max_clock_skew;
    let escalated = |out: &[Output]| {
        out.iter()
            .filter_map(|o| match o {
                Output::Task(t) if t.tier > 0 => Some((
                    t.tier,
                    t.action,
                    t.emitted_at,
                    t.evidence[0].summary.clone(),
                )),
                _ => None,
            })
            .collect::<Vec<_>>()
    };
    // The ladder's own rungs (5 and 20 min) stay stopped by the acknowledgement ...
    e.tick(0, acked_at + HOUR - 1, &mut out);
    assert!(escalated(&out).is_empty(), "{:?}", escalated(&out));
    // ... until an hour passes with no resolution: one rung, then the wait starts again.
    e.tick(0, acked_at + HOUR, &mut out);
    assert_eq!(
        escalated(&out),
        vec![(
            1,
            Action::ONSITE_VISIT,
            acked_at + HOUR,
            "acknowledged 60 min ago, still not resolved: ONSITE_VISIT".to_string()
        )]
    );
    out.clear();
    e.tick(0, acked_at + 2 * HOUR, &mut out);
    assert_eq!(
        escalated(&out)
            .iter()
            .map(|x| (x.0, x.1))
            .collect::<Vec<_>>(),
        vec![(2, Action::EMERGENCY_SERVICES)]
    );
    // No rung is left: nothing more however long it stays open.
    out.clear();
    e.tick(0, acked_at + 6 * HOUR, &mut out);
    assert!(escalated(&out).is_empty());

    // Another home: acknowledged, then resolved within the hour: no climb.
    run(&mut e, &profile("hh-2", 1), T0);
    let first = run(&mut e, &press("hh-2", "q1", T0 + 6 * HOUR), T0 + 6 * HOUR);
    let id = tasks(&first)[0].task_id.clone();
    for (status, at) in [
        (TaskUpdateStatus::ACKNOWLEDGED, T0 + 6 * HOUR + 60_000),
        (TaskUpdateStatus::RESOLVED, T0 + 6 * HOUR + 30 * 60_000),
    ] {
        let u = Input::TaskUpdate(TaskUpdate {
            task_id: id.clone(),
            household_id: "hh-2".into(),
            status,
            by: "desk-7".into(),
            at,
            note: None,
            outcome: None,
            snooze_until: None,
            assign_to: None,
        });
        e.process(&u, on(0, at), &mut out).unwrap();
    }
    out.clear();
    e.tick(0, T0 + 10 * HOUR, &mut out);
    assert!(escalated(&out).is_empty(), "{:?}", escalated(&out));
}

#[test]
fn a_city_started_with_no_visit_history_is_due_its_visits_spread_over_the_cadence() {
    // 10 000 homes seen for the first time in one hour, none with a known visit: one in five
    // due weekly (severe disability), the rest monthly.
    let mut e = engine();
    let mut out = Vec::new();
    const HOMES: usize = 10_000;
    for i in 0..HOMES {
        let hh = format!("hh-{i}");
        let mut p = profile_of(&hh);
        if i % 5 == 0 {
            p.cohorts = vec![Cohort::SEVERE_DISABILITY];
        }
        let t = T0 + (i as Millis * HOUR) / HOMES as Millis;
        register_seen(&mut e, p, t, &mut out);
    }
    use crate::localtime::DAY;
    let mut per_day = [0usize; 60];
    for day in 1..=60 {
        // (The first day's count starts with what came due while the city was registering.)
        e.tick(0, T0 + day * DAY, &mut out);
        for (_, rule, at) in opened(&out) {
            if rule == "visit_overdue" {
                per_day[((at - T0) / DAY) as usize] += 1;
            }
        }
        out.clear();
    }
    assert_eq!(
        per_day.iter().sum::<usize>(),
        HOMES,
        "every home is due its first visit within its cadence"
    );
    // Weekly homes over 7 days and monthly over 30: ~552 a day in the first week, ~267 after.
    let rate = (HOMES / 5) as f64 / 7.0 + (HOMES * 4 / 5) as f64 / 30.0;
    let busiest = *per_day.iter().max().unwrap();
    assert!(
        (busiest as f64) < 1.3 * rate,
        "{busiest} visits due on one day (mean {rate:.0}): {per_day:?}"
    );
    // Seen within the first hour: all due by the first hour of day 30, the task 2 days after.
    assert!(
        per_day[33..].iter().all(|n| *n == 0),
        "none later than one cadence and its grace: {per_day:?}"
    );
}

#[test]
fn a_mattress_s_first_report_of_not_in_bed_at_night_is_not_a_night_exit() {
    // Quiet hours 22:00-06:30 (2026-11-20, CST); the city starts at 21:58. hh-up's mattress
    // first reports at 22:02 "not in bed", and every 10 min after: still up, not leaving bed.
    // hh-out reports "in bed" at 22:02, then "not in bed" at 23:00 and never back: an exit.
    let midnight = 1_795_104_000_000;
    let at = |h: i64, m: i64| midnight - 24 * HOUR + h * HOUR + m * 60_000;
    let mut e = engine();
    let mut out = Vec::new();
    for hh in ["hh-up", "hh-out"] {
        e.process(&sleeping_nights(hh), on(0, at(21, 58)), &mut out)
            .unwrap();
    }
    let bed = |hh: &str, id: String, t: Millis, occupied: bool| {
        sensor(
            hh,
            &id,
            DeviceKind::BED_SENSOR,
            t,
            Reading::Bed { occupied },
        )
    };
    for k in 0..12 {
        let t = at(22, 2) + k * 10 * 60_000;
        e.process(&bed("hh-up", format!("u{k}"), t, false), on(0, t), &mut out)
            .unwrap();
        let occupied = t < at(23, 0);
        e.process(
            &bed("hh-out", format!("o{k}"), t, occupied),
            on(0, t),
            &mut out,
        )
        .unwrap();
    }
    e.tick(0, at(24, 30), &mut out);
    let exits: Vec<String> = opened(&out)
        .into_iter()
        .filter(|(_, r, _)| r == "night_bed_exit")
        .map(|(hh, _, _)| hh)
        .collect();
    assert_eq!(exits, ["hh-out"]);
}

fn desk(task_id: &str, status: TaskUpdateStatus, at: Millis) -> TaskUpdate {
    TaskUpdate {
        task_id: task_id.into(),
        household_id: "hh-1".into(),
        status,
        by: "desk-7".into(),
        at,
        note: Some("张先生 13800000000".into()),
        outcome: None,
        snooze_until: None,
        assign_to: None,
    }
}

#[test]
fn the_desk_reassigns_snoozes_escalates_and_closes_with_an_outcome_and_bad_updates_change_nothing()
{
    use TaskUpdateStatus::*;
    let mut e = engine();
    let mut out = Vec::new();
    e.process(&profile("hh-1", 1), on(0, T0), &mut out).unwrap();
    e.process(&press("hh-1", "p1", T0), on(0, T0), &mut out)
        .unwrap();
    let task_id = tasks(&out)[0].task_id.clone();
    let apply = |e: &mut Engine, u: TaskUpdate| {
        let mut out = Vec::new();
        e.tick(0, u.at, &mut out);
        let r = e.process(&Input::TaskUpdate(u.clone()), on(0, u.at), &mut out);
        (r, out)
    };
    let events = |out: &[Output]| -> Vec<TaskEvent> {
        out.iter()
            .filter_map(|o| match o {
                Output::TaskEvent(ev) => Some(ev.clone()),
                _ => None,
            })
            .collect()
    };

    // Reassigned to a team: recorded, and the incident's later tasks carry it.
    let mut u = desk(&task_id, REASSIGN, T0 + 60_000);
    u.assign_to = Some("team-east".into());
    let (r, out) = apply(&mut e, u);
    r.unwrap();
    let ev = &events(&out)[0];
    assert_eq!(
        (ev.kind, ev.assigned_to.as_deref(), ev.by.as_deref()),
        (TaskEventKind::REASSIGNED, Some("team-east"), Some("desk-7"))
    );
    assert!(!ev.reason.contains("1380"), "the desk's note is not copied");

    // A snooze of a CRITICAL incident is bounded (30 min) and must lie ahead: refused,
    // nothing changes.
    for until in [T0 + 2 * HOUR, T0 + 60_000] {
        let mut u = desk(&task_id, SNOOZE, T0 + 2 * 60_000);
        u.snooze_until = Some(until);
        let (r, out) = apply(&mut e, u);
        assert!(
            matches!(r, Err(EngineError::BadUpdate(_))),
            "{until}: {r:?}"
        );
        assert!(events(&out).is_empty(), "{out:?}");
    }
    // Snoozed for 20 minutes: the 5-minute rung waits; when the snooze runs out unresolved,
    // one rung, for the team.
    let mut u = desk(&task_id, SNOOZE, T0 + 2 * 60_000);
    u.snooze_until = Some(T0 + 22 * 60_000);
    let (r, out) = apply(&mut e, u);
    r.unwrap();
    let ev = &events(&out)[0];
    assert_eq!(
        (ev.kind, ev.until),
        (TaskEventKind::SNOOZED, Some(T0 + 22 * 60_000))
    );
    let mut out = Vec::new();
    e.tick(0, T0 + 22 * 60_000 - 1, &mut out);
    assert!(tasks(&out).is_empty(), "{out:?}");
    e.tick(0, T0 + 22 * 60_000, &mut out);
    let climbed: Vec<_> = tasks(&out)
        .iter()
        .map(|t| (t.tier, t.action, t.emitted_at, t.assigned_to.clone()))
        .collect();
    assert_eq!(
        climbed,
        [(
            1,
            Action::ONSITE_VISIT,
            T0 + 22 * 60_000,
            Some("team-east".into())
        )]
    );
    assert!(tasks(&out)[0].evidence[0].summary.starts_with("snoozed"));

    // Escalated by the desk: the last rung at once; then none is left.
    let (r, out) = apply(&mut e, desk(&task_id, ESCALATE, T0 + 25 * 60_000));
    r.unwrap();
    let t = tasks(&out);
    assert_eq!(
        (t.len(), t[0].tier, t[0].action, t[0].emitted_at),
        (1, 2, Action::EMERGENCY_SERVICES, T0 + 25 * 60_000)
    );
    assert_eq!(events(&out)[0].by.as_deref(), Some("desk-7"));
    let (r, out) = apply(&mut e, desk(&task_id, ESCALATE, T0 + 26 * 60_000));
    assert!(matches!(r, Err(EngineError::BadUpdate(_))), "{r:?}");
    assert!(out.is_empty(), "{out:?}");

    // Resolved with an outcome: every task's event carries it, and the family is told it.
    let mut u = desk(&task_id, RESOLVED, T0 + 40 * 60_000);
    u.outcome = Some(TaskOutcome::HOSPITAL);
    let (r, out) = apply(&mut e, u);
    r.unwrap();
    let closed = events(&out);
    assert_eq!(closed.len(), 4, "{closed:?}"); // tier 0's two, and one per rung
    assert!(closed
        .iter()
        .all(|ev| ev.kind == TaskEventKind::RESOLVED && ev.outcome == Some(TaskOutcome::HOSPITAL)));
    let told: Vec<_> = out
        .iter()
        .filter_map(|o| match o {
            Output::Notification(n) => Some(n.message.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(told.len(), 1);
    assert!(told[0].contains("taken to hospital") && !told[0].contains("1380"));

    // Closed: an action on it is refused; a late status is kept in the record.
    let (r, out) = apply(&mut e, desk(&task_id, ESCALATE, T0 + 41 * 60_000));
    assert!(matches!(r, Err(EngineError::BadUpdate(_))), "{r:?}");
    assert!(out.is_empty());
    let (r, out) = apply(&mut e, desk(&task_id, ACKNOWLEDGED, T0 + 42 * 60_000));
    r.unwrap();
    assert_eq!(events(&out).len(), 1);
}

#[test]
fn the_registry_s_last_visit_places_the_next_one_and_an_old_one_spreads_the_backlog() {
    use crate::localtime::DAY;
    let mut e = engine();
    let mut out = Vec::new();
    // Monthly homes: visited 20 days before the start, 40 days before (overdue), and one
    // whose registry says "tomorrow" (not made yet: left out, as if none were known).
    let homes = [
        ("hh-20", Some(T0 - 20 * DAY)),
        ("hh-40", Some(T0 - 40 * DAY)),
        ("hh-future", Some(T0 + DAY)),
    ];
    for (hh, last) in homes {
        let mut p = profile_of(hh);
        p.last_visit_at = last;
        register_seen(&mut e, p, T0, &mut out);
    }
    assert_eq!(
        e.stats().profile_fields_repaired,
        1,
        "the visit not made yet"
    );
    let mut due = std::collections::BTreeMap::new();
    for hour in 1..=40 * 24 {
        e.tick(0, T0 + hour * HOUR, &mut out);
        for (hh, rule, at) in opened(&out) {
            if rule == "visit_overdue" {
                due.entry(hh).or_insert(at);
            }
        }
        out.clear();
    }
    // The task goes out the 2-day grace after the visit falls due.
    let grace = 2 * DAY;
    assert_eq!(
        due["hh-20"],
        T0 + 10 * DAY + grace,
        "30 days after the registry's visit"
    );
    assert!(
        due["hh-40"] < T0 + 30 * DAY / 4 + grace,
        "overdue at the start: due within the first quarter of a cadence, {} days in",
        (due["hh-40"] - T0) / DAY
    );
    assert!(
        due["hh-future"] < T0 + 30 * DAY + grace,
        "{}",
        due["hh-future"] - T0
    );
}

#[test]
fn a_festival_brings_visits_forward_spread_over_its_window() {
    use crate::localtime::DAY;
    let mut e = engine();
    // A week-long festival 20 days after the start, visits every 10 days within it.
    let cst = 8 * HOUR;
    let from = crate::localtime::local_midnight(T0, cst) + 20 * DAY + cst;
    let mut rules = (**e.rules()).clone();
    rules.holidays = vec![crate::rules::Holiday {
        name: "festival".into(),
        from,
        to: from + 7 * DAY,
        every: 10 * DAY,
    }];
    e.set_rules(Arc::new(rules));
    let mut out = Vec::new();
    // 200 monthly homes visited 5 days before the start: due on day 25 without the festival.
    const HOMES: usize = 200;
    for i in 0..HOMES {
        let hh = format!("hh-{i}");
        let mut p = profile_of(&hh);
        p.last_visit_at = Some(T0 - 5 * DAY);
        register_seen(&mut e, p, T0, &mut out);
    }
    let mut due = Vec::new();
    for hour in 1..=30 * 24 {
        e.tick(0, T0 + hour * HOUR, &mut out);
        for (_, rule, at) in opened(&out) {
            if rule == "visit_overdue" {
                due.push(at);
            }
        }
        out.clear();
    }
    // Each visit falls due within the festival (the task the 2-day grace later), not on day 25.
    let grace = 2 * DAY;
    let window = (from - cst + grace)..(from - cst + 7 * DAY + grace);
    assert_eq!(due.len(), HOMES);
    assert!(
        due.iter().all(|d| window.contains(d)),
        "every visit falls due within the festival, not on day 25"
    );
    let mut per_day = [0usize; 7];
    for d in &due {
        per_day[((d - window.start) / DAY) as usize] += 1;
    }
    assert!(
        per_day.iter().all(|n| *n < HOMES / 7 * 2),
        "spread over the window: {per_day:?}"
    );
}

#[test]
fn the_daily_visit_plan_takes_the_most_overdue_within_capacity_and_reports_the_rest() {
    use crate::localtime::{local_midnight, DAY};
    let mut e = engine();
    let capacity = e.rules().visit_plan.capacity as usize;
    assert_eq!(capacity, 20, "the shipped rules");
    let mut out = Vec::new();
    // Community X: 50 homes whose monthly visit falls due tomorrow (a minute apart, the older
    // first), 10 due in three weeks; community Y: 5 due tomorrow.
    let mut homes = Vec::new();
    for i in 0..65 {
        let (community, last) = match i {
            0..50 => ("X", T0 - 29 * DAY + i * 60_000),
            50..60 => ("X", T0 - 9 * DAY),
            _ => ("Y", T0 - 29 * DAY),
        };
        let hh = format!("hh-{i:02}");
        let mut p = profile_of(&hh);
        p.community = community.into();
        p.last_visit_at = Some(last);
        register_seen(&mut e, p, T0, &mut out);
        homes.push(hh);
    }
    let mut plans = e.draw_visit_plans();
    assert!(
        plans.is_empty(),
        "first sight: the day's plan was its owner's"
    );
    let day1 = local_midnight(T0, 8 * HOUR) + DAY;
    let mut by_day: std::collections::BTreeMap<Millis, Vec<VisitPlan>> = Default::default();
    let mut visited = false;
    for hour in 1..=48 {
        let t = T0 + hour * HOUR;
        e.process(&heartbeat("hh-00", t), on(0, t), &mut out)
            .unwrap();
        e.tick(0, t, &mut out);
        plans.extend(e.draw_visit_plans());
        for p in plans.drain(..) {
            by_day.entry(p.day).or_default().push(p);
        }
        // The day's planned visits are made by noon.
        if t >= day1 + 12 * HOUR && !visited {
            visited = true;
            for p in &by_day[&day1] {
                for v in &p.visits {
                    let visit = Input::CheckIn(CheckIn {
                        household_id: v.household_id.clone(),
                        event_time: t,
                        kind: CheckInKind::HOME_VISIT,
                        visitor_id: Some("v-1".into()),
                    });
                    e.process(&visit, on(0, t), &mut out).unwrap();
                }
            }
        }
    }
    assert_eq!(
        by_day.keys().copied().collect::<Vec<_>>(),
        [day1, day1 + DAY]
    );
    let first = &by_day[&day1];
    let x = first.iter().find(|p| p.community == "X").unwrap();
    let y = first.iter().find(|p| p.community == "Y").unwrap();
    let ids = |v: &[PlannedVisit]| v.iter().map(|v| v.household_id.clone()).collect::<Vec<_>>();
    // The 20 most overdue, in order; the other 30 due tomorrow reported beyond capacity; those
    // due in three weeks not planned.
    assert_eq!(ids(&x.visits), homes[..capacity].to_vec());
    assert_eq!(ids(&x.beyond_capacity), homes[capacity..50].to_vec());
    assert_eq!((x.capacity, x.parts, x.day), (20, 1, day1));
    assert_eq!(ids(&y.visits), homes[60..].to_vec());
    assert!(y.beyond_capacity.is_empty());
    // The next day: the homes visited are not due; the next 20 are planned.
    let x2 = by_day[&(day1 + DAY)]
        .iter()
        .find(|p| p.community == "X")
        .unwrap();
    assert_eq!(ids(&x2.visits), homes[capacity..2 * capacity].to_vec());
    assert_eq!(x2.beyond_capacity.len(), 10);
    assert_ne!(x.plan_id, x2.plan_id);
}

#[test]
fn a_city_with_no_visit_history_visited_by_its_plans_gets_no_visit_task_in_two_months() {
    // 10 000 homes in 49 communities, none with a known visit, one in five weekly in each:
    // about 12 visits fall due a day in each community, within its capacity of 20. The workers
    // make each day's planned visits that day.
    let mut e = engine();
    let capacity = e.rules().visit_plan.capacity as usize;
    let mut out = Vec::new();
    const HOMES: usize = 10_000;
    for i in 0..HOMES {
        let hh = format!("hh-{i}");
        let mut p = profile_of(&hh);
        p.community = format!("c-{}", i % 49);
        if i % 5 == 0 {
            p.cohorts = vec![Cohort::SEVERE_DISABILITY];
        }
        register_seen(&mut e, p, T0, &mut out);
    }
    e.draw_visit_plans();
    let (mut tasks, mut planned, mut busiest, mut beyond) = (0, 0, 0, 0);
    for hour in 1..=60 * 24 {
        let t = T0 + hour * HOUR;
        e.tick(0, t, &mut out);
        tasks += opened(&out)
            .iter()
            .filter(|(_, rule, _)| rule == "visit_overdue")
            .count();
        out.clear();
        for plan in e.draw_visit_plans() {
            assert!(plan.visits.len() <= capacity, "{plan:?}");
            // A busy day's overdue homes wait for the next days' plans, within the grace.
            beyond += plan.beyond_capacity.len();
            busiest = busiest.max(plan.visits.len());
            planned += plan.visits.len();
            for v in &plan.visits {
                let visit = Input::CheckIn(CheckIn {
                    household_id: v.household_id.clone(),
                    event_time: plan.day + 14 * HOUR,
                    kind: CheckInKind::HOME_VISIT,
                    visitor_id: None,
                });
                e.process(&visit, on(0, t), &mut out).unwrap();
            }
        }
    }
    // Every home visited at least once (the monthly ones once or twice, the weekly ones about
    // eight times), none past its grace.
    assert!(planned >= HOMES, "{planned} visits planned");
    assert_eq!(tasks, 0, "visit tasks in a city whose plans are followed");
    eprintln!(
        "{planned} visits planned in 60 days, at most {busiest} a day in a community, \
         {beyond} overdue homes put off to a later day"
    );
}

/// Storm control across instances: two engines, each owning one of two partitions, every area
/// signal either writes read by both (as `care.area-signals` is, whole, on every instance).
mod storm {
    use super::*;
    use crate::partition::Partitioner;

    const MIN: Millis = 60_000;
    const AREA: &str = "420102001003";

    struct City {
        engines: Vec<Engine>,
        out: Vec<Output>,
        /// Every area record written, in order, as the compacted topic would hold it.
        table: Vec<(AreaKey, Option<AreaSignal>)>,
    }

    impl City {
        /// `homes` homes of the community, home `i` on partition `i % 2`, its last heartbeat
        /// at `T0 + i * 20 s`; and `hh-other`, alone in another community, on partition 0.
        fn new(homes: usize) -> City {
            let mut engines: Vec<Engine> = (0..2).map(|_| engine()).collect();
            let mut out = Vec::new();
            for (p, e) in engines.iter_mut().enumerate() {
                e.set_owned(Some(vec![p as i32]));
                e.set_partitioning(Partitioner::Murmur2, 2);
                for i in 0..homes {
                    e.process(&profile(&home(i), 1), on(0, T0), &mut out)
                        .unwrap();
                }
                let mut other = profile("hh-other", 1);
                if let Input::Household {
                    profile: Some(p), ..
                } = &mut other
                {
                    p.community = "420102001009".into();
                }
                e.process(&other, on(0, T0), &mut out).unwrap();
            }
            for i in 0..homes {
                let t = T0 + i as Millis * 20_000;
                let p = (i % 2) as i32;
                engines[p as usize]
                    .process(&heartbeat(&home(i), t), on(p, t), &mut out)
                    .unwrap();
            }
            engines[0]
                .process(&heartbeat("hh-other", T0), on(0, T0), &mut out)
                .unwrap();
            let mut city = City {
                engines,
                out,
                table: Vec::new(),
            };
            city.exchange(T0);
            city
        }

        /// Delivers every area record written to both engines, until none is left.
        fn exchange(&mut self, at: Millis) {
            loop {
                let records: Vec<_> = self
                    .engines
                    .iter_mut()
                    .flat_map(|e| e.take_area_signals())
                    .collect();
                if records.is_empty() {
                    return;
                }
                for (key, signal) in records {
                    let input = Input::Area {
                        key: key.clone(),
                        signal: signal.clone(),
                    };
                    for e in &mut self.engines {
                        e.process(&input, on(0, at), &mut self.out).unwrap();
                    }
                    self.table.push((key, signal));
                }
            }
        }

        /// Both partitions' time moves to `to` a minute at a time, the table read in between.
        fn run_to(&mut self, from: Millis, to: Millis) {
            let mut t = from;
            while t < to {
                t = (t + MIN).min(to);
                for (p, e) in self.engines.iter_mut().enumerate() {
                    e.tick(p as i32, t, &mut self.out);
                }
                self.exchange(t);
            }
        }

        fn heartbeat(&mut self, i: usize, t: Millis) {
            let p = i % 2;
            self.engines[p]
                .process(&heartbeat(&home(i), t), on(p as i32, t), &mut self.out)
                .unwrap();
            self.exchange(t);
        }

        /// A new instance owning partition `p` (with its checkpoint, or without), after it has
        /// read the table from the start: what it wrote then.
        fn restarted(&self, p: i32, with_checkpoint: bool) -> (Engine, Vec<Output>) {
            let mut e = engine();
            e.set_owned(Some(vec![p]));
            e.set_partitioning(Partitioner::Murmur2, 2);
            e.areas_wait_for_table();
            let mut out = Vec::new();
            for i in 0..12 {
                e.process(&profile(&home(i), 1), on(0, T0), &mut out)
                    .unwrap();
            }
            if with_checkpoint {
                e.restore(self.engines[p as usize].snapshot(p));
            }
            for (key, signal) in &self.table {
                let input = Input::Area {
                    key: key.clone(),
                    signal: signal.clone(),
                };
                e.process(&input, on(0, T0 + 41 * MIN), &mut out).unwrap();
            }
            e.areas_caught_up(T0 + 41 * MIN, &mut out);
            (e, out)
        }

        fn tasks(&self, rule: &str) -> Vec<&EscalationTask> {
            self.out
                .iter()
                .filter_map(|o| match o {
                    // `hh-other` is alone in its community.
                    Output::Task(t) if t.rule_id == rule && t.household_id != "hh-other" => Some(t),
                    _ => None,
                })
                .collect()
        }

        fn notified(&self, hh: &str) -> usize {
            self.out
                .iter()
                .filter(|o| matches!(o, Output::Notification(n) if n.household_id == hh))
                .count()
        }
    }

    fn home(i: usize) -> String {
        format!("hh-{i:02}")
    }

    fn homes_in_evidence(t: &EscalationTask) -> Vec<String> {
        t.evidence[1..].iter().map(|e| e.event_id.clone()).collect()
    }

    #[test]
    fn a_community_going_dark_is_one_task_and_its_homes_still_dark_are_released_after() {
        let mut c = City::new(12);
        // Every home of the community silent from its last heartbeat: power cut at T0+4 min.
        c.run_to(T0, T0 + 40 * MIN);
        let area = c.tasks("area_silence");
        assert_eq!(area.len(), 1, "one grouped task: {area:#?}");
        let a = area[0];
        assert_eq!(a.household_id, format!("area:{AREA}"));
        assert_eq!(
            (a.severity, a.action),
            (Severity::HIGH, Action::ONSITE_VISIT)
        );
        assert_eq!(
            (a.district.as_str(), a.community.as_str()),
            ("420102", AREA)
        );
        assert!(
            a.evidence[0].summary.contains("of 12 registered homes"),
            "{:?}",
            a.evidence[0]
        );
        let named = homes_in_evidence(a);
        assert!(named.len() >= 5, "{named:?}");
        assert!(
            c.tasks("home_silence").is_empty(),
            "{:#?}",
            c.tasks("home_silence")
        );
        for i in 0..12 {
            assert_eq!(
                c.notified(&home(i)),
                0,
                "no family told while the area holds it"
            );
        }
        // The area's owner opened it once, whichever instance found its homes.
        let stats: Vec<EngineStats> = c.engines.iter().map(|e| e.stats()).collect();
        assert_eq!(stats.iter().map(|s| s.area_incidents).sum::<u64>(), 1);
        // The community's 12 and `hh-other`, whose own task went out after its wait.
        assert_eq!(stats.iter().map(|s| s.area_homes_reported).sum::<u64>(), 13);
        assert_eq!(stats.iter().map(|s| s.area_homes_released).sum::<u64>(), 1);

        // Power back for 8 homes at 60 min; 4 still silent.
        for i in 0..8 {
            c.heartbeat(i, T0 + 60 * MIN);
        }
        c.run_to(T0 + 60 * MIN, T0 + 62 * MIN);
        let closed: Vec<_> = c
            .out
            .iter()
            .filter(|o| matches!(o, Output::TaskEvent(e) if e.rule_id == "area_silence" && e.kind == TaskEventKind::AUTO_RESOLVED))
            .collect();
        assert_eq!(closed.len(), 1, "the area's incident resolved itself");
        let mut released: Vec<(String, Millis)> = c
            .tasks("home_silence")
            .iter()
            .filter(|t| t.action == Action::CALL_ELDER)
            .map(|t| (t.household_id.clone(), t.incident_time))
            .collect();
        released.sort();
        let expected: Vec<(String, Millis)> = (8..12)
            .map(|i| (home(i), T0 + i as Millis * 20_000 + 30 * MIN))
            .collect();
        assert_eq!(
            released, expected,
            "the homes still dark, each from when it was found"
        );
        for i in 8..12 {
            assert_eq!(
                c.notified(&home(i)),
                1,
                "the family of a home released is told"
            );
        }
        let stats: Vec<EngineStats> = c.engines.iter().map(|e| e.stats()).collect();
        assert_eq!(
            stats.iter().map(|s| s.area_homes_released).sum::<u64>(),
            1 + 4
        );
        // The table ends with no area record, and the homes still silent: the 4, and
        // `hh-other`.
        let mut live = HashMap::new();
        for (k, v) in &c.table {
            match v {
                Some(v) => live.insert(k.clone(), v.clone()),
                None => live.remove(k),
            };
        }
        let mut left: Vec<_> = live.keys().cloned().collect();
        left.sort_by_key(|k| format!("{k:?}"));
        let mut expected: Vec<AreaKey> = (8..12).map(|i| AreaKey::Member(home(i))).collect();
        expected.push(AreaKey::Member("hh-other".into()));
        assert_eq!(left, expected);
    }

    #[test]
    fn a_home_silent_alone_gets_its_own_task_after_the_wait_and_alarms_never_wait() {
        let mut c = City::new(3);
        c.run_to(T0, T0 + 40 * MIN);
        assert!(c.tasks("area_silence").is_empty());
        let wait = c.engines[0].rules().area.group_wait;
        let mut own: Vec<(String, Millis, Millis)> = c
            .tasks("home_silence")
            .iter()
            .filter(|t| t.action == Action::CALL_ELDER)
            .map(|t| (t.household_id.clone(), t.incident_time, t.emitted_at))
            .collect();
        own.sort();
        // Three homes are under `min_homes`.
        assert_eq!(own.len(), 3, "{own:?}");
        for (hh, found, sent) in &own {
            assert!(
                *sent >= found + wait && *sent <= found + wait + MIN,
                "{hh}: {found} {sent}"
            );
        }
        // A storm in progress never holds back an alarm.
        let mut c = City::new(12);
        c.run_to(T0, T0 + 40 * MIN);
        assert_eq!(c.tasks("area_silence").len(), 1);
        let t = T0 + 41 * MIN;
        c.engines[1]
            .process(&press(&home(11), "p-1", t), on(1, t), &mut c.out)
            .unwrap();
        let sos = c.tasks("alarm.emergency_button");
        assert!(!sos.is_empty(), "the alarm goes out at once");
        assert!(sos.iter().all(|t| t.emitted_at == t.incident_time));
    }

    #[test]
    fn a_home_is_held_no_longer_than_max_hold_and_the_desk_closing_the_area_releases_the_rest() {
        let mut c = City::new(12);
        c.run_to(T0, T0 + 40 * MIN);
        assert_eq!(c.tasks("area_silence").len(), 1);
        let max_hold = c.engines[0].rules().area.max_hold;
        // Nobody comes back: each home gets its own task `max_hold` after it was found.
        c.run_to(T0 + 40 * MIN, T0 + 30 * MIN + max_hold + 5 * MIN);
        let own = c.tasks("home_silence");
        let calls: Vec<_> = own
            .iter()
            .filter(|t| t.action == Action::CALL_ELDER)
            .collect();
        assert_eq!(calls.len(), 12);
        for t in &calls {
            assert!(t.emitted_at >= t.incident_time + max_hold, "{t:?}");
        }

        // Another city: the desk resolves the area's task; homes still dark get their own.
        let mut c = City::new(12);
        c.run_to(T0, T0 + 40 * MIN);
        let area = c.tasks("area_silence")[0].clone();
        let owner = c
            .engines
            .iter()
            .position(|e| {
                e.incident_view(&area.household_id, area.incident_id.as_deref().unwrap())
                    .is_some()
            })
            .expect("the owner has it");
        let resolve = Input::TaskUpdate(TaskUpdate {
            task_id: area.task_id.clone(),
            household_id: area.household_id.clone(),
            status: TaskUpdateStatus::RESOLVED,
            by: "desk-1".into(),
            at: T0 + 45 * MIN,
            note: None,
            outcome: Some(TaskOutcome::VISITED_OK),
            snooze_until: None,
            assign_to: None,
        });
        let before = c.tasks("home_silence").len();
        c.engines[owner]
            .process(&resolve, on(0, T0 + 45 * MIN), &mut c.out)
            .unwrap();
        c.exchange(T0 + 45 * MIN);
        c.run_to(T0 + 45 * MIN, T0 + 47 * MIN);
        let calls = c.tasks("home_silence")[before..]
            .iter()
            .filter(|t| t.action == Action::CALL_ELDER)
            .count();
        assert_eq!(calls, 12, "released when the desk closed the area");
    }

    #[test]
    fn a_restarted_instance_reading_the_table_again_opens_nothing_twice() {
        let mut c = City::new(12);
        c.run_to(T0, T0 + 40 * MIN);
        let first = c.tasks("area_silence")[0].clone();
        let owner = Partitioner::Murmur2.partition(first.household_id.as_bytes(), 2);
        // Each instance restarts: its checkpoint gives its partition back (the owner's holds
        // the area's incident), then the table is read from the start, its decisions waiting
        // until the end. Nothing is opened, closed or written again.
        for p in 0..2 {
            let (mut e, out) = c.restarted(p, true);
            assert!(out.is_empty(), "{out:#?}");
            assert!(e.take_area_signals().is_empty());
            assert!(e.area_open(AREA));
        }
        // The owner without its checkpoint (older than the incident): the area's record is
        // taken back, not left holding its homes with no incident; judged again, the same
        // incident opens under the same ids, which the desk has already.
        let (mut e, out) = c.restarted(owner, false);
        assert!(out.is_empty(), "{out:#?}");
        assert_eq!(
            e.take_area_signals(),
            vec![(AreaKey::Area(AREA.into()), None)]
        );
        let mut out = Vec::new();
        e.judge_areas(T0 + 41 * MIN, &mut out);
        let again: Vec<&EscalationTask> = out
            .iter()
            .filter_map(|o| match o {
                Output::Task(t) => Some(t),
                _ => None,
            })
            .collect();
        assert_eq!(again.len(), 1);
        assert_eq!(again[0].task_id, first.task_id);
    }

    #[test]
    fn held_homes_move_with_their_partition_and_are_released_by_their_new_owner() {
        let mut c = City::new(12);
        c.run_to(T0, T0 + 40 * MIN);
        assert_eq!(c.tasks("area_silence").len(), 1);
        // Partition 1 moves to a new instance: its checkpoint, and the table read whole.
        let (e, out) = c.restarted(1, true);
        c.out.extend(out);
        c.engines[1] = e;
        for i in 0..8 {
            c.heartbeat(i, T0 + 60 * MIN);
        }
        c.run_to(T0 + 60 * MIN, T0 + 62 * MIN);
        let mut released: Vec<String> = c
            .tasks("home_silence")
            .iter()
            .filter(|t| t.action == Action::CALL_ELDER)
            .map(|t| t.household_id.clone())
            .collect();
        released.sort();
        assert_eq!(released, (8..12).map(home).collect::<Vec<_>>());
    }
}

#[test]
fn missed_doses_are_counted_across_a_checkpoint_and_a_dose_taken_starts_over() {
    let pill = |id: &str, t: Millis, taken: bool| {
        sensor(
            "hh-1",
            id,
            DeviceKind::PILL_BOX,
            t,
            Reading::PillBox { dose_taken: taken },
        )
    };
    let opened = |out: &[Output]| {
        out.iter()
            .filter(|o| {
                matches!(o, Output::TaskEvent(ev)
                if ev.kind == TaskEventKind::OPENED && ev.rule_id == "missed_doses")
            })
            .count()
    };
    let mut e = engine();
    run(&mut e, &profile("hh-1", 1), T0);
    let mut out = Vec::new();
    e.process(&pill("d1", T0, false), on(0, T0), &mut out)
        .unwrap();
    e.process(
        &pill("d2", T0 + 12 * HOUR, true),
        on(0, T0 + 12 * HOUR),
        &mut out,
    )
    .unwrap();
    e.process(
        &pill("d3", T0 + 24 * HOUR, false),
        on(0, T0 + 24 * HOUR),
        &mut out,
    )
    .unwrap();
    e.tick(0, T0 + 25 * HOUR, &mut out);
    assert_eq!(opened(&out), 0, "a dose taken between: one miss in a row");
    // The count moves with the partition.
    let mut moved = engine();
    run(&mut moved, &profile("hh-1", 1), T0);
    moved.restore(e.snapshot(0));
    let mut out = Vec::new();
    moved
        .process(
            &pill("d4", T0 + 36 * HOUR, false),
            on(0, T0 + 36 * HOUR),
            &mut out,
        )
        .unwrap();
    moved.tick(0, T0 + 37 * HOUR, &mut out);
    assert_eq!(opened(&out), 1, "the second miss in a row, after the move");
}

#[test]
fn the_desk_s_gauges_count_what_the_open_incidents_views_show() {
    use crate::localtime::DAY;
    let mut e = engine();
    let mut out = Vec::new();
    // Two districts; two homes overdue for a visit, in two communities; one visited lately.
    for (hh, district, community, last) in [
        ("hh-a1", "420102", "420102001003", T0 - 40 * DAY),
        ("hh-a2", "420102", "420102001004", T0 - 45 * DAY),
        ("hh-b1", "420106", "420106002001", T0 - DAY),
    ] {
        let mut p = profile_of(hh);
        p.district = district.into();
        p.community = community.into();
        p.last_visit_at = Some(last);
        register_seen(&mut e, p, T0, &mut out);
    }
    for hour in 1..=12 * 24 {
        e.tick(0, T0 + hour * HOUR, &mut out);
    }
    let t = T0 + 12 * DAY + 60_000;
    for (hh, id) in [("hh-a1", "p-a1"), ("hh-b1", "p-b1")] {
        e.process(&press(hh, id, t), m(t), &mut out).unwrap();
    }

    let mut got = DeskCounts::default();
    e.count_open(&mut got);
    let mut want = DeskCounts::default();
    let visit = RuleKind::VisitCadence.rule_id();
    let views = e.incident_views();
    for v in &views {
        want.open.entry(v.district.clone()).or_default()[v.severity.index()] += 1;
        if v.rule_id == visit {
            *want.overdue.entry(v.community.clone()).or_default() += 1;
        }
    }
    assert_eq!(got, want);
    assert_eq!(views.len(), e.open_incidents());
    assert_eq!(
        want.overdue,
        HashMap::from([
            ("420102001003".to_string(), 1),
            ("420102001004".to_string(), 1)
        ]),
        "{views:#?}"
    );
    assert_eq!(
        want.open["420106"][Severity::CRITICAL.index()],
        1,
        "{views:#?}"
    );
}
