//! The windowed rules. Events that need order (vitals, bed, door, meters) arrive here in
//! event-time order, released by the partition's watermark; timed rules keep one deadline per
//! household in the partition's queue and check their condition again when it comes due, so
//! a deadline that activity moved later is simply queued again.

use super::clock::{Due, Entry, Pending};
use super::household::{Household, RuleRef, Water, NEVER};
use super::incidents::Finding;
use super::localtime::{in_quiet_hours, local_midnight, DAY};
use super::Engine;
use crate::model::*;
use crate::rules::{p, RuleKind};

const HOUR: f64 = 3_600_000.0;

impl Engine {
    fn ms(&self, kind: RuleKind, i: usize, h: &Household) -> Millis {
        self.rules.rule(kind).ms(i, &h.id, h.profile.as_deref())
    }

    fn num(&self, kind: RuleKind, i: usize, h: &Household) -> f64 {
        self.rules.rule(kind).param(i, &h.id, h.profile.as_deref())
    }

    fn enabled(&self, kind: RuleKind) -> bool {
        self.rules.rule(kind).enabled
    }

    fn quiet(&self, h: &Household, t: Millis) -> bool {
        let q = h
            .profile
            .as_ref()
            .and_then(|p| p.quiet_hours)
            .unwrap_or(self.rules.default_quiet_hours);
        in_quiet_hours(t, h.offset, q)
    }

    fn resolve(&mut self, slot: u32, kind: RuleKind, t: Millis, why: &str, out: &mut Vec<Output>) {
        self.close_incident(
            slot,
            &RuleRef::Windowed(kind),
            TaskEventKind::AUTO_RESOLVED,
            t,
            why,
            out,
        );
    }

    /// Something the elder did at `t`: resets the no-movement clock.
    pub(super) fn activity(&mut self, slot: u32, t: Millis, out: &mut Vec<Output>) {
        let h = self.slot_mut(slot);
        let newer = t > h.last_activity;
        h.last_activity = h.last_activity.max(t);
        if newer {
            self.resolve(slot, RuleKind::NoMovement, t, "activity at home again", out);
        }
        self.schedule(slot, RuleKind::NoMovement);
    }

    /// An event released in event-time order (or, if `late`, behind the watermark).
    pub(super) fn apply_pending(
        &mut self,
        slot: u32,
        t: Millis,
        ev: Pending,
        device: u64,
        late: bool,
        out: &mut Vec<Output>,
    ) {
        if device != 0 {
            let h = self.slot_mut(slot);
            match ev {
                Pending::Heartbeat { kind } => h.heartbeat(device, kind, t),
                _ => h.device_event(device, t),
            }
            self.device_alive(slot, t, out);
        }
        match ev {
            Pending::Heartbeat { .. } | Pending::Alive => {}
            Pending::CheckIn { visit } => self.checked_in(slot, t, visit, out),
            Pending::Motion => {
                self.activity(slot, t, out);
                let h = self.slot_mut(slot);
                h.last_motion = h.last_motion.max(t);
                if h.door_at_night.is_some_and(|d| t >= d) {
                    h.door_at_night = None;
                    self.resolve(
                        slot,
                        RuleKind::NightDoor,
                        t,
                        "movement indoors after the door",
                        out,
                    );
                }
            }
            Pending::Pill => self.activity(slot, t, out),
            Pending::Door => {
                self.activity(slot, t, out);
                let h = self.slot(slot);
                if !late && self.enabled(RuleKind::NightDoor) && self.quiet(h, t) && !h.away_at(t) {
                    let h = self.slot_mut(slot);
                    h.door_at_night = Some(h.door_at_night.map_or(t, |d| d.min(t)));
                    self.schedule(slot, RuleKind::NightDoor);
                }
            }
            Pending::Bed { occupied } => {
                self.activity(slot, t, out);
                if late {
                    self.stats.late_dropped += 1;
                    return;
                }
                let h = self.slot(slot);
                if occupied {
                    self.slot_mut(slot).bed_out_since = None;
                    self.resolve(slot, RuleKind::NightBedExit, t, "back in bed", out);
                } else if self.enabled(RuleKind::NightBedExit)
                    && self.quiet(h, t)
                    && h.bed_out_since.is_none()
                {
                    self.slot_mut(slot).bed_out_since = Some(t);
                    self.schedule(slot, RuleKind::NightBedExit);
                }
            }
            Pending::Vitals { hr, rr, worn } => {
                if late {
                    // A run of readings only means something in order.
                    self.stats.late_dropped += 1;
                } else if worn {
                    self.vitals(slot, t, hr, rr, out);
                }
            }
            Pending::Meter { water: true, value } => self.water(slot, t, value, out),
            Pending::Meter {
                water: false,
                value,
            } => self.power(slot, t, value, out),
        }
    }

