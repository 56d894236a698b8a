//! Weather warnings through the engine: a region of 10 000 registered households gets
//! exactly one welfare call each, most at risk first, paced, once per alert; heightened mode
//! tightens the absence thresholds until the warning is cancelled or expires.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use carestream::engine::{Engine, Meta};
use carestream::model::*;
use carestream::rules::RuleSet;

const T0: Millis = 1_795_104_000_000;
const MIN: Millis = 60_000;
const HOUR: Millis = 3_600_000;

fn rules() -> Arc<RuleSet> {
    Arc::new(RuleSet::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("rules")).unwrap())
}

fn at(t: Millis) -> Meta {
    Meta {
        partition: 0,
        arrival: t,
    }
}

fn register(e: &mut Engine, n: usize, district: &str, prefix: &str) -> Vec<HouseholdProfile> {
    let mut out = Vec::new();
    (0..n)
        .map(|i| {
            let mut p = carestream::tools::simulate::household(i, 42);
            p.household_id = format!("{prefix}-{i:05}");
            p.district = district.into();
            p.street = format!("{district}001");
            p.community = format!("{district}001001");
            e.process(
                &Input::Household {
                    household_id: p.household_id.clone(),
                    profile: Some(p.clone()),
                },
                at(T0),
                &mut out,
            )
            .unwrap();
            p
        })
        .collect()
}

fn alert(id: &str, region: &str, level: WeatherLevel, expires: Millis, cancelled: bool) -> Input {
    Input::Weather(WeatherAlert {
        alert_id: id.into(),
        region: region.into(),
        kind: WeatherKind::TYPHOON,
        level,
        issued_at: T0,
        expires_at: expires,
        cancelled,
    })
}

fn welfare(out: &[Output]) -> Vec<&EscalationTask> {
    out.iter()
        .filter_map(|o| match o {
            Output::Task(t)
                if t.rule_id == "weather_welfare" && t.action == Action::WELFARE_CALL =>
            {
                Some(t)
            }
            _ => None,
        })
        .collect()
}

#[test]
fn ten_thousand_households_one_call_each_in_risk_order() {
    let rules = rules();
    let mut e = Engine::new(rules.clone());
    let inside = register(&mut e, 10_000, "420106", "in");
    register(&mut e, 2_000, "420111", "out");
    let mut out = Vec::new();
    e.process(
        &alert(
            "wx-1",
            "420106",
            WeatherLevel::ORANGE,
            T0 + 24 * HOUR,
            false,
        ),
        at(T0),
        &mut out,
    )
    .unwrap();
    // The same alert again, and an update to RED: nobody is called twice.
    e.process(
        &alert(
            "wx-1",
            "420106",
            WeatherLevel::ORANGE,
            T0 + 24 * HOUR,
            false,
        ),
        at(T0 + MIN),
        &mut out,
    )
    .unwrap();
    e.process(
        &alert("wx-1", "420106", WeatherLevel::RED, T0 + 24 * HOUR, false),
        at(T0 + 2 * MIN),
        &mut out,
    )
    .unwrap();
    // 200 calls a minute: 10 000 take 50 minutes of event time.
    e.tick(0, T0 + 25 * MIN, &mut out);
    let half = welfare(&out).len();
    assert!(
        (4_900..=5_100).contains(&half),
        "paced: {half} calls in the first 25 min"
    );
    e.tick(0, T0 + 60 * MIN, &mut out);

    let calls = welfare(&out);
    assert_eq!(calls.len(), 10_000);
    let mut per: HashMap<&str, usize> = HashMap::new();
    for t in &calls {
        *per.entry(t.household_id.as_str()).or_default() += 1;
        assert_eq!(t.district, "420106");
        assert_eq!(t.severity, Severity::HIGH, "ORANGE calls are HIGH");
    }
    assert_eq!(per.len(), 10_000);
    assert!(per.values().all(|n| *n == 1));
    // Most at risk first.
    let risk: HashMap<&str, f64> = inside
        .iter()
        .map(|p| (p.household_id.as_str(), rules.weather.risk(p)))
        .collect();
    let order: Vec<f64> = calls
        .iter()
        .map(|t| risk[t.household_id.as_str()])
        .collect();
    assert!(order.windows(2).all(|w| w[0] >= w[1]), "risk order");
    assert!(order[0] > order[9_999], "the risks differ");
    // One contact notification per call (HIGH), and the emission times are paced.
    let notified = out
        .iter()
        .filter(|o| matches!(o, Output::Notification(n) if n.rule_id == "weather_welfare"))
        .count();
    assert_eq!(
        notified, 10_000,
        "every household has contacts, and ORANGE is urgent"
    );
    assert_eq!(calls[0].emitted_at, T0);
    assert_eq!(calls[9_999].emitted_at, T0 + 9_999 * 300);
    assert_eq!(e.stats().welfare_calls, 10_000);
    assert_eq!(e.stats().weather_updates, 2);
}

