//! metacache keeps Redis populated from Kafka.
pub mod config;
pub mod model;
