//! Rule configuration from `rules/*.toml`: parsed as plain data, then validated into the
//! runtime [`RuleSet`] with every problem reported by file, line and column.

use std::ops::Range;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use toml::Spanned;

use crate::model::{Action, DeviceKind, Millis};

/// The files `rules/` may hold; anything else there is a mistake worth stopping for.
pub const FILES: [&str; 2] = ["engine.toml", "alarms.toml"];

#[derive(Debug, thiserror::Error)]
#[error("rules have {} problem(s):\n  {}", .0.len(), .0.join("\n  "))]
pub struct RulesError(pub Vec<String>);

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct EngineFile {
    max_clock_skew: Spanned<String>,
    max_event_age: Spanned<String>,
    dedup_memory: Spanned<i64>,
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
    pub alarms: Vec<AlarmRule>,
    /// Index into `alarms` by `DeviceKind::index()`.
    alarm_by_kind: [Option<usize>; 12],
}

impl RuleSet {
    pub fn alarm_for(&self, kind: DeviceKind) -> Option<(usize, &AlarmRule)> {
        self.alarm_by_kind[kind.index()].map(|i| (i, &self.alarms[i]))
    }

    /// Every rule id, for pre-registering the per-rule metric series.
    pub fn rule_ids(&self) -> Vec<String> {
        self.alarms.iter().map(|r| r.rule_id.clone()).collect()
    }

    /// Loads and validates every file of `dir`, collecting all problems.
    pub fn load(dir: &Path) -> Result<RuleSet, RulesError> {
        let mut problems = Vec::new();
        if let Ok(entries) = std::fs::read_dir(dir) {
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().to_string();
                if name.ends_with(".toml") && !FILES.contains(&name.as_str()) {
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
            alarms: Vec::new(),
            alarm_by_kind: [None; 12],
        };
        if let Some((e, src)) = &engine {
            set.max_clock_skew = src.duration(&e.max_clock_skew, "max_clock_skew", &mut problems);
            set.max_event_age = src.duration(&e.max_event_age, "max_event_age", &mut problems);
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
    fn at(&self, span: Range<usize>, msg: &str) -> String {
        let before = &self.text[..span.start.min(self.text.len())];
        let line = before.matches('\n').count() + 1;
        let col = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
        format!("{}:{line}:{col}: {msg}", self.path.display())
    }

    fn duration(&self, v: &Spanned<String>, field: &str, problems: &mut Vec<String>) -> Millis {
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

    fn temp_rules(tag: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("carestream-rules-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
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
    }

    #[test]
    fn every_problem_is_reported_with_line_and_column() {
        let dir = temp_rules("bad");
        write(
            &dir,
            "engine.toml",
            "max_clock_skew = \"ten minutes\"\ndedup_memory = 5000\nmax_event_age = \"7d\"\n",
        );
        write(
            &dir,
            "alarms.toml",
            "[defaults]\nrespond_within = \"5m\"\nstale_after = \"6h\"\n\n[[alarm]]\nrule_id = \"a\"\ndevice_kinds = [\"EMERGENCY_BUTTON\", \"TOASTER\"]\naction = \"PANIC\"\nreason = \"x\"\n",
        );
        write(&dir, "typo.toml", "");
        let err = RuleSet::load(&dir).unwrap_err();
        let all = err.0.join("\n");
        assert_eq!(err.0.len(), 5, "{all}");
        assert!(all.contains("engine.toml:1:18: max_clock_skew"), "{all}");
        assert!(all.contains("engine.toml:2:16: dedup_memory"), "{all}");
        assert!(
            all.contains("alarms.toml:7:37: device kind must be one of"),
            "{all}"
        );
        assert!(
            all.contains("alarms.toml:8:10: action must be one of"),
            "{all}"
        );
        assert!(all.contains("typo.toml: unknown rules file"), "{all}");
    }

    #[test]
    fn unknown_field_is_named_with_its_position() {
        let dir = temp_rules("unknown");
        write(
            &dir,
            "engine.toml",
            "max_clock_skew = \"1m\"\ndedup_memory = 8\nmax_skew = 3\nmax_event_age = \"1d\"\n",
        );
        write(
            &dir,
            "alarms.toml",
            "[defaults]\nrespond_within = \"5m\"\nstale_after = \"6h\"\n",
        );
        let err = RuleSet::load(&dir).unwrap_err();
        assert_eq!(err.0.len(), 1);
        assert!(
            err.0[0].contains("engine.toml:3:1") && err.0[0].contains("max_skew"),
            "{:?}",
            err.0
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
