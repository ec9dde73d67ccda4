//! The properties librdkafka 2.12.1 (the version rdkafka-sys 4.10 builds) accepts as
//! strings, from its CONFIGURATION.md, global and topic level together; callbacks and
//! pointers ("see dedicated API") are left out since no settings file can set them.
//! librdkafka itself decides whether a property exists: this list only supplies the
//! suggestion for a misspelt name and the type for a clearer message. A unit test checks
//! that librdkafka knows every name here.

/// How librdkafka reads a property's value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum PropertyType {
    Integer,
    Float,
    Boolean,
    /// Strings, enum values, CSV flags, pattern lists.
    Text,
}

use rdkafka::error::KafkaError;
use rdkafka::types::RDKafkaConfRes;
use rdkafka::ClientConfig;
use PropertyType::{Boolean, Float, Integer, Text};

pub(super) const PROPERTIES: &[(&str, PropertyType)] = &[
    ("builtin.features", Text),
    ("client.id", Text),
    ("metadata.broker.list", Text),
    ("bootstrap.servers", Text),
    ("message.max.bytes", Integer),
    ("message.copy.max.bytes", Integer),
    ("receive.message.max.bytes", Integer),
    ("max.in.flight.requests.per.connection", Integer),
    ("max.in.flight", Integer),
    ("metadata.recovery.strategy", Text),
    ("metadata.recovery.rebootstrap.trigger.ms", Integer),
    ("topic.metadata.refresh.interval.ms", Integer),
    ("metadata.max.age.ms", Integer),
    ("topic.metadata.refresh.fast.interval.ms", Integer),
    ("topic.metadata.refresh.fast.cnt", Integer),
    ("topic.metadata.refresh.sparse", Boolean),
    ("topic.metadata.propagation.max.ms", Integer),
    ("topic.blacklist", Text),
    ("debug", Text),
    ("socket.timeout.ms", Integer),
    ("socket.blocking.max.ms", Integer),
    ("socket.send.buffer.bytes", Integer),
    ("socket.receive.buffer.bytes", Integer),
    ("socket.keepalive.enable", Boolean),
    ("socket.nagle.disable", Boolean),
    ("socket.max.fails", Integer),
    ("broker.address.ttl", Integer),
    ("broker.address.family", Text),
    ("socket.connection.setup.timeout.ms", Integer),
    ("connections.max.idle.ms", Integer),
    ("reconnect.backoff.jitter.ms", Integer),
    ("reconnect.backoff.ms", Integer),
    ("reconnect.backoff.max.ms", Integer),
    ("statistics.interval.ms", Integer),
    ("enabled_events", Integer),
    ("log_level", Integer),
    ("log.queue", Boolean),
    ("log.thread.name", Boolean),
    ("enable.random.seed", Boolean),
    ("log.connection.close", Boolean),
    ("internal.termination.signal", Integer),
    ("api.version.request", Boolean),
    ("api.version.request.timeout.ms", Integer),
    ("api.version.fallback.ms", Integer),
    ("broker.version.fallback", Text),
    ("allow.auto.create.topics", Boolean),
    ("security.protocol", Text),
    ("ssl.cipher.suites", Text),
    ("ssl.curves.list", Text),
    ("ssl.sigalgs.list", Text),
    ("ssl.key.location", Text),
    ("ssl.key.password", Text),
    ("ssl.key.pem", Text),
    ("ssl.certificate.location", Text),
    ("ssl.certificate.pem", Text),
    ("ssl.ca.location", Text),
    ("https.ca.location", Text),
    ("https.ca.pem", Text),
    ("ssl.ca.pem", Text),
    ("ssl.ca.certificate.stores", Text),
    ("ssl.crl.location", Text),
    ("ssl.keystore.location", Text),
    ("ssl.keystore.password", Text),
    ("ssl.providers", Text),
    ("ssl.engine.location", Text),
    ("ssl.engine.id", Text),
    ("enable.ssl.certificate.verification", Boolean),
    ("ssl.endpoint.identification.algorithm", Text),
    ("sasl.mechanisms", Text),
    ("sasl.mechanism", Text),
    ("sasl.kerberos.service.name", Text),
    ("sasl.kerberos.principal", Text),
    ("sasl.kerberos.kinit.cmd", Text),
    ("sasl.kerberos.keytab", Text),
    ("sasl.kerberos.min.time.before.relogin", Integer),
    ("sasl.username", Text),
    ("sasl.password", Text),
    ("sasl.oauthbearer.config", Text),
    ("enable.sasl.oauthbearer.unsecure.jwt", Boolean),
    ("sasl.oauthbearer.method", Text),
    ("sasl.oauthbearer.client.id", Text),
    ("sasl.oauthbearer.client.credentials.client.id", Text),
    ("sasl.oauthbearer.client.credentials.client.secret", Text),
    ("sasl.oauthbearer.client.secret", Text),
    ("sasl.oauthbearer.scope", Text),
    ("sasl.oauthbearer.extensions", Text),
    ("sasl.oauthbearer.token.endpoint.url", Text),
    ("sasl.oauthbearer.grant.type", Text),
    ("sasl.oauthbearer.assertion.algorithm", Text),
    ("sasl.oauthbearer.assertion.private.key.file", Text),
    ("sasl.oauthbearer.assertion.private.key.passphrase", Text),
    ("sasl.oauthbearer.assertion.private.key.pem", Text),
    ("sasl.oauthbearer.assertion.file", Text),
    ("sasl.oauthbearer.assertion.claim.aud", Text),
    ("sasl.oauthbearer.assertion.claim.exp.seconds", Integer),
    ("sasl.oauthbearer.assertion.claim.iss", Text),
    ("sasl.oauthbearer.assertion.claim.jti.include", Boolean),
    ("sasl.oauthbearer.assertion.claim.nbf.seconds", Integer),
    ("sasl.oauthbearer.assertion.claim.sub", Text),
    ("sasl.oauthbearer.assertion.jwt.template.file", Text),
    ("sasl.oauthbearer.metadata.authentication.type", Text),
    ("plugin.library.paths", Text),
    ("group.id", Text),
    ("group.instance.id", Text),
    ("partition.assignment.strategy", Text),
    ("session.timeout.ms", Integer),
    ("heartbeat.interval.ms", Integer),
    ("group.protocol.type", Text),
    ("group.protocol", Text),
    ("group.remote.assignor", Text),
    ("coordinator.query.interval.ms", Integer),
    ("max.poll.interval.ms", Integer),
    ("enable.auto.commit", Boolean),
    ("auto.commit.interval.ms", Integer),
    ("enable.auto.offset.store", Boolean),
    ("queued.min.messages", Integer),
    ("queued.max.messages.kbytes", Integer),
    ("fetch.wait.max.ms", Integer),
    ("fetch.queue.backoff.ms", Integer),
    ("fetch.message.max.bytes", Integer),
    ("max.partition.fetch.bytes", Integer),
    ("fetch.max.bytes", Integer),
    ("fetch.min.bytes", Integer),
    ("fetch.error.backoff.ms", Integer),
    ("offset.store.method", Text),
    ("isolation.level", Text),
    ("enable.partition.eof", Boolean),
    ("check.crcs", Boolean),
    ("client.rack", Text),
    ("transactional.id", Text),
    ("transaction.timeout.ms", Integer),
    ("enable.idempotence", Boolean),
    ("enable.gapless.guarantee", Boolean),
    ("queue.buffering.max.messages", Integer),
    ("queue.buffering.max.kbytes", Integer),
    ("queue.buffering.max.ms", Float),
    ("linger.ms", Float),
    ("message.send.max.retries", Integer),
    ("retries", Integer),
    ("retry.backoff.ms", Integer),
    ("retry.backoff.max.ms", Integer),
    ("queue.buffering.backpressure.threshold", Integer),
    ("compression.codec", Text),
    ("compression.type", Text),
    ("batch.num.messages", Integer),
    ("batch.size", Integer),
    ("delivery.report.only.error", Boolean),
    ("sticky.partitioning.linger.ms", Integer),
    ("client.dns.lookup", Text),
    ("enable.metrics.push", Boolean),
    ("request.required.acks", Integer),
    ("acks", Integer),
    ("request.timeout.ms", Integer),
    ("message.timeout.ms", Integer),
    ("delivery.timeout.ms", Integer),
    ("queuing.strategy", Text),
    ("produce.offset.report", Boolean),
    ("partitioner", Text),
    ("compression.level", Integer),
    ("auto.commit.enable", Boolean),
    ("auto.offset.reset", Text),
    ("offset.store.path", Text),
    ("offset.store.sync.interval.ms", Integer),
    ("consume.callback.max.messages", Integer),
];

