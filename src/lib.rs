//! metacache keeps Redis populated from Kafka: device metadata and metric catalogs,
//! validated into typed models and written through a pipelined writer, at least once.
//!
//! The modules, in the order an event meets them:
//!
//! - [`config`] — settings from defaults, a TOML file and `METACACHE__*` environment
//!   variables, validated as a whole so every problem is reported at once.
//! - [`source`] — the Kafka consumer on its own thread, and the per-partition offset
//!   watermarks that decide what may be committed.
//! - [`model`] — pure decoding and validation: `(topic, key, value)` in, a typed
//!   [`model::Event`] or a [`model::Reject`] naming the field and the reason out.
//! - [`record`] — what travels between the stages: decoded records and acknowledgements.
//! - [`ownership`] — which partitions this process owns, under which generation: the
//!   source changes it, the writer drops what is no longer owned.
//! - [`sink`] — Redis: the key layout (the public contract), pure command planning, the
//!   server-side scripts, and the pipelined writer with its retry policy.
//! - [`janitor`] — with TTLs set, removes index entries whose keys expired.
//! - [`dead_letter`] — rejected events to their dead-letter topic, with the reason in
//!   headers; acknowledged only once the broker has them.
//! - [`daemon`] — wires the stages into one run loop.
//! - [`shutdown`] — signals become one cancellation every stage listens to.
//! - [`stats`] — lock-free counters the stages bump and reporters read.
//! - [`monitor`] — the cache as Redis sees it, refreshed once a second in the background.
//! - [`health`] — liveness and readiness verdicts, pure functions of what is known.
//! - [`metrics`] and [`http`] — Prometheus exposition and the side server with
//!   `/healthz`, `/readyz`, `/stats` and `/metrics`.
//! - [`resync`] — `metacache resync`: rewinds the consumer group to the earliest offsets
//!   after Redis lost its data.
//! - [`rate_limit`] — keeps repeating warnings from drowning the log.
//! - [`client`] — the read side: a typed async client (and a blocking twin) that reads
//!   the cache through the same key layout and models the writer uses.
//! - [`publish`] — the producer side: typed events validated with the daemon's own decoder
//!   and produced to the right topic with the right key.
//! - [`embedded`] and [`demo`] — the mock Kafka cluster and `redis-server` child that let
//!   `metacache demo` and the tests run with nothing set up by hand.

pub mod bench;
/// The read side, from the client crate (`metacache-client`).
pub use metacache_client as client;
pub mod config;
pub mod daemon;
pub mod dead_letter;
pub mod demo;
pub mod embedded;
pub mod health;
pub mod http;
pub mod janitor;
pub mod metrics;
/// The events and their rules, from the contract crate (`metacache-contract`).
pub use metacache_contract::model;
pub mod monitor;
pub mod ownership;
pub mod publish;
pub mod rate_limit;
pub mod record;
pub mod resync;
pub mod shutdown;
pub mod sink;
pub mod source;
pub mod stats;
