//! The `carestream` command: parses the CLI, loads config, sets up logging and signals, and
//! calls into the library.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use carestream::config::Config;
use carestream::model::TaskUpdateStatus;
use carestream::telemetry::{self, Metrics};
use carestream::tools::demo;
use carestream::tools::simulate::{Injection, Mix, SimConfig, Simulator};
use carestream::{admin, pipeline};

#[derive(Parser)]
#[command(
    name = "carestream",
    version,
    about = "Real-time alert stream processor for home care of the elderly"
)]
struct Cli {
    /// TOML config file; every setting can also come from CARESTREAM_<SECTION>__<KEY>.
    #[arg(long, short, global = true, env = "CARESTREAM_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the processor against the configured Kafka cluster.
    Run,
    /// Everything in one process: in-process broker, simulated city, processor; prints tasks.
    Demo {
        #[command(flatten)]
        sim: SimArgs,
        /// Partitions per topic of the in-process broker.
        #[arg(long, default_value_t = 4)]
        partitions: i32,
    },
    /// Produce a simulated city to the configured Kafka cluster.
    Simulate {
        #[command(flatten)]
        sim: SimArgs,
    },
    /// Validate config, schemas, rules and the Kafka client settings without starting.
    Check {
        /// Also reach the brokers (with the configured TLS and SASL) and check that every
        /// topic exists, the input topics are co-partitioned and the tables compacted.
        #[arg(long)]
        connect: bool,
    },
    /// Score a simulated run: the simulator's output against the tasks on the dispatch topics.
    Score {
        /// The simulator's standard output (its `injected` and `simulated` lines).
        #[arg(long)]
        log: PathBuf,
        /// Stop reading the dispatch topics after this many seconds with nothing new.
        #[arg(long, default_value_t = 5.0)]
        idle_secs: f64,
    },
    /// Print the tasks on the dispatch topics as the desk sees them (read committed).
    Tail {
        /// From the start of the topics (default: tasks from now on).
        #[arg(long)]
        from_beginning: bool,
        /// Exit after this many seconds with no new task (default: run until interrupted).
        #[arg(long)]
        idle_secs: Option<f64>,
    },
    /// The desk acknowledges a task: the ladder stops (until `unresolved_after`).
    Ack {
        #[command(flatten)]
        task: DeskTask,
    },
    /// The desk resolves a task's incident, with an outcome code told to the family.
    Resolve {
        #[command(flatten)]
        task: DeskTask,
        /// VISITED_OK, CALLED_OK, FAMILY_ATTENDED, HOSPITAL, EMERGENCY_SERVICES, NO_ANSWER,
        /// DEVICE_FAULT, FALSE_ALARM or OTHER.
        #[arg(long, value_parser = outcome)]
        outcome: Option<carestream::model::TaskOutcome>,
        /// Close it as a false alarm (status FALSE_ALARM) rather than RESOLVED.
        #[arg(long)]
        false_alarm: bool,
    },
    /// The desk escalates a task's incident to its next rung now.
    Escalate {
        #[command(flatten)]
        task: DeskTask,
    },
    /// The desk snoozes a task's incident: acknowledged for this many minutes (at most the
    /// severity's `max_snooze`), then it climbs a rung unless resolved.
    Snooze {
        #[command(flatten)]
        task: DeskTask,
        #[arg(long)]
        minutes: u32,
    },
    /// The desk hands a task's incident to a team.
    Reassign {
        #[command(flatten)]
        task: DeskTask,
        #[arg(long)]
        team: String,
    },
    /// Create the contract's topics (idempotent).
    CreateTopics {
        #[arg(long, default_value_t = 6)]
        partitions: i32,
        #[arg(long, default_value_t = 1)]
        replication: i32,
    },
}

/// The task a desk command acts on, and who acts.
#[derive(Args, Clone)]
struct DeskTask {
    /// The task id (as `carestream tail` prints it).
    task_id: String,
    /// The task's household (the update's key).
    #[arg(long)]
    household: String,
    /// Who acts: the desk operator's or team's id (no names).
    #[arg(long, default_value = "desk-cli")]
    by: String,
    /// The update's time, ms since the epoch (default: now).
    #[arg(long)]
    at_ms: Option<i64>,
}

impl DeskTask {
    fn update(&self, status: carestream::model::TaskUpdateStatus) -> carestream::model::TaskUpdate {
        carestream::model::TaskUpdate {
            task_id: self.task_id.clone(),
            household_id: self.household.clone(),
            status,
            by: self.by.clone(),
            at: self.at_ms.unwrap_or_else(pipeline::wall_millis),
            note: None,
            outcome: None,
            snooze_until: None,
            assign_to: None,
        }
    }
}

