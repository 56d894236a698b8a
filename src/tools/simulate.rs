//! A simulated city. Households with cohorts and daily rhythms (waking, sleeping, meals,
//! going out, a trip to the bathroom at night), devices that send heartbeats while their
//! batteries run down, gateways that drop out and flush their backlog late, device clocks
//! that drift (a few reset to 1970), weather warnings for districts, and incidents injected by
//! rate or by script. Time runs `speed` times faster than the wall clock.
//!
//! Every injected incident is printed as a JSON line (`{"injected": ...}`) with the rule that
//! should catch it and a deadline, so `carestream score` can tell what was detected in time
//! and how many tasks were false.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::Duration;

use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use tokio::sync::watch;

use crate::codec::Codec;
use crate::config::Topics;
use crate::model::*;
use crate::pipeline::wall_millis;
use crate::shutdown::wait_true;

/// Wuhan's central districts (administrative division codes).
const DISTRICTS: [&str; 6] = ["420102", "420103", "420104", "420105", "420106", "420111"];
const MIN: Millis = 60_000;
const HOUR: Millis = 60 * MIN;
const DAY: Millis = 24 * HOUR;
/// China Standard Time.
const CST: Millis = 8 * HOUR;

/// What can be injected: an alarm device, or a condition for a windowed rule to find.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum IncidentKind {
    Alarm(DeviceKind),
    /// The elder stops moving (a fall, a stroke): only heartbeats go on.
    Collapse,
    /// Heart rate 135 for 20 minutes.
    Tachycardia,
    /// Not injected: doses not taken in a row on the pill box, as ordinary life has them (a
    /// dose forgotten, the elder out at its time, or unable after a collapse).
    MissedDoses,
}

impl IncidentKind {
    fn parse(s: &str) -> Option<IncidentKind> {
        match s {
            "COLLAPSE" => Some(IncidentKind::Collapse),
            "TACHYCARDIA" => Some(IncidentKind::Tachycardia),
            other => DeviceKind::from_symbol(other).map(IncidentKind::Alarm),
        }
    }

    fn name(self) -> &'static str {
        match self {
            IncidentKind::Alarm(k) => k.as_str(),
            IncidentKind::Collapse => "COLLAPSE",
            IncidentKind::Tachycardia => "TACHYCARDIA",
            IncidentKind::MissedDoses => "MISSED_DOSES",
        }
    }

    /// The rule expected to catch it, and how long after it that may take.
    fn expectation(self, p: &HouseholdProfile) -> (&'static str, Millis) {
        match self {
            IncidentKind::Alarm(DeviceKind::EMERGENCY_BUTTON) => ("alarm.emergency_button", MIN),
            IncidentKind::Alarm(DeviceKind::WEARABLE) => ("alarm.wearable_sos", MIN),
            IncidentKind::Alarm(DeviceKind::FALL_DETECTOR) => ("alarm.fall", MIN),
            IncidentKind::Alarm(DeviceKind::SMOKE_ALARM) => ("alarm.smoke", MIN),
            IncidentKind::Alarm(DeviceKind::GAS_ALARM) => ("alarm.gas", MIN),
            IncidentKind::Alarm(_) => ("alarm.water_leak", MIN),
            // The longest no-movement threshold of the shipped rules, and some slack.
            IncidentKind::Collapse => (
                "no_movement",
                if p.cohorts.contains(&Cohort::SEVERE_DISABILITY) {
                    7 * HOUR
                } else {
                    13 * HOUR
                },
            ),
            // Worked out from the readings that show it (`Racing`).
            IncidentKind::Tachycardia => ("abnormal_vitals", 0),
            IncidentKind::MissedDoses => ("missed_doses", MIN),
        }
    }

    const RANDOM: [IncidentKind; 8] = [
        IncidentKind::Alarm(DeviceKind::EMERGENCY_BUTTON),
        IncidentKind::Alarm(DeviceKind::FALL_DETECTOR),
        IncidentKind::Alarm(DeviceKind::SMOKE_ALARM),
        IncidentKind::Alarm(DeviceKind::GAS_ALARM),
        IncidentKind::Alarm(DeviceKind::WATER_LEAK),
        IncidentKind::Alarm(DeviceKind::WEARABLE),
        IncidentKind::Collapse,
        IncidentKind::Tachycardia,
    ];
}

/// When no movement promises to find a collapse at `at` (see `rules/no_movement.toml`): its
/// threshold and an hour; in bed at night, the time to be up in the morning past the quiet
/// hours' end; without a mattress, late in the evening or at night, the threshold in waking time.
fn collapse_promise(rules: &crate::rules::RuleSet, h: &Home, at: Millis) -> Millis {
    use crate::localtime::{add_awake_time, quiet_period};
    use crate::rules::{params, RuleKind, RuleParams};
    let values = rules
        .rule(RuleKind::NoMovement)
        .values(&h.profile.household_id, Some(&h.profile));
    let p = params::NoMovement::of(&values);
    let after = p.after();
    let q = h.profile.quiet_hours.unwrap_or(rules.default_quiet_hours);
    let Some((from, to)) = quiet_period(at, CST, q) else {
        return at + after + HOUR;
    };
    let night = at >= from - p.bedtime_window();
    let found = if !night {
        at + after
    } else if h.alive(DeviceKind::BED_SENSOR) && h.in_bed {
        (at + after).max(to + p.still_in_bed_after())
    } else if h.alive(DeviceKind::BED_SENSOR) {
        at + after
    } else {
        add_awake_time(at, after, CST, q)
    };
    found + HOUR
}

/// An incident to inject: which household (by index), what, when (simulated time from the
/// start).
#[derive(Debug, Clone, PartialEq)]
pub struct Injection {
    pub after: Duration,
    pub household: usize,
    pub kind: IncidentKind,
}

impl std::str::FromStr for Injection {
    type Err = String;

    /// `KIND@HOUSEHOLD+SECONDS`, e.g. `EMERGENCY_BUTTON@42+30`, `COLLAPSE@7+3600`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || format!("{s:?}: expected KIND@HOUSEHOLD+SECONDS, e.g. EMERGENCY_BUTTON@42+30");
        let (kind, rest) = s.split_once('@').ok_or_else(err)?;
        let (hh, secs) = rest.split_once('+').ok_or_else(err)?;
        let kind = IncidentKind::parse(kind).ok_or_else(|| {
            format!("{kind:?} is not an alarm device kind, COLLAPSE or TACHYCARDIA")
        })?;
        Ok(Injection {
            after: Duration::from_secs_f64(secs.parse().map_err(|_| err())?),
            household: hh.parse().map_err(|_| err())?,
            kind,
        })
    }
}

#[derive(Debug, Clone)]
pub struct SimConfig {
    pub households: usize,
    /// Simulated seconds per wall-clock second.
    pub speed: f64,
    /// Wall-clock run time (default: until stopped).
    pub duration: Option<Duration>,
    pub injections: Vec<Injection>,
    /// A random incident this often (simulated time), on top of the script.
    pub incident_every: Option<Duration>,
    /// A weather warning for a random district this often (simulated time).
    pub weather_every: Option<Duration>,
    pub seed: u64,
    /// Simulated time at the start, ms since the epoch (default: the wall clock). Record
    /// timestamps carry simulated time, so a run can be placed across a given hour, such
    /// as local midnight, when the day's plans change and gateways drop out.
    pub start: Option<Millis>,
    pub mix: Mix,
}

