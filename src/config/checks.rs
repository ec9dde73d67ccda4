//! The checks of the values against each other and the ranges the daemon supports.

use super::*;

// ---------------------------------------------------------------------------------------
// Semantic checks

/// Redis rejects `EX` values whose milliseconds overflow an i64; every write would fail.
pub(super) const MAX_TTL_SECS: u64 = i64::MAX as u64 / 1000;

/// Properties metacache owns: set by librdkafka from `kafka.client` they would break
/// offset tracking or give one setting two names.
pub(super) const RESERVED_CLIENT_PROPERTIES: &[(&str, &str)] = &[
    (
        "enable.auto.commit",
        "metacache commits offsets itself, after Redis acknowledged the writes; remove it",
    ),
    (
        "enable.auto.offset.store",
        "metacache stores offsets itself, after Redis acknowledged the writes; remove it",
    ),
    ("group.id", "use kafka.group_id instead"),
    ("bootstrap.servers", "use kafka.brokers instead"),
    ("metadata.broker.list", "use kafka.brokers instead"),
    ("auto.offset.reset", "use kafka.auto_offset_reset instead"),
    (
        "queued.max.messages.kbytes",
        "use kafka.queued_max_messages_kbytes instead",
    ),
];

/// What loading learnt before the checks run.
#[derive(Default)]
pub(super) struct Known {
    /// Fields that failed to load (left at their defaults): not checked.
    pub(super) broken: BTreeSet<String>,
    /// Where each setting given came from, as in [`Found::sources`].
    pub(super) sources: BTreeMap<String, String>,
}

pub(super) struct Checks<'a> {
    pub(super) problems: Vec<Problem>,
    pub(super) known: &'a Known,
}