/// The type of a property librdkafka knows, if this list has it.
pub(super) fn property_type(name: &str) -> Option<PropertyType> {
    PROPERTIES
        .iter()
        .find(|(known, _)| *known == name)
        .map(|(_, kind)| *kind)
}

/// Why librdkafka refuses `property = value`, or `None` when it takes it. Each property
/// is tried on a fresh configuration of its own, so that one refusal hides no other (a
/// `ClientConfig` stops at its first, in no fixed order).
///
/// Never quotes the value of a secret, nor of a property librdkafka does not know (it
/// may be a misspelt secret: `sasl.pasword`); librdkafka's own messages can quote it, so
/// those are only repeated for known properties that are not secret.
pub(super) fn refusal(property: &str, value: &str, secret: bool) -> Option<String> {
    let kind = property_type(property);
    let shown = if secret {
        "a value (not shown: secret)".to_string()
    } else {
        format!("{value:?}")
    };
    let description = match ClientConfig::new()
        .set(property, value)
        .create_native_config()
    {
        Ok(_) => {
            // librdkafka reads "30s" as 30 and "1e3" as 1: the leading digits only.
            let trimmed = value.trim();
            let numeric_start = trimmed.starts_with(|c: char| c.is_ascii_digit() || c == '-');
            if kind == Some(Integer) && numeric_start && trimmed.parse::<i64>().is_err() {
                return Some(format!(
                    "expected an integer, got {shown} (librdkafka would read only its \
                     leading digits)"
                ));
            }
            return None;
        }
        Err(KafkaError::ClientConfig(RDKafkaConfRes::RD_KAFKA_CONF_UNKNOWN, ..)) => {
            return Some(match nearest(property) {
                Some(name) => format!("unknown librdkafka property (did you mean `{name}`?)"),
                None => "unknown librdkafka property".to_string(),
            });
        }
        Err(KafkaError::ClientConfig(_, description, ..)) => description,
        Err(KafkaError::Nul(_)) => return Some("must not contain a NUL character".into()),
        Err(other) => other.to_string(),
    };
    let integer = value.trim().parse::<i64>().is_ok();
    let number = value.trim().parse::<f64>().is_ok();
    Some(match kind {
        // "1e3" too: librdkafka reads 1 and then reports that 1 is out of range.
        Some(Integer) if !integer => format!("expected an integer, got {shown}"),
        Some(Float) if !number => format!("expected a number, got {shown}"),
        Some(Boolean) => format!("expected true or false, got {shown}"),
        _ if secret => "librdkafka refuses the value (not shown: secret)".to_string(),
        _ => format!("librdkafka refuses it: {}", description.trim()),
    })
}

