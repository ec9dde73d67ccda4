//! The Redis sink: the key layout (the public contract), command planning (pure), the
//! server-side scripts, and the pipelined writer that talks to Redis.

pub mod connect;
pub mod keys;
pub mod plan;
pub mod retry;
pub mod scripts;
pub mod versions;
pub mod writer;

pub use keys::KeyLayout;

/// A Redis error as Redis itself words it (`OOM command not allowed ...`, `READONLY You
/// can't write ...`), so logs and `/readyz` show the code an operator can look up; other
/// errors (I/O, timeouts) as the client describes them.
pub fn describe_error(e: &::redis::RedisError) -> String {
    match (e.code(), e.detail()) {
        (Some(code), Some(detail)) => format!("{code} {detail}"),
        (Some(code), None) => code.to_owned(),
        _ => e.to_string(),
    }
}