impl<'a> Checks<'a> {
    pub(super) fn new(known: &'a Known) -> Checks<'a> {
        Checks {
            problems: Vec::new(),
            known,
        }
    }

    pub(super) fn fail(&mut self, field: &str, reason: impl Into<String>) {
        self.fail_at(field, &[field], reason);
    }

    /// A problem reported at `field` about the settings `involved` (`field` among them),
    /// with their sources; dropped if one of them failed to load.
    pub(super) fn fail_at(&mut self, field: &str, involved: &[&str], reason: impl Into<String>) {
        if !self.usable(involved) || !self.usable(&[field]) {
            return;
        }
        let reason = reason.into() + &self.sources(field, involved);
        self.problems.push(Problem::new(field, reason));
    }

    /// Whether all these fields loaded, so that checking them says something about the
    /// user's settings rather than about defaults standing in for broken ones. The fields
    /// of a section that failed as a whole (`writer = 5`) did not load either.
    pub(super) fn usable(&self, fields: &[&str]) -> bool {
        let broken = &self.known.broken;
        !fields.iter().any(|field| {
            let section = field.split_once('.').map_or(*field, |(section, _)| section);
            broken.contains(*field) || broken.contains(section)
        })
    }

    /// ` (in FILE)` when the settings came from one place, else each with its own; the
    /// ones at their defaults are not named.
    pub(super) fn sources(&self, field: &str, involved: &[&str]) -> String {
        let given: Vec<(&str, &String)> = involved
            .iter()
            .filter_map(|f| self.known.sources.get(*f).map(|s| (*f, s)))
            .collect();
        let own = self.known.sources.get(field);
        match (own, given.first()) {
            (_, None) => String::new(),
            (Some(own), _) if given.iter().all(|(_, s)| *s == own) => format!(" ({own})"),
            _ => {
                let each: Vec<String> = given.iter().map(|(f, s)| format!("{f} {s}")).collect();
                format!(" ({})", each.join(", "))
            }
        }
    }

    pub(super) fn between<T: PartialOrd + fmt::Display>(
        &mut self,
        field: &str,
        value: T,
        lo: T,
        hi: T,
    ) {
        if value < lo || value > hi {
            self.fail(field, format!("must be between {lo} and {hi}, got {value}"));
        }
    }

    pub(super) fn at_least<T: PartialOrd + fmt::Display>(&mut self, field: &str, value: T, lo: T) {
        if value < lo {
            self.fail(field, format!("must be at least {lo}, got {value}"));
        }
    }

    pub(super) fn at_most<T: PartialOrd + fmt::Display>(&mut self, field: &str, value: T, hi: T) {
        if value > hi {
            self.fail(field, format!("must be at most {hi}, got {value}"));
        }
    }

    pub(super) fn one_of(&mut self, field: &str, value: &str, allowed: &[&str]) {
        if !allowed.contains(&value) {
            self.fail(
                field,
                format!("must be one of {}, got {value:?}", allowed.join(", ")),
            );
        }
    }

    pub(super) fn topic(&mut self, field: &str, topic: &str) -> bool {
        let reason = if topic.is_empty() {
            "must not be empty".to_string()
        } else if topic.len() > 249 {
            format!("must be at most 249 characters, got {}", topic.len())
        } else if topic == "." || topic == ".." {
            format!("is not a valid Kafka topic name, got {topic:?}")
        } else if !topic
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
        {
            format!("may only contain ASCII letters, digits, '.', '_' and '-', got {topic:?}")
        } else {
            return true;
        };
        self.fail(field, reason);
        false
    }
}

impl KafkaSettings {
    pub(super) fn check(&self, check: &mut Checks) {
        let brokers = self.brokers.trim();
        if brokers.is_empty() {
            check.fail(
                "kafka.brokers",
                "must not be empty (e.g. \"localhost:9092\")",
            );
        } else if brokers.split(',').any(|b| b.trim().is_empty()) {
            check.fail(
                "kafka.brokers",
                format!("has an empty entry in the comma-separated list {brokers:?}"),
            );
        } else {
            for entry in brokers.split(',').map(str::trim) {
                if let Err(reason) = check_broker(entry) {
                    check.fail("kafka.brokers", format!("entry {entry:?}: {reason}"));
                }
            }
        }
        if self.group_id.trim().is_empty() {
            check.fail("kafka.group_id", "must not be empty");
        }
        check.one_of(
            "kafka.auto_offset_reset",
            &self.auto_offset_reset,
            &["earliest", "latest"],
        );
        const DEVICE: &str = "kafka.device_topic";
        const METRIC: &str = "kafka.metric_topic";
        const DEAD_LETTER: &str = "kafka.dead_letter";
        // A topic that failed to load stands at its default: comparing others with it
        // would report problems that aren't there.
        let device_ok = check.topic(DEVICE, &self.device_topic) && check.usable(&[DEVICE]);
        let metric_ok = check.topic(METRIC, &self.metric_topic) && check.usable(&[METRIC]);
        if self.device_topic == self.metric_topic && device_ok {
            check.fail_at(
                METRIC,
                &[METRIC, DEVICE],
                format!(
                    "must differ from kafka.device_topic, both are {:?}",
                    self.metric_topic
                ),
            );
        }
        // Whether dead letters are on is unknown when `kafka.dead_letter` failed to load.
        let dead_letter = self.dead_letter && check.usable(&[DEAD_LETTER]);
        for (field, explicit, derived, source, source_ok) in [
            (
                "kafka.device_dead_letter_topic",
                &self.device_dead_letter_topic,
                self.device_dlq(),
                DEVICE,
                device_ok,
            ),
            (
                "kafka.metric_dead_letter_topic",
                &self.metric_dead_letter_topic,
                self.metric_dlq(),
                METRIC,
                metric_ok,
            ),
        ] {
            if !check.usable(&[field]) {
                continue;
            }
            if !explicit.is_empty() {
                if !check.topic(field, explicit) {
                    continue;
                }
            } else if !dead_letter || !source_ok {
                continue;
            } else if derived.len() > 249 {
                check.fail_at(
                    field,
                    &[field, source],
                    format!(
                        "the derived name would have {} characters, more than Kafka's 249; \
                         set this explicitly",
                        derived.len()
                    ),
                );
                continue;
            }
            let compared = [field, DEVICE, METRIC, DEAD_LETTER];
            if dead_letter
                && check.usable(&compared)
                && (derived == self.device_topic || derived == self.metric_topic)
            {
                check.fail_at(
                    field,
                    &compared,
                    format!("must differ from the source topics, got {derived:?}"),
                );
            }
        }
        check.at_least("kafka.commit_interval_ms", self.commit_interval_ms, 10);
        // librdkafka's own upper bound, reported here rather than at consumer creation.
        check.between(
            "kafka.queued_max_messages_kbytes",
            self.queued_max_messages_kbytes,
            1,
            2_097_151,
        );
        for (property, value) in &self.client {
            let field = format!("kafka.client.{property}");
            if let Some(instead) = reserved_instead(property) {
                check.fail(&field, format!("must not be set here: {instead}"));
            } else if property.is_empty() || property.contains(char::is_whitespace) {
                check.fail_at(
                    "kafka.client",
                    &[&field],
                    format!("{property:?} is not a librdkafka property name"),
                );
            } else if let Some(reason) =
                librdkafka::refusal(property, value, is_secret_property(property))
            {
                check.fail(&field, reason);
            }
        }
        for (property, path) in &self.client_files {
            let field = format!("kafka.client_files.{property}");
            if let Some(instead) = reserved_instead(property) {
                check.fail(&field, format!("must not be set here: {instead}"));
                continue;
            }
            if self.client.contains_key(property) {
                check.fail_at(
                    &field,
                    &[&field, &format!("kafka.client.{property}")],
                    format!(
                        "give {property} one way: in kafka.client or from a file here, not both"
                    ),
                );
                continue;
            }
            match metacache_client::settings::read_secret_file(path) {
                Err(reason) => check.fail(&field, reason),
                // The file's content is checked as the property's value, never shown.
                Ok(value) => {
                    if let Some(reason) = librdkafka::refusal(property, &value, true) {
                        check.fail(&field, format!("{reason} (the content of {path:?})"));
                    }
                }
            }
        }
    }
}

/// What to do instead of setting a property metacache owns, if `property` is one.
fn reserved_instead(property: &str) -> Option<&'static str> {
    RESERVED_CLIENT_PROPERTIES
        .iter()
        .find(|(reserved, _)| *reserved == property)
        .map(|(_, instead)| *instead)
}