#[test]
fn heightened_mode_tightens_absence_until_cancelled() {
    let mut e = Engine::new(rules());
    let mut out = Vec::new();
    let mut p = carestream::tools::simulate::household(1, 1);
    for (id, district) in [("in-1", "420106"), ("in-2", "420106"), ("out-1", "420111")] {
        p.household_id = id.into();
        p.district = district.into();
        p.cohorts = vec![Cohort::EMPTY_NEST];
        p.age = 70;
        // No quiet hours: the test is about the warning, not about sleep.
        p.quiet_hours = Some(QuietHours {
            start_minute: 0,
            end_minute: 0,
        });
        e.process(
            &Input::Household {
                household_id: id.into(),
                profile: Some(p.clone()),
            },
            at(T0),
            &mut out,
        )
        .unwrap();
    }
    let motion = |hh: &str, t: Millis| {
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
    for hh in ["in-1", "out-1"] {
        e.process(&motion(hh, T0), at(T0), &mut out).unwrap();
    }
    // A YELLOW heat warning for the district from T0 for a day: 12 h becomes 6 h.
    e.process(
        &alert(
            "wx-2",
            "420106",
            WeatherLevel::YELLOW,
            T0 + 24 * HOUR,
            false,
        ),
        at(T0),
        &mut out,
    )
    .unwrap();
    out.clear();
    e.tick(0, T0 + 6 * HOUR, &mut out);
    let opened: Vec<(&str, &str)> = out
        .iter()
        .filter_map(|o| match o {
            Output::Task(t) if t.tier == 0 && t.action != Action::NOTIFY_CONTACT => {
                Some((t.household_id.as_str(), t.rule_id.as_str()))
            }
            _ => None,
        })
        .collect();
    assert!(opened.contains(&("in-1", "no_movement")), "{opened:?}");
    assert!(
        !opened
            .iter()
            .any(|(h, r)| *h == "out-1" && *r == "no_movement"),
        "outside the region: 12 h still"
    );

    // Cancelled: in-2 moves at T0 + 7 h; its no-movement clock is 12 h again.
    e.process(&motion("in-2", T0 + 7 * HOUR), at(T0 + 7 * HOUR), &mut out)
        .unwrap();
    e.process(
        &alert("wx-2", "420106", WeatherLevel::YELLOW, T0 + 24 * HOUR, true),
        at(T0 + 7 * HOUR),
        &mut out,
    )
    .unwrap();
    out.clear();
    e.tick(0, T0 + 14 * HOUR, &mut out);
    assert!(!out.iter().any(|o| matches!(o, Output::Task(t) if t.household_id == "in-2" && t.rule_id == "no_movement")), "6 h after, no task once the warning is off");
    e.tick(0, T0 + 19 * HOUR, &mut out);
    assert!(out.iter().any(|o| matches!(o, Output::Task(t) if t.household_id == "in-2" && t.rule_id == "no_movement" && t.incident_time == T0 + 19 * HOUR)));
}

#[test]
fn a_cancelled_warning_stops_calling_and_below_min_level_calls_no_one() {
    let mut e = Engine::new(rules());
    register(&mut e, 1_000, "420102", "hh");
    let mut out = Vec::new();
    e.process(
        &alert("wx-blue", "420102", WeatherLevel::BLUE, T0 + HOUR, false),
        at(T0),
        &mut out,
    )
    .unwrap();
    e.tick(0, T0 + 30 * MIN, &mut out);
    assert!(welfare(&out).is_empty(), "BLUE is below min_level");
    e.process(
        &alert(
            "wx-3",
            "420102",
            WeatherLevel::YELLOW,
            T0 + 24 * HOUR,
            false,
        ),
        at(T0 + 30 * MIN),
        &mut out,
    )
    .unwrap();
    e.tick(0, T0 + 32 * MIN, &mut out);
    let before = welfare(&out).len();
    assert!(
        (300..=500).contains(&before),
        "{before} calls in the first 2 minutes"
    );
    assert!(
        welfare(&out)
            .iter()
            .all(|t| t.severity == Severity::ROUTINE),
        "YELLOW calls are ROUTINE"
    );
    e.process(
        &alert("wx-3", "420102", WeatherLevel::YELLOW, T0 + 24 * HOUR, true),
        at(T0 + 32 * MIN),
        &mut out,
    )
    .unwrap();
    e.tick(0, T0 + 3 * HOUR, &mut out);
    assert_eq!(
        welfare(&out).len(),
        before,
        "no calls after the cancellation"
    );
}

#[test]
fn a_higher_warning_while_a_lower_ones_call_is_open_calls_again() {
    let mut e = Engine::new(rules());
    register(&mut e, 3, "420107", "hw");
    let mut out = Vec::new();
    let day = T0 + 24 * HOUR;
    e.process(
        &alert("wx-y", "420107", WeatherLevel::YELLOW, day, false),
        at(T0),
        &mut out,
    )
    .unwrap();
    e.tick(0, T0 + 5 * MIN, &mut out);
    assert_eq!(welfare(&out).len(), 3, "the YELLOW calls");
    // A RED warning (another alert) while the YELLOW calls are still open: called again.
    e.process(
        &alert("wx-r", "420107", WeatherLevel::RED, day, false),
        at(T0 + 10 * MIN),
        &mut out,
    )
    .unwrap();
    e.tick(0, T0 + 20 * MIN, &mut out);
    let calls = welfare(&out);
    assert_eq!(calls.len(), 6, "each home called again for the RED warning");
    assert!(calls[3..].iter().all(|t| t.severity == Severity::HIGH));
    let superseded = out
        .iter()
        .filter(|o| {
            matches!(o, Output::TaskEvent(ev)
                if ev.kind == TaskEventKind::AUTO_RESOLVED && ev.rule_id == "weather_welfare")
        })
        .count();
    assert!(superseded >= 3, "the YELLOW incidents closed: {superseded}");
    // A lower warning while the RED holds calls nobody.
    e.process(
        &alert("wx-o", "420107", WeatherLevel::ORANGE, day, false),
        at(T0 + 30 * MIN),
        &mut out,
    )
    .unwrap();
    e.tick(0, T0 + 40 * MIN, &mut out);
    assert_eq!(welfare(&out).len(), 6);
}

/// Two instances share four partitions. Every home of the region is called once, by the
/// owner of the partition the producers' partitioner gives its id, whether it has sent
/// anything or not, whether the owner took its partitions before or after the warning came,
/// and whether the home was registered before or after the warning.
#[test]
fn every_registered_home_is_called_once_by_the_owner_of_its_partition() {
    use carestream::partition::Partitioner;
    let rules = rules();
    let by = Partitioner::Murmur2;
    let partition_of = |id: &str| by.partition(id.as_bytes(), 4);
    let mut instances: Vec<Engine> = (0..2).map(|_| Engine::new(rules.clone())).collect();
    let mut outs: Vec<Vec<Output>> = vec![Vec::new(), Vec::new()];
    let mut homes = Vec::new();
    for (i, e) in instances.iter_mut().enumerate() {
        e.set_owned(Some(Vec::new()));
        e.set_partitioning(by, 4);
        homes = register(e, 400, "420106", "hh");
        if i == 0 {
            // The first takes its partitions before the warning, the second after it.
            e.adopt(0);
            e.adopt(1);
        }
    }
    // A quarter of the homes have sent a heartbeat, each on its own partition.
    for (k, p) in homes.iter().enumerate().filter(|(k, _)| k % 4 == 0) {
        let part = partition_of(&p.household_id);
        let hb = Input::Heartbeat(DeviceHeartbeat {
            household_id: p.household_id.clone(),
            device_id: format!("{}-gw", p.household_id),
            device_kind: DeviceKind::MOTION_PIR,
            event_time: T0 + k as Millis,
            battery_pct: Some(80),
            mains_power: None,
        });
        let owner = if part < 2 { 0 } else { 1 };
        let meta = Meta {
            partition: part,
            arrival: T0 + k as Millis,
        };
        instances[owner]
            .process(&hb, meta, &mut outs[owner])
            .unwrap();
    }
    let warning = alert("wx-9", "420106", WeatherLevel::RED, T0 + 24 * HOUR, false);
    for (e, out) in instances.iter_mut().zip(outs.iter_mut()) {
        e.process(&warning, at(T0 + MIN), out).unwrap();
    }
    instances[1].adopt(2);
    instances[1].adopt(3);
    // Fifty more homes registered while the warning holds.
    let mut late = Vec::new();
    for (e, out) in instances.iter_mut().zip(outs.iter_mut()) {
        late = (0..50)
            .map(|i| {
                let mut p = carestream::tools::simulate::household(i, 7);
                p.household_id = format!("late-{i:03}");
                p.district = "420106".into();
                e.process(
                    &Input::Household {
                        household_id: p.household_id.clone(),
                        profile: Some(p.clone()),
                    },
                    at(T0 + 2 * MIN),
                    out,
                )
                .unwrap();
                p
            })
            .collect();
    }
    for (e, out) in instances.iter_mut().zip(outs.iter_mut()) {
        for p in 0..4 {
            e.tick(p, T0 + 2 * HOUR, out);
        }
    }
    let mut called: HashMap<String, usize> = HashMap::new();
    for (owner, out) in outs.iter().enumerate() {
        let calls = welfare(out);
        for t in &calls {
            *called.entry(t.household_id.clone()).or_default() += 1;
            let part = partition_of(&t.household_id);
            assert_eq!(
                part / 2,
                owner as i32,
                "{} (partition {part}) called by instance {owner}",
                t.household_id
            );
        }
        // Each partition's calls go most at risk first.
        for part in 0..4 {
            let risk: Vec<f64> = calls
                .iter()
                .filter(|t| !t.household_id.starts_with("late-"))
                .filter(|t| partition_of(&t.household_id) == part)
                .map(|t| {
                    let p = homes.iter().find(|p| p.household_id == t.household_id);
                    rules.weather.risk(p.unwrap())
                })
                .collect();
            assert!(risk.windows(2).all(|w| w[0] >= w[1]), "risk order");
        }
    }
    let everyone: Vec<&String> = homes.iter().chain(&late).map(|p| &p.household_id).collect();
    let missing: Vec<&&String> = everyone
        .iter()
        .filter(|id| !called.contains_key(**id))
        .collect();
    assert!(missing.is_empty(), "never called: {missing:?}");
    assert!(called.values().all(|n| *n == 1), "called twice: {called:?}");
    assert_eq!(called.len(), 450);
    for e in &instances {
        assert_eq!(e.stats().partitioner_mismatches, 0);
    }
}

#[test]
fn calls_not_yet_made_go_with_a_checkpoint_to_the_next_owner() {
    let (first, second) = (
        alert("wx-1", "420106", WeatherLevel::RED, T0 + 24 * HOUR, false),
        alert("wx-2", "420111", WeatherLevel::RED, T0 + 24 * HOUR, false),
    );
    let mut live = Engine::new(rules());
    register(&mut live, 400, "420106", "in");
    register(&mut live, 400, "420111", "out");
    let mut out = Vec::new();
    live.process(&first, at(T0), &mut out).unwrap();
    // 200 calls a minute: the first warning's 400 are made, then half the second's.
    live.tick(0, T0 + 3 * MIN, &mut out);
    live.process(&second, at(T0 + 3 * MIN), &mut out).unwrap();
    live.tick(0, T0 + 4 * MIN, &mut out);
    let made = welfare(&out).len();
    assert!((550..=650).contains(&made), "{made} calls made");

    // Copied as the pipeline does; the live instance goes on and makes the rest.
    let state = live.capture(0);
    let mut rest = Vec::new();
    live.tick(0, T0 + 10 * MIN, &mut rest);
    let calls = |out: &[Output]| -> Vec<(String, Millis)> {
        welfare(out)
            .iter()
            .map(|t| (t.task_id.clone(), t.emitted_at))
            .collect()
    };
    let rest = calls(&rest);
    assert_eq!(made + rest.len(), 800, "everyone called once");

    // The next owner read the tables in another order: its warnings' places differ.
    let json = serde_json::to_vec(&state.finish()).unwrap();
    let mut next = Engine::new(rules());
    register(&mut next, 400, "420111", "out");
    register(&mut next, 400, "420106", "in");
    next.process(&second, at(T0 + 3 * MIN), &mut Vec::new())
        .unwrap();
    next.process(&first, at(T0), &mut Vec::new()).unwrap();
    next.restore(serde_json::from_slice(&json).unwrap());
    let mut after = Vec::new();
    next.tick(0, T0 + 10 * MIN, &mut after);
    assert_eq!(calls(&after), rest, "the same calls, at the same times");
}
