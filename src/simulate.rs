//! A simulated city: registers households, then streams motion, door, bed, vitals, meter and
//! heartbeat traffic at a set rate, with alarms injected by script or at random. Every injected
//! incident is printed as a JSON line (`"injected"`) so a run can be scored against the tasks.

use std::time::Duration;

use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use tokio::sync::watch;

use crate::codec::Codec;
use crate::config::Topics;
use crate::model::*;
use crate::pipeline::wall_millis;
use crate::sink::wait_true;

/// Wuhan's central districts (administrative division codes).
const DISTRICTS: [&str; 6] = ["420102", "420103", "420104", "420105", "420106", "420111"];

/// An alarm to inject: which household (by index), which device, when (from the start).
#[derive(Debug, Clone, PartialEq)]
pub struct Injection {
    pub after: Duration,
    pub household: usize,
    pub kind: DeviceKind,
}

impl std::str::FromStr for Injection {
    type Err = String;

    /// `KIND@HOUSEHOLD+SECONDS`, e.g. `EMERGENCY_BUTTON@42+30`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || format!("{s:?}: expected KIND@HOUSEHOLD+SECONDS, e.g. EMERGENCY_BUTTON@42+30");
        let (kind, rest) = s.split_once('@').ok_or_else(err)?;
        let (hh, secs) = rest.split_once('+').ok_or_else(err)?;
        let kind = DeviceKind::from_symbol(kind)
            .ok_or_else(|| format!("{kind:?} is not a device kind"))?;
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
    /// Events per second across the city.
    pub rate: f64,
    pub duration: Option<Duration>,
    pub injections: Vec<Injection>,
    /// A random alarm this often, on top of the script.
    pub incident_every: Option<Duration>,
    pub seed: u64,
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
    }
}

#[derive(Debug, Default, Clone, Copy)]
pub struct SimReport {
    pub households: usize,
    pub events: u64,
    pub incidents: u64,
    pub send_errors: u64,
}

pub struct Simulator<'a> {
    producer: &'a FutureProducer,
    codec: &'a Codec,
    topics: &'a Topics,
    seq: u64,
    report: SimReport,
}

impl<'a> Simulator<'a> {
    pub fn new(producer: &'a FutureProducer, codec: &'a Codec, topics: &'a Topics) -> Self {
        Simulator {
            producer,
            codec,
            topics,
            seq: 0,
            report: SimReport::default(),
        }
    }

    fn send(&mut self, topic: &str, key: &str, input: &Input) {
        let payload = self
            .codec
            .encode_input(input)
            .expect("simulated records are valid");
        let mut rec: FutureRecord<'_, str, [u8]> = FutureRecord::to(topic).key(key);
        if let Some(p) = payload.as_deref() {
            rec = rec.payload(p);
        }
        // Fire and forget: the producer's queue batches; errors surface in the final flush.
        if self.producer.send_result(rec).is_err() {
            self.report.send_errors += 1;
        }
    }

    fn sensor(&mut self, hh: usize, kind: DeviceKind, reading: Reading, now: Millis, lag: Millis) {
        self.seq += 1;
        let id = household_id(hh);
        let e = SensorEvent {
            event_id: format!("{id}-{}-{}", kind.as_str().to_ascii_lowercase(), self.seq),
            household_id: id.clone(),
            device_id: format!("{id}-{}", kind.as_str().to_ascii_lowercase()),
            device_kind: kind,
            event_time: now - lag,
            reading,
            gateway_id: Some(format!("gw-{id}")),
        };
        let topic = self.topics.sensor_events.clone();
        self.send(&topic, &id, &Input::Sensor(e));
        self.report.events += 1;
    }