/// One `kafka.brokers` entry: `host:port` or `[IPv6]:port`. librdkafka would take a port
/// it cannot read as 0 (`kafka:abc` is logged as `kafka:0`) and a scheme as part of the
/// host name, and then retry a broker that cannot exist forever.
pub(super) fn check_broker(entry: &str) -> Result<(), String> {
    const EXAMPLE: &str = "(e.g. \"kafka:9092\")";
    if let Some((scheme, rest)) = entry.split_once("://") {
        let rest = rest.trim_end_matches('/');
        return Err(format!(
            "must be host:port without a URL scheme (did you mean {rest:?}?); {scheme}:// is \
             not part of a broker address (the protocol is kafka.client's security.protocol)"
        ));
    }
    let port = if let Some(bracketed) = entry.strip_prefix('[') {
        let Some((address, after)) = bracketed.split_once(']') else {
            return Err("has an unclosed '[' (IPv6 addresses are written [::1]:9092)".into());
        };
        if address.parse::<std::net::Ipv6Addr>().is_err() {
            return Err(format!(
                "{address:?} in brackets is not an IPv6 address (written [::1]:9092)"
            ));
        }
        match after.strip_prefix(':') {
            Some(port) => port,
            None if after.is_empty() => return Err(format!("has no port {EXAMPLE}")),
            None => return Err(format!("has {after:?} after ']' where :port belongs")),
        }
    } else {
        let Some((host, port)) = entry.rsplit_once(':') else {
            return Err(format!("has no port {EXAMPLE}"));
        };
        if host.contains(':') {
            return Err(
                "has several ':'; an IPv6 address goes in brackets, e.g. [::1]:9092".into(),
            );
        }
        if host.is_empty() {
            return Err(format!("has no host {EXAMPLE}"));
        }
        let host_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_');
        if !host.chars().all(host_char) {
            return Err(format!(
                "the host may only contain ASCII letters, digits, '.', '-' and '_', got {host:?}"
            ));
        }
        port
    };
    match port.parse::<u16>() {
        Ok(port) if port > 0 => Ok(()),
        _ => Err(format!(
            "the port must be a number from 1 to 65535, got {port:?}"
        )),
    }
}

/// Redis's own checks (its settings type lives in the client crate).
pub(super) trait CheckRedis {
    fn check(&self, check: &mut Checks);
}

