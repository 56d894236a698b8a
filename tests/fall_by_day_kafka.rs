//! The fall by day, black box on the real broker: 24 fully equipped homes (PIR, door, bed,
//! watch, hourly water meter, button, smoke and fall detectors, each with a heartbeat every
//! 15 minutes; a phone round at 09:00), elders of 84 living alone (no movement after 10 h),
//! quiet hours 22:00–07:00, over 18 hours of yesterday from 06:00 China time, produced paced
//! with record timestamps a second or two after each event. Twelve fall between 10:08 and
//! 10:52 and never move again (heartbeats, the watch, unchanged meter readings and the mattress
//! and door contact repeating their state go on); the others live an ordinary day and go to
//! bed at 22:40. Every fall must get its no-movement task 10 h after the last movement; no
//! ordinary home may get any HIGH task.

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::message::Message;
use rdkafka::producer::{DefaultProducerContext, Producer, ThreadedProducer};

use carestream::model::*;

const MIN: Millis = 60_000;
const HOUR: Millis = 60 * MIN;
const DAY: Millis = 24 * HOUR;
const CST: Millis = 8 * HOUR;
const HOMES: usize = 24;
const FALLEN: usize = 12;

/// Yesterday's 00:00 in China.
fn yesterday() -> Millis {
    let now = carestream::pipeline::wall_millis();
    now - (now + CST).rem_euclid(DAY) - DAY
}

fn profile(i: usize) -> HouseholdProfile {
    let mut p = carestream::tools::simulate::household(i, 30);
    p.cohorts = vec![Cohort::LIVING_ALONE];
    p.ability_level = 0;
    p.age = 84;
    p.quiet_hours = Some(QuietHours {
        start_minute: 22 * 60,
        end_minute: 7 * 60,
    });
    p.away_until = None;
    p.timezone = "Asia/Shanghai".into();
    p
}

const DEVICES: [DeviceKind; 8] = [
    DeviceKind::MOTION_PIR,
    DeviceKind::DOOR_CONTACT,
    DeviceKind::BED_SENSOR,
    DeviceKind::WEARABLE,
    DeviceKind::WATER_METER,
    DeviceKind::EMERGENCY_BUTTON,
    DeviceKind::SMOKE_ALARM,
    DeviceKind::FALL_DETECTOR,
];

/// One home's day: every input with its event time. `fall`: the time of the last movement.
fn day_of(hh: &str, d0: Millis, fall: Option<Millis>) -> Vec<Input> {
    let mut out = Vec::new();
    let mut n = 0;
    let mut sensor = |t: Millis, kind: DeviceKind, reading: Reading, out: &mut Vec<Input>| {
        n += 1;
        out.push(Input::Sensor(SensorEvent {
            event_id: format!("{hh}-{n}"),
            household_id: hh.into(),
            device_id: format!("{hh}-{}", kind.as_str().to_lowercase()),
            device_kind: kind,
            event_time: t,
            reading,
            gateway_id: None,
        }));
    };
    let (start, end) = (d0 + 6 * HOUR, d0 + DAY - MIN);
    for (k, kind) in DEVICES.iter().enumerate() {
        let mut t = start + k as Millis * MIN;
        while t <= end {
            out.push(Input::Heartbeat(DeviceHeartbeat {
                household_id: hh.into(),
                device_id: format!("{hh}-{}", kind.as_str().to_lowercase()),
                device_kind: *kind,
                event_time: t,
                battery_pct: Some(80),
                mains_power: None,
            }));
            t += 15 * MIN;
        }
    }
    let up = d0 + 7 * HOUR;
    let bedtime = d0 + 22 * HOUR + 40 * MIN;
    let last_move = fall.unwrap_or(bedtime - 2 * MIN);
    // The mattress reports its state every 10 minutes: in bed until 07:00, then out (for
    // ever after a fall; until 22:40 otherwise).
    let mut t = start;
    while t <= end {
        let occupied = t < up || (fall.is_none() && t >= bedtime);
        sensor(
            t,
            DeviceKind::BED_SENSOR,
            Reading::Bed { occupied },
            &mut out,
        );
        t += 10 * MIN;
    }
    let mut t = up + 2 * MIN;
    while t <= last_move {
        sensor(
            t,
            DeviceKind::MOTION_PIR,
            Reading::Motion { detected: true },
            &mut out,
        );
        t += 4 * MIN;
    }
    // The door opened once, at 07:40; the contact repeats "closed" every 15 minutes.
    sensor(
        up + 40 * MIN,
        DeviceKind::DOOR_CONTACT,
        Reading::Door { open: true },
        &mut out,
    );
    let mut t = start + 3 * MIN;
    while t <= end {
        sensor(
            t,
            DeviceKind::DOOR_CONTACT,
            Reading::Door { open: false },
            &mut out,
        );
        t += 15 * MIN;
    }
    out.push(Input::CheckIn(CheckIn {
        household_id: hh.into(),
        event_time: d0 + 9 * HOUR,
        kind: CheckInKind::PHONE_ROUND,
        visitor_id: None,
    }));
    let mut t = up + 5 * MIN;
    while t <= end {
        let reading = Reading::Vitals {
            heart_rate_bpm: Some(72),
            respiration_rpm: Some(16),
            worn: true,
        };
        sensor(t, DeviceKind::WEARABLE, reading, &mut out);
        t += 10 * MIN;
    }
    // One cumulative reading an hour; water is used in every waking hour until the fall, so
    // the first reading after the fall still shows some.
    let mut value = 10.0;
    let mut t = start + 30 * MIN;
    while t <= end {
        if t > up && t - HOUR < last_move {
            value += 0.02;
        }
        sensor(
            t,
            DeviceKind::WATER_METER,
            Reading::Meter { cumulative: value },
            &mut out,
        );
        t += HOUR;
    }
    out
}

