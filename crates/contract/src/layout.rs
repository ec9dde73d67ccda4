//! The layout descriptor: a small hash under `{prefix}metacache:layout` that says how the
//! cache under that prefix is laid out, so that readers find out instead of assuming.
//!
//! | field | meaning |
//! | --- | --- |
//! | `version` | the layout version, [`LAYOUT_VERSION`] |
//! | `key_prefix` | the prefix every key carries (the descriptor's own included) |
//! | `index_shards` | how many sorted sets the device index is split over |
//!
//! The daemon writes it at start if it is absent and refuses to start if it holds
//! something else than its settings: two daemons with different shard counts would each
//! index a device in another shard, and readers would see it twice or not at all.
//! `metacache reindex` is the way to change it. A reader that finds no descriptor reads
//! the original layout (one index key), which is what a cache written before the
//! descriptor existed holds.

use std::collections::HashMap;

use crate::keys::{KeyLayout, MAX_INDEX_SHARDS};

/// The version of the layout this crate reads and writes.
pub const LAYOUT_VERSION: u32 = 1;

/// What `metacache:layout` holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayoutDescriptor {
    pub version: u32,
    pub key_prefix: String,
    pub index_shards: u32,
}

impl LayoutDescriptor {
    /// The descriptor of `keys`.
    pub fn of(keys: &KeyLayout) -> Self {
        LayoutDescriptor {
            version: LAYOUT_VERSION,
            key_prefix: keys.prefix().to_owned(),
            index_shards: keys.index_shards(),
        }
    }

    /// The hash fields, in the order they are written.
    pub fn fields(&self) -> [(&'static str, String); 3] {
        [
            ("version", self.version.to_string()),
            ("key_prefix", self.key_prefix.clone()),
            ("index_shards", self.index_shards.to_string()),
        ]
    }

    /// Reads the hash (as `HGETALL` returns it); `None` for an empty hash (no
    /// descriptor). A field that is missing or out of range is an error naming it, so a
    /// reader never guesses a layout from a damaged descriptor.
    pub fn from_fields(fields: &HashMap<String, String>) -> Result<Option<Self>, String> {
        if fields.is_empty() {
            return Ok(None);
        }
        let field = |name: &str| {
            fields
                .get(name)
                .ok_or_else(|| format!("the layout descriptor has no `{name}` field"))
        };
        let number = |name: &str| -> Result<u32, String> {
            let raw = field(name)?;
            raw.trim().parse::<u32>().map_err(|_| {
                format!("the layout descriptor's `{name}` is not a whole number: {raw:?}")
            })
        };
        let version = number("version")?;
        if version != LAYOUT_VERSION {
            return Err(format!(
                "the layout descriptor has version {version}; this build reads version {LAYOUT_VERSION} (upgrade the reader)"
            ));
        }
        let index_shards = number("index_shards")?;
        if !(1..=MAX_INDEX_SHARDS).contains(&index_shards) {
            return Err(format!(
                "the layout descriptor's `index_shards` is {index_shards}, outside 1..={MAX_INDEX_SHARDS}"
            ));
        }
        Ok(Some(LayoutDescriptor {
            version,
            key_prefix: field("key_prefix")?.clone(),
            index_shards,
        }))
    }

    /// The key layout this descriptor describes.
    pub fn keys(&self) -> KeyLayout {
        KeyLayout::with_index_shards(&self.key_prefix, self.index_shards)
    }

    /// Why a daemon configured as `self` must not write the cache described by
    /// `stored`, if it must not.
    pub fn disagreement(&self, stored: &LayoutDescriptor) -> Option<String> {
        let mut differences = Vec::new();
        if self.key_prefix != stored.key_prefix {
            differences.push(format!(
                "key_prefix {:?} (configured {:?})",
                stored.key_prefix, self.key_prefix
            ));
        }
        if self.index_shards != stored.index_shards {
            differences.push(format!(
                "index_shards {} (configured devices.index_shards = {})",
                stored.index_shards, self.index_shards
            ));
        }
        if differences.is_empty() {
            return None;
        }
        Some(format!(
            "the cache's layout descriptor holds {}: a writer with another layout would split the device index; start with the stored settings, or stop every writer and run `metacache reindex` to change the layout",
            differences.join(" and ")
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn a_descriptor_round_trips_through_its_hash_fields() {
        let written = LayoutDescriptor::of(&KeyLayout::with_index_shards("mc:", 16));
        let fields: HashMap<String, String> = written
            .fields()
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect();
        let read = LayoutDescriptor::from_fields(&fields).unwrap().unwrap();
        assert_eq!(read, written);
        assert_eq!(read.keys().index_keys()[3], "mc:devices:{3}");
        assert_eq!(LayoutDescriptor::from_fields(&HashMap::new()), Ok(None));
    }

    #[test]
    fn a_damaged_descriptor_names_the_field() {
        for (fields, says) in [
            (
                map(&[("version", "1"), ("key_prefix", "")]),
                "`index_shards`",
            ),
            (
                map(&[("version", "1"), ("key_prefix", ""), ("index_shards", "x")]),
                "`index_shards` is not a whole number",
            ),
            (
                map(&[("version", "1"), ("key_prefix", ""), ("index_shards", "0")]),
                "outside 1..=1024",
            ),
            (
                map(&[("version", "2"), ("key_prefix", ""), ("index_shards", "1")]),
                "version 2",
            ),
            (
                map(&[("version", "1"), ("index_shards", "1")]),
                "`key_prefix`",
            ),
        ] {
            let error = LayoutDescriptor::from_fields(&fields).unwrap_err();
            assert!(error.contains(says), "{error}");
        }
    }

    #[test]
    fn a_daemon_with_another_shard_count_or_prefix_is_told_why_it_may_not_write() {
        let stored = LayoutDescriptor::of(&KeyLayout::with_index_shards("", 16));
        let same = LayoutDescriptor::of(&KeyLayout::with_index_shards("", 16));
        assert_eq!(same.disagreement(&stored), None);
        let other = LayoutDescriptor::of(&KeyLayout::new(""));
        let why = other.disagreement(&stored).unwrap();
        assert!(
            why.contains("index_shards 16 (configured devices.index_shards = 1)"),
            "{why}"
        );
        assert!(why.contains("metacache reindex"), "{why}");
    }
}
