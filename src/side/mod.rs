//! Tasks beside the pipeline: they read what the stages report and never slow them. The
//! HTTP side server ([`http`]) answers probes and scrapes from atomics ([`health`] holds
//! its pure verdicts, [`metrics`] the Prometheus exposition); the [`monitor`] asks Redis
//! how the cache looks once a second; the [`janitor`] removes index entries whose keys
//! expired.

pub mod api;
pub mod health;
pub mod http;
pub mod janitor;
pub mod metrics;
pub mod monitor;
