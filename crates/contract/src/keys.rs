//! The Redis key layout: the contract between metacache and every reader. It lives here and
//! only here, so the writer and the read side can never disagree on a key.
//!
//! | key | type |
//! | --- | --- |
//! | `{prefix}device:{device_id}` | string: the normalized device JSON |
//! | `{prefix}devices` | sorted set: device id scored by `last_updated` (epoch ms) |
//! | `{prefix}{namespace}#metric_names` | set of metric names |
//! | `{prefix}metric_namespaces` | set of namespaces |
//! | `{prefix}metacache:writers` | hash: one field per running writer (its liveness marker) |
//!
//! Every command metacache sends touches exactly one of these keys, so the layout works on
//! Redis Cluster without hash tags.
//!
//! No two of these keys can be equal, whatever the ids and the prefix: every device key
//! starts with `device:`; every catalog key ends with `#metric_names`; the three fixed keys
//! do neither. So a device key could only equal a catalog key if the namespace itself
//! started with `device:` (a shorter namespace puts its `#` where `device:` has a letter),
//! and the decoder refuses such namespaces ([`reserved_namespace`]). `metacache:` is
//! refused the same way, so the daemon's own keys can grow without meeting a namespace.

/// Key spaces a namespace may not start with: a namespace `device:x` would make its
/// catalog key `device:x#metric_names`, which is the key of device `x#metric_names`.
pub const RESERVED_NAMESPACE_PREFIXES: [&str; 2] = ["device:", "metacache:"];

/// The reserved key space `namespace` starts with, if any.
pub fn reserved_namespace(namespace: &str) -> Option<&'static str> {
    RESERVED_NAMESPACE_PREFIXES
        .into_iter()
        .find(|p| namespace.starts_with(p))
}

/// Builds the keys under one prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyLayout {
    prefix: String,
    devices: String,
    metric_namespaces: String,
    writers: String,
}

/// `text` as a literal inside a Redis glob pattern (`SCAN MATCH`, ACL key patterns):
/// `*`, `?`, `[`, `]` and `\` escaped, so a prefix such as `app[1]:` matches only itself.
pub fn glob_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

impl KeyLayout {
    pub fn new(prefix: &str) -> Self {
        KeyLayout {
            prefix: prefix.to_owned(),
            devices: format!("{prefix}devices"),
            metric_namespaces: format!("{prefix}metric_namespaces"),
            writers: format!("{prefix}metacache:writers"),
        }
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// `device:{device_id}`: the device's normalized JSON.
    pub fn device(&self, device_id: &str) -> String {
        let mut key = String::with_capacity(self.prefix.len() + 7 + device_id.len());
        key.push_str(&self.prefix);
        key.push_str("device:");
        key.push_str(device_id);
        key
    }

    /// Writes [`device`](Self::device)'s key into `out`, for callers that build commands
    /// in place.
    pub fn write_device_key(
        &self,
        device_id: &str,
        out: &mut impl std::io::Write,
    ) -> std::io::Result<()> {
        out.write_all(self.prefix.as_bytes())?;
        out.write_all(b"device:")?;
        out.write_all(device_id.as_bytes())
    }

    /// `devices`: every cached device id, scored by `last_updated` in epoch ms.
    pub fn devices(&self) -> &str {
        &self.devices
    }

    /// `{namespace}#metric_names`: the valid metric names of one namespace.
    pub fn metric_names(&self, namespace: &str) -> String {
        let mut key = String::with_capacity(self.prefix.len() + namespace.len() + 13);
        key.push_str(&self.prefix);
        key.push_str(namespace);
        key.push_str("#metric_names");
        key
    }

    /// `metric_namespaces`: every namespace that has been written.
    pub fn metric_namespaces(&self) -> &str {
        &self.metric_namespaces
    }

    /// `metacache:writers`: each running writer sets its own field at the end of every
    /// pipeline. The field gone means Redis lost data since the previous pipeline (it
    /// restarted empty, was flushed, or failed over to a node that never had the field),
    /// so whatever the writer remembered about the keys is void. No reader needs it.
    pub fn writers(&self) -> &str {
        &self.writers
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_without_prefix_matches_the_documented_keys() {
        let keys = KeyLayout::new("");
        assert_eq!(keys.device("dev-42"), "device:dev-42");
        let mut written = Vec::new();
        keys.write_device_key("dev-42", &mut written).unwrap();
        assert_eq!(written, b"device:dev-42");
        assert_eq!(keys.devices(), "devices");
        assert_eq!(keys.metric_names("billing"), "billing#metric_names");
        assert_eq!(keys.metric_namespaces(), "metric_namespaces");
    }

    #[test]
    fn namespaces_in_the_device_or_daemon_key_space_are_reserved() {
        assert_eq!(reserved_namespace("device:h"), Some("device:"));
        assert_eq!(reserved_namespace("metacache:writers"), Some("metacache:"));
        for ok in [
            "device",
            "devices",
            "dev",
            "Device:x",
            "x:device:y",
            "metacache",
        ] {
            assert_eq!(reserved_namespace(ok), None, "{ok}");
        }
    }

    #[test]
    fn prefix_goes_in_front_of_every_key() {
        let keys = KeyLayout::new("mc:");
        assert_eq!(keys.device("a b"), "mc:device:a b");
        assert_eq!(keys.devices(), "mc:devices");
        assert_eq!(keys.metric_names("ns#1:x"), "mc:ns#1:x#metric_names");
        assert_eq!(keys.metric_namespaces(), "mc:metric_namespaces");
    }
}
