//! Servers the demo and the tests start in-process or as children, so a newcomer needs
//! nothing set up by hand: librdkafka's mock Kafka cluster (a real Kafka-protocol listener
//! on 127.0.0.1) and a `redis-server` child on a free port (from `metacache-embedded`,
//! which the client crate uses without Kafka).
//!
//! Not for production: the mock cluster keeps about 5 MiB per partition and nothing on
//! disk.

use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::Instant;

use rdkafka::mocking::MockCluster;

use crate::model::Event;
use crate::pipeline::sink::redis::plan::{PlanInput, Planner, Ttls};
use crate::pipeline::sink::redis::versions::KnownVersions;
use crate::pipeline::sink::redis::{scripts, KeyLayout};

/// What the mock-cluster thread can be asked to do.
enum KafkaCommand {
    CreateTopic(String, i32, mpsc::Sender<Result<(), String>>),
    BrokerDown(i32, mpsc::Sender<Result<(), String>>),
    BrokerUp(i32, mpsc::Sender<Result<(), String>>),
    Stop,
}

/// librdkafka's mock cluster on a thread of its own (it is not `Send`, so it lives and
/// dies on the thread that made it; this handle talks to it over a channel).
pub struct EmbeddedKafka {
    bootstrap: String,
    commands: mpsc::Sender<KafkaCommand>,
    thread: Option<JoinHandle<()>>,
}

impl EmbeddedKafka {
    /// Starts a cluster of `brokers` brokers with the given topics and partition counts.
    pub fn start(brokers: i32, topics: &[(&str, i32)]) -> Result<Self, String> {
        let (ready_tx, ready_rx) = mpsc::channel();
        let (commands, command_rx) = mpsc::channel::<KafkaCommand>();
        let thread = std::thread::Builder::new()
            .name("mock-kafka".into())
            .spawn(move || {
                let cluster = match MockCluster::new(brokers) {
                    Ok(c) => c,
                    Err(e) => {
                        let _ = ready_tx.send(Err(format!("mock cluster: {e}")));
                        return;
                    }
                };
                let _ = ready_tx.send(Ok(cluster.bootstrap_servers()));
                while let Ok(command) = command_rx.recv() {
                    match command {
                        KafkaCommand::CreateTopic(name, partitions, reply) => {
                            let _ = reply.send(
                                cluster
                                    .create_topic(&name, partitions, 1)
                                    .map_err(|e| e.to_string()),
                            );
                        }
                        KafkaCommand::BrokerDown(id, reply) => {
                            let _ = reply.send(cluster.broker_down(id).map_err(|e| e.to_string()));
                        }
                        KafkaCommand::BrokerUp(id, reply) => {
                            let _ = reply.send(cluster.broker_up(id).map_err(|e| e.to_string()));
                        }
                        KafkaCommand::Stop => break,
                    }
                }
            })
            .map_err(|e| e.to_string())?;
        let bootstrap = ready_rx
            .recv()
            .map_err(|_| "mock cluster thread died".to_owned())??;
        let kafka = EmbeddedKafka {
            bootstrap,
            commands,
            thread: Some(thread),
        };
        for (name, partitions) in topics {
            kafka.create_topic(name, *partitions)?;
        }
        Ok(kafka)
    }

    /// The `bootstrap.servers` string, reachable by other processes too (kcat, a second
    /// metacache).
    pub fn bootstrap(&self) -> &str {
        &self.bootstrap
    }

    fn ask(
        &self,
        make: impl FnOnce(mpsc::Sender<Result<(), String>>) -> KafkaCommand,
    ) -> Result<(), String> {
        let (tx, rx) = mpsc::channel();
        self.commands
            .send(make(tx))
            .map_err(|_| "mock cluster stopped".to_owned())?;
        rx.recv().map_err(|_| "mock cluster stopped".to_owned())?
    }

    pub fn create_topic(&self, name: &str, partitions: i32) -> Result<(), String> {
        self.ask(|tx| KafkaCommand::CreateTopic(name.to_owned(), partitions, tx))
    }

    /// Takes a broker off the network (its listener refuses and drops connections).
    pub fn broker_down(&self, id: i32) -> Result<(), String> {
        self.ask(|tx| KafkaCommand::BrokerDown(id, tx))
    }

    pub fn broker_up(&self, id: i32) -> Result<(), String> {
        self.ask(|tx| KafkaCommand::BrokerUp(id, tx))
    }
}

impl Drop for EmbeddedKafka {
    fn drop(&mut self) {
        let _ = self.commands.send(KafkaCommand::Stop);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

pub use metacache_embedded::{free_port, EmbeddedRedis};

/// Writes events into an [`EmbeddedRedis`] the way the daemon's writer does.
pub trait Apply {
    /// Writes `events` the way the daemon's writer does (the same planner, scripts and key
    /// layout under `key_prefix`, no TTLs), without Kafka: examples and tests get a cache
    /// in a known state in one call.
    ///
    /// ```
    /// use metacache::tools::embedded::{Apply, EmbeddedRedis};
    /// use metacache::model::{Event, MetricOp};
    ///
    /// let redis = EmbeddedRedis::start()?;
    /// redis.apply("", &[Event::Metric(MetricOp::Add {
    ///     namespace: "billing".into(),
    ///     metric_names: vec!["cpu".into()],
    /// })])?;
    /// # Ok::<(), String>(())
    /// ```
    fn apply(&self, key_prefix: &str, events: &[Event]) -> Result<(), String>;
}

impl Apply for EmbeddedRedis {
    fn apply(&self, key_prefix: &str, events: &[Event]) -> Result<(), String> {
        let mut conn = redis::Client::open(self.url())
            .and_then(|c| c.get_connection())
            .map_err(|e| format!("redis: {e}"))?;
        for script in scripts::all() {
            script
                .load(&mut conn)
                .map_err(|e| format!("SCRIPT LOAD: {e}"))?;
        }
        let planner = Planner::new(KeyLayout::new(key_prefix), Ttls::default());
        // Nothing remembered: every device goes through the stale guard.
        let mut versions = KnownVersions::new(0, 0);
        let inputs = events.iter().map(|event| PlanInput {
            event: Some(event),
            epoch: None,
        });
        let pipe = planner
            .plan_batch(inputs, &mut versions, Instant::now())
            .pipe;
        if pipe.is_empty() {
            return Ok(());
        }
        pipe.query::<redis::Value>(&mut conn)
            .map(drop)
            .map_err(|e| format!("redis: {e}"))
    }
}
