//! The windowed rules' files. Each has the same shape: a header (enabled, severity, action,
//! respond_within, reason), default `[params]`, `[[cohort]]` entries (the first whose selector
//! matches the household wins) and `[[household]]` overrides (which win over everything),
//! each with its own `params = { ... }`.
//! Parameters are typed by the rule's declaration, so a misspelt or mistyped one is an error
//! with its file, line and column.

use std::collections::{BTreeMap, HashMap};

use serde::Deserialize;
use toml::Spanned;

use super::{parse_duration, Source};
use crate::model::{Action, Cohort, HouseholdProfile, Millis, Severity};

/// The windowed rules, one file each in `rules/`.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub enum RuleKind {
    NoMovement,
    Vitals,
    DeviceSilence,
    HomeSilence,
    DailyRound,
    VisitCadence,
    NightBedExit,
    NightDoor,
    WaterSilence,
    WaterFlow,
}

/// What a parameter holds; all are stored as `f64` (durations in milliseconds).
#[derive(Debug, Clone, Copy)]
pub enum ParamKind {
    Duration,
    /// A time of day, "HH:MM", stored as minutes after midnight.
    TimeOfDay,
    Number {
        min: f64,
        max: f64,
    },
}

impl RuleKind {
    pub const ALL: [RuleKind; 10] = [
        RuleKind::NoMovement,
        RuleKind::Vitals,
        RuleKind::DeviceSilence,
        RuleKind::HomeSilence,
        RuleKind::DailyRound,
        RuleKind::VisitCadence,
        RuleKind::NightBedExit,
        RuleKind::NightDoor,
        RuleKind::WaterSilence,
        RuleKind::WaterFlow,
    ];

    pub fn rule_id(self) -> &'static str {
        match self {
            RuleKind::NoMovement => "no_movement",
            RuleKind::Vitals => "abnormal_vitals",
            RuleKind::DeviceSilence => "device_silence",
            RuleKind::HomeSilence => "home_silence",
            RuleKind::DailyRound => "missed_daily_round",
            RuleKind::VisitCadence => "visit_overdue",
            RuleKind::NightBedExit => "night_bed_exit",
            RuleKind::NightDoor => "night_door",
            RuleKind::WaterSilence => "water_silence",
            RuleKind::WaterFlow => "water_flow",
        }
    }

    pub fn file(self) -> &'static str {
        match self {
            RuleKind::NoMovement => "no_movement.toml",
            RuleKind::Vitals => "vitals.toml",
            RuleKind::DeviceSilence => "device_silence.toml",
            RuleKind::HomeSilence => "home_silence.toml",
            RuleKind::DailyRound => "daily_round.toml",
            RuleKind::VisitCadence => "visit_cadence.toml",
            RuleKind::NightBedExit => "night_bed_exit.toml",
            RuleKind::NightDoor => "night_door.toml",
            RuleKind::WaterSilence => "water_silence.toml",
            RuleKind::WaterFlow => "water_flow.toml",
        }
    }

    /// The parameters the rule reads, in the order of its `P_*` constants.
    pub fn params(self) -> &'static [(&'static str, ParamKind)] {
        use ParamKind::*;
        const BPM: ParamKind = Number {
            min: 0.0,
            max: 300.0,
        };
        const RPM: ParamKind = Number {
            min: 0.0,
            max: 120.0,
        };
        match self {
            RuleKind::NoMovement => &[
                ("after", Duration),
                (
                    "power_activity_kw",
                    Number {
                        min: 0.0,
                        max: 100.0,
                    },
                ),
                ("bedtime_window", Duration),
                ("still_in_bed_after", Duration),
                ("not_in_bed_after", Duration),
                ("not_in_bed_still_for", Duration),
            ],
            RuleKind::Vitals => &[
                ("heart_rate_low", BPM),
                ("heart_rate_high", BPM),
                ("respiration_low", RPM),
                ("respiration_high", RPM),
                ("sustained_for", Duration),
            ],
            RuleKind::DeviceSilence => &[("after", Duration)],
            RuleKind::HomeSilence => &[("after", Duration)],
            RuleKind::DailyRound => &[("due_by", TimeOfDay)],
            RuleKind::VisitCadence => &[("every", Duration), ("grace", Duration)],
            RuleKind::NightBedExit => &[("out_for", Duration)],
            RuleKind::NightDoor => &[("no_motion_for", Duration)],
            RuleKind::WaterSilence => &[
                ("window", Duration),
                (
                    "min_use_m3",
                    Number {
                        min: 0.0,
                        max: 100.0,
                    },
                ),
            ],
            RuleKind::WaterFlow => &[
                ("flowing_for", Duration),
                (
                    "min_flow_m3_per_h",
                    Number {
                        min: 0.0,
                        max: 100.0,
                    },
                ),
                ("continuous_within", Duration),
            ],
        }
    }
}

