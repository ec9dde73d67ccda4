//! metacache keeps Redis populated from Kafka.
pub mod config;
pub mod model;
pub mod dead_letter;
pub mod record;
pub mod shutdown;
pub mod sink;
pub mod source;
pub mod stats;
pub mod daemon;
pub mod embedded;
pub mod demo;
