//! metacache keeps Redis populated from Kafka.
pub mod config;
pub mod daemon;
pub mod dead_letter;
pub mod demo;
pub mod embedded;
pub mod model;
pub mod record;
pub mod shutdown;
pub mod sink;
pub mod source;
pub mod stats;