    /// One piece of everyday traffic for a random household.
    fn ordinary(&mut self, rng: &mut Rng, households: usize, now: Millis) {
        let hh = rng.below(households as u64) as usize;
        let lag = rng.below(2_000) as Millis;
        match rng.below(100) {
            0..=34 => self.sensor(
                hh,
                DeviceKind::MOTION_PIR,
                Reading::Motion { detected: true },
                now,
                lag,
            ),
            35..=42 => {
                let open = rng.below(2) == 0;
                self.sensor(
                    hh,
                    DeviceKind::DOOR_CONTACT,
                    Reading::Door { open },
                    now,
                    lag,
                )
            }
            43..=50 => {
                let occupied = rng.below(2) == 0;
                self.sensor(
                    hh,
                    DeviceKind::BED_SENSOR,
                    Reading::Bed { occupied },
                    now,
                    lag,
                )
            }
            51..=65 => {
                let worn = rng.below(10) != 0;
                let hr = worn.then(|| 58 + rng.below(30) as i32);
                let rr = worn.then(|| 12 + rng.below(8) as i32);
                let reading = Reading::Vitals {
                    heart_rate_bpm: hr,
                    respiration_rpm: rr,
                    worn,
                };
                self.sensor(hh, DeviceKind::WEARABLE, reading, now, lag)
            }
            66..=72 => {
                // About a litre every ten minutes: an ordinary household's use.
                let m3 = (now / 60_000) as f64 * 0.0001 + hh as f64;
                self.sensor(
                    hh,
                    DeviceKind::WATER_METER,
                    Reading::Meter { cumulative: m3 },
                    now,
                    lag,
                )
            }
            73..=97 => {
                // Every device sends heartbeats, so the silence rules know what to expect.
                let kinds = [
                    DeviceKind::MOTION_PIR,
                    DeviceKind::BED_SENSOR,
                    DeviceKind::WEARABLE,
                    DeviceKind::WATER_METER,
                ];
                let kind = kinds[rng.below(kinds.len() as u64) as usize];
                let id = household_id(hh);
                let hb = Input::Heartbeat(DeviceHeartbeat {
                    household_id: id.clone(),
                    device_id: format!("{id}-{}", kind.as_str().to_ascii_lowercase()),
                    device_kind: kind,
                    event_time: now - lag,
                    battery_pct: Some(20 + rng.below(80) as i32),
                    mains_power: None,
                });
                let topic = self.topics.heartbeats.clone();
                self.send(&topic, &id, &hb);
                self.report.events += 1;
            }
            _ => {
                // The morning round: an I'm-OK press or a phone call from the centre.
                let id = household_id(hh);
                let kind = if rng.below(2) == 0 {
                    CheckInKind::IM_OK_BUTTON
                } else {
                    CheckInKind::PHONE_ROUND
                };
                let c = Input::CheckIn(CheckIn {
                    household_id: id.clone(),
                    event_time: now - lag,
                    kind,
                    visitor_id: None,
                });
                let topic = self.topics.checkins.clone();
                self.send(&topic, &id, &c);
                self.report.events += 1;
            }
        }
    }

    fn inject(&mut self, hh: usize, kind: DeviceKind, now: Millis) {
        self.sensor(hh, kind, Reading::Alarm { active: true }, now, 0);
        self.report.incidents += 1;
        println!(
            "{}",
            serde_json::json!({"injected": {"household_id": household_id(hh), "device_kind": kind.as_str(), "event_time": now}})
        );
    }

    /// Registers the households and waits until the broker has them.
    pub fn register(&mut self, cfg: &SimConfig) {
        let topic = self.topics.households.clone();
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

    /// Streams everyday traffic and incidents until the duration ends or `stop` turns true.
    pub async fn stream(mut self, cfg: &SimConfig, mut stop: watch::Receiver<bool>) -> SimReport {
        self.report.households = cfg.households;

        let mut rng = Rng::new(cfg.seed);
        let start = tokio::time::Instant::now();
        let tick = Duration::from_millis(10);
        let mut ticker = tokio::time::interval(tick);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut script = cfg.injections.clone();
        script.sort_by_key(|i| i.after);
        let mut script = script.into_iter().peekable();
        let mut next_random = cfg.incident_every;
        let mut owed = 0.0;
        loop {
            tokio::select! {
                _ = wait_true(&mut stop) => break,
                _ = ticker.tick() => {}
            }
            let elapsed = start.elapsed();
            if cfg.duration.is_some_and(|d| elapsed >= d) {
                break;
            }
            let now = wall_millis();
            while let Some(inj) = script.next_if(|i| i.after <= elapsed) {
                self.inject(inj.household % cfg.households.max(1), inj.kind, now);
            }
            if let (Some(at), Some(every)) = (next_random, cfg.incident_every) {
                if elapsed >= at {
                    let kinds = [
                        DeviceKind::EMERGENCY_BUTTON,
                        DeviceKind::FALL_DETECTOR,
                        DeviceKind::SMOKE_ALARM,
                        DeviceKind::GAS_ALARM,
                        DeviceKind::WATER_LEAK,
                        DeviceKind::WEARABLE,
                    ];
                    let kind = kinds[rng.below(kinds.len() as u64) as usize];
                    self.inject(rng.below(cfg.households as u64) as usize, kind, now);
                    next_random = Some(at + every);
                }
            }
            owed += cfg.rate * tick.as_secs_f64();
            while owed >= 1.0 && cfg.households > 0 {
                self.ordinary(&mut rng, cfg.households, now);
                owed -= 1.0;
            }
        }
        let _ = self.producer.flush(Duration::from_secs(30));
        self.report
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
                kind: DeviceKind::SMOKE_ALARM
            }
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
            crate::validate::input(&Input::Household {
                household_id: p.household_id.clone(),
                profile: Some(p.clone()),
            })
            .unwrap();
            assert!(p.street.starts_with(&p.district) && p.community.starts_with(&p.street));
        }
        assert_ne!(household(3, 1), household(3, 2));
    }
}
