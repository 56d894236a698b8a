//! Scoring a simulated run: every incident the simulator injected (its JSON lines on stdout)
//! against the tasks on the dispatch topics. An incident is caught in time when a task for
//! the same household and the rule expected to catch it went out by its deadline. Tasks of
//! the rules about the elder that match no injected incident are false alarms, counted per
//! household-day; the operational ones (devices, rounds, visits, weather) are listed apart,
//! as the simulated city causes them on purpose (flat batteries, gateway outages, warnings).

use std::collections::BTreeMap;

use serde::Serialize;

use crate::model::*;

#[derive(Debug, Clone, PartialEq)]
pub struct Injected {
    pub household_id: String,
    pub kind: String,
    pub rule: String,
    pub at: Millis,
    pub deadline: Millis,
    /// Some device could see it (false: a racing heart with no watch worn and nobody on
    /// the mattress); unobservable incidents are counted apart, neither caught nor missed.
    pub observable: bool,
    /// When the condition ended (a collapse lasts hours; an alarm is over at once): a rule
    /// looking back a day may still see it then.
    pub until: Millis,
}

/// The simulator's output: injected incidents, and the city's size, start and simulated time.
pub fn read_log(text: &str) -> (Vec<Injected>, Option<(usize, Millis, Millis)>) {
    let mut injected = Vec::new();
    let mut size = None;
    for line in text.lines() {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        if let Some(i) = v.get("injected") {
            injected.push(Injected {
                household_id: i["household_id"].as_str().unwrap_or_default().to_string(),
                kind: i["kind"].as_str().unwrap_or_default().to_string(),
                rule: i["rule"].as_str().unwrap_or_default().to_string(),
                at: i["at"].as_i64().unwrap_or_default(),
                deadline: i["deadline"].as_i64().unwrap_or_default(),
                observable: i["observable"].as_bool().unwrap_or(true),
                until: i["until"]
                    .as_i64()
                    .unwrap_or_else(|| i["at"].as_i64().unwrap_or_default()),
            });
        } else if let Some(s) = v.get("simulated") {
            size = Some((
                s["households"].as_u64().unwrap_or(0) as usize,
                s["start"].as_i64().unwrap_or(0),
                s["ms"].as_i64().unwrap_or(0),
            ));
        }
    }
    (injected, size)
}

#[derive(Debug, Serialize, PartialEq)]
pub struct Found {
    pub household_id: String,
    pub kind: String,
    pub at: Millis,
    /// Onset to the first task, and to the promise, in seconds.
    pub after_s: i64,
    pub promise_s: i64,
    pub by: String,
}

#[derive(Debug, Default, Serialize, PartialEq)]
pub struct Scorecard {
    pub incidents: usize,
    pub caught_in_time: usize,
    pub caught_late: usize,
    /// Each incident caught late: household, kind, onset, and how late past its promise.
    pub late: Vec<String>,
    pub missed: Vec<String>,
    /// Alarms repeated while their incident was open: appended to it, not new incidents.
    pub repeats_of_open_alarms: Vec<String>,
    /// Incidents whose deadline lies after the end of the run: not judged.
    pub pending: usize,
    /// Incidents no device could see: counted apart, whatever task follows.
    pub unobservable: usize,
    /// Every incident found: how long after its onset its first task came, against its
    /// promise, and which rule found it.
    pub found: Vec<Found>,
    pub incident_tasks: usize,
    pub false_tasks: usize,
    pub false_by_rule: BTreeMap<String, usize>,
    /// The first false tasks: household, rule, when (ms) and the rule's finding, for whoever
    /// looks into them.
    pub false_examples: Vec<String>,
    pub household_days: f64,
    pub false_tasks_per_household_day: f64,
    /// The budget's unit: a month is 30 days.
    pub false_tasks_per_household_month: f64,
    pub operational_tasks: BTreeMap<String, usize>,
}

/// How far before an incident's onset a task finding it may be stamped: a device's clock
/// behind by up to the simulator's drift, and a minute for its tick.
const EARLY: Millis = crate::tools::simulate::DRIFT + 60_000;

