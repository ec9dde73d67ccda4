//! The contract between metacache and everything around it: the events producers put on
//! the Kafka topics (their decoding and validation, and the rejections with their
//! reasons), and the Redis layout readers rely on (the keys and the scripts that write
//! them).
//!
//! Pure by design: no Kafka client, no Redis client, no async runtime. The daemon decodes
//! with it, the client reads the layout with it, and a producer in any language can check
//! its events against the same rules (`metacache produce` does).

pub mod keys;
pub mod layout;
pub mod model;
pub mod scripts;

pub use keys::KeyLayout;
pub use layout::LayoutDescriptor;
