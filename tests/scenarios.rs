//! Golden scenarios: `tests/scenarios/*.toml` give households, a timeline of events (with
//! arrival times where they come late) and the exact lifecycle events expected, with times.
//! The engine runs them through the shipped `rules/`. Times are local (Asia/Shanghai) on
//! days counted from 2026-11-20: "08:00", "1d 09:30", "2d 23:59:30".

use std::path::Path;
use std::sync::Arc;

use serde::Deserialize;

use carestream::engine::{ids, Engine, Meta};
use carestream::model::*;
use carestream::rules::RuleSet;

/// 2026-11-20T00:00:00+08:00.
const DAY0: Millis = 1_795_104_000_000;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Scenario {
    description: String,
    #[serde(default)]
    household: Vec<HouseholdSpec>,
    #[serde(default)]
    event: Vec<EventSpec>,
    #[serde(default)]
    expect: Vec<Expect>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct HouseholdSpec {
    id: String,
    #[serde(default)]
    cohorts: Vec<String>,
    #[serde(default)]
    ability_level: i32,
    #[serde(default = "default_age")]
    age: i32,
    quiet_hours: Option<String>,
    away_until: Option<String>,
    #[serde(default = "one")]
    contacts: usize,
}

fn default_age() -> i32 {
    75
}
fn one() -> usize {
    1
}

#[derive(Deserialize, Clone)]
#[serde(deny_unknown_fields)]
struct EventSpec {
    at: String,
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    household: Option<String>,
    /// When the record reaches Kafka, if later than `at`.
    arrive: Option<String>,
    id: Option<String>,
    device: Option<String>,
    hr: Option<i32>,
    rr: Option<i32>,
    #[serde(default = "yes")]
    worn: bool,
    value: Option<f64>,
    checkin: Option<String>,
    /// For `desk`: the status the desk sends, and the rule whose open call it answers.
    status: Option<String>,
    rule: Option<String>,
    /// Repeat the event every `every` until `until`.
    every: Option<String>,
    until: Option<String>,
    step: Option<f64>,
}

fn yes() -> bool {
    true
}

#[derive(Deserialize, Debug, PartialEq, Eq, Clone, PartialOrd, Ord)]
#[serde(deny_unknown_fields)]
struct Expect {
    at: String,
    kind: String,
    rule: String,
    household: String,
    incident_time: Option<String>,
    /// For ESCALATED: the new tier and what it asks for.
    tier: Option<i32>,
    action: Option<String>,
}

fn time(s: &str) -> Millis {
    let s = s.trim();
    let (day, clock) = match s.split_once(' ') {
        Some((d, c)) => (d.trim_end_matches('d').parse::<i64>().expect("day"), c),
        None => (0, s),
    };
    let parts: Vec<i64> = clock.split(':').map(|x| x.parse().expect("time")).collect();
    let secs = parts[0] * 3600 + parts[1] * 60 + parts.get(2).copied().unwrap_or(0);
    DAY0 + day * 86_400_000 + secs * 1000
}

fn label(t: Millis) -> String {
    let rel = t - DAY0;
    let (day, ms) = (rel.div_euclid(86_400_000), rel.rem_euclid(86_400_000));
    let s = ms / 1000;
    let clock = if s % 60 == 0 {
        format!("{:02}:{:02}", s / 3600, s / 60 % 60)
    } else {
        format!("{:02}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60)
    };
    if day == 0 {
        clock
    } else {
        format!("{day}d {clock}")
    }
}

fn duration(s: &str) -> Millis {
    carestream::rules::parse_duration(s).expect("duration")
}

fn profile(h: &HouseholdSpec) -> Input {
    let quiet = h.quiet_hours.as_ref().map(|q| {
        let (a, b) = q.split_once('-').unwrap();
        let m = |x: &str| ((time(x) - DAY0) / 60_000) as i32;
        QuietHours {
            start_minute: m(a),
            end_minute: m(b),
        }
    });
    Input::Household {
        household_id: h.id.clone(),
        profile: Some(HouseholdProfile {
            household_id: h.id.clone(),
            district: "420102".into(),
            street: "420102001".into(),
            community: "420102001001".into(),
            cohorts: h
                .cohorts
                .iter()
                .map(|c| Cohort::from_symbol(c).expect("cohort"))
                .collect(),
            ability_level: h.ability_level,
            age: h.age,
            emergency_contacts: (0..h.contacts)
                .map(|i| Contact {
                    name: format!("c{i}"),
                    relation: "son".into(),
                    phone: "13900000000".into(),
                })
                .collect(),
            quiet_hours: quiet,
            away_until: h.away_until.as_deref().map(time),
            timezone: "Asia/Shanghai".into(),
            last_visit_at: None,
        }),
    }
}

/// One timeline entry: an input (or a clock tick) and when it arrives.
#[derive(Clone)]
#[allow(clippy::large_enum_variant)]
enum Step {
    Input(Input),
    Tick,
    /// The dispatch desk answers the call task of the household's open incident of `rule`.
    Desk {
        household: String,
        rule: String,
        status: TaskUpdateStatus,
        at: Millis,
    },
}

fn expand(events: &[EventSpec], default_household: &str) -> Vec<(Millis, Millis, Step)> {
    let mut out = Vec::new();
    let mut n = 0;
    for e in events {
        let start = time(&e.at);
        let times: Vec<Millis> = match (&e.every, &e.until) {
            (Some(every), Some(until)) => (0..)
                .map(|i| start + i * duration(every))
                .take_while(|t| *t <= time(until))
                .collect(),
            _ => vec![start],
        };
        for (i, t) in times.iter().enumerate() {
            n += 1;
            let hh = e
                .household
                .clone()
                .unwrap_or_else(|| default_household.to_string());
            let id = e.id.clone().unwrap_or_else(|| format!("ev-{n}"));
            let arrive = e.arrive.as_deref().map_or(*t, |a| time(a) + (t - start));
            let sensor = |kind: DeviceKind, reading: Reading| {
                Step::Input(Input::Sensor(SensorEvent {
                    event_id: id.clone(),
                    household_id: hh.clone(),
                    device_id: format!("{hh}-{}", kind.as_str().to_lowercase()),
                    device_kind: kind,
                    event_time: *t,
                    reading,
                    gateway_id: None,
                }))
            };
            let value = e.value.unwrap_or(0.0) + e.step.unwrap_or(0.0) * i as f64;
            let step = match e.kind.as_str() {
                "motion" => sensor(DeviceKind::MOTION_PIR, Reading::Motion { detected: true }),
                "door" => sensor(DeviceKind::DOOR_CONTACT, Reading::Door { open: true }),
                "door_closed" => sensor(DeviceKind::DOOR_CONTACT, Reading::Door { open: false }),
                "bed_out" => sensor(DeviceKind::BED_SENSOR, Reading::Bed { occupied: false }),
                "bed_in" => sensor(DeviceKind::BED_SENSOR, Reading::Bed { occupied: true }),
                "pill" => sensor(DeviceKind::PILL_BOX, Reading::PillBox { dose_taken: true }),
                "pill_missed" => {
                    sensor(DeviceKind::PILL_BOX, Reading::PillBox { dose_taken: false })
                }
                "vitals" => sensor(
                    DeviceKind::WEARABLE,
                    Reading::Vitals {
                        heart_rate_bpm: e.hr,
                        respiration_rpm: e.rr,
                        worn: e.worn,
                    },
                ),
                "water" => sensor(
                    DeviceKind::WATER_METER,
                    Reading::Meter { cumulative: value },
                ),
                "power" => sensor(
                    DeviceKind::POWER_METER,
                    Reading::Meter { cumulative: value },
                ),
                "alarm" => sensor(
                    DeviceKind::from_symbol(e.device.as_deref().expect("alarm device")).unwrap(),
                    Reading::Alarm { active: true },
                ),
                "heartbeat" => Step::Input(Input::Heartbeat(DeviceHeartbeat {
                    household_id: hh.clone(),
                    device_id: format!(
                        "{hh}-{}",
                        e.device.as_deref().unwrap_or("MOTION_PIR").to_lowercase()
                    ),
                    device_kind: DeviceKind::from_symbol(
                        e.device.as_deref().unwrap_or("MOTION_PIR"),
                    )
                    .unwrap(),
                    event_time: *t,
                    battery_pct: Some(80),
                    mains_power: None,
                })),
                "checkin" => Step::Input(Input::CheckIn(CheckIn {
                    household_id: hh.clone(),
                    event_time: *t,
                    kind: CheckInKind::from_symbol(e.checkin.as_deref().unwrap_or("PHONE_ROUND"))
                        .unwrap(),
                    visitor_id: None,
                })),
                "tick" => Step::Tick,
                "desk" => Step::Desk {
                    household: hh.clone(),
                    rule: e.rule.clone().expect("desk needs rule"),
                    status: TaskUpdateStatus::from_symbol(
                        e.status.as_deref().expect("desk needs status"),
                    )
                    .expect("status"),
                    at: *t,
                },
                other => panic!("unknown event type {other}"),
            };
            out.push((arrive, *t, step));
        }
    }
    // Kafka delivers in arrival order (stable for equal arrivals, as listed).
    out.sort_by_key(|(arrive, _, _)| *arrive);
    out
}

fn rules() -> Arc<RuleSet> {
    Arc::new(RuleSet::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("rules")).unwrap())
}

/// Reads back what the engine wrote to `care.area-signals`, as every instance reads that table.
fn read_areas(engine: &mut Engine, arrival: Millis, out: &mut Vec<Output>) {
    loop {
        let records = engine.take_area_signals();
        if records.is_empty() {
            return;
        }
        for (key, signal) in records {
            let meta = Meta {
                partition: 0,
                arrival,
            };
            engine
                .process(&Input::Area { key, signal }, meta, out)
                .unwrap();
        }
    }
}

/// Runs a timeline; returns every output.
fn run(households: &[Input], timeline: &[(Millis, Millis, Step)]) -> Vec<Output> {
    let mut engine = Engine::new(rules());
    let mut out = Vec::new();
    for p in households {
        engine
            .process(
                p,
                Meta {
                    partition: 0,
                    arrival: DAY0,
                },
                &mut out,
            )
            .unwrap();
    }
    for (arrive, _, step) in timeline {
        match step {
            Step::Input(i) => engine
                .process(
                    i,
                    Meta {
                        partition: 0,
                        arrival: *arrive,
                    },
                    &mut out,
                )
                .unwrap(),
            Step::Tick => engine.tick(0, *arrive, &mut out),
            Step::Desk {
                household,
                rule,
                status,
                at,
            } => {
                let task_id = out
                    .iter()
                    .rev()
                    .find_map(|o| match o {
                        Output::Task(t)
                            if &t.household_id == household
                                && &t.rule_id == rule
                                && t.tier == 0
                                && t.action != Action::NOTIFY_CONTACT =>
                        {
                            Some(t.task_id.clone())
                        }
                        _ => None,
                    })
                    .expect("the desk answers a task it was given");
                let u = Input::TaskUpdate(TaskUpdate {
                    task_id,
                    household_id: household.clone(),
                    status: *status,
                    by: "desk-1".into(),
                    at: *at,
                    note: None,
                    outcome: None,
                    snooze_until: None,
                    assign_to: None,
                });
                engine
                    .process(
                        &u,
                        Meta {
                            partition: 0,
                            arrival: *arrive,
                        },
                        &mut out,
                    )
                    .unwrap();
            }
        }
        read_areas(&mut engine, *arrive, &mut out);
    }
    out
}

/// The incidents' lifecycle, one line per incident and transition (an incident's tasks
/// move together; an escalation is its own line with the new tier and action).
fn lifecycle(out: &[Output]) -> Vec<Expect> {
    let tasks: std::collections::HashMap<&str, &EscalationTask> = out
        .iter()
        .filter_map(|o| match o {
            Output::Task(t) => Some((t.task_id.as_str(), t)),
            _ => None,
        })
        .collect();
    let mut seen = std::collections::HashSet::new();
    out.iter()
        .filter_map(|o| match o {
            Output::TaskEvent(e)
                if seen.insert((
                    e.incident_id.clone(),
                    e.kind,
                    e.at,
                    e.tier.filter(|_| e.kind == TaskEventKind::ESCALATED),
                )) =>
            {
                let task = tasks.get(e.task_id.as_str());
                let escalated = e.kind == TaskEventKind::ESCALATED;
                Some(Expect {
                    at: label(e.at),
                    kind: e.kind.as_str().to_string(),
                    rule: e.rule_id.clone(),
                    household: e.household_id.clone(),
                    incident_time: (e.kind == TaskEventKind::OPENED)
                        .then(|| label(task.expect("opened task").incident_time)),
                    tier: e.tier.filter(|_| escalated),
                    action: task
                        .filter(|_| escalated)
                        .map(|t| t.action.as_str().to_string()),
                })
            }
            _ => None,
        })
        .collect()
}

#[test]
fn golden_scenarios() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/scenarios");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    files.sort();
    assert!(files.len() >= 8, "scenario files: {files:?}");
    let mut failures = Vec::new();
    for path in &files {
        let sc: Scenario = toml::from_str(&std::fs::read_to_string(path).unwrap())
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let households: Vec<Input> = sc.household.iter().map(profile).collect();
        let first = sc.household.first().map_or("hh-1", |h| h.id.as_str());
        let timeline = expand(&sc.event, first);
        let out = run(&households, &timeline);
        let got = lifecycle(&out);
        // Every incident notifies the contacts (once, with its first task) exactly when urgent,
        // and tells them once more when it is resolved (by the desk, or the condition
        // clearing), never when it was superseded. An area's incident has no family: it
        // notifies no one.
        for o in &out {
            if let Output::Task(t) = o {
                if t.household_id.starts_with(carestream::engine::AREA_PREFIX) {
                    let told = out
                        .iter()
                        .filter(|n| matches!(n, Output::Notification(n) if n.task_id == t.task_id))
                        .count();
                    assert_eq!(told, 0, "{}: an area's task told someone", path.display());
                } else if t.tier == 0 && t.action != Action::NOTIFY_CONTACT {
                    let notices = |id: &str| {
                        out.iter()
                            .filter(|n| matches!(n, Output::Notification(n) if n.task_id == t.task_id && n.notification_id == id))
                            .count()
                    };
                    let urgent = matches!(t.severity, Severity::CRITICAL | Severity::HIGH);
                    let opened = notices(&ids::notification_id(&t.task_id));
                    assert_eq!(opened == 1, urgent, "{}: {}", path.display(), t.rule_id);
                    let resolved = out.iter().any(|e| {
                        matches!(e, Output::TaskEvent(e) if e.task_id == t.task_id
                            && (e.kind == TaskEventKind::RESOLVED || e.kind == TaskEventKind::FALSE_ALARM
                                || (e.kind == TaskEventKind::AUTO_RESOLVED && !e.reason.starts_with("superseded"))))
                    });
                    let told = notices(&ids::resolution_notification_id(&t.task_id));
                    assert_eq!(
                        told,
                        usize::from(urgent && resolved),
                        "{}: {} resolution notices",
                        path.display(),
                        t.rule_id
                    );
                }
                assert!(!t.reason.contains("13900000000"));
            }
        }
        let mut want = sc.expect.clone();
        for w in want.iter_mut() {
            // Normalise the expected times' spelling to the labels produced.
            w.at = label(time(&w.at));
            w.incident_time = w.incident_time.as_deref().map(|t| label(time(t)));
        }
        if got != want {
            let show = |v: &[Expect]| {
                v.iter()
                    .map(|e| {
                        format!(
                            "    {} {} {} {} {} {}",
                            e.at,
                            e.kind,
                            e.rule,
                            e.household,
                            e.incident_time.as_deref().unwrap_or(""),
                            e.tier
                                .map(|t| format!("tier {t} {}", e.action.as_deref().unwrap_or("")))
                                .unwrap_or_default()
                        )
                    })
                    .collect::<Vec<_>>()
                    .join("\n")
            };
            failures.push(format!(
                "{} ({}):\n  want:\n{}\n  got:\n{}",
                path.display(),
                sc.description,
                show(&want),
                show(&got)
            ));
        }
        // Replaying the same input gives byte-identical outputs.
        assert_eq!(
            out,
            run(&households, &timeline),
            "{}: replay differs",
            path.display()
        );
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}
