//! Rule configuration from `rules/*.toml`: parsed as plain data, then validated into the
//! runtime [`RuleSet`] with every problem reported by file, line and column.

pub mod extra;
pub mod windowed;

use std::ops::Range;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use toml::Spanned;

use crate::model::{Action, DeviceKind, HouseholdProfile, Millis, QuietHours, Severity};

pub use extra::{
    parse_rfc3339, AreaLevel, AreaRules, Holiday, Suppression, VisitPlanRules, WeatherRules,
};
pub use windowed::{params, RuleKind, RuleParams, Tighten, Values, WindowedRule};

/// The files `rules/` holds besides one per windowed rule; anything else there is a mistake
/// worth stopping for.
pub const FILES: [&str; 8] = [
    "engine.toml",
    "alarms.toml",
    "escalation.toml",
    "weather.toml",
    "suppressions.toml",
    "holidays.toml",
    "visit_plan.toml",
    "area_silence.toml",
];

#[derive(Debug, thiserror::Error)]
#[error("rules have {} problem(s):\n  {}", .0.len(), .0.join("\n  "))]
pub struct RulesError(pub Vec<String>);

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct EngineFile {
    max_clock_skew: Spanned<String>,
    max_event_age: Spanned<String>,
    dedup_memory: Spanned<i64>,
    out_of_orderness: Spanned<String>,
    allowed_lateness: Spanned<String>,
    idle_timeout: Spanned<String>,
    source_idle_behind: Spanned<String>,
    state_ttl: Spanned<String>,
    default_quiet_hours: Spanned<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AlarmsFile {
    defaults: AlarmDefaults,
    #[serde(default)]
    alarm: Vec<AlarmEntry>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AlarmDefaults {
    respond_within: Spanned<String>,
    stale_after: Spanned<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AlarmEntry {
    rule_id: Spanned<String>,
    device_kinds: Vec<Spanned<String>>,
    action: Spanned<String>,
    reason: Spanned<String>,
    respond_within: Option<Spanned<String>>,
    stale_after: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct EscalationFile {
    clear_for: Spanned<String>,
    #[serde(rename = "CRITICAL")]
    critical: RawLadder,
    #[serde(rename = "HIGH")]
    high: RawLadder,
    #[serde(rename = "ROUTINE")]
    routine: RawLadder,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLadder {
    with_first: Vec<Spanned<String>>,
    rungs: Vec<RawRung>,
    #[serde(default)]
    unresolved_after: Option<Spanned<String>>,
    #[serde(default)]
    max_snooze: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRung {
    after: Spanned<String>,
    action: Spanned<String>,
}

/// One rung: when (after tier 0) and what, if the desk has not acknowledged.
#[derive(Debug, Clone, PartialEq)]
pub struct Rung {
    pub after: Millis,
    pub action: Action,
}

/// What a severity's incidents do: extra actions at once, then the rungs.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Ladder {
    pub with_first: Vec<Action>,
    pub rungs: Vec<Rung>,
    /// An acknowledged incident neither resolved nor clearing this long after its
    /// acknowledgement climbs one rung, and the wait starts again (None: never).
    pub unresolved_after: Option<Millis>,
    /// The longest the desk may snooze an incident of this severity.
    pub max_snooze: Millis,
}

impl Ladder {
    /// `max_snooze` when `escalation.toml` does not say.
    pub const DEFAULT_MAX_SNOOZE: Millis = 3_600_000;
}

/// One instant-alarm rule, ready to run.
#[derive(Debug, Clone, PartialEq)]
pub struct AlarmRule {
    pub rule_id: String,
    pub action: Action,
    pub reason: String,
    pub respond_within: Millis,
    pub stale_after: Millis,
}

#[derive(Debug, Clone, PartialEq)]
pub struct RuleSet {
    pub max_clock_skew: Millis,
    pub max_event_age: Millis,
    pub dedup_memory: usize,
    /// How far behind the newest event time a partition's watermark trails.
    pub out_of_orderness: Millis,
    /// Events later than this behind the watermark are counted and dropped.
    pub allowed_lateness: Millis,
    /// A partition with no records for this long (processing time) has its watermark moved
    /// on by the clock, so its timers still fire.
    pub idle_timeout: Millis,
    /// An input topic this far behind the newest on a partition stops holding event time.
    pub source_idle_behind: Millis,
    /// A household with no event and no registry entry for this long is forgotten.
    pub state_ttl: Millis,
    pub default_quiet_hours: QuietHours,
    pub alarms: Vec<AlarmRule>,
    /// One per [`RuleKind`], in `RuleKind::ALL` order.
    pub windowed: Vec<WindowedRule>,
    /// By `Severity::index()`.
    pub ladders: [Ladder; 3],
    /// How long a cleared condition must stay clear before its incident auto-resolves.
    pub clear_for: Millis,
    pub weather: WeatherRules,
    pub suppressions: Vec<Suppression>,
    /// Festivals that tighten the visit cadence (`holidays.toml`).
    pub holidays: Vec<Holiday>,
    /// The daily visit plan (`visit_plan.toml`).
    pub visit_plan: VisitPlanRules,
    /// Storm control for home silence (`area_silence.toml`).
    pub area: AreaRules,
    /// Index into `alarms` by `DeviceKind::index()`.
    alarm_by_kind: [Option<usize>; 12],
}

impl RuleSet {
    pub fn ladder(&self, severity: Severity) -> &Ladder {
        &self.ladders[severity.index()]
    }

    pub fn rule(&self, kind: RuleKind) -> &WindowedRule {
        &self.windowed[kind as usize]
    }

    /// Where each rule's parameters start in [`RuleSet::resolve_params`]'s list.
    pub fn param_offsets() -> [usize; RuleKind::ALL.len()] {
        let mut offsets = [0; RuleKind::ALL.len()];
        let mut at = 0;
        for k in RuleKind::ALL {
            offsets[k as usize] = at;
            at += k.params().len();
        }
        offsets
    }

    /// Every windowed rule's parameters for one household, rule after rule in the order of
    /// `RuleKind::ALL`, each rule's in their declared order (see
    /// [`RuleSet::param_offsets`]). The engine works these out once per household when its profile
    /// or the rules change, instead of matching cohorts on every event.
    pub fn resolve_params(
        &self,
        household_id: &str,
        profile: Option<&HouseholdProfile>,
    ) -> Vec<f64> {
        RuleKind::ALL
            .iter()
            .flat_map(|k| {
                let rule = self.rule(*k);
                (0..k.params().len()).map(move |i| rule.param(i, household_id, profile))
            })
            .collect()
    }

    pub fn alarm_for(&self, kind: DeviceKind) -> Option<(usize, &AlarmRule)> {
        self.alarm_by_kind[kind.index()].map(|i| (i, &self.alarms[i]))
    }

    /// Every rule id, for pre-registering the per-rule metric series.
    pub fn rule_ids(&self) -> Vec<String> {
        let alarms = self.alarms.iter().map(|r| r.rule_id.clone());
        let windowed = RuleKind::ALL.iter().map(|k| k.rule_id().to_string());
        alarms
            .chain(windowed)
            .chain(["weather_welfare".to_string()])
            .collect()
    }

    /// Loads and validates every file of `dir`, collecting all problems.
    pub fn load(dir: &Path) -> Result<RuleSet, RulesError> {
        let mut problems = Vec::new();
        if let Ok(entries) = std::fs::read_dir(dir) {
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().to_string();
                let windowed = RuleKind::ALL.iter().any(|k| k.file() == name);
                if name.ends_with(".toml") && !FILES.contains(&name.as_str()) && !windowed {
                    problems.push(format!(
                        "{}: unknown rules file (expected one of {FILES:?})",
                        e.path().display()
                    ));
                }
            }
        }
        let engine: Option<(EngineFile, Source)> = parse(dir, "engine.toml", &mut problems);
        let alarms: Option<(AlarmsFile, Source)> = parse(dir, "alarms.toml", &mut problems);

        let mut set = RuleSet {
            max_clock_skew: 0,
            max_event_age: 0,
            dedup_memory: 0,
            out_of_orderness: 0,
            allowed_lateness: 0,
            idle_timeout: 0,
            source_idle_behind: 0,
            state_ttl: 0,
            default_quiet_hours: QuietHours {
                start_minute: 22 * 60,
                end_minute: 6 * 60,
            },
            alarms: Vec::new(),
            windowed: Vec::new(),
            ladders: Default::default(),
            clear_for: 0,
            weather: WeatherRules::default(),
            suppressions: Vec::new(),
            holidays: Vec::new(),
            visit_plan: VisitPlanRules::default(),
            area: AreaRules::default(),
            alarm_by_kind: [None; 12],
        };
        if let Some((e, src)) = &engine {
            set.max_clock_skew = src.duration(&e.max_clock_skew, "max_clock_skew", &mut problems);
            set.max_event_age = src.duration(&e.max_event_age, "max_event_age", &mut problems);
            set.out_of_orderness =
                src.duration(&e.out_of_orderness, "out_of_orderness", &mut problems);
            set.allowed_lateness =
                src.duration(&e.allowed_lateness, "allowed_lateness", &mut problems);
            set.idle_timeout = src.duration(&e.idle_timeout, "idle_timeout", &mut problems);
            set.source_idle_behind =
                src.duration(&e.source_idle_behind, "source_idle_behind", &mut problems);
            set.state_ttl = src.duration(&e.state_ttl, "state_ttl", &mut problems);
            let q = e.default_quiet_hours.get_ref();
            match q.split_once('-').and_then(|(a, b)| {
                Some((
                    windowed::parse_time_of_day(a)?,
                    windowed::parse_time_of_day(b)?,
                ))
            }) {
                Some((start_minute, end_minute)) => {
                    set.default_quiet_hours = QuietHours {
                        start_minute,
                        end_minute,
                    }
                }
                None => problems.push(src.at(
                    e.default_quiet_hours.span(),
                    "default_quiet_hours must look like \"22:00-06:00\"",
                )),
            }
            let n = *e.dedup_memory.get_ref();
            if !(0..=1024).contains(&n) {
                problems.push(src.at(e.dedup_memory.span(), "dedup_memory must be 0..=1024"));
            }
            set.dedup_memory = n.clamp(0, 1024) as usize;
        }
        if let Some((a, src)) = &alarms {
            let respond = src.duration(&a.defaults.respond_within, "respond_within", &mut problems);
            let stale = src.duration(&a.defaults.stale_after, "stale_after", &mut problems);
            for entry in &a.alarm {
                let rule_id = entry.rule_id.get_ref().trim().to_string();
                if rule_id.is_empty() || set.alarms.iter().any(|r| r.rule_id == rule_id) {
                    problems.push(src.at(entry.rule_id.span(), "rule_id is empty or repeated"));
                }
                let action = Action::from_symbol(entry.action.get_ref()).unwrap_or_else(|| {
                    problems.push(src.at(
                        entry.action.span(),
                        &format!("action must be one of {:?}", Action::ALL),
                    ));
                    Action::CALL_ELDER
                });
                if entry.reason.get_ref().trim().is_empty() {
                    problems.push(src.at(entry.reason.span(), "reason is empty"));
                }
                let idx = set.alarms.len();
                if entry.device_kinds.is_empty() {
                    problems.push(src.at(entry.rule_id.span(), "device_kinds is empty"));
                }
                for kind in &entry.device_kinds {
                    match DeviceKind::from_symbol(kind.get_ref()) {
                        Some(k) if set.alarm_by_kind[k.index()].is_some() => problems
                            .push(src.at(kind.span(), &format!("{k} has an alarm rule already"))),
                        Some(k) => set.alarm_by_kind[k.index()] = Some(idx),
                        None => problems.push(src.at(
                            kind.span(),
                            &format!("device kind must be one of {:?}", DeviceKind::ALL),
                        )),
                    }
                }
                set.alarms.push(AlarmRule {
                    rule_id,
                    action,
                    reason: entry.reason.get_ref().trim().to_string(),
                    respond_within: entry.respond_within.as_ref().map_or(respond, |d| {
                        src.duration(d, "respond_within", &mut problems)
                    }),
                    stale_after: entry
                        .stale_after
                        .as_ref()
                        .map_or(stale, |d| src.duration(d, "stale_after", &mut problems)),
                });
            }
        }
        let escalation: Option<(EscalationFile, Source)> =
            parse(dir, "escalation.toml", &mut problems);
        if let Some((e, src)) = &escalation {
            set.clear_for = src.duration(&e.clear_for, "clear_for", &mut problems);
            for (sev, raw) in [
                (Severity::CRITICAL, &e.critical),
                (Severity::HIGH, &e.high),
                (Severity::ROUTINE, &e.routine),
            ] {
                let action = |a: &Spanned<String>, problems: &mut Vec<String>| {
                    Action::from_symbol(a.get_ref()).or_else(|| {
                        problems.push(src.at(
                            a.span(),
                            &format!("action must be one of {:?}", Action::ALL),
                        ));
                        None
                    })
                };
                let mut ladder = Ladder {
                    with_first: raw
                        .with_first
                        .iter()
                        .filter_map(|a| action(a, &mut problems))
                        .collect(),
                    rungs: Vec::new(),
                    unresolved_after: raw
                        .unresolved_after
                        .as_ref()
                        .map(|d| src.duration(d, "unresolved_after", &mut problems)),
                    max_snooze: raw
                        .max_snooze
                        .as_ref()
                        .map_or(Ladder::DEFAULT_MAX_SNOOZE, |d| {
                            src.duration(d, "max_snooze", &mut problems)
                        }),
                };
                let mut last = 0;
                for r in &raw.rungs {
                    let after = src.duration(&r.after, "after", &mut problems);
                    if after <= last {
                        problems.push(src.at(r.after.span(), "rungs must come later and later"));
                    }
                    last = after;
                    if let Some(action) = action(&r.action, &mut problems) {
                        ladder.rungs.push(Rung { after, action });
                    }
                }
                set.ladders[sev.index()] = ladder;
            }
        }
        if let Some((f, src)) = parse::<extra::WeatherFile>(dir, "weather.toml", &mut problems) {
            set.weather = WeatherRules::load(&f, &src, &mut problems);
        }
        if let Some((f, src)) =
            parse::<extra::SuppressionFile>(dir, "suppressions.toml", &mut problems)
        {
            set.suppressions = Suppression::load_all(&f, &src, &mut problems);
        }
        if let Some((f, src)) = parse::<extra::HolidayFile>(dir, "holidays.toml", &mut problems) {
            set.holidays = Holiday::load_all(&f, &src, &mut problems);
        }
        if let Some((f, src)) = parse::<extra::VisitPlanFile>(dir, "visit_plan.toml", &mut problems)
        {
            set.visit_plan = VisitPlanRules::load(&f, &src, &mut problems);
        }
        if let Some((f, src)) = parse::<extra::AreaFile>(dir, "area_silence.toml", &mut problems) {
            set.area = AreaRules::load(&f, &src, &mut problems);
        }
        for kind in RuleKind::ALL {
            let path = dir.join(kind.file());
            match std::fs::read_to_string(&path) {
                Ok(text) => {
                    let src = Source { path, text };
                    if let Some(rule) = WindowedRule::load(kind, &src, &mut problems) {
                        set.windowed.push(rule);
                    }
                }
                Err(e) => problems.push(format!("{}: {e}", path.display())),
            }
        }
        if problems.is_empty() {
            Ok(set)
        } else {
            Err(RulesError(problems))
        }
    }
}

/// A rules file's text, kept to turn byte spans into line and column.
struct Source {
    path: PathBuf,
    text: String,
}

impl Source {
    pub(crate) fn at(&self, span: Range<usize>, msg: &str) -> String {
        let before = &self.text[..span.start.min(self.text.len())];
        let line = before.matches('\n').count() + 1;
        let col = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
        format!("{}:{line}:{col}: {msg}", self.path.display())
    }

    pub(crate) fn duration(
        &self,
        v: &Spanned<String>,
        field: &str,
        problems: &mut Vec<String>,
    ) -> Millis {
        match parse_duration(v.get_ref()) {
            Some(ms) if ms > 0 => ms,
            _ => {
                problems.push(self.at(
                    v.span(),
                    &format!(
                        "{field}: {:?} is not a positive duration like \"90s\", \"5m\", \"12h\"",
                        v.get_ref()
                    ),
                ));
                1
            }
        }
    }
}

fn parse<T: serde::de::DeserializeOwned>(
    dir: &Path,
    name: &str,
    problems: &mut Vec<String>,
) -> Option<(T, Source)> {
    let path = dir.join(name);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) => {
            problems.push(format!("{}: {e}", path.display()));
            return None;
        }
    };
    let src = Source { path, text };
    match toml::from_str::<T>(&src.text) {
        Ok(v) => Some((v, src)),
        Err(e) => {
            let msg = e.message().to_string();
            problems.push(match e.span() {
                Some(span) => src.at(span, &msg),
                None => format!("{}: {msg}", src.path.display()),
            });
            None
        }
    }
}

/// "250ms", "90s", "5m", "12h", "7d" → milliseconds.
pub fn parse_duration(s: &str) -> Option<Millis> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit())?;
    let (num, unit) = s.split_at(split);
    let n: i64 = num.parse().ok()?;
    let mult = match unit.trim() {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => return None,
    };
    n.checked_mul(mult)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) {
        std::fs::write(dir.join(name), text).unwrap();
    }

    /// A copy of the shipped rules in a fresh directory, to break on purpose.
    fn temp_rules(tag: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("carestream-rules-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let shipped = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/rules"));
        for e in std::fs::read_dir(shipped).unwrap().flatten() {
            std::fs::copy(e.path(), dir.join(e.file_name())).unwrap();
        }
        dir
    }

    fn edit(dir: &Path, name: &str, from: &str, to: &str) {
        let text = std::fs::read_to_string(dir.join(name)).unwrap();
        assert!(text.contains(from), "{name} has no {from:?}");
        write(dir, name, &text.replacen(from, to, 1));
    }

    #[test]
    fn shipped_rules_load() {
        let set = RuleSet::load(Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/rules"))).unwrap();
        let (_, rule) = set.alarm_for(DeviceKind::EMERGENCY_BUTTON).unwrap();
        assert_eq!(rule.rule_id, "alarm.emergency_button");
        assert_eq!(rule.respond_within, 5 * 60_000);
        assert_eq!(
            set.alarm_for(DeviceKind::SMOKE_ALARM)
                .unwrap()
                .1
                .respond_within,
            3 * 60_000
        );
        assert!(set.alarm_for(DeviceKind::MOTION_PIR).is_none());
        assert_eq!(set.max_clock_skew, 10 * 60_000);
        assert_eq!(set.holidays.len(), 2);
        assert_eq!(
            set.holidays[0].to - set.holidays[0].from,
            15 * 86_400_000,
            "the Spring Festival's window, both days included"
        );
    }

    #[test]
    fn every_problem_is_reported_with_line_and_column() {
        let dir = temp_rules("bad");
        write(
            &dir,
            "engine.toml",
            &std::fs::read_to_string(dir.join("engine.toml"))
                .unwrap()
                .replace(
                    "max_clock_skew = \"10m\"",
                    "max_clock_skew = \"ten minutes\"",
                )
                .replace("dedup_memory = 32", "dedup_memory = 5000"),
        );
        write(
            &dir,
            "alarms.toml",
            "[defaults]\nrespond_within = \"5m\"\nstale_after = \"6h\"\n\n[[alarm]]\nrule_id = \"a\"\ndevice_kinds = [\"EMERGENCY_BUTTON\", \"TOASTER\"]\naction = \"PANIC\"\nreason = \"x\"\n",
        );
        edit(
            &dir,
            "vitals.toml",
            "heart_rate_high = 120",
            "heart_rate_high = 1200",
        );
        edit(
            &dir,
            "no_movement.toml",
            "params = { after = \"6h\" }",
            "params = { aftr = \"6h\" }",
        );
        edit(
            &dir,
            "visit_cadence.toml",
            "cohorts = [\"SEVERE_DISABILITY\"]",
            "cohorts = [\"VERY_OLD\"]",
        );
        write(&dir, "typo.toml", "");
        edit(
            &dir,
            "holidays.toml",
            "to = \"2027-02-13\"",
            "to = \"13 Feb\"",
        );
        let err = RuleSet::load(&dir).unwrap_err();
        let all = err.0.join("\n");
        assert_eq!(err.0.len(), 9, "{all}");
        assert!(
            all.contains("holidays.toml:11:6: expected a date like"),
            "{all}"
        );
        assert!(all.contains("engine.toml:5:18: max_clock_skew"), "{all}");
        assert!(all.contains("engine.toml:12:16: dedup_memory"), "{all}");
        assert!(
            all.contains("alarms.toml:7:37: device kind must be one of"),
            "{all}"
        );
        assert!(
            all.contains("alarms.toml:8:10: action must be one of"),
            "{all}"
        );
        assert!(
            all.contains("vitals.toml:19:19: heart_rate_high: expected a number in 0..=300"),
            "{all}"
        );
        assert!(
            all.contains("no_movement.toml:") && all.contains("unknown parameter aftr"),
            "{all}"
        );
        assert!(
            all.contains("visit_cadence.toml:") && all.contains("cohort must be one of"),
            "{all}"
        );
        assert!(all.contains("typo.toml: unknown rules file"), "{all}");
    }

    #[test]
    fn unknown_field_is_named_with_its_position() {
        let dir = temp_rules("unknown");
        edit(
            &dir,
            "engine.toml",
            "dedup_memory = 32",
            "dedup_memory = 32\nmax_skew = 3",
        );
        let err = RuleSet::load(&dir).unwrap_err();
        assert_eq!(err.0.len(), 1, "{:?}", err.0);
        assert!(
            err.0[0].contains("engine.toml:13:1") && err.0[0].contains("max_skew"),
            "{:?}",
            err.0
        );
    }

    #[test]
    fn cohort_and_household_overrides() {
        let dir = temp_rules("override");
        edit(
            &dir,
            "no_movement.toml",
            "# [[household]]\n# id = \"hh-000042\"\n# params = { after = \"4h\" }",
            "[[household]]\nid = \"hh-000042\"\nparams = { after = \"4h\" }",
        );
        let set = RuleSet::load(&dir).unwrap();
        let rule = set.rule(RuleKind::NoMovement);
        let mut p = crate::tools::simulate::household(1, 1);
        p.cohorts = vec![crate::model::Cohort::LIVING_ALONE];
        p.age = 70;
        assert_eq!(
            params::NoMovement::of(&rule.values("hh-1", Some(&p))).after(),
            12 * 3_600_000,
            "default"
        );
        p.age = 85;
        assert_eq!(
            params::NoMovement::of(&rule.values("hh-1", Some(&p))).after(),
            10 * 3_600_000,
            "living alone, 80+"
        );
        p.cohorts.push(crate::model::Cohort::DISABLED);
        assert_eq!(
            params::NoMovement::of(&rule.values("hh-1", Some(&p))).after(),
            8 * 3_600_000,
            "living alone and disabled: first match"
        );
        p.cohorts.push(crate::model::Cohort::SEVERE_DISABILITY);
        assert_eq!(
            params::NoMovement::of(&rule.values("hh-1", Some(&p))).after(),
            6 * 3_600_000
        );
        assert_eq!(
            params::NoMovement::of(&rule.values("hh-000042", Some(&p))).after(),
            4 * 3_600_000,
            "household override wins"
        );
        assert_eq!(
            params::NoMovement::of(&rule.values("hh-000042", Some(&p))).power_activity_kw(),
            0.3,
            "unset in the override: the default"
        );
        assert_eq!(
            params::Vitals::of(&set.rule(RuleKind::Vitals).values("x", Some(&p))).heart_rate_high(),
            110.0
        );
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("250ms"), Some(250));
        assert_eq!(parse_duration("90s"), Some(90_000));
        assert_eq!(parse_duration("12h"), Some(43_200_000));
        assert_eq!(parse_duration("2d"), Some(172_800_000));
        assert_eq!(parse_duration("5"), None);
        assert_eq!(parse_duration("m5"), None);
        assert_eq!(parse_duration("5 fortnights"), None);
    }
}
