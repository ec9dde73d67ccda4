//! Where events come from: the Kafka consumer and the offset bookkeeping that makes
//! at-least-once delivery hold across crashes and rebalances.

pub mod kafka;
pub mod offsets;
pub mod secret_files;