/// How the city lives: which devices its homes have, how their meters report, and how its
/// elders keep their days. The defaults are a city's, not the rules': most homes have no
/// mattress, most meters report hourly or daily, people keep their own hours. Each is a
/// `simulate` flag (shares of homes or chances a day, 0 to 1).
#[derive(Debug, Clone, Copy, clap::Args)]
pub struct Mix {
    /// Share of homes with a bed mattress (occupancy, heart rate, breathing).
    #[arg(long, default_value_t = Mix::default().bed_sensor, value_parser = share)]
    pub bed_sensor: f64,
    /// Share of homes whose elder has a smart watch.
    #[arg(long, default_value_t = Mix::default().watch, value_parser = share)]
    pub watch: f64,
    /// Share of homes whose meters report once an hour (the rest of those not daily: every
    /// 15 minutes).
    #[arg(long, default_value_t = Mix::default().meters_hourly, value_parser = share)]
    pub meters_hourly: f64,
    /// Share of homes whose meters report once a day.
    #[arg(long, default_value_t = Mix::default().meters_daily, value_parser = share)]
    pub meters_daily: f64,
    /// Share of elders who get up late (07:30-09:00; the others 06:00-07:30, or early).
    #[arg(long, default_value_t = Mix::default().late_risers, value_parser = share)]
    pub late_risers: f64,
    /// Share of elders who get up before the quiet hours end (05:00-06:00), of those who do
    /// not get up late.
    #[arg(long, default_value_t = Mix::default().early_risers, value_parser = share)]
    pub early_risers: f64,
    /// Share of elders who go to bed after the quiet hours begin (23:00-00:30; the others
    /// 21:30-23:00).
    #[arg(long, default_value_t = Mix::default().night_owls, value_parser = share)]
    pub night_owls: f64,
    /// Share of elders who nap in bed after lunch on most days.
    #[arg(long, default_value_t = Mix::default().nappers, value_parser = share)]
    pub nappers: f64,
    /// Chance a day that the watch stays on its charger.
    #[arg(long, default_value_t = Mix::default().watch_off, value_parser = share)]
    pub watch_off: f64,
    /// Chance a day that the elder goes to stay with family for one to three days (the
    /// registry is told: `away_until`).
    #[arg(long, default_value_t = Mix::default().stays_away, value_parser = share)]
    pub stays_away: f64,
    /// Share of records the platform delivers twice.
    #[arg(long, default_value_t = Mix::default().duplicates, value_parser = share)]
    pub duplicates: f64,
    /// Share of homes with a smart pill box (a dose after getting up and one at 20:00).
    #[arg(long, default_value_t = Mix::default().pill_box, value_parser = share)]
    pub pill_box: f64,
    /// Chance that the elder forgets a dose.
    #[arg(long, default_value_t = Mix::default().forgets_dose, value_parser = share)]
    pub forgets_dose: f64,
}

fn share(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(x) if (0.0..=1.0).contains(&x) => Ok(x),
        _ => Err(format!("{s:?}: expected a share from 0 to 1")),
    }
}

impl Mix {
    /// The shares that must add up to at most one do.
    pub fn check(&self) -> Result<(), String> {
        if self.meters_hourly + self.meters_daily > 1.0 {
            return Err("--meters-hourly and --meters-daily add up to more than 1".into());
        }
        Ok(())
    }
}

impl Default for Mix {
    fn default() -> Self {
        Mix {
            bed_sensor: 0.5,
            watch: 0.5,
            meters_hourly: 0.5,
            meters_daily: 0.2,
            late_risers: 0.15,
            early_risers: 0.15,
            night_owls: 0.15,
            nappers: 0.4,
            watch_off: 0.2,
            stays_away: 0.01,
            duplicates: 0.01,
            pill_box: 0.4,
            forgets_dose: 0.05,
        }
    }
}

/// Where a city run from the command line starts by default: far enough back that its
/// simulated clock, running `speed` times faster, does not pass the wall clock during a run of
/// `duration` (a day back for a run without end). The processor takes no record's time past its
/// own clock, so a city ahead of it would be judged by arrival times, not its own.
pub fn default_start(speed: f64, duration: Option<Duration>) -> Millis {
    let lead = match duration {
        Some(d) => ((speed - 1.0).max(0.0) * d.as_secs_f64() * 1000.0) as Millis,
        None => DAY,
    };
    wall_millis() - lead - MIN
}

impl SimConfig {
    fn start(&self) -> Millis {
        self.start.unwrap_or_else(wall_millis)
    }
}

/// splitmix64: small, fast and reproducible from a seed; no need for a `rand` dependency.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }

    /// True with probability `p`.
    pub fn chance(&mut self, p: f64) -> bool {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64 <= p
    }

    fn between(&mut self, lo: Millis, hi: Millis) -> Millis {
        lo + self.below((hi - lo).max(1) as u64) as Millis
    }
}

pub fn household_id(i: usize) -> String {
    format!("hh-{i:06}")
}

/// A deterministic synthetic household: the same index always gives the same profile.
pub fn household(i: usize, seed: u64) -> HouseholdProfile {
    let mut rng = Rng::new(seed ^ (i as u64).wrapping_mul(0x2545_f491_4f6c_dd1d));
    let district = DISTRICTS[i % DISTRICTS.len()];
    let street = format!("{district}{:03}", 1 + rng.below(12));
    let community = format!("{street}{:03}", 1 + rng.below(20));
    let mut cohorts = vec![if rng.below(3) == 0 {
        Cohort::EMPTY_NEST
    } else {
        Cohort::LIVING_ALONE
    }];
    let ability_level = rng.below(5) as i32;
    if ability_level >= 3 {
        cohorts.push(if ability_level == 4 {
            Cohort::SEVERE_DISABILITY
        } else {
            Cohort::DISABLED
        });
    }
    if rng.below(20) == 0 {
        cohorts.push(Cohort::SPECIAL_FAMILY);
    }
    let contacts = (0..1 + rng.below(2))
        .map(|c| Contact {
            // Synthetic personal data: the processor must never log it.
            name: format!("联系人{i}-{c}"),
            relation: ["daughter", "son", "neighbour"][rng.below(3) as usize].to_string(),
            phone: format!("139{:08}", (i * 2 + c as usize) % 100_000_000),
        })
        .collect();
    HouseholdProfile {
        household_id: household_id(i),
        district: district.into(),
        street,
        community,
        cohorts,
        ability_level,
        age: 65 + rng.below(35) as i32,
        emergency_contacts: contacts,
        quiet_hours: Some(QuietHours {
            start_minute: 22 * 60,
            end_minute: 6 * 60 + 30,
        }),
        away_until: None,
        timezone: "Asia/Shanghai".into(),
        last_visit_at: None,
    }
}

