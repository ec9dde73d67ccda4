//! How to reach Redis: the `[redis]` settings the daemon, the look-ups and the client
//! share, and the one way to print their URL.

use serde::{Deserialize, Serialize};
use url::Url;

/// What secrets are replaced with wherever settings are shown.
pub const MASK: &str = "***";

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
/// The `[redis]` section: where Redis is and how to talk to it.
pub struct RedisSettings {
    /// `redis://[user[:password]@]host:port/db` or `rediss://` for TLS.
    pub url: String,
    /// Overrides the URL's user name when set.
    pub username: Option<String>,
    /// Overrides the URL's password when set. Never logged or printed.
    pub password: Option<String>,
    /// Overrides the URL's database number when set.
    pub db: Option<i64>,
    /// Put in front of every key metacache writes.
    pub key_prefix: String,
    /// How long connecting may take.
    pub connect_timeout_ms: u64,
    /// How long a command may wait for its answer.
    pub response_timeout_ms: u64,
}

impl Default for RedisSettings {
    fn default() -> Self {
        RedisSettings {
            url: "redis://127.0.0.1:6379/0".into(),
            username: None,
            password: None,
            db: None,
            key_prefix: String::new(),
            connect_timeout_ms: 2000,
            response_timeout_ms: 5000,
        }
    }
}

impl RedisSettings {
    /// The URL with any password replaced by `***`, for logs.
    pub fn redacted_url(&self) -> String {
        redact_url(&self.url)
    }
}

/// `raw` with any password in it replaced by `***`: in the user part, or in a `pass` or
/// `password` query (Unix-socket URLs); text that is not a URL loses everything between
/// its scheme and its last `@`.
pub fn redact_url(raw: &str) -> String {
    let Ok(mut url) = Url::parse(raw) else {
        // Not a URL, but it may still carry `user:password@`.
        return match raw.split_once("://") {
            Some((scheme, rest)) => match rest.rfind('@') {
                Some(at) => format!("{scheme}://{MASK}@{}", &rest[at + 1..]),
                None => raw.to_string(),
            },
            None => raw.to_string(),
        };
    };
    if url.password().is_some() {
        let _ = url.set_password(Some(MASK));
    }
    // Unix-socket URLs carry the password in the query (`?pass=`).
    let secret_query = |key: &str| matches!(key, "pass" | "password");
    if url.query_pairs().any(|(k, _)| secret_query(&k)) {
        let pairs: Vec<(String, String)> = url
            .query_pairs()
            .map(|(k, v)| {
                let v = if secret_query(&k) {
                    MASK.to_string()
                } else {
                    v.into_owned()
                };
                (k.into_owned(), v)
            })
            .collect();
        url.query_pairs_mut().clear().extend_pairs(pairs);
    }
    url.to_string()
}
