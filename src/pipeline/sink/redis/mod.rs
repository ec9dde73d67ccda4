//! The Redis sink: the key layout (the public contract), command planning (pure), the
//! server-side scripts, and the pipelined writer that talks to Redis.

pub mod batcher;
pub mod connect;
pub mod go_back;
pub mod inflight;
pub mod layout;
/// The key layout, from the contract crate (`metacache-contract`).
pub use metacache_contract::keys;
pub mod plan;
pub mod replies;
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

/// Why Redis cannot be used, led by what an operator must fix: `authentication failed`
/// (wrong user or password), `permission denied` (an ACL rule), `TLS failed` (certificate,
/// or TLS against a plain port), or `unreachable` (nothing listening, a timeout, a name
/// that does not resolve); then Redis's or the client's own words. A wrong password used
/// to read "cannot connect" on `/readyz`, sending the operator after the network.
pub fn connect_trouble(e: &::redis::RedisError) -> String {
    format!("{}: {}", trouble_kind(e), describe_error(e))
}

fn trouble_kind(e: &::redis::RedisError) -> &'static str {
    use ::redis::ErrorKind;
    let code = e.code().unwrap_or_default();
    if matches!(code, "WRONGPASS" | "NOAUTH") || e.kind() == ErrorKind::AuthenticationFailed {
        return "authentication failed";
    }
    if code == "NOPERM" {
        return "permission denied";
    }
    if e.kind() == ErrorKind::InvalidClientConfig {
        return "invalid settings";
    }
    let text = e.to_string().to_ascii_lowercase();
    // rustls words its failures in its own terms; none of these appear in plain I/O errors.
    if [
        "tls",
        "certificate",
        "handshake",
        "invalidcontenttype",
        "corrupt message",
    ]
    .iter()
    .any(|w| text.contains(w))
    {
        return "TLS failed";
    }
    if e.is_io_error() || e.is_timeout() || e.is_connection_refusal() {
        return "unreachable";
    }
    "refused"
}
