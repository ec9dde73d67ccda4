//! The Redis sink: the key layout (the public contract), command planning (pure), the
//! server-side scripts, and the pipelined writer that talks to Redis.

pub mod connect;
pub mod keys;
pub mod plan;
pub mod retry;
pub mod scripts;
pub mod writer;

pub use keys::KeyLayout;