/// The devices every simulated home has.
const DEVICES: [DeviceKind; 8] = [
    DeviceKind::MOTION_PIR,
    DeviceKind::DOOR_CONTACT,
    DeviceKind::BED_SENSOR,
    DeviceKind::WEARABLE,
    DeviceKind::WATER_METER,
    DeviceKind::POWER_METER,
    DeviceKind::EMERGENCY_BUTTON,
    DeviceKind::SMOKE_ALARM,
];

/// An injected racing heart, followed through the readings that show it: the vitals rule
/// promises a finding `sustained_for` after the first reading out of range, or at the second
/// if that comes later (see `rules/vitals.toml`). Fewer than two such readings (the elder goes
/// out, or to bed with no mattress) is not a sustained condition any device could show.
struct Racing {
    at: Millis,
    sustained: Millis,
    first: Option<Millis>,
}

impl Racing {
    /// A reading out of range at `t` of a racing heart that lasts until `until`; from the
    /// second on, the promised deadline and whether the rule can see it: readings out of range
    /// for `sustained`, so the heart must still race when that much has passed since the first.
    fn read(&mut self, t: Millis, until: Millis) -> Option<(Millis, bool)> {
        let Some(first) = self.first else {
            self.first = Some(t);
            return None;
        };
        let due = first + self.sustained;
        Some((due.max(t) + DRIFT, t >= due || until > due))
    }

    /// Settled at `t` with no second reading: the deadline, and whether readings still to
    /// come (the condition not `over`) could yet show it.
    fn unsettled(&self, t: Millis, over: bool) -> (Millis, bool) {
        let deadline = (self.first.unwrap_or(t) + self.sustained).max(t) + DRIFT;
        (deadline, !over)
    }
}

/// How long a record made at `t` waits for the home's gateway to reconnect.
fn held_by_gateway(h: &Home, t: Millis) -> Millis {
    (h.gateway_down_until - t).max(0)
}

/// Device clocks in the simulated city drift by up to this much (a reading's time is its
/// device's).
pub(crate) const DRIFT: Millis = 2 * MIN;

/// One household's day and devices.
struct Home {
    profile: HouseholdProfile,
    /// The devices the home has (of `DEVICES`).
    fitted: [bool; DEVICES.len()],
    late_riser: bool,
    early_riser: bool,
    night_owl: bool,
    napper: bool,
    /// How often the meters report, in minutes.
    meter_every: Millis,
    /// Device clock error (ms); a few are absurd.
    skew: Millis,
    battery: [f64; DEVICES.len()],
    water: f64,
    power: f64,
    /// Today's plan (simulated local day), rebuilt at midnight.
    day: Millis,
    wake: Millis,
    sleep: Millis,
    /// Yesterday's bedtime: a night owl's falls after midnight.
    prev_sleep: Millis,
    nap: Option<(Millis, Millis)>,
    watch_on: bool,
    /// Away staying with family: leaves at the first instant, back at the second.
    stay: Option<(Millis, Millis)>,
    /// The `away_until` the registry is told for the stay.
    stay_told: Millis,
    out: Option<(Millis, Millis)>,
    /// An early riser's walk before the quiet hours end (out of the door and back).
    walk: Option<(Millis, Millis)>,
    night_trip: Option<Millis>,
    /// What the mattress last said: it repeats that every 10 minutes, whatever happens.
    in_bed: bool,
    /// Until then the elder does not move (an injected collapse).
    collapsed_until: Millis,
    /// A smart pill box (not one of `DEVICES`: it sends no heartbeats), and the doses not
    /// taken since the last one taken.
    pill_box: bool,
    doses_missed: u32,
    tachycardia_until: Millis,
    /// The racing heart as the devices show it, until the rule's promise is known.
    racing: Option<Racing>,
    /// The gateway is down until then; events pile up in `backlog`.
    gateway_down_until: Millis,
    /// Held records; their event time is in the payload. Sent when the gateway reconnects,
    /// stamped then, as the platform's producer would stamp them: a backlog arrives late.
    backlog: Vec<(String, String, Input)>,
}

impl Home {
    fn new(
        profile: HouseholdProfile,
        skew: Millis,
        battery: [f64; DEVICES.len()],
        water: f64,
        power: f64,
    ) -> Home {
        Home {
            profile,
            fitted: [true; DEVICES.len()],
            pill_box: false,
            doses_missed: 0,
            late_riser: false,
            early_riser: false,
            walk: None,
            night_owl: false,
            napper: false,
            meter_every: 15,
            skew,
            battery,
            water,
            power,
            day: 0,
            wake: 0,
            sleep: 0,
            prev_sleep: 0,
            nap: None,
            watch_on: true,
            stay: None,
            stay_told: 0,
            out: None,
            night_trip: None,
            in_bed: true,
            collapsed_until: 0,
            tachycardia_until: 0,
            racing: None,
            gateway_down_until: 0,
            backlog: Vec::new(),
        }
    }

    /// Plans the local day starting at `day`, at `now` (in it).
    fn plan(&mut self, day: Millis, now: Millis, rng: &mut Rng, mix: &Mix) {
        self.day = day;
        self.prev_sleep = self.sleep;
        self.wake = day
            + if self.late_riser {
                rng.between(7 * HOUR + 30 * MIN, 9 * HOUR)
            } else if self.early_riser {
                rng.between(5 * HOUR, 6 * HOUR)
            } else {
                rng.between(6 * HOUR, 7 * HOUR + 30 * MIN)
            };
        self.sleep = day
            + if self.night_owl {
                rng.between(23 * HOUR, 24 * HOUR + 30 * MIN)
            } else {
                rng.between(21 * HOUR + 30 * MIN, 23 * HOUR)
            };
        // Half the early risers walk in the morning, from a quarter of an hour after getting up
        // (not one who cannot go out alone).
        let can_walk = !self.profile.cohorts.contains(&Cohort::SEVERE_DISABILITY);
        self.walk = (self.early_riser && can_walk && rng.chance(0.5)).then(|| {
            let start = self.wake + rng.between(15 * MIN, 45 * MIN);
            (start, start + rng.between(30 * MIN, 90 * MIN))
        });
        self.out = rng.chance(0.5).then(|| {
            let start = day + rng.between(9 * HOUR, 15 * HOUR);
            (start, start + rng.between(HOUR, 3 * HOUR))
        });
        self.nap = (self.napper && rng.chance(0.7))
            .then(|| {
                let start = day + rng.between(13 * HOUR, 14 * HOUR + 30 * MIN);
                (start, start + rng.between(30 * MIN, 90 * MIN))
            })
            .filter(|(a, b)| self.out.is_none_or(|(c, d)| *b <= c || d <= *a));
        self.night_trip = rng
            .chance(0.5)
            .then(|| day + rng.between(HOUR, 4 * HOUR))
            .filter(|t| self.asleep(*t) && self.asleep(t + 8 * MIN));
        self.watch_on = !rng.chance(mix.watch_off);
        if self.stay.is_none() && rng.chance(mix.stays_away) {
            let leave = (day + rng.between(9 * HOUR, 11 * HOUR)).max(now + MIN);
            self.stay_told = leave + rng.between(1, 4) * DAY;
            self.stay = Some((leave, self.stay_told - rng.between(0, 2 * HOUR)));
        }
    }