impl CheckRedis for RedisSettings {
    fn check(&self, check: &mut Checks) {
        check.one_of("redis.mode", &self.mode, &REDIS_MODES);
        match self.mode() {
            RedisMode::Cluster => self.check_cluster(check),
            RedisMode::Sentinel => self.check_sentinel(check),
            RedisMode::Standalone => {}
        }
        match Url::parse(&self.url) {
            Err(e) => check.fail(
                "redis.url",
                format!("is not a URL such as redis://127.0.0.1:6379/0 ({e})"),
            ),
            Ok(url) => match url.scheme() {
                "redis" | "rediss" => {
                    if url.host_str().is_none_or(str::is_empty) {
                        check.fail(
                            "redis.url",
                            format!("has no host, got {:?}", self.redacted_url()),
                        );
                    }
                    let db = url.path().trim_start_matches('/');
                    if !db.is_empty() && db.parse::<u32>().is_err() {
                        check.fail(
                            "redis.url",
                            format!("the path must be a database number, got {db:?}"),
                        );
                    }
                }
                "redis+unix" | "unix" => {
                    if url.path().trim_start_matches('/').is_empty() {
                        check.fail(
                            "redis.url",
                            format!("has no socket path, got {:?}", self.redacted_url()),
                        );
                    }
                }
                other => check.fail(
                    "redis.url",
                    format!("scheme must be redis, rediss, redis+unix or unix, got {other:?}"),
                ),
            },
        }
        if let Some(db) = self.db {
            check.at_least("redis.db", db, 0);
        }
        if self.key_prefix.len() > 128 {
            check.fail(
                "redis.key_prefix",
                format!("must be at most 128 bytes, got {}", self.key_prefix.len()),
            );
        }
        if self
            .key_prefix
            .chars()
            .any(|c| c.is_whitespace() || c.is_control())
        {
            check.fail(
                "redis.key_prefix",
                format!(
                    "must not contain whitespace or control characters, got {:?}",
                    self.key_prefix
                ),
            );
        }
        if let Some(Err(reason)) = self.password_from_file() {
            check.fail("redis.password_file", reason);
        }
        if self.password_file.is_some() && self.password.is_some() {
            check.fail_at(
                "redis.password_file",
                &["redis.password_file", "redis.password"],
                "give the password one way: redis.password_file or redis.password (METACACHE__REDIS__PASSWORD), not both",
            );
        }
        let tls = &self.tls;
        for (field, path) in [
            ("redis.tls.ca_file", &tls.ca_file),
            ("redis.tls.client_cert_file", &tls.client_cert_file),
            ("redis.tls.client_key_file", &tls.client_key_file),
        ] {
            if !path.is_empty() {
                if let Err(e) = std::fs::metadata(path) {
                    check.fail(field, format!("cannot read {path:?}: {e}"));
                }
            }
        }
        if tls.client_cert_file.is_empty() != tls.client_key_file.is_empty() {
            check.fail_at(
                "redis.tls.client_cert_file",
                &["redis.tls.client_cert_file", "redis.tls.client_key_file"],
                "client_cert_file and client_key_file go together (mutual TLS needs both)",
            );
        }
        if tls.is_set()
            && self.mode() == RedisMode::Standalone
            && !self.url.starts_with("rediss://")
        {
            check.fail_at(
                "redis.tls",
                &["redis.tls", "redis.url"],
                format!(
                    "certificates are set but redis.url is not rediss:// ({})",
                    self.redacted_url()
                ),
            );
        }
        check.at_most("redis.wait_replicas", self.wait_replicas, 16);
        if self.wait_replicas > 0 {
            check.between("redis.wait_timeout_ms", self.wait_timeout_ms, 1, 60_000);
            // WAIT blocks the writer's connection for up to its timeout: it must end well
            // before the response timeout would call the connection dead.
            if self.wait_timeout_ms >= self.response_timeout_ms {
                check.fail_at(
                    "redis.wait_timeout_ms",
                    &["redis.wait_timeout_ms", "redis.response_timeout_ms"],
                    format!(
                        "must be below redis.response_timeout_ms ({}), got {}",
                        self.response_timeout_ms, self.wait_timeout_ms
                    ),
                );
            }
        }
        check.at_least("redis.connect_timeout_ms", self.connect_timeout_ms, 1);
        check.at_least("redis.response_timeout_ms", self.response_timeout_ms, 1);
    }
}

trait CheckSentinel {
    fn check_sentinel(&self, check: &mut Checks);
    fn check_cluster(&self, check: &mut Checks);
    fn check_node_urls(&self, check: &mut Checks, what: &str);
    fn check_nodes_tls(&self, check: &mut Checks, mixed: &str, who: &str);
}

