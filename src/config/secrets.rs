//! Which settings are secrets, so that nothing shows their values.

// ---------------------------------------------------------------------------------------
// Secrets

/// librdkafka properties whose values are credentials or private keys.
pub(super) fn is_secret_property(name: &str) -> bool {
    const MARKERS: &[&str] = &[
        "password",
        "secret",
        "passphrase",
        "sasl.jaas",
        "sasl.oauthbearer.config",
        "key.pem",
        "private.key",
    ];
    let name = name.to_ascii_lowercase();
    MARKERS.iter().any(|m| name.contains(m))
}

pub(super) fn is_secret_field(field: &str) -> bool {
    match field.strip_prefix("kafka.client.") {
        Some(property) => is_secret_property(property),
        None => matches!(
            field,
            "redis.password" | "redis.url" | "redis.sentinel_password" | "redis.nodes"
        ),
    }
}
