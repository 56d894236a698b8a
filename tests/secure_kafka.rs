//! A city's Kafka speaks TLS with SASL: Apache Kafka started with a SASL_SSL listener (a
//! certificate from its own CA, SCRAM-SHA-512). `check --connect` passes only with the right
//! settings and names the wrong one; the processor runs over it end to end (an alarm in, its
//! task out); and the password shows in no output.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{DefaultProducerContext, Producer, ThreadedProducer};

use carestream::config::Config;
use carestream::model::*;

const PASSWORD: &str = "Pw-7f3c9e-never-in-logs";

/// `env` aimed at the SASL_SSL listener with these credentials and CA.
fn secured(
    env: &[(String, String)],
    broker: &common::Broker,
    protocol: &str,
    password: &str,
    ca: &str,
) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = env
        .iter()
        .filter(|(k, _)| k != "CARESTREAM_KAFKA__BROKERS")
        .cloned()
        .collect();
    for (k, v) in [
        ("BROKERS", broker.secure_bootstrap()),
        ("PROPERTIES__SECURITY_PROTOCOL", protocol.into()),
        ("PROPERTIES__SASL_MECHANISMS", "SCRAM-SHA-512".into()),
        ("PROPERTIES__SASL_USERNAME", "carestream".into()),
        ("PROPERTIES__SASL_PASSWORD", password.into()),
        ("PROPERTIES__SSL_CA_LOCATION", ca.into()),
    ] {
        env.push((format!("CARESTREAM_KAFKA__{k}"), v));
    }
    env
}

/// Runs the binary with `args` and `env`: success, and stdout + stderr.
fn carestream(args: &[&str], env: &[(String, String)]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_carestream"))
        .args(args)
        .envs(env.iter().cloned())
        .env("RUST_LOG", "debug")
        .output()
        .expect("run carestream");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !text.contains(PASSWORD),
        "the password in the output:\n{text}"
    );
    (out.status.success(), text)
}

#[test]
fn the_processor_runs_over_tls_with_scram_and_check_names_the_wrong_setting() {
    let broker = common::Broker::secure(PASSWORD);
    let ca = broker.dir.join("tls/ca.pem").to_string_lossy().into_owned();
    let (_, plain_env) = common::test_config(&broker.bootstrap(), "tls");
    let env = secured(&plain_env, &broker, "SASL_SSL", PASSWORD, &ca);
    let config = Config::load(None, env.clone()).unwrap();

    // Reached and authenticated, but the topics are not there yet: named, one by one.
    let (ok, text) = carestream(&["check", "--connect"], &env);
    assert!(!ok && text.contains("does not exist"), "{text}");
    assert!(text.contains(&config.topics.sensor_events), "{text}");

    // Created over TLS with SCRAM, then everything checks out.
    let (ok, text) = carestream(&["create-topics", "--partitions", "3"], &env);
    assert!(ok, "{text}");
    let (ok, text) = carestream(&["check", "--connect"], &env);
    assert!(ok, "{text}");
    assert!(
        text.contains("connected to 1 broker(s)") && text.contains("tables compacted"),
        "{text}"
    );

    // Each wrong setting fails before deployment, with its name.
    let wrong_password = secured(&plain_env, &broker, "SASL_SSL", "not-it", &ca);
    let (ok, text) = carestream(&["check", "--connect"], &wrong_password);
    assert!(!ok && text.contains("sasl.password"), "{text}");
    assert!(!text.contains("not-it"), "{text}");
    let other_ca = broker.dir.join("other-ca.pem");
    let made = Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
        ])
        .args(["-subj", "/CN=another CA", "-keyout"])
        .arg(broker.dir.join("other-ca.key"))
        .arg("-out")
        .arg(&other_ca)
        .output()
        .unwrap();
    assert!(made.status.success());
    let untrusted = secured(
        &plain_env,
        &broker,
        "SASL_SSL",
        PASSWORD,
        &other_ca.to_string_lossy(),
    );
    let (ok, text) = carestream(&["check", "--connect"], &untrusted);
    assert!(!ok && text.contains("ssl.ca.location"), "{text}");
    let plaintext = secured(&plain_env, &broker, "PLAINTEXT", PASSWORD, &ca);
    let (ok, text) = carestream(&["check", "--connect"], &plaintext);
    assert!(!ok && text.contains("security.protocol"), "{text}");
    let missing_ca = secured(
        &plain_env,
        &broker,
        "SASL_SSL",
        PASSWORD,
        "/nonexistent/ca.pem",
    );
    let (ok, text) = carestream(&["check"], &missing_ca);
    assert!(!ok && text.contains("ssl.ca.location"), "{text}");

    // The processor over SASL_SSL: a button pressed, its CRITICAL task on the desk's topic.
    let mut proc = common::Processor::start(&env);
    proc.wait_ready(Duration::from_secs(60));
    let codec = common::codec();
    let prod: ThreadedProducer<DefaultProducerContext> =
        carestream::kafka::producer_config(&config)
            .create()
            .unwrap();
    let now = carestream::pipeline::wall_millis();
    let press = common::sensor(
        "hh-tls-1",
        "press-1",
        DeviceKind::EMERGENCY_BUTTON,
        now,
        Reading::Alarm { active: true },
    );
    let bytes = codec.encode_input(&press).unwrap().unwrap();
    common::produce(&prod, &config.topics.sensor_events, "hh-tls-1", &bytes, now);
    prod.flush(Duration::from_secs(30)).unwrap();
    let desk: BaseConsumer = carestream::kafka::base_client_config(&config)
        .set("group.id", "tls-desk")
        .set("auto.offset.reset", "earliest")
        .create()
        .unwrap();
    desk.subscribe(&[config.topics.dispatch_critical.as_str()])
        .unwrap();
    let started = Instant::now();
    let task = loop {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "no task over SASL_SSL:\n{}",
            common::tail(&proc.logs(), 30)
        );
        if let Some(Ok(m)) = desk.poll(Duration::from_millis(200)) {
            if let Ok(Output::Task(t)) = codec.decode_output(m.payload().unwrap_or_default()) {
                break t;
            }
        }
    };
    assert_eq!(
        (task.household_id.as_str(), task.rule_id.as_str()),
        ("hh-tls-1", "alarm.emergency_button")
    );
    assert!(proc
        .terminate(Duration::from_secs(30))
        .is_some_and(|s| s.success()));
    let logs = proc.logs();
    assert!(
        !logs.contains(PASSWORD),
        "the password in the processor's log"
    );
}
