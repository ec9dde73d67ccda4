//! Where validated events go. Redis is the only sink; the module exists so the Kafka side
//! never names a Redis type.

pub mod redis;
