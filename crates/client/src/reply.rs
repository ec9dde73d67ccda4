//! Reading Redis replies by hand, so that anything unexpected under a metacache key becomes
//! a [`ClientError::Corrupt`] naming that key instead of a generic type error (or a panic).
//! Both RESP2 and RESP3 reply shapes are accepted.

use redis::Value;

use super::error::ClientError;

/// A per-command reply: an error reply about `key` becomes the matching [`ClientError`].
pub(crate) fn ok(key: &str, value: Value) -> Result<Value, ClientError> {
    match value {
        Value::ServerError(e) => Err(ClientError::at_key(key, e.into())),
        Value::Attribute { data, .. } => ok(key, *data),
        other => Ok(other),
    }
}

/// An integer reply (`ZCARD`, `SCARD`, `SISMEMBER`).
pub(crate) fn int(key: &str, value: Value) -> Result<i64, ClientError> {
    match ok(key, value)? {
        Value::Int(n) => Ok(n),
        Value::Boolean(b) => Ok(i64::from(b)),
        Value::BulkString(b) => std::str::from_utf8(&b)
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| ClientError::Redis(format!("expected an integer reply for {key}"))),
        other => Err(ClientError::Redis(format!(
            "expected an integer reply for {key}, got {other:?}"
        ))),
    }
}

/// A string value or nil (`GET`, one `MGET` slot).
pub(crate) fn bytes_or_nil(key: &str, value: Value) -> Result<Option<Vec<u8>>, ClientError> {
    match ok(key, value)? {
        Value::Nil => Ok(None),
        Value::BulkString(b) => Ok(Some(b)),
        Value::SimpleString(s) => Ok(Some(s.into_bytes())),
        Value::VerbatimString { text, .. } => Ok(Some(text.into_bytes())),
        Value::Okay => Ok(Some(b"OK".to_vec())),
        other => Err(ClientError::corrupt(
            key,
            format!("expected a string value, got {other:?}"),
        )),
    }
}

/// An array (or RESP3 set) of replies.
pub(crate) fn items(key: &str, value: Value) -> Result<Vec<Value>, ClientError> {
    match ok(key, value)? {
        Value::Array(items) | Value::Set(items) => Ok(items),
        Value::Nil => Ok(Vec::new()),
        other => Err(ClientError::Redis(format!(
            "expected an array reply for {key}, got {other:?}"
        ))),
    }
}

/// A member of a set or sorted set under `key`, as text.
pub(crate) fn member(key: &str, value: Value) -> Result<String, ClientError> {
    let bytes = match ok(key, value)? {
        Value::BulkString(b) => b,
        Value::SimpleString(s) => s.into_bytes(),
        Value::VerbatimString { text, .. } => text.into_bytes(),
        other => {
            return Err(ClientError::corrupt(
                key,
                format!("expected a string member, got {other:?}"),
            ))
        }
    };
    String::from_utf8(bytes).map_err(|e| {
        ClientError::corrupt(
            key,
            format!(
                "member is not UTF-8: {:?}",
                String::from_utf8_lossy(e.as_bytes())
            ),
        )
    })
}

/// `SMEMBERS`: every member as text.
pub(crate) fn members(key: &str, value: Value) -> Result<Vec<String>, ClientError> {
    items(key, value)?
        .into_iter()
        .map(|v| member(key, v))
        .collect()
}

/// `ZRANGE ... WITHSCORES`: `(member, score)` pairs, flat (RESP2) or nested (RESP3), with
/// the score read as whole epoch milliseconds.
pub(crate) fn scored(key: &str, value: Value) -> Result<Vec<(String, i64)>, ClientError> {
    let items = items(key, value)?;
    let nested = items.first().is_some_and(|v| matches!(v, Value::Array(_)));
    let mut pairs = Vec::with_capacity(if nested { items.len() } else { items.len() / 2 });
    if nested {
        for item in items {
            let mut pair = self::items(key, item)?.into_iter();
            match (pair.next(), pair.next(), pair.next()) {
                (Some(m), Some(s), None) => pairs.push((member(key, m)?, score(key, s)?)),
                _ => {
                    return Err(ClientError::Redis(format!(
                        "malformed WITHSCORES reply for {key}"
                    )))
                }
            }
        }
    } else {
        if items.len() % 2 != 0 {
            return Err(ClientError::Redis(format!(
                "malformed WITHSCORES reply for {key}"
            )));
        }
        let mut iter = items.into_iter();
        while let (Some(m), Some(s)) = (iter.next(), iter.next()) {
            let id = member(key, m)?;
            let ms = score(key, s)?;
            pairs.push((id, ms));
        }
    }
    Ok(pairs)
}