/// Rules about the elder: a task from one of these with no incident behind it is a false alarm.
fn about_the_elder(rule: &str) -> bool {
    rule.starts_with("alarm.")
        || [
            "no_movement",
            "abnormal_vitals",
            "night_bed_exit",
            "night_door",
            "water_silence",
            "water_flow",
            "missed_doses",
        ]
        .contains(&rule)
}

/// `repeats_held`: per alarm rule, how long a repeat of its open incident is held back
/// (the rules' `stale_after`).
pub fn score(
    injected: &[Injected],
    tasks: &[EscalationTask],
    households: usize,
    start: Millis,
    simulated: Millis,
    repeats_held: &BTreeMap<String, Millis>,
) -> Scorecard {
    // Each incident's first call (tier 0, not the NOTIFY_CONTACT beside it, nor the same task
    // sent again for a repeated alarm).
    let calls: Vec<&EscalationTask> = tasks
        .iter()
        .filter(|t| t.tier == 0 && t.action != Action::NOTIFY_CONTACT && t.repeat_count.is_none())
        .collect();
    let mut card = Scorecard {
        incidents: injected.len(),
        ..Scorecard::default()
    };
    let mut used = vec![false; calls.len()];
    for inc in injected {
        // A condition can only be found once it has begun. It is found by the first task of
        // any rule about the elder, or of the daily round, for the household from then on (a
        // collapse may show first as no water used, or nobody answering the round): the
        // rule expected to catch it gives only the promise to meet.
        let found = calls
            .iter()
            .enumerate()
            .filter(|(_, t)| {
                t.household_id == inc.household_id
                    && (about_the_elder(&t.rule_id) || t.rule_id == "missed_daily_round")
                    && t.emitted_at >= inc.at - EARLY
            })
            .min_by_key(|(_, t)| t.emitted_at);
        // Every task about the elder from the onset to a day after the condition ended is
        // explained by it (water_silence looks back 24 h: a collapse leaves a dry day behind).
        for (i, t) in calls.iter().enumerate() {
            if t.household_id == inc.household_id
                && t.emitted_at >= inc.at - EARLY
                && t.emitted_at <= inc.until.max(inc.at) + 24 * 3_600_000
            {
                used[i] = true;
            }
        }
        // The same alarm again in a home whose incident for it is still open: a repeat
        // appended to that incident, counted apart; a later task of another rule is not its
        // finding.
        let repeat = card.found.iter().any(|f| {
            f.household_id == inc.household_id
                && f.kind == inc.kind
                && f.at < inc.at
                && repeats_held
                    .get(&inc.rule)
                    .is_some_and(|w| inc.at - f.at < *w)
        });
        match found {
            // Nothing at home could see it (the elder away, no device on): a later task is
            // about something else.
            _ if !inc.observable => card.unobservable += 1,
            Some((_, t)) if repeat && t.emitted_at > inc.deadline => card
                .repeats_of_open_alarms
                .push(format!("{} {} at {}", inc.household_id, inc.kind, inc.at)),
            Some((i, t)) => {
                used[i] = true;
                card.found.push(Found {
                    household_id: inc.household_id.clone(),
                    kind: inc.kind.clone(),
                    at: inc.at,
                    after_s: (t.emitted_at - inc.at) / 1000,
                    promise_s: (inc.deadline - inc.at) / 1000,
                    by: t.rule_id.clone(),
                });
                if t.emitted_at <= inc.deadline {
                    card.caught_in_time += 1;
                } else {
                    card.caught_late += 1;
                    card.late.push(format!(
                        "{} {} at {}: {} s past its promise",
                        inc.household_id,
                        inc.kind,
                        inc.at,
                        (t.emitted_at - inc.deadline) / 1000
                    ));
                }
            }
            None if inc.deadline > start + simulated => card.pending += 1,
            None if repeat => card
                .repeats_of_open_alarms
                .push(format!("{} {} at {}", inc.household_id, inc.kind, inc.at)),
            None => card
                .missed
                .push(format!("{} {} at {}", inc.household_id, inc.kind, inc.at)),
        }
    }
    for (i, t) in calls.iter().enumerate() {
        if about_the_elder(&t.rule_id) {
            card.incident_tasks += 1;
            if !used[i] {
                card.false_tasks += 1;
                *card.false_by_rule.entry(t.rule_id.clone()).or_default() += 1;
                if card.false_examples.len() < 50 {
                    let why = t.evidence.first().map(|e| format!(": {}", e.summary));
                    let why = why.unwrap_or_default();
                    card.false_examples.push(format!(
                        "{} {} at {}{why}",
                        t.household_id, t.rule_id, t.emitted_at
                    ));
                }
            }
        } else {
            *card.operational_tasks.entry(t.rule_id.clone()).or_default() += 1;
        }
    }
    card.household_days = households as f64 * simulated as f64 / 86_400_000.0;
    if card.household_days > 0.0 {
        card.false_tasks_per_household_day = card.false_tasks as f64 / card.household_days;
        card.false_tasks_per_household_month = card.false_tasks_per_household_day * 30.0;
    }
    card
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task(hh: &str, rule: &str, action: Action, tier: i32, emitted: Millis) -> EscalationTask {
        EscalationTask {
            task_id: format!("{hh}-{rule}-{tier}-{action}"),
            incident_id: None,
            household_id: hh.into(),
            rule_id: rule.into(),
            severity: Severity::HIGH,
            action,
            tier,
            district: String::new(),
            street: String::new(),
            community: String::new(),
            reason: String::new(),
            evidence: vec![],
            incident_time: emitted,
            emitted_at: emitted,
            respond_by: emitted,
            repeat_count: None,
            assigned_to: None,
        }
    }

    #[test]
    fn a_task_stamped_by_a_clock_behind_finds_its_incident() {
        // g's pill box runs 2 min 30 s behind: its missed-doses task is stamped before the
        // onset the simulator recorded. h's task 3 min 20 s before is about something else.
        let log = r#"{"injected":{"household_id":"g","kind":"MISSED_DOSES","rule":"missed_doses","at":1000000,"deadline":1060000}}
{"injected":{"household_id":"h","kind":"MISSED_DOSES","rule":"missed_doses","at":1000000,"deadline":1060000}}"#;
        let (injected, _) = read_log(log);
        let tasks = vec![
            task("g", "missed_doses", Action::CALL_ELDER, 0, 850_000),
            task("h", "missed_doses", Action::CALL_ELDER, 0, 800_000),
        ];
        let card = score(&injected, &tasks, 2, 0, 86_400_000, &BTreeMap::new());
        assert_eq!(card.caught_in_time, 1);
        assert_eq!(card.missed, vec!["h MISSED_DOSES at 1000000".to_string()]);
        assert_eq!(card.false_tasks, 1);
    }

    #[test]
    fn caught_late_missed_and_false() {
        let log = r#"{"injected":{"household_id":"a","kind":"FALL_DETECTOR","rule":"alarm.fall","at":1000,"deadline":61000}}
{"injected":{"household_id":"b","kind":"COLLAPSE","rule":"no_movement","at":1000,"deadline":5000}}
{"injected":{"household_id":"c","kind":"TACHYCARDIA","rule":"abnormal_vitals","at":1000,"deadline":5000}}
not json
{"injected":{"household_id":"e","kind":"COLLAPSE","rule":"no_movement","at":1000,"deadline":999999999}}
{"injected":{"household_id":"f","kind":"TACHYCARDIA","rule":"abnormal_vitals","at":1000,"deadline":5000,"observable":false}}
{"injected":{"household_id":"a","kind":"FALL_DETECTOR","rule":"alarm.fall","at":7201000,"deadline":7261000}}
{"injected":{"household_id":"a","kind":"FALL_DETECTOR","rule":"alarm.fall","at":36001000,"deadline":36061000}}
{"simulated":{"households":10,"start":0,"ms":172800000}}"#;
        let (injected, size) = read_log(log);
        assert_eq!((injected.len(), size), (7, Some((10, 0, 172_800_000))));
        let tasks = vec![
            task("a", "alarm.fall", Action::CALL_ELDER, 0, 1500),
            task("a", "alarm.fall", Action::NOTIFY_CONTACT, 0, 1500),
            task("a", "alarm.fall", Action::ONSITE_VISIT, 1, 301_500),
            task("b", "no_movement", Action::CALL_ELDER, 0, 9000),
            task("d", "night_door", Action::CALL_ELDER, 0, 2000),
            task("d", "device_silence", Action::DEVICE_MAINTENANCE, 0, 2000),
            // Hours after a's held-back repeat: not its finding.
            task("a", "missed_daily_round", Action::CALL_ELDER, 0, 20_000_000),
            // Days after f's unseen racing heart: not its finding.
            task(
                "f",
                "missed_daily_round",
                Action::CALL_ELDER,
                0,
                100_000_000,
            ),
        ];
        // a's fall alarm again 2 h later, its incident open: held back (the missed round hours
        // later is not its finding); 10 h later, past the 6 h it is held for, and no task
        // since: missed.
        let held = BTreeMap::from([("alarm.fall".to_string(), 6 * 3_600_000)]);
        let card = score(&injected, &tasks, 10, 0, 172_800_000, &held);
        assert_eq!(
            card.repeats_of_open_alarms,
            vec!["a FALL_DETECTOR at 7201000".to_string()]
        );
        assert_eq!(card.pending, 1, "the collapse due after the run ended");
        assert_eq!(card.unobservable, 1, "no device could see f's racing heart");
        assert_eq!(
            (card.incidents, card.caught_in_time, card.caught_late),
            (7, 1, 1)
        );
        assert_eq!(
            card.missed,
            vec![
                "c TACHYCARDIA at 1000".to_string(),
                "a FALL_DETECTOR at 36001000".to_string()
            ]
        );
        let found = |f: &Found| (f.household_id.clone(), f.after_s, f.promise_s, f.by.clone());
        assert_eq!(
            card.found.iter().map(found).collect::<Vec<_>>(),
            vec![
                ("a".to_string(), 0, 60, "alarm.fall".to_string()),
                ("b".to_string(), 8, 4, "no_movement".to_string()),
            ]
        );
        assert_eq!((card.incident_tasks, card.false_tasks), (3, 1));
        assert_eq!(card.household_days, 20.0);
        assert_eq!(card.false_tasks_per_household_day, 0.05);
        assert_eq!(card.false_tasks_per_household_month, 1.5);
        assert_eq!(
            card.false_examples,
            vec!["d night_door at 2000".to_string()]
        );
        assert_eq!(
            card.late,
            vec!["b COLLAPSE at 1000: 4 s past its promise".to_string()]
        );
        assert_eq!(card.operational_tasks["device_silence"], 1);
    }

    #[test]
    fn a_task_looking_back_over_a_long_condition_is_explained_by_it() {
        const H: Millis = 3_600_000;
        // A collapse of 20 h: the water meter's daily report 27 h after the onset sees a dry
        // day that the collapse made; one a day after that, with the elder back on their feet,
        // is a false alarm.
        let log = format!(
            r#"{{"injected":{{"household_id":"g","kind":"COLLAPSE","rule":"no_movement","at":{},"deadline":{},"until":{}}}}}"#,
            H,
            12 * H,
            21 * H
        );
        let (injected, _) = read_log(&log);
        assert_eq!(injected[0].until, 21 * H);
        let tasks = vec![
            task("g", "no_movement", Action::CALL_ELDER, 0, 11 * H),
            task("g", "water_silence", Action::CALL_ELDER, 0, 28 * H),
            task("g", "water_silence", Action::CALL_ELDER, 0, 52 * H),
        ];
        let card = score(&injected, &tasks, 1, 0, 72 * H, &BTreeMap::new());
        assert_eq!((card.caught_in_time, card.false_tasks), (1, 1));
        assert_eq!(
            card.false_examples,
            vec![format!("g water_silence at {}", 52 * H)]
        );
        // Without `until` (an older log), a day from the onset: both dry days are false.
        let (old, _) = read_log(&log.replace(&format!(r#","until":{}"#, 21 * H), ""));
        assert_eq!(old[0].until, H);
        let card = score(&old, &tasks, 1, 0, 72 * H, &BTreeMap::new());
        assert_eq!(card.false_tasks, 2);
    }
}