fn time_of(i: &Input) -> Millis {
    match i {
        Input::Sensor(e) => e.event_time,
        Input::Heartbeat(h) => h.event_time,
        Input::CheckIn(c) => c.event_time,
        _ => unreachable!(),
    }
}

#[test]
fn every_fall_by_day_gets_its_no_movement_task_and_no_ordinary_home_does() {
    let broker = common::Broker::start();
    let (config, env) = common::test_config(&broker.bootstrap(), "fallday");
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(carestream::admin::create_topics(&config, 6, 1))
        .unwrap();
    let codec = common::codec();
    let prod: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
        .set("bootstrap.servers", broker.bootstrap())
        .set("linger.ms", "5")
        .create()
        .unwrap();
    let t = &config.topics;
    let d0 = yesterday();
    let mut falls = HashMap::new();
    let mut inputs = Vec::new();
    for i in 0..HOMES {
        let p = profile(i);
        let hh = p.household_id.clone();
        let reg = Input::Household {
            household_id: hh.clone(),
            profile: Some(p),
        };
        let bytes = codec.encode_input(&reg).unwrap().unwrap();
        common::produce(&prod, &t.households, &hh, &bytes, d0);
        let fall = (i < FALLEN).then(|| d0 + 10 * HOUR + 8 * MIN + i as Millis * 4 * MIN);
        if let Some(f) = fall {
            falls.insert(hh.clone(), f);
        }
        inputs.extend(day_of(&hh, d0, fall));
    }
    inputs.sort_by_key(time_of);
    prod.flush(Duration::from_secs(30)).unwrap();
    let mut proc = common::Processor::start(&env);
    proc.wait_ready(Duration::from_secs(60));
    // Paced at about 3 000 records/s, each stamped 1–2 s after its event.
    let started = Instant::now();
    for (n, i) in inputs.iter().enumerate() {
        let (topic, key) = match i {
            Input::Sensor(e) => (&t.sensor_events, &e.household_id),
            Input::Heartbeat(h) => (&t.heartbeats, &h.household_id),
            Input::CheckIn(c) => (&t.checkins, &c.household_id),
            _ => unreachable!(),
        };
        let bytes = codec.encode_input(i).unwrap().unwrap();
        common::produce(
            &prod,
            topic,
            key,
            &bytes,
            time_of(i) + 1_000 + (n as Millis % 2) * 1_000,
        );
        let due = Duration::from_micros(n as u64 * 333);
        if let Some(wait) = due.checked_sub(started.elapsed()) {
            std::thread::sleep(wait);
        }
    }
    prod.flush(Duration::from_secs(30)).unwrap();
    let total = inputs.len() as f64;
    let wait = Instant::now();
    while common::input_records(&proc) < total {
        assert!(
            wait.elapsed() < Duration::from_secs(60),
            "not all read: {} of {total}",
            common::input_records(&proc)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // What the day made, read before the idle partitions' clock could move time on.
    let desk = common::desk(&broker.bootstrap(), &t.dispatch_high);
    let mut tasks: Vec<EscalationTask> = Vec::new();
    let quiet = Instant::now();
    while quiet.elapsed() < Duration::from_secs(8) {
        if let Some(Ok(m)) = desk.poll(Duration::from_millis(200)) {
            if let Ok(Output::Task(task)) = codec.decode_output(m.payload().unwrap()) {
                tasks.push(task);
            }
        }
    }
    let no_movement: Vec<&EscalationTask> = tasks
        .iter()
        .filter(|t| t.rule_id == "no_movement" && t.tier == 0 && t.action == Action::CALL_ELDER)
        .collect();
    let label = |t: Millis| {
        let m = (t - d0) / MIN;
        format!("{:02}:{:02}", m / 60, m % 60)
    };
    for (hh, fall) in &falls {
        let task = no_movement.iter().find(|t| &t.household_id == hh);
        let task = task.unwrap_or_else(|| {
            panic!(
                "{hh} fell at {}: no no-movement task; tasks of the home: {:?}\n{}",
                label(*fall),
                tasks
                    .iter()
                    .filter(|t| &t.household_id == hh)
                    .map(|t| (t.rule_id.clone(), label(t.incident_time)))
                    .collect::<Vec<_>>(),
                common::tail(&proc.logs(), 20)
            )
        });
        // The last movement is the fall; the water used in its hour is credited before it.
        assert!(
            task.incident_time <= fall + 10 * HOUR && task.incident_time > fall + 9 * HOUR,
            "{hh} fell at {}: no movement at {}",
            label(*fall),
            label(task.incident_time)
        );
    }
    // Ordinary homes: nothing at all (elders still up when the quiet hours begin, then in
    // bed at 22:40, are not out of bed at night).
    let ordinary: Vec<_> = tasks
        .iter()
        .filter(|t| !falls.contains_key(&t.household_id))
        .map(|t| (&t.household_id, &t.rule_id, label(t.incident_time)))
        .collect();
    assert!(ordinary.is_empty(), "tasks in ordinary homes: {ordinary:?}");
    assert!(proc
        .terminate(Duration::from_secs(30))
        .is_some_and(|s| s.success()));
}