    fn vitals(
        &mut self,
        slot: u32,
        t: Millis,
        hr: Option<i16>,
        rr: Option<i16>,
        out: &mut Vec<Output>,
    ) {
        let k = RuleKind::Vitals;
        let h = self.slot(slot);
        let band = |v: Option<i16>, lo: usize, hi: usize| {
            v.map(|v| (v as f64) < self.num(k, lo, h) || (v as f64) > self.num(k, hi, h))
        };
        let (hr_bad, rr_bad) = (
            band(hr, p::HR_LOW, p::HR_HIGH),
            band(rr, p::RR_LOW, p::RR_HIGH),
        );
        if hr_bad.is_none() && rr_bad.is_none() {
            return;
        }
        if hr_bad == Some(true) || rr_bad == Some(true) {
            let sustained = self.ms(k, p::SUSTAINED, h);
            let since = *self.slot_mut(slot).vitals_out_since.get_or_insert(t);
            if self.enabled(k) && t - since >= sustained {
                let fmt = |v: Option<i16>| v.map_or("-".to_string(), |v| v.to_string());
                let detail = format!(
                    "heart rate {} bpm, respiration {} rpm, out of range for {} min",
                    fmt(hr),
                    fmt(rr),
                    (t - since) / 60_000
                );
                self.open_incident(
                    slot,
                    Finding {
                        rule: RuleRef::Windowed(k),
                        trigger: format!("vitals_since:{since}"),
                        incident_time: since,
                        emitted_at: t,
                        evidence: vec![evidence("vitals", t, detail.clone())],
                        detail: Some(detail),
                    },
                    out,
                );
            }
        } else {
            self.slot_mut(slot).vitals_out_since = None;
            self.resolve(slot, k, t, "vitals back in range", out);
        }
    }

    fn water(&mut self, slot: u32, t: Millis, v: f64, out: &mut Vec<Output>) {
        let h = self.slot_mut(slot);
        let fresh = Water {
            base_time: t,
            base_value: v,
            last_time: t,
            last_value: v,
            flow_since: None,
        };
        let Some(mut w) = h.water else {
            h.water = Some(fresh);
            return;
        };
        if t <= w.last_time {
            return; // a repeat of a reading already counted
        }
        if v + 1e-9 < w.last_value {
            // The meter was reset or replaced: start over from this reading.
            h.water = Some(fresh);
            return;
        }
        let used = v - w.last_value;
        let dt = t - w.last_time;
        let away = h.away_at(t);
        if used > 1e-9 {
            self.activity(slot, t, out);
        }
        let h = self.slot(slot);
        let (window, min_use) = (
            self.ms(RuleKind::WaterSilence, p::WINDOW, h),
            self.num(RuleKind::WaterSilence, p::MIN_USE, h),
        );
        let (flowing_for, min_flow) = (
            self.ms(RuleKind::WaterFlow, p::FLOWING_FOR, h),
            self.num(RuleKind::WaterFlow, p::MIN_FLOW, h),
        );
        if v - w.base_value >= min_use || away {
            w.base_time = t;
            w.base_value = v;
            self.resolve(slot, RuleKind::WaterSilence, t, "water used again", out);
        } else if t - w.base_time >= window && self.enabled(RuleKind::WaterSilence) {
            let detail = format!(
                "{:.3} m³ in {} h",
                v - w.base_value,
                (t - w.base_time) / 3_600_000
            );
            self.open_incident(
                slot,
                Finding {
                    rule: RuleRef::Windowed(RuleKind::WaterSilence),
                    trigger: format!("water_since:{}", w.base_time),
                    incident_time: w.base_time + window,
                    emitted_at: t,
                    evidence: vec![evidence("water_meter", t, detail.clone())],
                    detail: Some(detail),
                },
                out,
            );
        }
        if used / (dt as f64 / HOUR) >= min_flow {
            let since = *w.flow_since.get_or_insert(w.last_time);
            if t - since >= flowing_for && self.enabled(RuleKind::WaterFlow) {
                let detail = format!(
                    "water running for {} h without a break",
                    (t - since) / 3_600_000
                );
                self.open_incident(
                    slot,
                    Finding {
                        rule: RuleRef::Windowed(RuleKind::WaterFlow),
                        trigger: format!("flow_since:{since}"),
                        incident_time: since + flowing_for,
                        emitted_at: t,
                        evidence: vec![evidence("water_meter", t, detail.clone())],
                        detail: Some(detail),
                    },
                    out,
                );
            }
        } else {
            w.flow_since = None;
            self.resolve(slot, RuleKind::WaterFlow, t, "water flow stopped", out);
        }
        w.last_time = t;
        w.last_value = v;
        self.slot_mut(slot).water = Some(w);
    }