/// The known property a misspelt name most likely meant.
pub(super) fn nearest(name: &str) -> Option<&'static str> {
    super::nearest(name, PROPERTIES.iter().map(|(known, _)| *known))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn librdkafka_knows_every_listed_property_with_its_type() {
        for (name, kind) in PROPERTIES {
            let bad = match kind {
                Integer | Float => "not-a-number",
                Boolean => "maybe",
                Text => "",
            };
            let result = ClientConfig::new().set(*name, bad).create_native_config();
            match result {
                Err(KafkaError::ClientConfig(RDKafkaConfRes::RD_KAFKA_CONF_UNKNOWN, ..)) => {
                    panic!("librdkafka does not know {name}")
                }
                Ok(_) if *kind != Text => panic!("{name} took {bad:?}: not a {kind:?}"),
                _ => {}
            }
        }
    }

    #[test]
    fn every_problem_comes_with_its_own_reason() {
        let cases = [
            (
                "socket.timeout.ms",
                "abc",
                false,
                Some("expected an integer, got \"abc\""),
            ),
            ("socket.timeout.ms", "30000", false, None),
            (
                "socket.timeout.ms",
                "1e3",
                false,
                Some("expected an integer, got \"1e3\""),
            ),
            ("linger.ms", "0.5", false, None),
            (
                "linger.ms",
                "soon",
                false,
                Some("expected a number, got \"soon\""),
            ),
            (
                "socket.timeout.ms",
                "30s",
                false,
                Some(
                    "expected an integer, got \"30s\" (librdkafka would read only its \
                     leading digits)",
                ),
            ),
            (
                "socket.timeout.ms",
                "5",
                false,
                Some(
                    "librdkafka refuses it: Configuration property \"socket.timeout.ms\" \
                     value 5 is outside allowed range 10..300000",
                ),
            ),
            // Named values of integer properties are librdkafka's to read.
            ("acks", "all", false, None),
            (
                "enable.idempotence",
                "maybe",
                false,
                Some("expected true or false, got \"maybe\""),
            ),
            (
                "compression.codec",
                "zip",
                false,
                Some(
                    "librdkafka refuses it: Invalid value \"zip\" for configuration property \
                     \"compression.codec\"",
                ),
            ),
            (
                "sasl.pasword",
                "hunter2",
                true,
                Some("unknown librdkafka property (did you mean `sasl.password`?)"),
            ),
            (
                "no.such.thing",
                "x",
                false,
                Some("unknown librdkafka property"),
            ),
        ];
        for (property, value, secret, expected) in cases {
            assert_eq!(
                refusal(property, value, secret).as_deref(),
                expected,
                "{property} = {value:?}"
            );
        }
    }
}
