//! The Redis key layout: the contract between metacache and every reader. It lives here and
//! only here, so the writer and the read side can never disagree on a key.
//!
//! | key | type |
//! | --- | --- |
//! | `{prefix}device:{device_id}` | string: the normalized device JSON |
//! | `{prefix}devices` | sorted set: device id scored by `last_updated` (epoch ms), with one index shard |
//! | `{prefix}devices:{k}` | the same, shard `k` of `devices.index_shards` (see [`index_shard`]) |
//! | `{prefix}{namespace}#metric_names` | set of metric names |
//! | `{prefix}metric_namespaces` | set of namespaces |
//! | `{prefix}metacache:writers` | hash: one field per running writer (its liveness marker) |
//! | `{prefix}metacache:layout` | hash: the layout descriptor (see [`crate::layout`]) |
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

/// The most index shards a layout may have: far more than there are Redis Cluster
/// primaries in practice, and few enough that a reader asking every shard stays cheap.
pub const MAX_INDEX_SHARDS: u32 = 1024;

/// The index shard that holds `device_id` among `shards`: CRC-16/XMODEM (the checksum
/// Redis Cluster hashes keys with; Python's `binascii.crc_hqx(data, 0)`) of the id's
/// UTF-8 bytes, modulo `shards`. Every reader in every language computes the same, so the
/// function is part of the contract: README "Index shards" has test vectors.
///
/// ```
/// use metacache_contract::keys::index_shard;
/// assert_eq!(index_shard("dev-42", 1), 0);
/// assert_eq!(index_shard("123456789", 65536), 0x31C3); // the CRC's check value
/// ```
pub fn index_shard(device_id: &str, shards: u32) -> u32 {
    let crc = crc16::State::<crc16::XMODEM>::calculate(device_id.as_bytes());
    u32::from(crc) % shards.max(1)
}

/// The Redis Cluster hash slot of a key (0..16384): CRC-16/XMODEM of the key, or of the
/// text between its first `{` and the next `}` when that is not empty (a hash tag), mod
/// 16384. Redis's own rule; the writer uses it to send each command to the node that owns
/// its key, and `devices:{k}` puts each index shard where its tag says.
pub fn hash_slot(key: &[u8]) -> u16 {
    let tagged = key.iter().position(|b| *b == b'{').and_then(|open| {
        let rest = &key[open + 1..];
        let close = rest.iter().position(|b| *b == b'}')?;
        (close > 0).then(|| &rest[..close])
    });
    crc16::State::<crc16::XMODEM>::calculate(tagged.unwrap_or(key)) % 16384
}

/// Builds the keys under one prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyLayout {
    prefix: String,
    /// The device index: `devices` alone with one shard, else `devices:{0}` … `devices:{N-1}`.
    index: Vec<String>,
    metric_namespaces: String,
    writers: String,
    layout: String,
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
    /// The layout under `prefix` with one index key, `devices`.
    pub fn new(prefix: &str) -> Self {
        KeyLayout::with_index_shards(prefix, 1)
    }

    /// The layout under `prefix` with the device index split over `shards` sorted sets
    /// (clamped to 1..=[`MAX_INDEX_SHARDS`]). One shard keeps the single `devices` key;
    /// more are `devices:{0}` … `devices:{N-1}`, whose braces are Redis Cluster hash tags,
    /// so the shards spread over the cluster's nodes instead of piling on one.
    pub fn with_index_shards(prefix: &str, shards: u32) -> Self {
        let shards = shards.clamp(1, MAX_INDEX_SHARDS);
        let index = if shards == 1 {
            vec![format!("{prefix}devices")]
        } else {
            (0..shards)
                .map(|k| format!("{prefix}devices:{{{k}}}"))
                .collect()
        };
        KeyLayout {
            prefix: prefix.to_owned(),
            index,
            metric_namespaces: format!("{prefix}metric_namespaces"),
            writers: format!("{prefix}metacache:writers"),
            layout: format!("{prefix}metacache:layout"),
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

    /// How many sorted sets the device index is split over.
    pub fn index_shards(&self) -> u32 {
        self.index.len() as u32
    }

    /// Every index key: together they hold every cached device id, each in exactly one,
    /// scored by `last_updated` in epoch ms.
    pub fn index_keys(&self) -> &[String] {
        &self.index
    }

    /// The index key that holds `device_id` ([`index_shard`]).
    pub fn index_key(&self, device_id: &str) -> &str {
        if self.index.len() == 1 {
            return &self.index[0];
        }
        let k = index_shard(device_id, self.index_shards()) as usize;
        &self.index[k]
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

    /// `metacache:layout`: the layout descriptor the daemon writes at start, which every
    /// reader reads instead of assuming (see [`crate::layout`]).
    pub fn layout(&self) -> &str {
        &self.layout
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Slots from Redis itself (`CLUSTER KEYSLOT`, Redis 7.0.15).
    #[test]
    fn hash_slots_are_redis_own() {
        assert_eq!(hash_slot(b"foo"), 12182);
        assert_eq!(hash_slot(b"123456789"), 0x31C3);
        assert_eq!(hash_slot(b"{user1000}.following"), hash_slot(b"user1000"));
        // An empty tag does not count: the whole key is hashed.
        assert_eq!(hash_slot(b"foo{}{bar}"), 8363);
        assert_eq!(hash_slot(b"foo{{bar}}zap"), hash_slot(b"{bar"));
        assert_eq!(hash_slot(b"devices:{9}"), hash_slot(b"9"));
    }

    #[test]
    fn layout_without_prefix_matches_the_documented_keys() {
        let keys = KeyLayout::new("");
        assert_eq!(keys.device("dev-42"), "device:dev-42");
        let mut written = Vec::new();
        keys.write_device_key("dev-42", &mut written).unwrap();
        assert_eq!(written, b"device:dev-42");
        assert_eq!(keys.index_keys(), ["devices"]);
        assert_eq!(keys.index_key("dev-42"), "devices");
        assert_eq!(keys.layout(), "metacache:layout");
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
        assert_eq!(keys.index_keys(), ["mc:devices"]);
        assert_eq!(keys.layout(), "mc:metacache:layout");
        assert_eq!(keys.metric_names("ns#1:x"), "mc:ns#1:x#metric_names");
        assert_eq!(keys.metric_namespaces(), "mc:metric_namespaces");
    }

    #[test]
    fn sharded_index_keys_carry_hash_tags_and_every_device_lands_in_its_shard() {
        let keys = KeyLayout::with_index_shards("mc:", 16);
        assert_eq!(keys.index_shards(), 16);
        assert_eq!(keys.index_keys()[0], "mc:devices:{0}");
        assert_eq!(keys.index_keys()[15], "mc:devices:{15}");
        // The README's test vectors.
        for (id, shards, shard) in [
            ("dev-42", 16, 9),
            ("dev-43", 16, 8),
            ("sensor/7", 16, 3),
            ("", 16, 0),
            ("dev-42", 3, 2),
            ("température", 16, 0),
        ] {
            assert_eq!(index_shard(id, shards), shard, "{id} of {shards}");
        }
        assert_eq!(keys.index_key("dev-42"), "mc:devices:{9}");
        // Out-of-range counts are clamped, never a panic or an empty index.
        assert_eq!(
            KeyLayout::with_index_shards("", 0).index_keys(),
            ["devices"]
        );
        assert_eq!(
            KeyLayout::with_index_shards("", u32::MAX).index_shards(),
            MAX_INDEX_SHARDS
        );
    }
}