    /// The home has the device and its battery is not flat.
    fn alive(&self, k: DeviceKind) -> bool {
        let i = DEVICES.iter().position(|d| *d == k).unwrap();
        self.fitted[i] && self.battery[i] > 0.0
    }

    fn asleep(&self, t: Millis) -> bool {
        (t >= self.prev_sleep && t < self.wake) || t >= self.sleep
    }

    fn napping(&self, t: Millis) -> bool {
        self.nap.is_some_and(|(a, b)| (a..b).contains(&t))
    }

    /// Out of the home: an outing, or a stay with family.
    fn away(&self, t: Millis) -> bool {
        let within = |o: Option<(Millis, Millis)>| o.is_some_and(|(a, b)| (a..b).contains(&t));
        within(self.out) || within(self.walk) || self.staying(t)
    }

    fn staying(&self, t: Millis) -> bool {
        self.stay.is_some_and(|(a, b)| (a..b).contains(&t))
    }

    fn still(&self, t: Millis) -> bool {
        t < self.collapsed_until
    }
}

/// What the simulator has sent.
#[derive(Debug, Default, Clone)]
pub struct SimReport {
    pub households: usize,
    /// Simulated time at the start, ms.
    pub start: Millis,
    /// Every incident injected, as printed (for a run scored in process, as the demo does).
    pub injected: Vec<crate::tools::score::Injected>,
    pub events: u64,
    pub incidents: u64,
    pub weather_alerts: u64,
    pub backlog_flushed: u64,
    pub send_errors: u64,
    /// Simulated time covered, ms.
    pub simulated: Millis,
}

pub struct Simulator<'a> {
    producer: &'a FutureProducer,
    codec: &'a Codec,
    topics: &'a Topics,
    seq: u64,
    report: SimReport,
    mix: Mix,
    /// Draws for redelivered duplicates (apart from the city's, so they do not change it).
    dup_rng: Rng,
    /// Draws for the pill boxes, apart from the city's for the same reason.
    pill_rng: Rng,
    /// The rules, for each incident's promise (the threshold of its household's cohort).
    rules: Option<std::sync::Arc<crate::rules::RuleSet>>,
}

impl<'a> Simulator<'a> {
    pub fn new(producer: &'a FutureProducer, codec: &'a Codec, topics: &'a Topics) -> Self {
        Simulator {
            producer,
            codec,
            topics,
            seq: 0,
            report: SimReport::default(),
            mix: Mix::default(),
            dup_rng: Rng::new(0x5eed),
            pill_rng: Rng::new(0x9111_b0c5),
            rules: None,
        }
    }

    /// Scores collapses against the rules' own thresholds, not the longest shipped one.
    pub fn with_rules(mut self, rules: std::sync::Arc<crate::rules::RuleSet>) -> Self {
        self.rules = Some(rules);
        self
    }

    fn send(&mut self, topic: &str, key: &str, input: &Input, timestamp: Millis) {
        let payload = self
            .codec
            .encode_input(input)
            .expect("simulated records are valid");
        let mut rec: FutureRecord<'_, str, [u8]> =
            FutureRecord::to(topic).key(key).timestamp(timestamp);
        if let Some(p) = payload.as_deref() {
            rec = rec.payload(p);
        }
        let twice = !matches!(input, Input::Household { .. })
            && self.mix.duplicates > 0.0
            && self.dup_rng.chance(self.mix.duplicates);
        if twice {
            let again: FutureRecord<'_, str, [u8]> = FutureRecord::to(topic)
                .key(key)
                .timestamp(timestamp)
                .payload(payload.as_deref().unwrap_or_default());
            self.send_record(again);
        }
        self.send_record(rec);
    }

    fn send_record(&mut self, mut rec: FutureRecord<'_, str, [u8]>) {
        // The producer batches; when its queue is full the city waits for it to drain, so
        // nothing is dropped (the simulated clock is behind for a moment, never ahead).
        loop {
            match self.producer.send_result(rec) {
                Ok(_) => break,
                Err((
                    rdkafka::error::KafkaError::MessageProduction(
                        rdkafka::types::RDKafkaErrorCode::QueueFull,
                    ),
                    back,
                )) => {
                    rec = back;
                    std::thread::sleep(Duration::from_millis(2));
                }
                Err(_) => {
                    self.report.send_errors += 1;
                    break;
                }
            }
        }
    }

    /// Sends, or holds back while the home's gateway is down (sent late, in a burst, later).
    fn emit(&mut self, home: &mut Home, topic: String, input: Input, now: Millis) {
        self.report.events += 1;
        let key = home.profile.household_id.clone();
        if now < home.gateway_down_until {
            home.backlog.push((topic, key, input));
        } else {
            self.send(&topic, &key, &input, now);
        }
    }

    fn sensor(&mut self, home: &mut Home, kind: DeviceKind, reading: Reading, now: Millis) {
        self.seq += 1;
        let id = home.profile.household_id.clone();
        let e = SensorEvent {
            event_id: format!("{id}-{}-{}", kind.as_str().to_ascii_lowercase(), self.seq),
            household_id: id.clone(),
            device_id: format!("{id}-{}", kind.as_str().to_ascii_lowercase()),
            device_kind: kind,
            event_time: now + home.skew,
            reading,
            gateway_id: Some(format!("gw-{id}")),
        };
        let topic = self.topics.sensor_events.clone();
        self.emit(home, topic, Input::Sensor(e), now);
    }

    /// Registers the households and waits until the broker has them.
    pub fn register(&mut self, cfg: &SimConfig) {
        let topic = self.topics.households.clone();
        let now = cfg.start();
        for i in 0..cfg.households {
            let p = household(i, cfg.seed);
            let id = p.household_id.clone();
            self.send(
                &topic,
                &id,
                &Input::Household {
                    household_id: id.clone(),
                    profile: Some(p),
                },
                now,
            );
            if i % 5_000 == 4_999 {
                let _ = self.producer.flush(Duration::from_secs(30));
            }
        }
        let _ = self.producer.flush(Duration::from_secs(30));
        self.report.households = cfg.households;
    }

    /// Registers the households, then streams until the duration ends or `stop` turns true.
    pub async fn run(mut self, cfg: &SimConfig, stop: watch::Receiver<bool>) -> SimReport {
        self.register(cfg);
        self.stream(cfg, stop).await
    }