fn outcome(s: &str) -> Result<carestream::model::TaskOutcome, String> {
    carestream::model::TaskOutcome::from_symbol(s).ok_or_else(|| {
        let all: Vec<_> = carestream::model::TaskOutcome::ALL
            .iter()
            .map(|o| o.as_str())
            .collect();
        format!("one of {}", all.join(", "))
    })
}

#[derive(Args, Clone)]
struct SimArgs {
    #[arg(long, default_value_t = 200)]
    households: usize,
    /// Simulated seconds per wall-clock second.
    #[arg(long, default_value_t = 60.0)]
    speed: f64,
    /// Stop after this many wall-clock seconds (default: run until interrupted).
    #[arg(long)]
    duration_secs: Option<f64>,
    /// Inject an incident: KIND@HOUSEHOLD+SECONDS (simulated), where KIND is an alarm device
    /// (EMERGENCY_BUTTON, FALL_DETECTOR, SMOKE_ALARM, ...), COLLAPSE or TACHYCARDIA (repeatable).
    #[arg(long = "inject")]
    injections: Vec<Injection>,
    /// Also inject a random incident every this many simulated seconds.
    #[arg(long)]
    incident_every_secs: Option<f64>,
    /// A weather warning for a random district every this many simulated seconds.
    #[arg(long)]
    weather_every_secs: Option<f64>,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Simulated time at the start, ms since the epoch (default: far enough back that the
    /// simulated clock does not pass the wall clock during `--duration-secs`, or a day back).
    #[arg(long)]
    start_ms: Option<i64>,
    #[command(flatten)]
    mix: Mix,
}

impl SimArgs {
    fn config(&self) -> SimConfig {
        SimConfig {
            households: self.households,
            speed: self.speed,
            duration: self.duration_secs.map(Duration::from_secs_f64),
            injections: self.injections.clone(),
            incident_every: self.incident_every_secs.map(Duration::from_secs_f64),
            weather_every: self.weather_every_secs.map(Duration::from_secs_f64),
            seed: self.seed,
            start: Some(self.start_ms.unwrap_or_else(|| {
                let duration = self.duration_secs.map(Duration::from_secs_f64);
                carestream::tools::simulate::default_start(self.speed, duration)
            })),
            mix: match self.mix.check() {
                Ok(()) => self.mix,
                Err(e) => {
                    eprintln!("error: {e}");
                    std::process::exit(2)
                }
            },
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let config = match Config::load(cli.config.as_deref(), std::env::vars()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    telemetry::init_logging(&config.log.format, &config.log.filter);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    match runtime.block_on(run(cli.command, config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Every task on the dispatch topics, read from the start by a fresh consumer group, until
/// nothing new comes for `idle` (the first record may wait for the group to form).
async fn read_tasks(
    config: &Config,
    idle: Duration,
) -> anyhow::Result<Vec<carestream::model::EscalationTask>> {
    use rdkafka::consumer::{Consumer, StreamConsumer};
    use rdkafka::message::Message;
    let codec = pipeline::load_registered(config).await?.codec;
    let consumer: StreamConsumer = carestream::kafka::base_client_config(config)
        .set(
            "group.id",
            format!(
                "carestream-score-{}-{}",
                std::process::id(),
                pipeline::wall_millis()
            ),
        )
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .set("session.timeout.ms", "10000")
        .create()?;
    let t = &config.topics;
    consumer.subscribe(&[&t.dispatch_critical, &t.dispatch_high, &t.dispatch_routine])?;
    let mut tasks = Vec::new();
    let mut wait = idle.max(Duration::from_secs(30));
    while let Ok(m) = tokio::time::timeout(wait, consumer.recv()).await {
        wait = idle;
        if let Some(carestream::model::Output::Task(task)) =
            m?.payload().and_then(|p| codec.decode_output(p).ok())
        {
            tasks.push(task);
        }
    }
    Ok(tasks)
}

async fn run(command: Command, config: Config) -> anyhow::Result<()> {
    let grace = Duration::from_millis(config.pipeline.shutdown_timeout_ms);
    match command {
        Command::Check { connect } => {
            let loaded = pipeline::load(&config)?;
            carestream::admin::check_client_settings(&config)?;
            if connect {
                let found =
                    carestream::admin::check_connect(&config, Duration::from_secs(15)).await?;
                println!("{found}");
            }
            println!(
                "config ok; {} alarm rule(s); schemas in {} ok; topics: {}",
                loaded.rules.alarms.len(),
                loaded.codec.catalogue().dir().display(),
                config
                    .topics
                    .all()
                    .iter()
                    .map(|(t, _)| *t)
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            Ok(())
        }
        Command::Score { log, idle_secs } => {
            let text = std::fs::read_to_string(&log)?;
            let (injected, size) = carestream::tools::score::read_log(&text);
            let (households, start, simulated) = size.ok_or_else(|| {
                anyhow::anyhow!(
                    "{}: no \"simulated\" line: did the simulator finish?",
                    log.display()
                )
            })?;
            let tasks = read_tasks(&config, Duration::from_secs_f64(idle_secs)).await?;
            let rules = pipeline::load(&config)?.rules;
            let held = rules
                .alarms
                .iter()
                .map(|a| (a.rule_id.clone(), a.stale_after))
                .collect();
            let card = carestream::tools::score::score(
                &injected, &tasks, households, start, simulated, &held,
            );
            println!("{}", serde_json::to_string_pretty(&card)?);
            Ok(())
        }
        Command::Tail {
            from_beginning,
            idle_secs,
        } => {
            let (shutdown, _) = carestream::shutdown::signals(grace);
            let idle = idle_secs.map(Duration::from_secs_f64);
            carestream::desk::tail(&config, from_beginning, idle, shutdown).await
        }
        Command::Ack { task } => {
            let u = task.update(TaskUpdateStatus::ACKNOWLEDGED);
            carestream::desk::send_update(&config, u).await
        }
        Command::Resolve {
            task,
            outcome,
            false_alarm,
        } => {
            let status = match false_alarm {
                true => TaskUpdateStatus::FALSE_ALARM,
                false => TaskUpdateStatus::RESOLVED,
            };
            let mut u = task.update(status);
            u.outcome = outcome;
            carestream::desk::send_update(&config, u).await
        }
        Command::Escalate { task } => {
            let u = task.update(TaskUpdateStatus::ESCALATE);
            carestream::desk::send_update(&config, u).await
        }
        Command::Snooze { task, minutes } => {
            let mut u = task.update(TaskUpdateStatus::SNOOZE);
            u.snooze_until = Some(u.at + minutes as i64 * 60_000);
            carestream::desk::send_update(&config, u).await
        }
        Command::Reassign { task, team } => {
            let mut u = task.update(TaskUpdateStatus::REASSIGN);
            u.assign_to = Some(team);
            carestream::desk::send_update(&config, u).await
        }
        Command::CreateTopics {
            partitions,
            replication,
        } => {
            let created = admin::create_topics(&config, partitions, replication).await?;
            println!("created {} topic(s): {}", created.len(), created.join(", "));
            Ok(())
        }
        Command::Run => {
            let loaded = pipeline::load_registered(&config).await?;
            let metrics = Arc::new(Metrics::new(&loaded.rules.rule_ids()));
            let (shutdown, hard_stop) = carestream::shutdown::signals(grace);
            let (addr, _http) =
                carestream::http::serve(&config.http.listen, metrics.clone(), shutdown.clone())
                    .await?;
            tracing::info!(%addr, brokers = %config.kafka.brokers, group = %config.kafka.group_id, "carestream running");
            let processor = pipeline::Processor::new(config, loaded, metrics)?;
            processor.run(shutdown, hard_stop).await
        }
        Command::Demo { sim, partitions } => {
            let (shutdown, hard_stop) = carestream::shutdown::signals(grace);
            let mut cfg = sim.config();
            if cfg.incident_every.is_none() && cfg.injections.is_empty() {
                // A simulated incident every 5 minutes: about every 5 s at the default speed.
                cfg.incident_every = Some(Duration::from_secs(300));
            }
            demo::run(
                config,
                demo::DemoOptions {
                    sim: cfg,
                    partitions,
                },
                shutdown,
                hard_stop,
            )
            .await
        }
        Command::Simulate { sim } => {
            let loaded = pipeline::load_registered(&config).await?;
            let producer: rdkafka::producer::FutureProducer =
                carestream::kafka::producer_config(&config)
                    .set("linger.ms", "5")
                    .create()?;
            let (shutdown, _) = carestream::shutdown::signals(grace);
            let report = Simulator::new(&producer, &loaded.codec, &config.topics)
                .with_rules(loaded.rules.clone())
                .run(&sim.config(), shutdown)
                .await;
            eprintln!(
                "simulator: {} households, {} events, {} incidents, {} weather warnings, {} late from gateway outages, {} send errors, {:.1} h simulated",
                report.households, report.events, report.incidents, report.weather_alerts, report.backlog_flushed, report.send_errors, report.simulated as f64 / 3_600_000.0
            );
            Ok(())
        }
    }
}
