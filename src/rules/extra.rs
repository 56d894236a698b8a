//! The weather and suppression files: what a warning does, and maintenance windows.

use std::collections::BTreeMap;

use serde::Deserialize;
use toml::Spanned;

use super::{parse_duration, windowed::RuleKind, Source};
use crate::model::{Action, Cohort, HouseholdProfile, Millis, Severity, WeatherLevel};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct WeatherFile {
    enabled: bool,
    respond_within: Spanned<String>,
    reason: String,
    min_level: Spanned<String>,
    severity: BTreeMap<String, Spanned<String>>,
    calls_per_minute: Spanned<f64>,
    absence_factor: Spanned<f64>,
    visit_factor: Spanned<f64>,
    risk: BTreeMap<String, Spanned<f64>>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct WeatherRules {
    pub enabled: bool,
    pub respond_within: Millis,
    pub reason: String,
    pub min_level: WeatherLevel,
    pub severity: [Severity; 4],
    pub calls_per_minute: f64,
    pub absence_factor: f64,
    pub visit_factor: f64,
    cohort_risk: [f64; 7],
    per_ability_level: f64,
    per_year_over_60: f64,
}

impl Default for WeatherRules {
    fn default() -> Self {
        WeatherRules {
            enabled: false,
            respond_within: 0,
            reason: String::new(),
            min_level: WeatherLevel::RED,
            severity: [Severity::ROUTINE; 4],
            calls_per_minute: 1.0,
            absence_factor: 1.0,
            visit_factor: 1.0,
            cohort_risk: [0.0; 7],
            per_ability_level: 0.0,
            per_year_over_60: 0.0,
        }
    }
}

impl WeatherRules {
    /// Higher is called first.
    pub fn risk(&self, p: &HouseholdProfile) -> f64 {
        let cohorts: f64 = p.cohorts.iter().map(|c| self.cohort_risk[c.index()]).sum();
        cohorts
            + self.per_ability_level * p.ability_level as f64
            + self.per_year_over_60 * (p.age - 60).max(0) as f64
    }

    pub(super) fn load(f: &WeatherFile, src: &Source, problems: &mut Vec<String>) -> WeatherRules {
        let mut w = WeatherRules {
            enabled: f.enabled,
            respond_within: src.duration(&f.respond_within, "respond_within", problems),
            reason: f.reason.trim().to_string(),
            ..WeatherRules::default()
        };
        match WeatherLevel::from_symbol(f.min_level.get_ref()) {
            Some(l) => w.min_level = l,
            None => problems.push(src.at(
                f.min_level.span(),
                &format!("min_level must be one of {:?}", WeatherLevel::ALL),
            )),
        }
        for level in WeatherLevel::ALL {
            match f.severity.get(level.as_str()) {
                Some(s) => match Severity::from_symbol(s.get_ref()) {
                    Some(sev) => w.severity[level.index()] = sev,
                    None => problems.push(src.at(
                        s.span(),
                        &format!("severity must be one of {:?}", Severity::ALL),
                    )),
                },
                None => problems.push(format!("{}: severity has no {level}", src.path.display())),
            }
        }
        let positive = |v: &Spanned<f64>, name: &str, max: f64, problems: &mut Vec<String>| {
            let x = *v.get_ref();
            if !(x > 0.0 && x <= max) {
                problems.push(src.at(v.span(), &format!("{name} must be in (0, {max}]")));
            }
            x
        };
        w.calls_per_minute = positive(&f.calls_per_minute, "calls_per_minute", 1e6, problems);
        w.absence_factor = positive(&f.absence_factor, "absence_factor", 1.0, problems);
        w.visit_factor = positive(&f.visit_factor, "visit_factor", 1.0, problems);
        for (name, v) in &f.risk {
            match (name.as_str(), Cohort::from_symbol(name)) {
                (_, Some(c)) => w.cohort_risk[c.index()] = *v.get_ref(),
                ("per_ability_level", _) => w.per_ability_level = *v.get_ref(),
                ("per_year_over_60", _) => w.per_year_over_60 = *v.get_ref(),
                _ => problems.push(src.at(v.span(), &format!("unknown risk weight {name}"))),
            }
        }
        w
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct SuppressionFile {
    window: Vec<RawWindow>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWindow {
    household: Option<String>,
    region: Option<String>,
    start: Spanned<String>,
    end: Spanned<String>,
    #[serde(default)]
    rules: Vec<Spanned<String>>,
    reason: String,
}

/// A maintenance window.
#[derive(Debug, Clone, PartialEq)]
pub struct Suppression {
    pub household: Option<String>,
    pub region: Option<String>,
    pub start: Millis,
    pub end: Millis,
    /// Empty: every windowed rule.
    pub rules: Vec<RuleKind>,
    pub reason: String,
}

impl Suppression {
    pub fn covers(
        &self,
        household_id: &str,
        profile: Option<&HouseholdProfile>,
        rule: Option<RuleKind>,
        t: Millis,
    ) -> bool {
        let who = match (&self.household, &self.region) {
            (Some(h), _) => h == household_id,
            (None, Some(r)) => {
                profile.is_some_and(|p| &p.district == r || &p.street == r || &p.community == r)
            }
            (None, None) => false,
        };
        let what = self.rules.is_empty() || rule.is_some_and(|k| self.rules.contains(&k));
        who && what && (self.start..self.end).contains(&t)
    }

    pub(super) fn load_all(
        f: &SuppressionFile,
        src: &Source,
        problems: &mut Vec<String>,
    ) -> Vec<Suppression> {
        let mut out = Vec::new();
        for w in &f.window {
            let time = |s: &Spanned<String>, problems: &mut Vec<String>| {
                parse_rfc3339(s.get_ref()).unwrap_or_else(|| {
                    problems.push(src.at(
                        s.span(),
                        "expected a time like \"2026-11-25T08:00:00+08:00\"",
                    ));
                    0
                })
            };
            let (start, end) = (time(&w.start, problems), time(&w.end, problems));
            if end <= start {
                problems.push(src.at(w.end.span(), "end must be after start"));
            }
            if w.household.is_some() == w.region.is_some() {
                problems.push(src.at(
                    w.start.span(),
                    "a window names either a household or a region",
                ));
            }
            let mut rules = Vec::new();
            for r in &w.rules {
                match RuleKind::ALL.iter().find(|k| k.rule_id() == r.get_ref()) {
                    Some(k) => rules.push(*k),
                    None => problems.push(src.at(
                        r.span(),
                        "not a windowed rule (alarms are never suppressed)",
                    )),
                }
            }
            out.push(Suppression {
                household: w.household.clone(),
                region: w.region.clone(),
                start,
                end,
                rules,
                reason: w.reason.clone(),
            });
        }
        out
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct HolidayFile {
    holiday: Vec<RawHoliday>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHoliday {
    name: String,
    from: Spanned<String>,
    to: Spanned<String>,
    every: Spanned<String>,
}

/// A festival around which home visits come more often: within `[from, to)` (local dates,
/// the household's time zone) a home is due a visit once its last is older than `every`.
#[derive(Debug, Clone, PartialEq)]
pub struct Holiday {
    pub name: String,
    /// The first day's midnight, UTC: a household's local midnight is this less its offset.
    pub from: Millis,
    /// The midnight after the last day, UTC.
    pub to: Millis,
    pub every: Millis,
}

impl Holiday {
    pub(super) fn load_all(
        f: &HolidayFile,
        src: &Source,
        problems: &mut Vec<String>,
    ) -> Vec<Holiday> {
        let mut out = Vec::new();
        for h in &f.holiday {
            let day = |s: &Spanned<String>, problems: &mut Vec<String>| {
                let d = parse_rfc3339(&format!("{}T00:00:00Z", s.get_ref()));
                if d.is_none() {
                    problems.push(src.at(s.span(), "expected a date like \"2027-02-06\""));
                }
                d
            };
            let (from, last) = (day(&h.from, problems), day(&h.to, problems));
            let (from, last) = (from.unwrap_or(0), last.unwrap_or(from.unwrap_or(0)));
            if last < from {
                problems.push(src.at(h.to.span(), "to must not be before from"));
            }
            let every = parse_duration(h.every.get_ref()).unwrap_or_else(|| {
                problems.push(src.at(h.every.span(), "expected a duration like \"14d\""));
                0
            });
            if every <= 0 {
                problems.push(src.at(h.every.span(), "every must be positive"));
            }
            out.push(Holiday {
                name: h.name.clone(),
                from,
                to: last + 86_400_000,
                every,
            });
        }
        out
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct VisitPlanFile {
    enabled: bool,
    plan_at: Spanned<String>,
    timezone: Spanned<String>,
    capacity: Spanned<i64>,
    horizon: Spanned<String>,
}

/// The daily visit plan per community (`visit_plan.toml`).
#[derive(Debug, Clone, PartialEq)]
pub struct VisitPlanRules {
    pub enabled: bool,
    /// Local minute of the day the day's plan is drawn.
    pub plan_at: i64,
    /// The city's offset from UTC (the plan's day and hour are the city's).
    pub offset: Millis,
    /// Visits a community's workers make in a day, all partitions together.
    pub capacity: i64,
    /// Homes due up to this long after the planned day are planned too.
    pub horizon: Millis,
}

impl Default for VisitPlanRules {
    fn default() -> Self {
        VisitPlanRules {
            enabled: false,
            plan_at: 6 * 60,
            offset: 8 * 3_600_000,
            capacity: 0,
            horizon: 0,
        }
    }
}

impl VisitPlanRules {
    pub(super) fn load(
        f: &VisitPlanFile,
        src: &Source,
        problems: &mut Vec<String>,
    ) -> VisitPlanRules {
        let mut r = VisitPlanRules {
            enabled: f.enabled,
            ..VisitPlanRules::default()
        };
        match f.plan_at.get_ref().split_once(':').and_then(|(h, m)| {
            let (h, m) = (h.parse::<i64>().ok()?, m.parse::<i64>().ok()?);
            ((0..24).contains(&h) && (0..60).contains(&m)).then_some(h * 60 + m)
        }) {
            Some(m) => r.plan_at = m,
            None => {
                problems.push(src.at(f.plan_at.span(), "expected a time of day like \"06:00\""))
            }
        }
        match crate::localtime::offset(f.timezone.get_ref()) {
            Some(o) => r.offset = o,
            None => problems.push(src.at(f.timezone.span(), "unknown time zone")),
        }
        r.capacity = *f.capacity.get_ref();
        if !(1..=10_000).contains(&r.capacity) {
            problems.push(src.at(f.capacity.span(), "capacity must be 1..=10000"));
        }
        match parse_duration(f.horizon.get_ref()) {
            Some(h) if h <= 30 * 86_400_000 => r.horizon = h,
            _ => problems.push(src.at(
                f.horizon.span(),
                "expected a duration up to 30 days, like \"2d\"",
            )),
        }
        r
    }
}

/// "2026-11-25T08:00:00+08:00" (or "Z") → milliseconds since the epoch.
pub fn parse_rfc3339(s: &str) -> Option<Millis> {
    let s = s.trim();
    let (date, rest) = s.split_once('T')?;
    let mut d = date.split('-').map(|x| x.parse::<i64>().ok());
    let (y, m, day) = (d.next()??, d.next()??, d.next()??);
    let (clock, offset) = if let Some(c) = rest.strip_suffix('Z') {
        (c, 0)
    } else {
        let i = rest.rfind(['+', '-'])?;
        let (c, o) = rest.split_at(i);
        let sign = if o.starts_with('-') { -1 } else { 1 };
        let (oh, om) = o[1..].split_once(':')?;
        (
            c,
            sign * (oh.parse::<i64>().ok()? * 60 + om.parse::<i64>().ok()?) * 60_000,
        )
    };
    let mut c = clock.split(':').map(|x| x.parse::<i64>().ok());
    let (hh, mm, ss) = (c.next()??, c.next()??, c.next().flatten().unwrap_or(0));
    if !(1..=12).contains(&m) || !(1..=31).contains(&day) || hh > 23 || mm > 59 || ss > 60 {
        return None;
    }
    // Days from the civil date (Howard Hinnant's algorithm).
    let yy = if m <= 2 { y - 1 } else { y };
    let era = yy.div_euclid(400);
    let yoe = yy - era * 400;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(((days * 86_400 + hh * 3600 + mm * 60 + ss) * 1000) - offset)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct AreaFile {
    enabled: bool,
    area: Spanned<String>,
    window: Spanned<String>,
    min_homes: Spanned<i64>,
    min_fraction: Spanned<f64>,
    group_wait: Spanned<String>,
    max_hold: Spanned<String>,
    release_fraction: Spanned<f64>,
    severity: Spanned<String>,
    action: Spanned<String>,
    respond_within: Spanned<String>,
    reason: String,
}

/// The registry field that names a home's area.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AreaLevel {
    Community,
    District,
}

/// Storm control for home silence (`area_silence.toml`).
#[derive(Debug, Clone, PartialEq)]
pub struct AreaRules {
    pub enabled: bool,
    pub level: AreaLevel,
    /// Homes count together when their silences began this close.
    pub window: Millis,
    pub min_homes: usize,
    pub min_fraction: f64,
    /// How long a silent home waits for its area's verdict before its own task goes out.
    pub group_wait: Millis,
    /// A home is held back no longer than this.
    pub max_hold: Millis,
    /// The area's incident resolves once at most this fraction of its most homes are silent.
    pub release_fraction: f64,
    pub severity: Severity,
    pub action: Action,
    pub respond_within: Millis,
    pub reason: String,
}

impl Default for AreaRules {
    fn default() -> Self {
        AreaRules {
            enabled: false,
            level: AreaLevel::Community,
            window: 15 * 60_000,
            min_homes: 5,
            min_fraction: 0.1,
            group_wait: 3 * 60_000,
            max_hold: 4 * 3_600_000,
            release_fraction: 0.5,
            severity: Severity::HIGH,
            action: Action::ONSITE_VISIT,
            respond_within: 3_600_000,
            reason: String::new(),
        }
    }
}

impl AreaRules {
    pub(super) fn load(f: &AreaFile, src: &Source, problems: &mut Vec<String>) -> AreaRules {
        let mut r = AreaRules {
            enabled: f.enabled,
            window: src.duration(&f.window, "window", problems),
            group_wait: src.duration(&f.group_wait, "group_wait", problems),
            max_hold: src.duration(&f.max_hold, "max_hold", problems),
            respond_within: src.duration(&f.respond_within, "respond_within", problems),
            reason: f.reason.trim().to_string(),
            ..AreaRules::default()
        };
        match f.area.get_ref().as_str() {
            "community" => r.level = AreaLevel::Community,
            "district" => r.level = AreaLevel::District,
            _ => problems.push(src.at(f.area.span(), "area must be \"community\" or \"district\"")),
        }
        let min_homes = *f.min_homes.get_ref();
        if !(2..=100_000).contains(&min_homes) {
            problems.push(src.at(f.min_homes.span(), "min_homes must be 2..=100000"));
        }
        r.min_homes = min_homes.clamp(2, 100_000) as usize;
        for (v, name) in [
            (&f.min_fraction, "min_fraction"),
            (&f.release_fraction, "release_fraction"),
        ] {
            if !(0.0..=1.0).contains(v.get_ref()) {
                problems.push(src.at(v.span(), &format!("{name} must be in [0, 1]")));
            }
        }
        r.min_fraction = f.min_fraction.get_ref().clamp(0.0, 1.0);
        r.release_fraction = f.release_fraction.get_ref().clamp(0.0, 1.0);
        if r.group_wait >= r.max_hold {
            problems.push(src.at(
                f.group_wait.span(),
                "group_wait must be shorter than max_hold",
            ));
        }
        match Severity::from_symbol(f.severity.get_ref()) {
            Some(s) => r.severity = s,
            None => problems.push(src.at(
                f.severity.span(),
                &format!("severity must be one of {:?}", Severity::ALL),
            )),
        }
        match Action::from_symbol(f.action.get_ref()) {
            Some(a) => r.action = a,
            None => problems.push(src.at(f.action.span(), "unknown action")),
        }
        r
    }

    /// The area a registry entry puts a home in.
    pub fn area_of<'p>(&self, p: &'p HouseholdProfile) -> &'p str {
        match self.level {
            AreaLevel::Community => &p.community,
            AreaLevel::District => &p.district,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339() {
        assert_eq!(
            parse_rfc3339("2026-11-20T00:00:00+08:00"),
            Some(1_795_104_000_000)
        );
        assert_eq!(
            parse_rfc3339("2026-11-19T16:00:00Z"),
            Some(1_795_104_000_000)
        );
        assert_eq!(parse_rfc3339("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(
            parse_rfc3339("2024-02-29T12:30:00-05:00"),
            Some(1_709_227_800_000)
        );
        assert_eq!(parse_rfc3339("2026-13-01T00:00:00Z"), None);
        assert_eq!(parse_rfc3339("yesterday"), None);
    }
}
