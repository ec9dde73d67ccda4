//! Which primary owns which hash slot, read from `CLUSTER SLOTS` (Redis 3 to 7; `CLUSTER
//! SHARDS` exists only from 7.0 and metacache supports 6.2). Pure: parsing and look-ups.

use redis::Value;

/// Hash slots in a Redis Cluster.
pub const SLOTS: usize = 16384;

/// A slot no primary serves.
const UNSERVED: u16 = u16::MAX;

/// The primaries and the slots each serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotMap {
    /// `host:port` of each primary, in the order first seen.
    primaries: Vec<String>,
    /// For each slot, its primary's index in `primaries`, or [`UNSERVED`].
    owner: Vec<u16>,
}

impl SlotMap {
    /// The map a `CLUSTER SLOTS` reply describes. A primary that announces no host (an
    /// empty string or `?`, which Redis sends when the node does not know its own address)
    /// is taken to be `asked`, the node that answered.
    pub fn from_cluster_slots(reply: &Value, asked: &str) -> Result<SlotMap, String> {
        let Value::Array(ranges) = reply else {
            return Err(format!("CLUSTER SLOTS: expected an array, got {reply:?}"));
        };
        let mut map = SlotMap {
            primaries: Vec::new(),
            owner: vec![UNSERVED; SLOTS],
        };
        for range in ranges {
            let Value::Array(fields) = range else {
                return Err(format!("CLUSTER SLOTS: a range is not an array: {range:?}"));
            };
            let (start, end) = match (fields.first().and_then(int), fields.get(1).and_then(int)) {
                (Some(s), Some(e)) if s <= e && (e as usize) < SLOTS => (s as usize, e as usize),
                _ => {
                    return Err(format!(
                        "CLUSTER SLOTS: a range without valid bounds: {fields:?}"
                    ))
                }
            };
            let address = match fields.get(2) {
                Some(Value::Array(node)) => node_address(node, asked)?,
                other => {
                    return Err(format!(
                        "CLUSTER SLOTS: slots {start}-{end} have no primary: {other:?}"
                    ))
                }
            };
            let index = match map.primaries.iter().position(|p| *p == address) {
                Some(i) => i,
                None => {
                    map.primaries.push(address);
                    map.primaries.len() - 1
                }
            };
            map.owner[start..=end].fill(index as u16);
        }
        if map.primaries.is_empty() {
            return Err("CLUSTER SLOTS: no slot is served (is the cluster created?)".into());
        }
        Ok(map)
    }

    /// The primary that serves `slot`, as `host:port`; `None` while no primary does.
    pub fn owner(&self, slot: u16) -> Option<&str> {
        let index = *self.owner.get(slot as usize)?;
        self.primaries.get(index as usize).map(String::as_str)
    }

    /// The index of the primary that serves `slot` in [`primaries`](Self::primaries).
    pub fn owner_index(&self, slot: u16) -> Option<usize> {
        match self.owner.get(slot as usize) {
            Some(&UNSERVED) | None => None,
            Some(&i) => Some(i as usize),
        }
    }

    /// Every primary that serves a slot, as `host:port`.
    pub fn primaries(&self) -> &[String] {
        &self.primaries
    }

    /// Slots no primary serves: a cluster answers `CLUSTERDOWN` for them.
    pub fn unserved(&self) -> usize {
        self.owner.iter().filter(|o| **o == UNSERVED).count()
    }
}

fn int(v: &Value) -> Option<i64> {
    match v {
        Value::Int(i) => Some(*i),
        _ => None,
    }
}

fn node_address(node: &[Value], asked: &str) -> Result<String, String> {
    let host = match node.first() {
        Some(Value::BulkString(b)) => String::from_utf8_lossy(b).into_owned(),
        Some(Value::SimpleString(s)) => s.clone(),
        Some(Value::Nil) | None => String::new(),
        other => return Err(format!("CLUSTER SLOTS: a node's host is {other:?}")),
    };
    let port = node
        .get(1)
        .and_then(int)
        .ok_or_else(|| format!("CLUSTER SLOTS: a node without a port: {node:?}"))?;
    if host.is_empty() || host == "?" {
        let asked_host = asked.rsplit_once(':').map_or(asked, |(h, _)| h);
        return Ok(format!("{asked_host}:{port}"));
    }
    if host.contains(':') && !host.starts_with('[') {
        // An IPv6 address: bracketed, as URLs want it.
        return Ok(format!("[{host}]:{port}"));
    }
    Ok(format!("{host}:{port}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    fn range(start: i64, end: i64, host: &str, port: i64) -> Value {
        Value::Array(vec![
            Value::Int(start),
            Value::Int(end),
            Value::Array(vec![bulk(host), Value::Int(port), bulk("id")]),
            // A replica: never written to.
            Value::Array(vec![bulk(host), Value::Int(port + 100), bulk("id2")]),
        ])
    }

    #[test]
    fn each_slot_goes_to_the_primary_of_its_range() {
        let reply = Value::Array(vec![
            range(0, 5460, "10.0.0.1", 7000),
            range(5461, 10922, "10.0.0.2", 7000),
            range(10923, 16383, "10.0.0.3", 7000),
            // A second range of the first primary (after a reshard).
            range(100, 100, "10.0.0.2", 7000),
        ]);
        let map = SlotMap::from_cluster_slots(&reply, "seed:1").unwrap();
        assert_eq!(
            map.primaries(),
            ["10.0.0.1:7000", "10.0.0.2:7000", "10.0.0.3:7000"]
        );
        assert_eq!(map.owner(0), Some("10.0.0.1:7000"));
        assert_eq!(map.owner(100), Some("10.0.0.2:7000"));
        assert_eq!(map.owner(5461), Some("10.0.0.2:7000"));
        assert_eq!(map.owner(16383), Some("10.0.0.3:7000"));
        assert_eq!(map.unserved(), 0);
        assert_eq!(map.owner(16384), None);
    }

    #[test]
    fn unserved_slots_and_unknown_hosts() {
        let reply = Value::Array(vec![range(0, 99, "", 7001), range(200, 299, "::1", 7002)]);
        let map = SlotMap::from_cluster_slots(&reply, "127.0.0.1:7000").unwrap();
        assert_eq!(map.owner(5), Some("127.0.0.1:7001"));
        assert_eq!(map.owner(250), Some("[::1]:7002"));
        assert_eq!(map.owner(150), None);
        assert_eq!(map.unserved(), SLOTS - 200);
    }

    #[test]
    fn malformed_replies_are_errors_not_maps() {
        assert!(SlotMap::from_cluster_slots(&Value::Array(vec![]), "a:1").is_err());
        assert!(SlotMap::from_cluster_slots(&Value::Nil, "a:1").is_err());
        let backwards = Value::Array(vec![range(10, 5, "h", 1)]);
        assert!(SlotMap::from_cluster_slots(&backwards, "a:1").is_err());
        let too_far = Value::Array(vec![range(0, 16384, "h", 1)]);
        assert!(SlotMap::from_cluster_slots(&too_far, "a:1").is_err());
    }
}