/// Parameter indices, named per rule.
pub mod p {
    pub const AFTER: usize = 0;
    pub const POWER_KW: usize = 1;
    pub const BEDTIME_WINDOW: usize = 2;
    pub const STILL_IN_BED_AFTER: usize = 3;
    pub const NOT_IN_BED_AFTER: usize = 4;
    pub const NOT_IN_BED_STILL_FOR: usize = 5;
    pub const HR_LOW: usize = 0;
    pub const HR_HIGH: usize = 1;
    pub const RR_LOW: usize = 2;
    pub const RR_HIGH: usize = 3;
    pub const SUSTAINED: usize = 4;
    pub const DUE_BY: usize = 0;
    pub const EVERY: usize = 0;
    pub const GRACE: usize = 1;
    pub const OUT_FOR: usize = 0;
    pub const NO_MOTION_FOR: usize = 0;
    pub const WINDOW: usize = 0;
    pub const MIN_USE: usize = 1;
    pub const FLOWING_FOR: usize = 0;
    pub const MIN_FLOW: usize = 1;
    pub const CONTINUOUS_WITHIN: usize = 2;
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    enabled: bool,
    severity: Spanned<String>,
    action: Spanned<String>,
    respond_within: Spanned<String>,
    reason: Spanned<String>,
    params: BTreeMap<String, Spanned<toml::Value>>,
    #[serde(default)]
    cohort: Vec<RawCohort>,
    #[serde(default)]
    household: Vec<RawHousehold>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCohort {
    #[serde(default)]
    cohorts: Vec<Spanned<String>>,
    #[serde(default)]
    min_ability_level: Option<i32>,
    #[serde(default)]
    min_age: Option<i32>,
    params: BTreeMap<String, Spanned<toml::Value>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHousehold {
    id: String,
    params: BTreeMap<String, Spanned<toml::Value>>,
}

/// Which households a cohort entry applies to: all listed cohorts, and the minimums.
#[derive(Debug, Clone, PartialEq)]
pub struct Selector {
    pub cohorts: Vec<Cohort>,
    pub min_ability_level: Option<i32>,
    pub min_age: Option<i32>,
}

impl Selector {
    pub fn matches(&self, p: &HouseholdProfile) -> bool {
        self.cohorts.iter().all(|c| p.cohorts.contains(c))
            && self.min_ability_level.is_none_or(|m| p.ability_level >= m)
            && self.min_age.is_none_or(|m| p.age >= m)
    }
}

/// A windowed rule, ready to run.
#[derive(Debug, Clone, PartialEq)]
pub struct WindowedRule {
    pub kind: RuleKind,
    pub enabled: bool,
    pub severity: Severity,
    pub action: Action,
    pub respond_within: Millis,
    pub reason: String,
    defaults: Vec<f64>,
    cohorts: Vec<(Selector, Vec<Option<f64>>)>,
    households: HashMap<String, Vec<Option<f64>>>,
}

impl WindowedRule {
    /// Parameter `i` for this household: its override, else the first matching cohort's,
    /// else the default.
    pub fn param(&self, i: usize, household_id: &str, profile: Option<&HouseholdProfile>) -> f64 {
        if let Some(v) = self.households.get(household_id).and_then(|v| v[i]) {
            return v;
        }
        if let Some(p) = profile {
            for (sel, vals) in &self.cohorts {
                if sel.matches(p) {
                    if let Some(v) = vals[i] {
                        return v;
                    }
                }
            }
        }
        self.defaults[i]
    }

    pub fn ms(&self, i: usize, household_id: &str, profile: Option<&HouseholdProfile>) -> Millis {
        self.param(i, household_id, profile) as Millis
    }

    pub(super) fn load(
        kind: RuleKind,
        src: &Source,
        problems: &mut Vec<String>,
    ) -> Option<WindowedRule> {
        let raw: RawFile = match toml::from_str(&src.text) {
            Ok(r) => r,
            Err(e) => {
                let msg = e.message().to_string();
                problems.push(match e.span() {
                    Some(span) => src.at(span, &msg),
                    None => format!("{}: {msg}", src.path.display()),
                });
                return None;
            }
        };
        let decl = kind.params();
        let severity = Severity::from_symbol(raw.severity.get_ref()).unwrap_or_else(|| {
            problems.push(src.at(
                raw.severity.span(),
                &format!("severity must be one of {:?}", Severity::ALL),
            ));
            Severity::HIGH
        });
        let action = Action::from_symbol(raw.action.get_ref()).unwrap_or_else(|| {
            problems.push(src.at(
                raw.action.span(),
                &format!("action must be one of {:?}", Action::ALL),
            ));
            Action::CALL_ELDER
        });
        let respond_within = src.duration(&raw.respond_within, "respond_within", problems);
        if raw.reason.get_ref().trim().is_empty() {
            problems.push(src.at(raw.reason.span(), "reason is empty"));
        }
        let read = |map: &BTreeMap<String, Spanned<toml::Value>>,
                    required: bool,
                    problems: &mut Vec<String>| {
            let mut vals = vec![None; decl.len()];
            for (name, v) in map {
                match decl.iter().position(|(n, _)| n == name) {
                    Some(i) => vals[i] = param_value(src, name, v, decl[i].1, problems),
                    None => problems.push(src.at(
                        v.span(),
                        &format!(
                            "unknown parameter {name} (expected one of {:?})",
                            decl.iter().map(|d| d.0).collect::<Vec<_>>()
                        ),
                    )),
                }
            }
            if required {
                for (i, (name, _)) in decl.iter().enumerate() {
                    if vals[i].is_none() && !map.contains_key(*name) {
                        problems.push(format!(
                            "{}: [params] is missing {name}",
                            src.path.display()
                        ));
                    }
                }
            }
            vals
        };
        let defaults: Vec<f64> = read(&raw.params, true, problems)
            .into_iter()
            .map(|v| v.unwrap_or(0.0))
            .collect();
        let mut cohorts = Vec::new();
        for c in &raw.cohort {
            let mut list = Vec::new();
            for name in &c.cohorts {
                match Cohort::from_symbol(name.get_ref()) {
                    Some(x) => list.push(x),
                    None => problems.push(src.at(
                        name.span(),
                        &format!("cohort must be one of {:?}", Cohort::ALL),
                    )),
                }
            }
            let sel = Selector {
                cohorts: list,
                min_ability_level: c.min_ability_level,
                min_age: c.min_age,
            };
            cohorts.push((sel, read(&c.params, false, problems)));
        }
        let mut households = HashMap::new();
        for h in &raw.household {
            households.insert(h.id.clone(), read(&h.params, false, problems));
        }
        Some(WindowedRule {
            kind,
            enabled: raw.enabled,
            severity,
            action,
            respond_within,
            reason: raw.reason.get_ref().trim().to_string(),
            defaults,
            cohorts,
            households,
        })
    }
}

fn param_value(
    src: &Source,
    name: &str,
    v: &Spanned<toml::Value>,
    kind: ParamKind,
    problems: &mut Vec<String>,
) -> Option<f64> {
    let bad = |problems: &mut Vec<String>, want: &str| {
        problems.push(src.at(v.span(), &format!("{name}: expected {want}")));
        None
    };
    match (kind, v.get_ref()) {
        (ParamKind::Duration, toml::Value::String(s)) => match parse_duration(s) {
            Some(ms) if ms > 0 => Some(ms as f64),
            _ => bad(
                problems,
                "a positive duration like \"90s\", \"5m\", \"12h\"",
            ),
        },
        (ParamKind::TimeOfDay, toml::Value::String(s)) => match parse_time_of_day(s) {
            Some(m) => Some(m as f64),
            None => bad(problems, "a time of day like \"10:00\""),
        },
        (ParamKind::Number { min, max }, toml::Value::Integer(i))
            if (min..=max).contains(&(*i as f64)) =>
        {
            Some(*i as f64)
        }
        (ParamKind::Number { min, max }, toml::Value::Float(f)) if (min..=max).contains(f) => {
            Some(*f)
        }
        (ParamKind::Number { min, max }, _) => bad(problems, &format!("a number in {min}..={max}")),
        (ParamKind::Duration, _) => bad(problems, "a duration string"),
        (ParamKind::TimeOfDay, _) => bad(problems, "a time of day string"),
    }
}

/// "HH:MM" → minutes after midnight.
pub fn parse_time_of_day(s: &str) -> Option<i32> {
    let (h, m) = s.trim().split_once(':')?;
    let (h, m): (i32, i32) = (h.parse().ok()?, m.parse().ok()?);
    ((0..24).contains(&h) && (0..60).contains(&m)).then_some(h * 60 + m)
}
