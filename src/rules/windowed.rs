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

/// Which weather factor tightens a parameter while the household is under a warning.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Tighten {
    /// `weather.toml`'s `absence_factor` (how long an absence may last).
    Absence,
    /// `weather.toml`'s `visit_factor` (how far apart visits may be).
    Visit,
}

/// One rule's parameter values for one household, as the engine resolved them (cohort and
/// household overrides applied), with the weather factors in force (1 when none is).
#[derive(Debug, Clone, Copy)]
pub struct Values<'a> {
    vals: &'a [f64],
    absence: f64,
    visit: f64,
}

impl<'a> Values<'a> {
    pub fn new(vals: &'a [f64], absence: f64, visit: f64) -> Values<'a> {
        Values {
            vals,
            absence,
            visit,
        }
    }

    /// Values with no weather warning in force.
    pub fn plain(vals: &'a [f64]) -> Values<'a> {
        Values::new(vals, 1.0, 1.0)
    }

    #[inline]
    fn ms(&self, i: usize, tighten: Option<Tighten>) -> Millis {
        let base = self.vals[i] as Millis;
        match tighten {
            Some(Tighten::Absence) => (base as f64 * self.absence) as Millis,
            Some(Tighten::Visit) => (base as f64 * self.visit) as Millis,
            None => base,
        }
    }

    #[inline]
    fn num(&self, i: usize) -> f64 {
        self.vals[i]
    }
}

/// A rule's typed parameters: made by the engine for one household.
pub trait RuleParams<'a>: Copy {
    const KIND: RuleKind;
    fn from_values(v: Values<'a>) -> Self;

    /// Over one rule's values with no weather warning in force (see [`WindowedRule::values`]).
    fn of(vals: &'a [f64]) -> Self {
        Self::from_values(Values::plain(vals))
    }
}

macro_rules! param_decl {
    (Duration) => {
        ParamKind::Duration
    };
    (TimeOfDay) => {
        ParamKind::TimeOfDay
    };
    (Number($min:expr, $max:expr)) => {
        ParamKind::Number {
            min: $min,
            max: $max,
        }
    };
}

macro_rules! param_get {
    ($v:ident, $i:expr, $t:expr, Duration) => {
        $v.ms($i, $t)
    };
    // Minutes after midnight, as milliseconds into the day.
    ($v:ident, $i:expr, $t:expr, TimeOfDay) => {
        $v.ms($i, $t) * 60_000
    };
    ($v:ident, $i:expr, $t:expr, Number($min:expr, $max:expr)) => {
        $v.num($i)
    };
}

macro_rules! param_type {
    (Duration) => {
        Millis
    };
    (TimeOfDay) => {
        Millis
    };
    (Number($min:expr, $max:expr)) => {
        f64
    };
}

macro_rules! is_timed {
    () => {
        false
    };
    (timed) => {
        true
    };
}

macro_rules! tighten {
    () => {
        None
    };
    ($t:ident) => {
        Some(Tighten::$t)
    };
}

/// The registry of windowed rules: one entry per rule, its kind, the `rule_id` of its tasks,
/// its file in `rules/`, and its parameters, typed (a parameter may be tightened by a weather
/// warning). Everything else about the rule (its state, its deadline, its finding) is in its
/// module under `src/engine/windowed/`; the engine's dispatch there has one line per rule,
/// which the compiler asks for when an entry is added here.
macro_rules! windowed_rules {
    ($(
        $(#[$doc:meta])*
        $kind:ident ($index:ident) = $id:literal, $file:literal $(, $timed:ident)? {
            $( $param:ident : $pk:ident $( ( $($arg:expr),* ) )? $( * $t:ident )? ),* $(,)?
        }
    )*) => {
        /// The windowed rules, one file each in `rules/`. Variant names are stored in
        /// checkpoints (open incidents): never rename one.
        #[derive(
            Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize,
            serde::Deserialize,
        )]
        pub enum RuleKind {
            $( $(#[$doc])* $kind, )*
        }

        impl RuleKind {
            pub const ALL: [RuleKind; [$(RuleKind::$kind),*].len()] = [$(RuleKind::$kind),*];

            /// Whether the rule keeps a deadline per household (`timed`); the others judge
            /// as readings arrive.
            pub const fn is_timed(self) -> bool {
                match self {
                    $( RuleKind::$kind => is_timed!($($timed)?), )*
                }
            }

            pub fn rule_id(self) -> &'static str {
                match self {
                    $( RuleKind::$kind => $id, )*
                }
            }

            pub fn file(self) -> &'static str {
                match self {
                    $( RuleKind::$kind => $file, )*
                }
            }

            /// The parameters the rule reads, in the order of their declaration.
            pub fn params(self) -> &'static [(&'static str, ParamKind)] {
                match self {
                    $( RuleKind::$kind => &[
                        $( (stringify!($param), param_decl!($pk $( ( $($arg),* ) )?)), )*
                    ], )*
                }
            }
        }

        /// Each rule's parameters, typed, named as in its file.
        pub mod params {
            use super::*;
            $(
                #[derive(Debug, Clone, Copy)]
                pub struct $kind<'a>(Values<'a>);

