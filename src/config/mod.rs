//! Settings: built-in defaults, then a TOML file, then `METACACHE__SECTION__KEY`
//! environment variables, validated as a whole so a bad deployment hears about every
//! mistake at once instead of one per restart.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsString;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use ::config::{Config, Environment, FileFormat, Format, Map, Source, Value, ValueKind};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use url::Url;

use crate::model::Limits;

mod checks;
mod layers;
mod librdkafka;
mod schema;
mod secrets;
mod tree;

use checks::*;
use layers::*;
pub use schema::*;
use secrets::*;
use tree::*;

/// Read when no file is named; a deployment without it runs on defaults and environment.
pub const DEFAULT_FILE: &str = "config/default.toml";

/// Names the settings file when none is given on the command line.
pub const CONFIG_FILE_ENV: &str = "METACACHE_CONFIG";

/// Shown instead of a secret.
pub use metacache_client::settings::{redact_url, RedisMode, MASK, REDIS_MODES};
pub use metacache_client::RedisSettings;

/// One thing wrong with the configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Dotted path, e.g. `writer.max_batch`.
    pub field: String,
    pub reason: String,
}

impl Problem {
    pub fn new(field: impl Into<String>, reason: impl Into<String>) -> Problem {
        Problem {
            field: field.into(),
            // One problem, one line: the report is read in logs and terminals.
            reason: reason.into().replace(['\n', '\r'], " "),
        }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.reason)
    }
}