/// A `devices` score: `last_updated` in whole milliseconds since the epoch.
fn score(key: &str, value: Value) -> Result<i64, ClientError> {
    let f = match ok(key, value)? {
        Value::Double(f) => f,
        Value::Int(n) => return Ok(n),
        Value::BulkString(b) => std::str::from_utf8(&b)
            .ok()
            .and_then(|s| s.parse::<f64>().ok())
            .ok_or_else(|| ClientError::Redis(format!("unreadable score in {key}")))?,
        other => {
            return Err(ClientError::Redis(format!(
                "expected a score in {key}, got {other:?}"
            )))
        }
    };
    // Scores are written as integers below 2^53, so they come back exact.
    if f.is_finite() && f.fract() == 0.0 && (0.0..=9.007_199_254_740_992e15).contains(&f) {
        Ok(f as i64)
    } else {
        Err(ClientError::corrupt(
            key,
            format!("score {f} is not a time in whole epoch milliseconds"),
        ))
    }
}

/// A bulk string reply as text (`INFO`).
pub(crate) fn text(key: &str, value: Value) -> Result<String, ClientError> {
    match bytes_or_nil(key, value)? {
        Some(b) => Ok(String::from_utf8_lossy(&b).into_owned()),
        None => Ok(String::new()),
    }
}

/// A hash (`HGETALL`): a flat array of fields and values in RESP2, a map in RESP3.
pub(crate) fn hash(
    key: &str,
    value: Value,
) -> Result<std::collections::HashMap<String, String>, ClientError> {
    let pairs: Vec<(Value, Value)> = match ok(key, value)? {
        Value::Map(pairs) => pairs,
        Value::Array(flat) => {
            if flat.len() % 2 != 0 {
                return Err(ClientError::corrupt(key, "a hash reply with an odd length"));
            }
            let mut flat = flat.into_iter();
            std::iter::from_fn(|| Some((flat.next()?, flat.next()?))).collect()
        }
        Value::Nil => Vec::new(),
        other => {
            return Err(ClientError::corrupt(
                key,
                format!("expected a hash, got {other:?}"),
            ))
        }
    };
    pairs
        .into_iter()
        .map(|(field, value)| Ok((member(key, field)?, member(key, value)?)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    #[test]
    fn scores_in_both_protocols() {
        let resp2 = Value::Array(vec![bulk("a"), bulk("1795341600000"), bulk("b"), bulk("2")]);
        assert_eq!(
            scored("devices", resp2).unwrap(),
            [("a".to_owned(), 1_795_341_600_000), ("b".to_owned(), 2)]
        );
        let resp3 = Value::Array(vec![Value::Array(vec![bulk("a"), Value::Double(5.0)])]);
        assert_eq!(scored("devices", resp3).unwrap(), [("a".to_owned(), 5)]);
    }

    #[test]
    fn odd_scores_and_members_are_corrupt_entries() {
        for bad in ["1.5", "-1", "inf"] {
            let reply = Value::Array(vec![bulk("a"), bulk(bad)]);
            assert!(
                matches!(scored("devices", reply), Err(ClientError::Corrupt { key, .. }) if key == "devices"),
                "{bad}"
            );
        }
        let reply = Value::Array(vec![Value::BulkString(vec![0xff]), bulk("1")]);
        assert!(matches!(
            scored("devices", reply),
            Err(ClientError::Corrupt { .. })
        ));
    }
}