                impl<'a> RuleParams<'a> for $kind<'a> {
                    const KIND: RuleKind = RuleKind::$kind;
                    fn from_values(v: Values<'a>) -> Self {
                        $kind(v)
                    }
                }

                mod $index {
                    #[allow(non_camel_case_types, clippy::enum_variant_names)]
                    pub(super) enum Index { $( $param, )* }
                }

                impl $kind<'_> {
                    $(
                        #[inline]
                        pub fn $param(&self) -> param_type!($pk $( ( $($arg),* ) )?) {
                            let v = &self.0;
                            param_get!(
                                v,
                                $index::Index::$param as usize,
                                tighten!($($t)?),
                                $pk $( ( $($arg),* ) )?
                            )
                        }
                    )*
                }
            )*
        }
    };
}

impl RuleKind {
    /// How many rules are timed: the length of a household's list of deadlines.
    pub const TIMED: usize = {
        let mut n = 0;
        let mut i = 0;
        while i < RuleKind::ALL.len() {
            if RuleKind::ALL[i].is_timed() {
                n += 1;
            }
            i += 1;
        }
        n
    };

    const TIMER: [u8; RuleKind::ALL.len()] = {
        let mut slots = [u8::MAX; RuleKind::ALL.len()];
        let mut n = 0;
        let mut i = 0;
        while i < RuleKind::ALL.len() {
            if RuleKind::ALL[i].is_timed() {
                slots[i] = n;
                n += 1;
            }
            i += 1;
        }
        slots
    };

    /// A timed rule's place in a household's list of deadlines (out of bounds for the others).
    #[inline]
    pub fn timer(self) -> usize {
        RuleKind::TIMER[self as usize] as usize
    }

    /// The timed rules, in the order of their deadlines.
    pub fn timed() -> impl Iterator<Item = RuleKind> {
        RuleKind::ALL.into_iter().filter(|k| k.is_timed())
    }
}

const BPM: (f64, f64) = (0.0, 300.0);
const RPM: (f64, f64) = (0.0, 120.0);

windowed_rules! {
    /// No movement for longer than usual while home (by day, and in and out of bed at night).
    NoMovement(no_movement) = "no_movement", "no_movement.toml", timed {
        after: Duration * Absence,
        power_activity_kw: Number(0.0, 100.0),
        bedtime_window: Duration,
        still_in_bed_after: Duration,
        not_in_bed_after: Duration,
        not_in_bed_still_for: Duration,
    }
    /// Heart rate or respiration out of its band for a sustained time.
    Vitals(vitals) = "abnormal_vitals", "vitals.toml", timed {
        heart_rate_low: Number(BPM.0, BPM.1),
        heart_rate_high: Number(BPM.0, BPM.1),
        respiration_low: Number(RPM.0, RPM.1),
        respiration_high: Number(RPM.0, RPM.1),
        sustained_for: Duration,
    }
    /// One device silent while the others report.
    DeviceSilence(device_silence) = "device_silence", "device_silence.toml", timed { after: Duration }
    /// Every device of the home silent.
    HomeSilence(home_silence) = "home_silence", "home_silence.toml", timed { after: Duration * Absence }
    /// No check-in of any kind by a time of day.
    DailyRound(daily_round) = "missed_daily_round", "daily_round.toml", timed { due_by: TimeOfDay }
    /// No home visit within the cadence.
    VisitCadence(visit_cadence) = "visit_overdue", "visit_cadence.toml", timed {
        every: Duration * Visit,
        grace: Duration,
    }
    /// Out of bed at night and not back.
    NightBedExit(night_bed_exit) = "night_bed_exit", "night_bed_exit.toml", timed {
        out_for: Duration,
        rising_within: Duration,
    }
    /// The door opened at night and no movement inside after.
    NightDoor(night_door) = "night_door", "night_door.toml", timed {
        no_motion_for: Duration,
        rising_within: Duration,
    }
    /// Too little water used over a window while home.
    WaterSilence(water_silence) = "water_silence", "water_silence.toml" {
        window: Duration,
        min_use_m3: Number(0.0, 100.0),
    }
    /// Water that never stops running.
    WaterFlow(water_flow) = "water_flow", "water_flow.toml" {
        flowing_for: Duration,
        min_flow_m3_per_h: Number(0.0, 100.0),
        continuous_within: Duration,
    }
    /// Doses not taken in a row on the smart pill box.
    MissedDoses(missed_doses) = "missed_doses", "missed_doses.toml" {
        in_a_row: Number(1.0, 50.0),
    }
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
    /// This rule's parameters for one household, in their declared order: read them through
    /// the rule's typed view, `params::NoMovement::of(&values).after()`.
    pub fn values(&self, household_id: &str, profile: Option<&HouseholdProfile>) -> Vec<f64> {
        (0..self.defaults.len())
            .map(|i| self.param(i, household_id, profile))
            .collect()
    }

    /// Parameter `i` for this household: its override, else the first matching cohort's,
    /// else the default.
    pub(super) fn param(
        &self,
        i: usize,
        household_id: &str,
        profile: Option<&HouseholdProfile>,
    ) -> f64 {
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