impl CheckSentinel for RedisSettings {
    fn check_cluster(&self, check: &mut Checks) {
        if self.nodes.is_empty() {
            check.fail(
                "redis.nodes",
                "cluster mode needs seed nodes, e.g. [\"redis://redis-0:6379\"] (METACACHE__REDIS__NODES=redis://r0:6379,redis://r1:6379)",
            );
        }
        self.check_node_urls(check, "a cluster node");
        if self.db.is_some_and(|db| db != 0) {
            check.fail("redis.db", "Redis Cluster has only database 0");
        }
        for node in &self.nodes {
            if let Ok(url) = Url::parse(node) {
                if !matches!(url.path(), "" | "/" | "/0") {
                    check.fail(
                        "redis.nodes",
                        format!("{:?}: Redis Cluster has only database 0", redact_url(node)),
                    );
                }
            }
        }
        self.check_nodes_tls(
            check,
            "a cluster's nodes are reached either all over TLS or none",
            "the nodes",
        );
    }

    /// `redis.nodes` all `rediss://` or none (`mixed` says why), and certificates only
    /// with `rediss://` (`who`: what the nodes are).
    fn check_nodes_tls(&self, check: &mut Checks, mixed: &str, who: &str) {
        let tls: Vec<bool> = self
            .nodes
            .iter()
            .map(|n| n.starts_with("rediss://"))
            .collect();
        if tls.iter().any(|t| *t) && !tls.iter().all(|t| *t) {
            check.fail(
                "redis.nodes",
                format!("mixes redis:// and rediss://: {mixed}"),
            );
        }
        if self.tls.is_set() && !tls.iter().any(|t| *t) {
            check.fail_at(
                "redis.tls",
                &["redis.tls", "redis.nodes"],
                format!("certificates are set but {who} in redis.nodes are not rediss://"),
            );
        }
    }

    fn check_node_urls(&self, check: &mut Checks, what: &str) {
        for node in &self.nodes {
            match Url::parse(node) {
                Err(e) => check.fail(
                    "redis.nodes",
                    format!(
                        "{:?} is not a URL such as redis://{}:6379 ({e})",
                        redact_url(node),
                        if what == "a sentinel" {
                            "sentinel-0"
                        } else {
                            "redis-0"
                        }
                    ),
                ),
                Ok(url) if !matches!(url.scheme(), "redis" | "rediss") => check.fail(
                    "redis.nodes",
                    format!(
                        "{:?}: {what} is reached over redis:// or rediss://",
                        redact_url(node)
                    ),
                ),
                Ok(url) if url.host_str().is_none_or(str::is_empty) => {
                    check.fail("redis.nodes", format!("{:?} has no host", redact_url(node)))
                }
                Ok(_) => {}
            }
        }
    }

    fn check_sentinel(&self, check: &mut Checks) {
        if self.nodes.is_empty() {
            check.fail(
                "redis.nodes",
                "sentinel mode needs the sentinels' addresses, e.g. [\"redis://sentinel-0:26379\"] (METACACHE__REDIS__NODES=redis://s0:26379,redis://s1:26379)",
            );
        }
        self.check_node_urls(check, "a sentinel");
        self.check_nodes_tls(
            check,
            "the sentinels and the primary are reached either all over TLS or none",
            "the sentinels",
        );
        if self.sentinel_master.trim().is_empty() {
            check.fail(
                "redis.sentinel_master",
                "sentinel mode needs the name the sentinels monitor the primary under (`sentinel monitor <name> ...`)",
            );
        }
    }
}

impl WriterSettings {
    pub(super) fn check(&self, check: &mut Checks) {
        check.between("writer.max_batch", self.max_batch, 1, 100_000);
        check.at_most("writer.linger_ms", self.linger_ms, 10_000);
        check.between("writer.max_in_flight", self.max_in_flight, 1, 64);
        check.at_least("writer.retry_initial_ms", self.retry_initial_ms, 1);
        if self.retry_initial_ms > self.retry_max_ms {
            check.fail_at(
                "writer.retry_initial_ms",
                &["writer.retry_initial_ms", "writer.retry_max_ms"],
                format!(
                    "must not exceed writer.retry_max_ms ({}), got {}",
                    self.retry_max_ms, self.retry_initial_ms
                ),
            );
        }
    }
}

pub(super) fn check_limits(limits: &Limits, check: &mut Checks) {
    check.between(
        "limits.max_message_bytes",
        limits.max_message_bytes,
        1,
        64 * 1024 * 1024,
    );
    check.between("limits.max_id_bytes", limits.max_id_bytes, 1, 4096);
    check.between(
        "limits.max_metric_names",
        limits.max_metric_names,
        1,
        1_000_000,
    );
}
