//! The client's errors: few enough kinds that a caller can act on each (retry, alert,
//! fix the data, fix the call), with the detail in the message.

use redis::{ErrorKind, RedisError};

/// What can go wrong when reading the cache.
///
/// Nothing the server sends makes the client panic: a value that is not what metacache
/// writes comes back as [`ClientError::Corrupt`] naming the key.
///
/// ```
/// use metacache_client::ClientError;
///
/// let e = ClientError::Corrupt { key: "device:dev-42".into(), reason: "not JSON".into() };
/// assert_eq!(e.to_string(), "corrupt entry under key \"device:dev-42\": not JSON");
/// assert!(!e.is_transient());
/// assert!(ClientError::Timeout("PING".into()).is_transient());
/// ```
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClientError {
    /// Redis could not be reached, refused the credentials, or dropped the connection.
    /// The connection manager reconnects by itself; a later call may succeed.
    #[error("cannot reach Redis: {0}")]
    Connection(String),
    /// Redis did not answer within `redis.response_timeout_ms` (or did not accept the
    /// connection within `redis.connect_timeout_ms`).
    #[error("Redis did not answer in time: {0}")]
    Timeout(String),
    /// Redis answered with an error, e.g. a command disabled by ACL; the server's text.
    #[error("Redis error: {0}")]
    Redis(String),
    /// A key metacache owns holds something metacache did not write: another type, JSON
    /// that is not a device, an index score that is not epoch milliseconds, text that is
    /// not UTF-8.
    #[error("corrupt entry under key {key:?}: {reason}")]
    Corrupt {
        /// The full Redis key, prefix included.
        key: String,
        /// What is wrong with the value.
        reason: String,
    },
    /// The call itself cannot work: a malformed URL, or a blocking call made from inside
    /// an async runtime.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
}

impl ClientError {
    /// True for the kinds a retry may cure: [`Connection`](Self::Connection) and
    /// [`Timeout`](Self::Timeout).
    ///
    /// ```
    /// use metacache_client::ClientError;
    ///
    /// assert!(ClientError::Connection("refused".into()).is_transient());
    /// assert!(!ClientError::InvalidArgument("bad URL".into()).is_transient());
    /// ```
    pub fn is_transient(&self) -> bool {
        matches!(self, ClientError::Connection(_) | ClientError::Timeout(_))
    }

    /// A server error reply about `key`: `WRONGTYPE` means a foreign value sits there.
    pub(crate) fn at_key(key: &str, e: RedisError) -> ClientError {
        if e.code() == Some("WRONGTYPE") {
            ClientError::Corrupt {
                key: key.to_owned(),
                reason: "holds a value of another Redis type than metacache writes there \
                         (WRONGTYPE)"
                    .to_owned(),
            }
        } else {
            ClientError::from(e)
        }
    }

    pub(crate) fn corrupt(key: &str, reason: impl Into<String>) -> ClientError {
        ClientError::Corrupt {
            key: key.to_owned(),
            reason: reason.into(),
        }
    }
}

impl From<RedisError> for ClientError {
    fn from(e: RedisError) -> Self {
        if e.is_timeout() {
            return ClientError::Timeout(e.to_string());
        }
        match e.kind() {
            ErrorKind::Io
            | ErrorKind::AuthenticationFailed
            | ErrorKind::ClusterConnectionNotFound => ClientError::Connection(e.to_string()),
            ErrorKind::InvalidClientConfig => ClientError::InvalidArgument(e.to_string()),
            _ if e.is_connection_refusal() || e.is_connection_dropped() => {
                ClientError::Connection(e.to_string())
            }
            _ => ClientError::Redis(e.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redis_errors_map_to_the_kinds() {
        let io = RedisError::from(std::io::Error::from(std::io::ErrorKind::ConnectionRefused));
        assert!(matches!(ClientError::from(io), ClientError::Connection(_)));
        let timeout = RedisError::from(std::io::Error::from(std::io::ErrorKind::TimedOut));
        assert!(matches!(
            ClientError::from(timeout),
            ClientError::Timeout(_)
        ));
        let config = RedisError::from((ErrorKind::InvalidClientConfig, "bad URL"));
        assert!(matches!(
            ClientError::from(config),
            ClientError::InvalidArgument(_)
        ));
    }
}