    /// Power use counts as activity only above an appliance's draw: a fridge runs alone.
    fn power(&mut self, slot: u32, t: Millis, v: f64, out: &mut Vec<Output>) {
        let h = self.slot(slot);
        let threshold = self.num(RuleKind::NoMovement, p::POWER_KW, h);
        let last = h.power_last;
        self.slot_mut(slot).power_last = Some((t, v));
        if let Some((t0, v0)) = last {
            if t > t0 && v >= v0 && (v - v0) / ((t - t0) as f64 / HOUR) >= threshold {
                self.activity(slot, t, out);
            }
        }
    }

    /// When each timed rule should next look at this household, if at all.
    fn deadline(&self, h: &Household, kind: RuleKind) -> Option<Millis> {
        if !self.enabled(kind)
            || h.open_for(&RuleRef::Windowed(kind)).is_some()
            || h.first_seen == NEVER
        {
            return None;
        }
        let away = h.away_until().unwrap_or(NEVER);
        match kind {
            RuleKind::NoMovement => {
                let base = h.last_activity.max(h.first_seen).max(away);
                Some(base + self.ms(kind, p::AFTER, h))
            }
            RuleKind::DeviceSilence if h.devices.len() >= 2 => h
                .devices
                .iter()
                .map(|d| d.last)
                .min()
                .map(|m| m + self.ms(kind, p::AFTER, h)),
            RuleKind::HomeSilence => {
                let newest = h.devices.iter().map(|d| d.last).max()?;
                Some(newest.max(away) + self.ms(kind, p::AFTER, h))
            }
            RuleKind::DailyRound => {
                // The first day after the last check-in (and after the last day judged) that
                // was watched from its start.
                let o = h.offset;
                let mut day = local_midnight(h.first_seen, o);
                if day < h.first_seen {
                    day += DAY;
                }
                if h.last_checkin != NEVER {
                    day = day.max(local_midnight(h.last_checkin, o) + DAY);
                }
                if h.round_judged != NEVER {
                    day = day.max(local_midnight(h.round_judged, o) + DAY);
                }
                Some(day + self.ms(kind, p::DUE_BY, h) * 60_000)
            }
            RuleKind::VisitCadence => {
                let base = h.last_visit.max(h.first_seen);
                Some((base + self.ms(kind, p::EVERY, h)).max(away))
            }
            RuleKind::NightBedExit => h.bed_out_since.map(|s| s + self.ms(kind, p::OUT_FOR, h)),
            RuleKind::NightDoor => h
                .door_at_night
                .map(|d| d + self.ms(kind, p::NO_MOTION_FOR, h)),
            _ => None,
        }
    }

    /// Queues the household's deadline for `kind`, unless an earlier one is queued already
    /// (that one will look again when it comes due).
    pub(super) fn schedule(&mut self, slot: u32, kind: RuleKind) {
        let h = self.slot(slot);
        let Some(d) = self.deadline(h, kind) else {
            return;
        };
        let Some(partition) = h.partition else { return };
        let queued = h.scheduled[kind as usize];
        if queued != NEVER && queued <= d {
            return;
        }
        let generation = h.generation;
        self.slot_mut(slot).scheduled[kind as usize] = d;
        self.clock(partition).push(Entry {
            time: d,
            slot,
            generation,
            key: kind as u64,
            device: 0,
            due: Due::Timer(kind),
        });
    }

