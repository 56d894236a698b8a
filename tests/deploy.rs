//! The operators' files: the compose file parses (with a tool that reads compose files), every
//! file it mounts exists, the Prometheus config and alerting rules pass promtool (rule unit
//! tests included), the Grafana dashboard parses, and every metric the dashboard and the
//! alerts use is one the processor exports, so a metric cannot disappear unnoticed.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// Runs a tool the tests need; scripts/install-tools.sh installs them.
fn run(tool: &str, args: &[&str], dir: &str) -> String {
    let out = Command::new(tool)
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| {
            panic!("{tool} is needed for this test ({e}): run scripts/install-tools.sh")
        });
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{tool} {args:?} failed:\n{text}");
    text
}

#[test]
fn compose_file_is_valid_and_its_mounts_exist() {
    run(
        "docker-compose",
        &["-f", "docker-compose.yml", "config", "-q"],
        ROOT,
    );
    let resolved = run(
        "docker-compose",
        &["-f", "docker-compose.yml", "config"],
        ROOT,
    );
    let mut mounts = 0;
    let mut in_volumes = false;
    for line in resolved.lines() {
        let l = line.trim();
        if l == "volumes:" {
            in_volumes = true;
            continue;
        }
        // Resolved bind mounts: "- /abs/host/path:/container/path:ro".
        match l.strip_prefix("- /") {
            Some(spec) if in_volumes => {
                let src = format!("/{}", spec.split(':').next().unwrap());
                assert!(
                    Path::new(&src).exists(),
                    "compose mounts {src}, which does not exist"
                );
                mounts += 1;
            }
            _ => in_volumes = false,
        }
    }
    assert_eq!(
        mounts, 5,
        "prometheus config, alerts, alertmanager config, grafana provisioning and dashboards: {resolved}"
    );
    for service in [
        "kafka:",
        "registry:",
        "topics:",
        "processor:",
        "simulator:",
        "prometheus:",
        "alertmanager:",
        "grafana:",
    ] {
        assert!(resolved.contains(service), "no {service} service");
    }
    assert!(resolved.contains("replicas: 2"), "two processor replicas");
    // The processor and the simulator share the registry's ids.
    assert_eq!(
        resolved
            .matches("CARESTREAM_SCHEMAS__REGISTRY_URL: http://registry:8081")
            .count(),
        2,
        "{resolved}"
    );
    assert!(
        resolved.contains("KAFKA_PROCESS_ROLES: broker,controller"),
        "Kafka in KRaft mode"
    );
    // The listener the end-to-end bench's docs name (benches/e2e.rs, README): advertised
    // and published on this host's loopback.
    assert!(
        resolved.contains("HOST://127.0.0.1:9094") && resolved.contains("127.0.0.1:9094:9094"),
        "Kafka's host listener for the e2e bench: {resolved}"
    );
}

#[test]
fn prometheus_config_alerting_rules_and_alertmanager_pass_their_checkers() {
    let deploy = format!("{ROOT}/deploy");
    run("promtool", &["check", "config", "prometheus.yml"], &deploy);
    let rules = run("promtool", &["check", "rules", "alerts.yml"], &deploy);
    assert!(rules.contains("SUCCESS: 12 rules found"), "{rules}");
    run("promtool", &["test", "rules", "alerts_test.yml"], &deploy);
    // Prometheus sends its alerts to the Alertmanager of the compose file, whose routes parse.
    let prometheus = std::fs::read_to_string(format!("{deploy}/prometheus.yml")).unwrap();
    assert!(prometheus.contains("alertmanager:9093"), "{prometheus}");
    let am = run("amtool", &["check-config", "alertmanager.yml"], &deploy);
    assert!(am.contains("SUCCESS") && am.contains("2 receivers"), "{am}");
}

fn metric_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = text;
    while let Some(i) = rest.find("carestream_") {
        let tail = &rest[i..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        names.insert(tail[..end].to_string());
        rest = &tail[end..];
    }
    names
}

#[test]
fn dashboard_and_alerts_use_only_metrics_the_processor_exports() {
    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(format!("{ROOT}/deploy/grafana/dashboards/carestream.json"))
            .unwrap(),
    )
    .unwrap();
    let panels = dashboard["panels"].as_array().expect("panels");
    assert!(panels.len() >= 12);
    let mut exprs = String::new();
    for p in panels {
        let targets = p["targets"]
            .as_array()
            .unwrap_or_else(|| panic!("panel {} has no targets", p["title"]));
        assert!(!targets.is_empty());
        for t in targets {
            exprs.push_str(t["expr"].as_str().expect("expr"));
            exprs.push('\n');
        }
    }
    exprs.push_str(&std::fs::read_to_string(format!("{ROOT}/deploy/alerts.yml")).unwrap());

    let rules = carestream::rules::RuleSet::load(&Path::new(ROOT).join("rules")).unwrap();
    let metrics = carestream::telemetry::Metrics::new(&rules.rule_ids());
    let exported: BTreeSet<String> = metrics.names().iter().cloned().collect();
    // The names are the scrape's: every family with a series renders under its name.
    for line in metrics
        .render()
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
    {
        assert!(
            exported.contains(line.split_whitespace().next().unwrap()),
            "{line}"
        );
    }
    let used = metric_names(&exprs);
    assert!(used.len() >= 15, "{used:?}");
    for name in &used {
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s))
            .filter(|f| exported.contains(*f))
            .unwrap_or(name);
        assert!(
            exported.contains(family),
            "{name} is used by the dashboard or alerts but not exported"
        );
    }
    // The operators' questions each have their panel.
    let titles: Vec<&str> = panels
        .iter()
        .map(|p| p["title"].as_str().unwrap())
        .collect();
    for want in [
        "by stream",
        "by severity",
        "Open incidents",
        "Time to acknowledge",
        "p50, p99",
        "lag",
        "Dead letters",
        "Visit cadence",
    ] {
        assert!(
            titles.iter().any(|t| t.contains(want)),
            "no panel for {want}: {titles:?}"
        );
    }
}

/// Every command docker-compose gives the processor image must parse: each is run with
/// `--help` appended, which clap answers only once everything before it is valid.
#[test]
fn compose_commands_parse() {
    let compose = std::fs::read_to_string(format!("{ROOT}/docker-compose.yml")).unwrap();
    let mut checked = 0;
    for line in compose.lines() {
        let Some(list) = line.trim().strip_prefix("command: [") else {
            continue;
        };
        let args: Vec<String> = list
            .trim_end_matches(']')
            .split(',')
            .map(|a| a.trim().trim_matches('"').to_string())
            .collect();
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_carestream"))
            .args(&args)
            .arg("--help")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "docker-compose command {args:?} does not parse: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        checked += 1;
    }
    assert!(checked >= 3, "found {checked} commands");
}
