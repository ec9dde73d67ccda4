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
    /// `standalone` (one address, `url`), `sentinel` (the primary the sentinels in
    /// `nodes` name for `sentinel_master`, followed through failovers) or `cluster`
    /// (every primary of a Redis Cluster, found from the seeds in `nodes`).
    pub mode: String,
    /// `redis://[user[:password]@]host:port/db` or `rediss://` for TLS.
    pub url: String,
    /// Sentinel mode: the sentinels; cluster mode: seed nodes (any few of the cluster's
    /// nodes; the rest are found from them). As URLs (`redis://host:26379`, `rediss://`
    /// for TLS, a cluster node's user and password as in `url`); a comma-separated string
    /// is accepted too (`METACACHE__REDIS__NODES`).
    #[serde(deserialize_with = "list_or_commas")]
    pub nodes: Vec<String>,
    /// Sentinel mode: the name the sentinels monitor the primary under.
    pub sentinel_master: String,
    /// Sentinel mode: the sentinels' own ACL user, when they require one.
    pub sentinel_username: Option<String>,
    /// Sentinel mode: the sentinels' own password (`requirepass` in sentinel.conf).
    /// Never logged or printed.
    pub sentinel_password: Option<String>,
    /// Overrides the URL's user name when set.
    pub username: Option<String>,
    /// Overrides the URL's password when set. Never logged or printed.
    pub password: Option<String>,
    /// A file holding the password (a mounted Secret): read when each connection is made,
    /// and every few seconds after, so a rotated Secret reaches new connections and
    /// re-authenticates the open ones. Overrides `password` and the URL's.
    pub password_file: Option<String>,
    /// Overrides the URL's database number when set.
    pub db: Option<i64>,
    /// Put in front of every key metacache writes.
    pub key_prefix: String,
    /// How long connecting may take.
    pub connect_timeout_ms: u64,
    /// How long a command may wait for its answer.
    pub response_timeout_ms: u64,
    /// The daemon's writes count as done only once this many replicas have them (`WAIT`
    /// at the end of every pipeline); 0: once the primary has them.
    pub wait_replicas: u32,
    /// How long each `WAIT` may take; fewer replicas by then is retried, never acknowledged.
    pub wait_timeout_ms: u64,
    /// Certificates for `rediss://` beyond the system's roots: a private CA, and a client
    /// certificate for servers that require mutual TLS.
    pub tls: TlsSettings,
}

/// The `[redis.tls]` section. Empty strings: not used. There is no switch that turns
/// verification off: a server whose certificate does not verify is refused.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TlsSettings {
    /// PEM file of the CA(s) that sign the server's certificate; empty: the system's roots.
    pub ca_file: String,
    /// PEM file of this client's certificate, for mutual TLS (with `client_key_file`).
    pub client_cert_file: String,
    /// PEM file of this client's private key.
    pub client_key_file: String,
}

impl TlsSettings {
    /// Whether any certificate is configured.
    pub fn is_set(&self) -> bool {
        !(self.ca_file.is_empty()
            && self.client_cert_file.is_empty()
            && self.client_key_file.is_empty())
    }
}

impl Default for RedisSettings {
    fn default() -> Self {
        RedisSettings {
            mode: "standalone".into(),
            url: "redis://127.0.0.1:6379/0".into(),
            nodes: Vec::new(),
            sentinel_master: String::new(),
            sentinel_username: None,
            sentinel_password: None,
            username: None,
            password: None,
            password_file: None,
            db: None,
            key_prefix: String::new(),
            connect_timeout_ms: 2000,
            response_timeout_ms: 5000,
            wait_replicas: 0,
            wait_timeout_ms: 1000,
            tls: TlsSettings::default(),
        }
    }
}

/// How metacache finds the Redis it writes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RedisMode {
    /// One address, `redis.url`.
    Standalone,
    /// The primary the sentinels name, followed through failovers.
    Sentinel,
    /// Every primary of a Redis Cluster, each command sent to the node owning its key.
    Cluster,
}

/// The values `redis.mode` accepts.
pub const REDIS_MODES: [&str; 3] = ["standalone", "sentinel", "cluster"];

impl RedisSettings {
    /// `mode` read; anything unknown counts as standalone (validation refuses it first).
    pub fn mode(&self) -> RedisMode {
        match self.mode.as_str() {
            "sentinel" => RedisMode::Sentinel,
            "cluster" => RedisMode::Cluster,
            _ => RedisMode::Standalone,
        }
    }

    /// Where the settings point, for logs and readiness: the redacted URL, or the
    /// sentinels and the master name.
    pub fn describe_target(&self) -> String {
        match self.mode() {
            RedisMode::Cluster => format!(
                "cluster via {}",
                self.nodes
                    .iter()
                    .map(|n| redact_url(n))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            RedisMode::Sentinel => format!(
                "sentinel master {:?} via {}",
                self.sentinel_master,
                self.nodes
                    .iter()
                    .map(|n| redact_url(n))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            _ => self.redacted_url(),
        }
    }

    /// The password in `password_file`, surrounding whitespace removed; the error names
    /// the file, never its content.
    pub fn password_from_file(&self) -> Option<Result<String, String>> {
        self.password_file.as_deref().map(read_secret_file)
    }

    /// The URL with any password replaced by `***`, for logs.
    pub fn redacted_url(&self) -> String {
        redact_url(&self.url)
    }
}

/// A list given either as a list or, from an environment variable, as one string of
/// comma-separated items (blank items dropped).
fn list_or_commas<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Form {
        List(Vec<String>),
        Text(String),
    }
    Ok(match Form::deserialize(d)? {
        Form::List(items) => items,
        Form::Text(text) => text
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect(),
    })
}

/// A secret mounted as a file, surrounding whitespace removed; the error names the file,
/// never its content.
pub fn read_secret_file(path: &str) -> Result<String, String> {
    match std::fs::read_to_string(path) {
        Err(e) => Err(format!("cannot read {path:?}: {e}")),
        Ok(text) if text.trim().is_empty() => Err(format!("{path:?} is empty")),
        Ok(text) => Ok(text.trim().to_owned()),
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