    /// A deadline came due at `t` (event time).
    pub(super) fn fire(&mut self, slot: u32, kind: RuleKind, t: Millis, out: &mut Vec<Output>) {
        self.stats.timers_fired += 1;
        self.slot_mut(slot).scheduled[kind as usize] = NEVER;
        let h = self.slot(slot);
        let Some(d) = self.deadline(h, kind) else {
            return;
        };
        if d > t {
            return self.schedule(slot, kind);
        }
        let rule = RuleRef::Windowed(kind);
        let finding = |trigger: String, incident_time: Millis, summary: String| Finding {
            rule: rule.clone(),
            trigger,
            incident_time,
            emitted_at: t,
            evidence: vec![evidence(kind.rule_id(), incident_time, summary.clone())],
            detail: Some(summary),
        };
        let f = match kind {
            RuleKind::NoMovement => {
                let since = d - self.ms(kind, p::AFTER, h);
                finding(
                    format!("since:{since}"),
                    d,
                    format!("no activity for {} h", (t - since) / 3_600_000),
                )
            }
            RuleKind::DeviceSilence => {
                let after = self.ms(kind, p::AFTER, h);
                let silent: Vec<String> = h
                    .devices
                    .iter()
                    .filter(|x| x.last + after <= t)
                    .map(|x| x.kind.to_string())
                    .collect();
                if silent.len() == h.devices.len() {
                    return; // the whole home is silent: that is home_silence's to report
                }
                let oldest = h.devices.iter().map(|x| x.last).min().unwrap_or(t);
                finding(
                    format!("devices_silent_since:{oldest}"),
                    d,
                    format!("silent: {}", silent.join(", ")),
                )
            }
            RuleKind::HomeSilence => {
                let newest = d - self.ms(kind, p::AFTER, h);
                finding(
                    format!("home_silent_since:{newest}"),
                    d,
                    format!(
                        "all {} device(s) silent: power or network loss?",
                        h.devices.len()
                    ),
                )
            }
            RuleKind::DailyRound => {
                let day = local_midnight(d, h.offset);
                let away = h.away_at(t);
                self.slot_mut(slot).round_judged = d;
                if away {
                    return self.schedule(slot, kind);
                }
                let r = finding(
                    format!("round:{day}"),
                    d,
                    "no check-in of any kind today".to_string(),
                );
                self.open_incident(slot, r, out);
                return self.schedule(slot, kind);
            }
            RuleKind::VisitCadence => {
                let every = self.ms(kind, p::EVERY, h);
                let last = if h.last_visit == NEVER {
                    "none recorded".to_string()
                } else {
                    format!("{} days ago", (t - h.last_visit) / DAY)
                };
                finding(
                    format!("visit_after:{}", d - every),
                    d,
                    format!("last home visit: {last}"),
                )
            }
            RuleKind::NightBedExit => {
                let s = h.bed_out_since.unwrap_or(d);
                finding(
                    format!("out_of_bed:{s}"),
                    s,
                    format!("out of bed at night for {} min", (t - s) / 60_000),
                )
            }
            RuleKind::NightDoor => {
                let at = h.door_at_night.unwrap_or(d);
                finding(
                    format!("door:{at}"),
                    at,
                    format!("door at night, no movement for {} min", (t - at) / 60_000),
                )
            }
            _ => return,
        };
        self.open_incident(slot, f, out);
    }

    /// A device reported (any event or heartbeat): the silence rules look again.
    pub(super) fn device_alive(&mut self, slot: u32, t: Millis, out: &mut Vec<Output>) {
        let h = self.slot(slot);
        if h.open_for(&RuleRef::Windowed(RuleKind::HomeSilence))
            .is_some()
        {
            self.resolve(
                slot,
                RuleKind::HomeSilence,
                t,
                "a device reported again",
                out,
            );
        }
        let h = self.slot(slot);
        let after = self.ms(RuleKind::DeviceSilence, p::AFTER, h);
        if h.open_for(&RuleRef::Windowed(RuleKind::DeviceSilence))
            .is_some()
            && h.devices.iter().all(|d| d.last + after > t)
        {
            self.resolve(
                slot,
                RuleKind::DeviceSilence,
                t,
                "every device reporting again",
                out,
            );
        }
        self.schedule(slot, RuleKind::DeviceSilence);
        self.schedule(slot, RuleKind::HomeSilence);
    }

    /// A check-in: the elder was seen or heard from, which is activity too.
    pub(super) fn checked_in(&mut self, slot: u32, t: Millis, visit: bool, out: &mut Vec<Output>) {
        let h = self.slot_mut(slot);
        h.last_checkin = h.last_checkin.max(t);
        if visit {
            h.last_visit = h.last_visit.max(t);
            self.resolve(slot, RuleKind::VisitCadence, t, "home visit made", out);
            self.schedule(slot, RuleKind::VisitCadence);
        }
        self.resolve(slot, RuleKind::DailyRound, t, "checked in", out);
        self.schedule(slot, RuleKind::DailyRound);
        self.activity(slot, t, out);
    }
}

fn evidence(what: &str, t: Millis, summary: String) -> Evidence {
    Evidence {
        event_id: format!("{what}@{t}"),
        event_time: t,
        summary,
    }
}
