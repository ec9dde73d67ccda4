//! metacache keeps Redis populated from Kafka: device metadata and metric catalogs,
//! validated into typed models and written through a pipelined writer, at least once.
//!
//! The crate is laid out by job (see `docs/architecture.md`):
//!
//! - [`pipeline`] — the stages an event passes: the Kafka [`pipeline::source`], the
//!   [`pipeline::record`]s that travel between stages, [`pipeline::ownership`] of
//!   partitions, the Redis [`pipeline::sink`], and the [`pipeline::dead_letter`] stage.
//! - [`side`] — the tasks beside the pipeline: the HTTP side server with health,
//!   readiness and metrics, the Redis monitor, and the TTL janitor.
//! - [`tools`] — commands around the daemon: the demo and its embedded servers, `resync`,
//!   the producer side (`publish`), and the benchmark.
//! - [`daemon`] — wires the stages and the side tasks into one run.
//! - Shared by all of them: [`config`] (settings from defaults, a TOML file and
//!   `METACACHE__*` variables, validated as a whole), [`shutdown`] (one cancellation),
//!   [`stats`] (lock-free counters the stages bump and the side tasks read) and
//!   [`rate_limit`] (repeating warnings kept from drowning the log).
//!
//! The contract (events, decoding, rejections, the key layout) is the
//! `metacache-contract` crate, re-exported as [`model`] and [`keys`]; the read side is the
//! `metacache-client` crate, re-exported as [`client`].

/// The read side, from the client crate (`metacache-client`).
pub use metacache_client as client;
/// The key layout, from the contract crate (`metacache-contract`).
pub use metacache_contract::keys;
/// The events and their rules, from the contract crate (`metacache-contract`).
pub use metacache_contract::model;

pub mod acl;
pub mod config;
pub mod daemon;
pub mod pipeline;
pub mod rate_limit;
pub mod shutdown;
pub mod side;
pub mod stats;
pub mod tools;