    /// Runs the city until the duration ends or `stop` turns true.
    pub async fn stream(mut self, cfg: &SimConfig, mut stop: watch::Receiver<bool>) -> SimReport {
        self.report.households = cfg.households;
        self.mix = cfg.mix;
        let mix = cfg.mix;
        let mut rng = Rng::new(cfg.seed);
        let start = cfg.start();
        let local_day = |t: Millis| t - (t + CST).rem_euclid(DAY);
        self.pill_rng = Rng::new(cfg.seed ^ 0x9111_b0c5);
        let mut pill_fit = Rng::new(cfg.seed ^ 0xb0c5_9111);
        // Drawn apart: choosing the early risers leaves the city's draws as they were (their
        // walks are drawn from it).
        let mut early = Rng::new(cfg.seed ^ 0x05_00_06_00);
        let mut homes: Vec<Home> = (0..cfg.households)
            .map(|i| {
                let skew = match rng.below(1000) {
                    0..=4 => -start,                          // reset to 1970
                    5..=59 => rng.between(-2 * MIN, 2 * MIN), // drifted
                    _ => 0,
                };
                let battery = std::array::from_fn(|_| rng.between(15, 100) as f64);
                let mut h = Home::new(
                    household(i, cfg.seed),
                    skew,
                    battery,
                    (i % 97) as f64,
                    (i % 89) as f64 * 10.0,
                );
                for (k, kind) in DEVICES.iter().enumerate() {
                    h.fitted[k] = match *kind {
                        DeviceKind::BED_SENSOR => rng.chance(mix.bed_sensor),
                        DeviceKind::WEARABLE => rng.chance(mix.watch),
                        _ => true,
                    };
                }
                h.meter_every = match rng.next_u64() as f64 / u64::MAX as f64 {
                    x if x < mix.meters_daily => 24 * 60,
                    x if x < mix.meters_daily + mix.meters_hourly => 60,
                    _ => 15,
                };
                h.late_riser = rng.chance(mix.late_risers);
                h.early_riser = early.chance(mix.early_risers) && !h.late_riser;
                h.night_owl = rng.chance(mix.night_owls);
                h.napper = rng.chance(mix.nappers);
                h.pill_box = pill_fit.chance(mix.pill_box);
                h.plan(local_day(start), start, &mut rng, &mix);
                // In bed at the start only if the day's plan has the elder asleep then.
                h.in_bed = h.asleep(start);
                h
            })
            .collect();
        // Every home ticks once a simulated minute (staggered).
        let mut ticks: BinaryHeap<Reverse<(Millis, usize)>> = (0..cfg.households)
            .map(|i| Reverse((start + rng.below(MIN as u64) as Millis, i)))
            .collect();
        let mut script = cfg.injections.clone();
        script.sort_by_key(|i| i.after);
        let mut script = script.into_iter().peekable();
        let mut next_random = cfg.incident_every.map(|d| start + d.as_millis() as Millis);
        let mut next_weather = cfg.weather_every.map(|d| start + d.as_millis() as Millis);
        let wall_start = tokio::time::Instant::now();
        let mut ticker = tokio::time::interval(Duration::from_millis(10));
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = wait_true(&mut stop) => break,
                _ = ticker.tick() => {}
            }
            let elapsed = wall_start.elapsed();
            if cfg.duration.is_some_and(|d| elapsed >= d) {
                break;
            }
            let now = start + (elapsed.as_secs_f64() * cfg.speed * 1000.0) as Millis;
            // Everything up to `now` in simulated-time order (a tick before an incident at the
            // same moment), so a run is the same whatever the pacing: an incident never shows
            // in readings from before its onset, and the random draws come in one order.
            let random_every = cfg.incident_every.filter(|_| cfg.households > 0);
            loop {
                let tick = ticks.peek().map(|Reverse((t, _))| *t);
                let scripted = script.peek().map(|i| start + i.after.as_millis() as Millis);
                let random = next_random.filter(|_| random_every.is_some());
                let first = [tick, scripted, random, next_weather]
                    .into_iter()
                    .flatten()
                    .min();
                let Some(at) = first.filter(|at| *at <= now) else {
                    break;
                };
                if tick == Some(at) {
                    let Some(Reverse((t, i))) = ticks.pop() else {
                        break;
                    };
                    self.tick(&mut homes[i], &mut rng, t, local_day(t));
                    ticks.push(Reverse((t + MIN, i)));
                } else if scripted == Some(at) {
                    let Some(inj) = script.next() else { break };
                    let hh = inj.household % cfg.households.max(1);
                    self.inject(&mut homes[hh], inj.kind, at);
                } else if random == Some(at) {
                    let kind =
                        IncidentKind::RANDOM[rng.below(IncidentKind::RANDOM.len() as u64) as usize];
                    let hh = rng.below(cfg.households as u64) as usize;
                    self.inject(&mut homes[hh], kind, at);
                    next_random = random_every.map(|every| at + every.as_millis() as Millis);
                } else {
                    self.weather(&mut rng, at);
                    next_weather = cfg
                        .weather_every
                        .map(|every| at + every.as_millis() as Millis);
                }
            }
            self.report.simulated = now - start;
            self.report.start = start;
        }
        // Flush what the gateways still hold, as they would on reconnecting.
        let end = start + self.report.simulated;
        for h in &mut homes {
            self.settle_racing(h, end);
            self.flush_backlog(h, end);
        }
        let _ = self.producer.flush(Duration::from_secs(30));
        println!(
            "{}",
            serde_json::json!({"simulated": {"households": cfg.households, "start": start, "ms": self.report.simulated}})
        );
        self.report
    }

    fn flush_backlog(&mut self, h: &mut Home, at: Millis) {
        for (topic, key, input) in std::mem::take(&mut h.backlog) {
            self.send(&topic, &key, &input, at);
            self.report.backlog_flushed += 1;
        }
    }

    /// One simulated minute of one home.
    fn tick(&mut self, h: &mut Home, rng: &mut Rng, t: Millis, day: Millis) {
        if day != h.day {
            let mix = self.mix;
            h.plan(day, t, rng, &mix);
            // Batteries run down a little every day; a dead device goes silent.
            for b in h.battery.iter_mut() {
                *b -= 0.5 + rng.below(10) as f64 / 10.0;
            }
            // Now and then the gateway drops out for up to an hour (reconnecting on a tick).
            if rng.chance(0.02) {
                let out = rng.between(10 * MIN, HOUR);
                h.gateway_down_until = t + (out + MIN - 1) / MIN * MIN;
            }
        }
        if h.racing.is_some() && t >= h.tachycardia_until {
            self.settle_racing(h, t);
        }
        if !h.backlog.is_empty() && t >= h.gateway_down_until {
            // Reconnected: hours of events arrive at once, late.
            self.flush_backlog(h, t);
        }
        let id = h.profile.household_id.clone();
        self.doses(h, t);
        // Heartbeats every five minutes from every live device.
        if (t / MIN) % 5 == (id.len() as Millis) % 5 {
            for (k, kind) in DEVICES.iter().enumerate() {
                if h.alive(*kind) {
                    let hb = Input::Heartbeat(DeviceHeartbeat {
                        household_id: id.clone(),
                        device_id: format!("{id}-{}", kind.as_str().to_ascii_lowercase()),
                        device_kind: *kind,
                        event_time: t + h.skew,
                        battery_pct: Some(h.battery[k].clamp(0.0, 100.0) as i32),
                        mains_power: None,
                    });
                    let topic = self.topics.heartbeats.clone();
                    self.emit(h, topic, hb, t);
                }
            }
        }
        let (away, still, staying) = (h.away(t), h.still(t), h.staying(t));
        let asleep = h.asleep(t) || h.napping(t);
        // Leaving to stay with family (the registry is told until when; coming back a little
        // earlier, it is not told again: the date passes), and coming back.
        if let Some((leave, back)) = h.stay {
            let at = |s: Millis| t >= s && t - s < MIN;
            if (at(leave) || at(back)) && !still {
                let id = h.profile.household_id.clone();
                if at(leave) {
                    let mut p = h.profile.clone();
                    p.away_until = Some(h.stay_told);
                    let topic = self.topics.households.clone();
                    let reg = Input::Household {
                        household_id: id.clone(),
                        profile: Some(p),
                    };
                    self.send(&topic, &id, &reg, t);
                }
                if h.alive(DeviceKind::DOOR_CONTACT) {
                    self.sensor(h, DeviceKind::DOOR_CONTACT, Reading::Door { open: true }, t);
                }
                if at(leave) {
                    println!(
                        "{}",
                        serde_json::json!({"away": {"household_id": id, "from": leave, "back": back, "registry_until": h.stay_told}})
                    );
                } else {
                    h.stay = None;
                }
            }
        }
        // Waking and going to bed, and the nap after lunch: the mattress tells each change.
        let now_in_bed = asleep && !staying;
        if now_in_bed != h.in_bed && !still {
            h.in_bed = now_in_bed;
            if h.alive(DeviceKind::BED_SENSOR) {
                let occupied = now_in_bed;
                self.sensor(h, DeviceKind::BED_SENSOR, Reading::Bed { occupied }, t);
            }
        }
        // The mattress and the door contact repeat their state on a cadence of their own,
        // whatever the elder does (after a fall too): a report is not a movement.
        let phase = id.len() as Millis;
        if h.alive(DeviceKind::BED_SENSOR) && (t / MIN) % 10 == (phase + 3) % 10 {
            let on_a_trip = h.night_trip.is_some_and(|n| t >= n && t < n + 8 * MIN);
            let occupied = h.in_bed && !on_a_trip;
            self.sensor(h, DeviceKind::BED_SENSOR, Reading::Bed { occupied }, t);
        }
        // The mattress reads heart rate and breathing while someone lies on it: a racing
        // heart at night is seen there, not on the watch (charging).
        let on_a_trip = h.night_trip.is_some_and(|n| t >= n && t < n + 8 * MIN);
        if h.alive(DeviceKind::BED_SENSOR) && h.in_bed && !on_a_trip && (t / MIN) % 5 == phase % 5 {
            let racing = t < h.tachycardia_until;
            let hr = if racing {
                135
            } else {
                52 + ((t / MIN) % 13) as i32
            };
            let reading = Reading::Vitals {
                heart_rate_bpm: Some(hr),
                respiration_rpm: Some(12 + ((t / MIN) % 5) as i32),
                worn: true,
            };
            self.sensor(h, DeviceKind::BED_SENSOR, reading, t);
            if racing {
                self.racing_read(h, t);
            }
        }
        if h.alive(DeviceKind::DOOR_CONTACT) && (t / MIN) % 15 == (phase + 7) % 15 {
            self.sensor(
                h,
                DeviceKind::DOOR_CONTACT,
                Reading::Door { open: false },
                t,
            );
        }
        // A trip to the bathroom at night: out of bed, moving, back within ten minutes.
        if let Some(trip) = h
            .night_trip
            .filter(|n| t >= *n && t - *n < MIN && !still && !staying)
        {
            self.sensor(
                h,
                DeviceKind::BED_SENSOR,
                Reading::Bed { occupied: false },
                trip,
            );
            self.sensor(
                h,
                DeviceKind::MOTION_PIR,
                Reading::Motion { detected: true },
                trip + 2 * MIN,
            );
            self.sensor(
                h,
                DeviceKind::BED_SENSOR,
                Reading::Bed { occupied: true },
                trip + 8 * MIN,
            );
        }
        // Going out and coming back.
        for (a, b) in [h.out, h.walk].into_iter().flatten().filter(|_| !staying) {
            if !still
                && ((t >= a && t - a < MIN) || (t >= b && t - b < MIN))
                && h.alive(DeviceKind::DOOR_CONTACT)
            {
                self.sensor(h, DeviceKind::DOOR_CONTACT, Reading::Door { open: true }, t);
            }
        }
        // Moving about at home while awake.
        if !asleep && !away && !still && h.alive(DeviceKind::MOTION_PIR) && rng.chance(0.3) {
            self.sensor(
                h,
                DeviceKind::MOTION_PIR,
                Reading::Motion { detected: true },
                t,
            );
        }
        // The watch: vitals every five minutes while worn (off at night, charging; some
        // days left on the charger).
        if !asleep && !away && h.watch_on && h.alive(DeviceKind::WEARABLE) && (t / MIN) % 5 == 0 {
            let racing = t < h.tachycardia_until;
            let hr = if racing {
                135
            } else {
                62 + rng.below(25) as i32
            };
            let reading = Reading::Vitals {
                heart_rate_bpm: Some(hr),
                respiration_rpm: Some(13 + rng.below(6) as i32),
                worn: true,
            };
            self.sensor(h, DeviceKind::WEARABLE, reading, t);
            if racing {
                self.racing_read(h, t);
            }
        }
        // Meals and washing use water, appliances power, counted every fifteen minutes; the
        // meters report every 15 minutes, every hour or once a day (at 02:00).
        if (t / MIN) % 15 == 0 {
            let minute = (t - h.day) / MIN;
            let meal = [7 * 60 + 30, 12 * 60, 18 * 60]
                .iter()
                .any(|m| (minute - m).abs() < 30);
            // Water comes in bursts (meals, a tap, a flush), with quiet quarters between:
            // a steady trickle is what the water_flow rule is there to find.
            if !still && !away && (meal || (!asleep && rng.chance(0.25))) {
                h.water += if meal { 0.02 } else { 0.006 };
            }
            h.power += 0.02 + if !asleep && !away && !still { 0.1 } else { 0.0 };
            let (w, p) = (h.water, h.power);
            let minute_of_day = ((t + CST) / MIN).rem_euclid(24 * 60);
            let report = match h.meter_every {
                15 => true,
                60 => minute_of_day % 60 < 15,
                _ => (120..135).contains(&minute_of_day),
            };
            if report && h.alive(DeviceKind::WATER_METER) {
                self.sensor(
                    h,
                    DeviceKind::WATER_METER,
                    Reading::Meter { cumulative: w },
                    t,
                );
            }
            if report && h.alive(DeviceKind::POWER_METER) {
                self.sensor(
                    h,
                    DeviceKind::POWER_METER,
                    Reading::Meter { cumulative: p },
                    t,
                );
            }
        }
        // The morning round: the elder presses I'm OK, or the centre calls.
        // An elder who has collapsed does neither: nobody answers the centre's call.
        if t >= h.wake + HOUR && t - h.wake - HOUR < MIN && !still && !staying {
            let kind = if rng.chance(0.6) {
                CheckInKind::IM_OK_BUTTON
            } else {
                CheckInKind::PHONE_ROUND
            };
            let c = Input::CheckIn(CheckIn {
                household_id: id.clone(),
                event_time: t + h.skew,
                kind,
                visitor_id: None,
            });
            let topic = self.topics.checkins.clone();
            self.emit(h, topic, c, t);
        }
    }

    fn inject(&mut self, h: &mut Home, kind: IncidentKind, at: Millis) {
        // Missed doses arise from the doses as they fall due (`doses`), never injected.
        if kind == IncidentKind::MissedDoses {
            return;
        }
        self.report.incidents += 1;
        let within = kind.expectation(&h.profile).1;
        let deadline = match kind {
            IncidentKind::Alarm(device) => {
                self.sensor(h, device, Reading::Alarm { active: true }, at);
                at + within
            }
            IncidentKind::Collapse => {
                h.collapsed_until = at + 20 * HOUR;
                match &self.rules {
                    Some(rules) => collapse_promise(rules, h, at),
                    None => at + within,
                }
            }
            IncidentKind::Tachycardia => {
                // Told once the readings show whether (and when) the rule can find it.
                self.settle_racing(h, at);
                h.tachycardia_until = at + 20 * MIN;
                let sustained = self.rules.as_ref().map_or(10 * MIN, |rules| {
                    use crate::rules::{params, RuleKind, RuleParams};
                    let values = rules
                        .rule(RuleKind::Vitals)
                        .values(&h.profile.household_id, Some(&h.profile));
                    params::Vitals::of(&values).sustained_for()
                });
                h.racing = Some(Racing {
                    at,
                    sustained,
                    first: None,
                });
                return;
            }
            IncidentKind::MissedDoses => unreachable!("never injected"),
        };
        // Away from home, a collapse is for no device at home to see.
        let observable = !(kind == IncidentKind::Collapse && h.away(at));
        self.injected(h, kind, at, deadline, observable, at);
    }

    /// The pill box's doses: one half an hour after getting up, one at 20:00. A dose is taken
    /// unless forgotten, the elder is out, or cannot (a collapse); while the elder stays with
    /// family the box is not used. Doses not taken in a row as many as the rule asks of the
    /// household are what the rule is there to find.
    fn doses(&mut self, h: &mut Home, t: Millis) {
        if !h.pill_box || h.staying(t) {
            return;
        }
        let evening = h.day + 20 * HOUR;
        let due = |d: Millis| t >= d && t - d < MIN;
        if !due(h.wake + 30 * MIN) && !due(evening) {
            return;
        }
        let taken = !h.away(t) && !h.still(t) && !self.pill_rng.chance(self.mix.forgets_dose);
        let reading = Reading::PillBox { dose_taken: taken };
        self.sensor(h, DeviceKind::PILL_BOX, reading, t);
        if taken {
            h.doses_missed = 0;
            return;
        }
        h.doses_missed += 1;
        let in_a_row = self.rules.as_ref().map_or(2, |rules| {
            use crate::rules::{params, RuleKind, RuleParams};
            let values = rules
                .rule(RuleKind::MissedDoses)
                .values(&h.profile.household_id, Some(&h.profile));
            params::MissedDoses::of(&values).in_a_row() as u32
        });
        if h.doses_missed == in_a_row {
            self.injected(h, IncidentKind::MissedDoses, t, t + MIN, true, t);
        }
    }

    /// `shown`: when the record that shows it is made (an alarm, the reading that settles a
    /// racing heart, the dose not taken).
    fn injected(
        &mut self,
        h: &Home,
        kind: IncidentKind,
        at: Millis,
        deadline: Millis,
        seen: bool,
        shown: Millis,
    ) {
        let rule = kind.expectation(&h.profile).0;
        let until = match kind {
            IncidentKind::Collapse => h.collapsed_until,
            IncidentKind::Tachycardia => h.tachycardia_until,
            _ => at,
        };
        // Missed doses are stamped by the pill box's clock: one running ahead stamps the task
        // that much later.
        let deadline = match kind {
            IncidentKind::MissedDoses => deadline + h.skew.clamp(0, DRIFT),
            _ => deadline,
        };
        // The platform cannot act on what the home's gateway holds: the promise runs from
        // its reconnection. A collapse shows as an absence, which no outage hides.
        let deadline = match kind {
            IncidentKind::Collapse => deadline,
            _ => deadline + held_by_gateway(h, shown),
        };
        self.report.injected.push(crate::tools::score::Injected {
            household_id: h.profile.household_id.clone(),
            kind: kind.name().to_string(),
            rule: rule.to_string(),
            at,
            deadline,
            observable: seen,
            until,
        });
        println!(
            "{}",
            serde_json::json!({"injected": {"household_id": h.profile.household_id, "kind": kind.name(), "rule": rule, "at": at, "deadline": deadline, "observable": seen, "until": until}})
        );
    }

    /// A reading of the racing heart sent at `t`: the second one settles the rule's promise.
    fn racing_read(&mut self, h: &mut Home, t: Millis) {
        let Some(r) = h.racing.as_mut() else { return };
        if let Some((deadline, seen)) = r.read(t, h.tachycardia_until) {
            let at = r.at;
            h.racing = None;
            self.injected(h, IncidentKind::Tachycardia, at, deadline, seen, t);
        }
    }

    /// The racing heart is over (or the run is) at `t` without a second reading: no device
    /// showed it sustained, unless readings still to come could.
    fn settle_racing(&mut self, h: &mut Home, t: Millis) {
        let Some(r) = h.racing.take() else { return };
        let (deadline, seen) = r.unsettled(t, t >= h.tachycardia_until);
        self.injected(h, IncidentKind::Tachycardia, r.at, deadline, seen, t);
    }

    fn weather(&mut self, rng: &mut Rng, at: Millis) {
        let district = DISTRICTS[rng.below(DISTRICTS.len() as u64) as usize];
        let kinds = [
            WeatherKind::HEAT,
            WeatherKind::COLD,
            WeatherKind::TYPHOON,
            WeatherKind::RAINSTORM,
        ];
        let alert = WeatherAlert {
            alert_id: format!("wx-{district}-{at}"),
            region: district.into(),
            kind: kinds[rng.below(kinds.len() as u64) as usize],
            level: [WeatherLevel::YELLOW, WeatherLevel::ORANGE][rng.below(2) as usize],
            issued_at: at,
            expires_at: at + 12 * HOUR,
            cancelled: false,
        };
        let topic = self.topics.weather_alerts.clone();
        self.send(&topic, district, &Input::Weather(alert.clone()), at);
        self.report.weather_alerts += 1;
        println!(
            "{}",
            serde_json::json!({"weather": {"alert_id": alert.alert_id, "region": district, "at": at}})
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn injections_parse() {
        let i: Injection = "SMOKE_ALARM@7+2.5".parse().unwrap();
        assert_eq!(
            i,
            Injection {
                after: Duration::from_millis(2500),
                household: 7,
                kind: IncidentKind::Alarm(DeviceKind::SMOKE_ALARM)
            }
        );
        assert_eq!(
            "COLLAPSE@3+60".parse::<Injection>().unwrap().kind,
            IncidentKind::Collapse
        );
        assert!("SMOKE@7+2".parse::<Injection>().is_err());
        assert!("SMOKE_ALARM@x+2".parse::<Injection>().is_err());
        assert!("SMOKE_ALARM7+2".parse::<Injection>().is_err());
    }

    #[test]
    fn households_are_deterministic_and_valid() {
        for i in 0..200 {
            let p = household(i, 1);
            assert_eq!(p, household(i, 1));
            crate::codec::validate::input(&Input::Household {
                household_id: p.household_id.clone(),
                profile: Some(p.clone()),
            })
            .unwrap();
            assert!(p.street.starts_with(&p.district) && p.community.starts_with(&p.street));
        }
        assert_ne!(household(3, 1), household(3, 2));
    }

    #[test]
    fn a_day_has_a_rhythm() {
        let mut rng = Rng::new(5);
        let mut h = Home::new(household(1, 1), 0, [50.0; DEVICES.len()], 0.0, 0.0);
        let day = 1_795_104_000_000;
        let mix = Mix::default();
        h.plan(day, day, &mut rng, &mix);
        assert!(
            h.asleep(day + 3 * HOUR)
                && !h.asleep(day + 10 * HOUR)
                && h.asleep(day + 23 * HOUR + 30 * MIN)
        );
        assert!((6 * HOUR..=7 * HOUR + 30 * MIN).contains(&(h.wake - day)));
        // A night owl's bedtime after midnight holds into the next day's plan; a late riser
        // is up after 07:30.
        let mut owl = Home::new(household(2, 1), 0, [50.0; DEVICES.len()], 0.0, 0.0);
        (owl.night_owl, owl.late_riser) = (true, true);
        let mut after_midnight = false;
        for d in 0..20 {
            owl.plan(day + d * DAY, day + d * DAY, &mut rng, &mix);
            assert!(owl.wake - owl.day >= 7 * HOUR + 30 * MIN);
            assert!(!owl.asleep(owl.day + 22 * HOUR + 59 * MIN));
            if owl.sleep > owl.day + DAY {
                after_midnight = true;
                let next = owl.sleep;
                owl.plan(day + (d + 1) * DAY, day + (d + 1) * DAY, &mut rng, &mix);
                assert!(!owl.asleep(next - MIN) && owl.asleep(next));
            }
        }
        assert!(after_midnight);
    }

    #[test]
    fn a_collapse_is_promised_by_the_household_s_own_threshold_and_where_it_lies() {
        let rules = crate::rules::RuleSet::load(std::path::Path::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/rules"
        )))
        .unwrap();
        // 2026-11-20 00:00 CST; quiet hours 22:00-06:30.
        let day = 1_795_104_000_000;
        let mut p = household(1, 1);
        p.cohorts = vec![Cohort::LIVING_ALONE];
        p.age = 84;
        let mut h = Home::new(p, 0, [50.0; DEVICES.len()], 0.0, 0.0);
        // By day: 10 h and one.
        assert_eq!(
            collapse_promise(&rules, &h, day + 10 * HOUR),
            day + 21 * HOUR
        );
        // In bed at night with a mattress: not before the elder would be up (09:30), nor
        // before the threshold.
        h.in_bed = true;
        assert_eq!(
            collapse_promise(&rules, &h, day + 5 * HOUR),
            day + 16 * HOUR
        );
        assert_eq!(
            collapse_promise(&rules, &h, day - 2 * HOUR + 30 * MIN),
            day + 10 * HOUR + 30 * MIN
        );
        // No mattress, at 23:00: ten waking hours from 06:30.
        h.fitted[DEVICES
            .iter()
            .position(|d| *d == DeviceKind::BED_SENSOR)
            .unwrap()] = false;
        assert_eq!(
            collapse_promise(&rules, &h, day + 23 * HOUR),
            day + DAY + 6 * HOUR + 30 * MIN + 10 * HOUR + HOUR
        );
    }

    #[test]
    fn an_alarm_held_by_a_gateway_out_is_promised_from_its_reconnection() {
        use crate::codec::{catalogue::Catalogue, Codec};
        let codec = Codec::new(
            Catalogue::load(std::path::Path::new(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/schemas"
            )))
            .unwrap(),
        );
        // Nothing is sent: every record waits in the backlog of a gateway that is out.
        let producer: FutureProducer = rdkafka::ClientConfig::new()
            .set("bootstrap.servers", "127.0.0.1:9")
            .create()
            .unwrap();
        let topics = Topics::default();
        let mut sim = Simulator::new(&producer, &codec, &topics);
        let at = 1_795_104_000_000 + 26 * MIN;
        let mut h = Home::new(household(1, 1), 0, [50.0; DEVICES.len()], 0.0, 0.0);
        h.gateway_down_until = at + 14 * MIN;
        sim.inject(&mut h, IncidentKind::Alarm(DeviceKind::GAS_ALARM), at);
        sim.inject(&mut h, IncidentKind::Collapse, at);
        assert_eq!(h.backlog.len(), 1, "the alarm waits for the gateway");
        let deadlines: Vec<_> = sim.report.injected.iter().map(|i| i.deadline).collect();
        assert_eq!(deadlines[0], at + 14 * MIN + MIN);
        // A collapse shows as an absence: its promise is the rules' own, outage or not.
        let promise = IncidentKind::Collapse.expectation(&h.profile).1;
        assert_eq!(deadlines[1], at + promise);
        // Once the gateway is back, an alarm is promised from its own time.
        let later = at + 20 * MIN;
        sim.inject(&mut h, IncidentKind::Alarm(DeviceKind::GAS_ALARM), later);
        assert_eq!(sim.report.injected[2].deadline, later + MIN);
    }

    #[test]
    fn a_racing_heart_is_promised_from_the_readings_that_show_it() {
        let at = 1_795_104_000_000;
        let racing = || Racing {
            at,
            sustained: 10 * MIN,
            first: None,
        };
        let until = at + 20 * MIN;
        // Read on the watch every five minutes: ten minutes after the first reading.
        let mut r = racing();
        assert_eq!(r.read(at + 4 * MIN, until), None);
        assert_eq!(
            r.read(at + 9 * MIN, until),
            Some((at + 14 * MIN + DRIFT, true))
        );
        // The elder lies down for a nap before the watch's first reading: the mattress's
        // first reading, minutes on, starts the ten.
        let mut r = racing();
        assert_eq!(r.read(at + 8 * MIN, until), None);
        assert_eq!(
            r.read(at + 13 * MIN, until),
            Some((at + 18 * MIN + DRIFT, true))
        );
        // A second reading only after the ten minutes: the rule decides at that reading.
        let mut r = racing();
        r.read(at + MIN, until);
        assert_eq!(
            r.read(at + 16 * MIN, until),
            Some((at + 16 * MIN + DRIFT, true))
        );
        // The mattress's first reading 14 minutes in: two readings out of range, but the heart
        // is back in range before ten minutes have passed since the first; nothing shows it
        // sustained (the next reading, in range, lands on the deadline itself).
        let mut r = racing();
        r.read(at + 14 * MIN, until);
        assert_eq!(
            r.read(at + 19 * MIN, until),
            Some((at + 24 * MIN + DRIFT, false))
        );
        // One reading, then out of the house until it is over: nothing could show it.
        let mut r = racing();
        r.read(at + MIN, until);
        assert!(!r.unsettled(at + 20 * MIN, true).1);
        // The run ends with the condition still on: pending, past the run's end.
        let (deadline, seen) = racing().unsettled(at + 3 * MIN, false);
        assert!(seen && deadline > at + 3 * MIN);
    }
}
