//! The layout descriptor on the writer's side: written at start when Redis has none, and
//! compared with the settings when it has one (see [`metacache_contract::layout`] for why
//! a mismatch must stop the daemon).

use std::collections::HashMap;
use std::sync::LazyLock;

use redis::aio::ConnectionLike;
use redis::Script;

use super::keys::KeyLayout;
use metacache_contract::scripts::CLAIM_LAYOUT_LUA;
use metacache_contract::LayoutDescriptor;

static CLAIM_LAYOUT: LazyLock<Script> = LazyLock::new(|| Script::new(CLAIM_LAYOUT_LUA));

/// What Redis held when the daemon claimed the layout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claimed {
    /// No descriptor: this daemon's was written.
    Written,
    /// The stored descriptor is this daemon's layout.
    Agrees,
}

/// Writes `keys`' descriptor if none is stored; an `Err(reason)` inside when the stored one
/// describes another layout or is damaged, which the daemon must not write over.
pub async fn claim<C: ConnectionLike>(
    conn: &mut C,
    keys: &KeyLayout,
) -> redis::RedisResult<Result<Claimed, String>> {
    let ours = LayoutDescriptor::of(keys);
    let mut invocation = CLAIM_LAYOUT.key(keys.layout());
    for (field, value) in ours.fields() {
        invocation.arg(field).arg(value);
    }
    let stored: Vec<String> = invocation.invoke_async(conn).await?;
    Ok(judge(&ours, keys.layout(), &stored))
}

/// Writes `keys`' descriptor again after Redis lost its data, without a script (so the
/// guard's script counts stay the guard's): each field only where it is missing
/// (`HSETNX`), then the hash as it stands. Two writers racing here each set fields only
/// where none is, and both read back the same hash.
pub async fn reclaim<C: ConnectionLike>(
    conn: &mut C,
    keys: &KeyLayout,
) -> redis::RedisResult<Result<Claimed, String>> {
    let ours = LayoutDescriptor::of(keys);
    let mut pipe = redis::pipe();
    for (field, value) in ours.fields() {
        pipe.cmd("HSETNX")
            .arg(keys.layout())
            .arg(field)
            .arg(value)
            .ignore();
    }
    pipe.cmd("HGETALL").arg(keys.layout());
    let (stored,): (Vec<String>,) = pipe.query_async(conn).await?;
    Ok(judge(&ours, keys.layout(), &stored).map(|_| Claimed::Written))
}

/// The layout of the cache under `prefix`, as its descriptor says (the original one,
/// one index key, when there is none); `Err(reason)` inside for a damaged descriptor.
pub async fn stored<C: ConnectionLike>(
    conn: &mut C,
    prefix: &str,
) -> redis::RedisResult<Result<KeyLayout, String>> {
    let key = KeyLayout::new(prefix).layout().to_owned();
    let fields: HashMap<String, String> = redis::cmd("HGETALL").arg(&key).query_async(conn).await?;
    Ok(match LayoutDescriptor::from_fields(&fields) {
        Ok(Some(d)) => Ok(KeyLayout::with_index_shards(prefix, d.index_shards)),
        Ok(None) => Ok(KeyLayout::new(prefix)),
        Err(damaged) => Err(format!("{key}: {damaged}")),
    })
}

/// Compares our descriptor with the flat field/value list the claim returned. Pure.
pub fn judge(ours: &LayoutDescriptor, key: &str, stored: &[String]) -> Result<Claimed, String> {
    let fields: HashMap<String, String> = stored
        .chunks(2)
        .filter_map(|pair| match pair {
            [field, value] => Some((field.clone(), value.clone())),
            _ => None,
        })
        .collect();
    match LayoutDescriptor::from_fields(&fields) {
        Ok(None) => Ok(Claimed::Written),
        Ok(Some(stored)) => match ours.disagreement(&stored) {
            None => Ok(Claimed::Agrees),
            Some(why) => Err(format!("{key}: {why}")),
        },
        Err(damaged) => Err(format!(
            "{key}: {damaged}; repair it with `metacache reindex`"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flat(d: &LayoutDescriptor) -> Vec<String> {
        d.fields()
            .into_iter()
            .flat_map(|(k, v)| [k.to_owned(), v])
            .collect()
    }

    #[test]
    fn the_claim_is_judged_against_the_settings() {
        let keys = KeyLayout::with_index_shards("p:", 16);
        let ours = LayoutDescriptor::of(&keys);
        assert_eq!(judge(&ours, keys.layout(), &[]), Ok(Claimed::Written));
        assert_eq!(
            judge(&ours, keys.layout(), &flat(&ours)),
            Ok(Claimed::Agrees)
        );
        let other = LayoutDescriptor::of(&KeyLayout::new("p:"));
        let why = judge(&ours, keys.layout(), &flat(&other)).unwrap_err();
        assert!(why.starts_with("p:metacache:layout: "), "{why}");
        assert!(
            why.contains("index_shards 1 (configured devices.index_shards = 16)"),
            "{why}"
        );
        let damaged = judge(&ours, keys.layout(), &["version".into(), "1".into()]).unwrap_err();
        assert!(damaged.contains("`index_shards`"), "{damaged}");
    }
}