/// Every problem found; start-up stops when this is returned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub problems: Vec<Problem>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "configuration has {} problem(s):", self.problems.len())?;
        for problem in &self.problems {
            write!(f, "\n  - {problem}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

/// A setting given as a command-line option (`--brokers`): the last layer, over the file
/// and the environment, and checked with them.
#[derive(Debug, Clone)]
pub struct Override {
    /// Dotted name, e.g. `kafka.brokers`.
    pub field: &'static str,
    /// How problem reports name its source, e.g. `--brokers`.
    pub option: &'static str,
    pub value: String,
}

impl Settings {
    /// The key layout these settings write: `redis.key_prefix` and `devices.index_shards`.
    pub fn keys(&self) -> crate::keys::KeyLayout {
        crate::keys::KeyLayout::with_index_shards(&self.redis.key_prefix, self.devices.index_shards)
    }

    /// Loads defaults, then `file` (else the file named by `METACACHE_CONFIG`, else
    /// `config/default.toml` when present), then `METACACHE__SECTION__KEY` variables, and
    /// validates the result.
    pub fn load(file: Option<&Path>) -> Result<Settings, ConfigError> {
        Settings::load_with(file, &[])
    }

    /// `load` with command-line options over everything else.
    pub fn load_with(file: Option<&Path>, overrides: &[Override]) -> Result<Settings, ConfigError> {
        let env: Vec<(OsString, OsString)> = std::env::vars_os().collect();
        Settings::load_from(file, &env, Path::new(DEFAULT_FILE), overrides)
    }

    /// `load` with the environment and fallback file passed in, so tests need not share
    /// the process environment.
    fn load_from(
        file: Option<&Path>,
        env: &[(OsString, OsString)],
        fallback: &Path,
        overrides: &[Override],
    ) -> Result<Settings, ConfigError> {
        let mut found = Found::default();
        let file = choose_file(file, env, fallback, &mut found.problems);
        let file_missing = !found.problems.is_empty();
        let env = EnvSettings::collect(env, &mut found.problems);
        if file_missing {
            // Checking the rest against defaults would report problems that aren't there.
            return Err(ConfigError {
                problems: found.problems,
            });
        }
        let tree = match merge_sources(file.as_deref(), env, overrides) {
            Ok(tree) => tree,
            Err(mut e) => {
                found.problems.append(&mut e.problems);
                return Err(ConfigError {
                    problems: found.problems,
                });
            }
        };
        let settings = from_tree(tree, &mut found);

        // A field that failed to deserialize was left at its default: checking that
        // default, alone or against other fields, would only add noise.
        let known = Known {
            broken: found.problems.iter().map(|p| p.field.clone()).collect(),
            sources: std::mem::take(&mut found.sources),
        };
        let mut problems = found.problems;
        problems.extend(settings.problems(&known));
        if problems.is_empty() {
            Ok(settings)
        } else {
            Err(ConfigError { problems })
        }
    }

    /// Checks the values against each other and the ranges the daemon supports, and hands
    /// each `kafka.client` property to librdkafka; public for settings built in code
    /// (loading runs the same checks, with sources, and `load_with` takes command-line
    /// options).
    pub fn validate(&self) -> Result<(), ConfigError> {
        let problems = self.problems(&Known::default());
        if problems.is_empty() {
            Ok(())
        } else {
            Err(ConfigError { problems })
        }
    }

    /// Every semantic problem, each with the source of the settings it names; fields in
    /// `known.broken` are neither checked nor compared with others.
    fn problems(&self, known: &Known) -> Vec<Problem> {
        let mut check = Checks::new(known);
        self.kafka.check(&mut check);
        self.redis.check(&mut check);
        check.at_most("devices.ttl_secs", self.devices.ttl_secs, MAX_TTL_SECS);
        check.at_most("devices.guard_cache", self.devices.guard_cache, 100_000_000);
        check.between(
            "devices.index_shards",
            self.devices.index_shards,
            1,
            crate::keys::MAX_INDEX_SHARDS,
        );
        check.at_most("metrics.ttl_secs", self.metrics.ttl_secs, MAX_TTL_SECS);
        check.between(
            "janitor.interval_secs",
            self.janitor.interval_secs,
            1,
            86_400,
        );
        check.between("janitor.batch", self.janitor.batch, 1, 10_000);
        self.writer.check(&mut check);
        check_limits(&self.limits, &mut check);
        const MAX_BYTES: &str = "kafka.client.message.max.bytes";
        let involved = [MAX_BYTES, "limits.max_message_bytes", "kafka.dead_letter"];
        if self.kafka.dead_letter && check.usable(&involved) {
            if let Some(raw) = self.kafka.client.get("message.max.bytes") {
                let need = self.limits.max_message_bytes + DEAD_LETTER_OVERHEAD;
                match raw.trim().parse::<usize>() {
                    Ok(n) if n < need => check.fail_at(
                        MAX_BYTES,
                        &involved,
                        format!(
                            "must be at least limits.max_message_bytes + {DEAD_LETTER_OVERHEAD} ({need}) so that any event up to the limit that Redis refuses can be dead-lettered whole, got {n}"
                        ),
                    ),
                    _ => {}
                }
            }
        }
        check.between("shutdown.timeout_secs", self.shutdown.timeout_secs, 1, 3600);
        check.between("api.max_page", self.api.max_page, 1, 10_000);
        if let Err(reason) = self.api.token() {
            check.fail("api.token_file", reason);
        }
        if self.http.listen.parse::<SocketAddr>().is_err() {
            check.fail(
                "http.listen",
                format!(
                    "must be an IP address and port such as 0.0.0.0:8080, got {:?}",
                    self.http.listen
                ),
            );
        }
        if !self.http.probe_listen.is_empty() {
            match self.http.probe_listen.parse::<SocketAddr>() {
                Err(_) => check.fail(
                    "http.probe_listen",
                    format!(
                        "must be empty or an IP address and port such as 0.0.0.0:8081, got {:?}",
                        self.http.probe_listen
                    ),
                ),
                Ok(probe) if probe.port() != 0 && Some(probe) == self.http.listen.parse().ok() => {
                    check.fail(
                        "http.probe_listen",
                        format!("must differ from http.listen, got {probe} for both"),
                    )
                }
                Ok(_) => {}
            }
        }
        check.between("http.redis_grace_secs", self.http.redis_grace_secs, 1, 3600);
        check.between(
            "http.wedged_after_secs",
            self.http.wedged_after_secs,
            5,
            86_400,
        );
        check.between("http.lag_degraded", self.http.lag_degraded, 1, u64::MAX);
        check.between(
            "http.degraded_window_secs",
            self.http.degraded_window_secs,
            1,
            3600,
        );
        check.one_of("log.format", &self.log.format, &["text", "json"]);
        if self.log.filter.trim().is_empty() {
            check.fail("log.filter", "must not be empty (e.g. \"info\")");
        } else if let Err(e) = tracing_subscriber::EnvFilter::try_new(&self.log.filter) {
            check.fail(
                "log.filter",
                format!("is not a valid filter ({e}), got {:?}", self.log.filter),
            );
        }
        check.problems
    }

    /// A copy safe to print: passwords, secrets and keys replaced by `***`.
    pub fn redacted(&self) -> Settings {
        let mut copy = self.clone();
        copy.redis.url = self.redis.redacted_url();
        if copy.redis.password.is_some() {
            copy.redis.password = Some(MASK.into());
        }
        if copy.redis.sentinel_password.is_some() {
            copy.redis.sentinel_password = Some(MASK.into());
        }
        copy.redis.nodes = self.redis.nodes.iter().map(|n| redact_url(n)).collect();
        for (key, value) in copy.kafka.client.iter_mut() {
            if is_secret_property(key) {
                *value = MASK.into();
            }
        }
        copy
    }

    /// The redacted settings as TOML, loadable again (unset options are left out).
    pub fn to_toml_string(&self) -> String {
        match toml::to_string(&self.redacted()) {
            Ok(text) => text,
            // Only values beyond TOML's i64, which validation rejects, get here.
            Err(e) => format!("# the settings cannot be shown as TOML: {e}\n"),
        }
    }
}

#[cfg(test)]
mod tests;
