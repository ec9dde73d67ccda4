//! Judging a pipeline's replies, pure: is the answer whole and well-formed (else the batch
//! is retried, never acknowledged), and is an error reply one that time clears (retried)
//! or one that would fail the same way forever (the event is dead-lettered).

use redis::{RedisError, RedisResult, Value};

use super::plan::{Expect, Planned};

/// A pipeline's answer as the connection hands it over.
pub type Replies = RedisResult<Vec<RedisResult<Value>>>;

/// What a pipeline's answer says as a whole.
#[derive(Debug)]
pub enum Judged {
    /// Every command answered as planned; each event's replies can be read (an error
    /// among them is [permanent](is_permanent): that event is refused for good).
    Answered {
        replies: Vec<RedisResult<Value>>,
        /// The `CLIENT ID` that answered: another one than last time is a reconnect.
        connection: i64,
        /// `HSET metacache:writers` had to create this writer's field: Redis lost it.
        marker_created: bool,
    },
    /// Something transient went wrong: retry this batch and everything after it.
    Retry(Retry),
}

/// Why a batch is tried again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Retry {
    pub reason: String,
    /// Redis said `NOSCRIPT`: load the scripts before the next try.
    pub reload_scripts: bool,
}

/// Judges the answer to a pipeline of `commands` commands (its `tail` included) planned as
/// `planned`: a connection error, a transient error reply anywhere, an answer that is not
/// whole and well-formed ([`malformed`]), or fewer replicas than `WAIT` asked for is a
/// retry, never an acknowledgement.
pub fn judge(commands: usize, planned: &[Planned], replies: Replies, tail: Tail) -> Judged {
    let replies = match replies {
        Err(e) => {
            return Judged::Retry(Retry {
                reload_scripts: e.code() == Some("NOSCRIPT"),
                reason: super::describe_error(&e),
            })
        }
        Ok(replies) => replies,
    };
    let mut reload_scripts = false;
    let mut reason = None;
    for e in replies.iter().filter_map(|r| r.as_ref().err()) {
        if is_permanent(e) {
            continue;
        }
        reload_scripts |= e.code() == Some("NOSCRIPT");
        reason.get_or_insert_with(|| super::describe_error(e));
    }
    if let Some(reason) = reason.or_else(|| malformed(commands, planned, &replies, tail)) {
        return Judged::Retry(Retry {
            reason,
            reload_scripts,
        });
    }
    let at = commands - tail.len();
    if let Some(want) = tail.wait_replicas() {
        if let Some(Ok(Value::Int(got))) = replies.get(at + 2) {
            if *got < i64::from(want) {
                return Judged::Retry(Retry {
                    reason: format!(
                        "WAIT: {got} of {want} replicas acknowledged the writes within {} ms (redis.wait_replicas); not acknowledged, retrying",
                        tail.wait_timeout_ms
                    ),
                    reload_scripts: false,
                });
            }
        }
    }
    match &replies[at..at + 2] {
        [Ok(Value::Int(connection)), Ok(Value::Int(created))] => Judged::Answered {
            connection: *connection,
            marker_created: *created == 1,
            replies,
        },
        // `malformed` lets only that shape through.
        tail => Judged::Retry(Retry {
            reason: format!("unexpected replies to CLIENT ID and HSET: {tail:?}"),
            reload_scripts: false,
        }),
    }
}

/// What every pipeline ends with: `CLIENT ID`, then `HSET metacache:writers`, then, with
/// `redis.wait_replicas` above 0, `WAIT <replicas> <timeout>`, so that a batch counts as
/// done only once that many replicas have it (a failover cannot lose an acknowledged
/// write).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tail {
    pub wait_replicas: u32,
    pub wait_timeout_ms: u64,
}

impl Tail {
    /// The commands of the tail.
    pub fn len(self) -> usize {
        2 + usize::from(self.wait_replicas > 0)
    }

    pub fn is_empty(self) -> bool {
        false
    }

    /// The replicas `WAIT` asks for, when it is sent.
    pub fn wait_replicas(self) -> Option<u32> {
        (self.wait_replicas > 0).then_some(self.wait_replicas)
    }
}

/// The tail without `WAIT`.
pub const TAIL: usize = 2;

/// Why `replies` is not a full, well-formed answer to a pipeline of `commands` commands
/// planned as `planned` (its tail included), if it is not. Such an answer is retried,
/// never acknowledged: a short reply vector would otherwise leave events without a reply
/// to judge, and a guard answer other than 0 or 1 would be cached as "written".
pub fn malformed(
    commands: usize,
    planned: &[Planned],
    replies: &[RedisResult<Value>],
    tail: Tail,
) -> Option<String> {
    let len = tail.len();
    if replies.len() != commands || commands < len {
        return Some(format!(
            "Redis answered {} replies to a pipeline of {commands} commands",
            replies.len()
        ));
    }
    let answers = &replies[commands - len..];
    let shape = match answers {
        [Ok(Value::Int(_)), Ok(Value::Int(0 | 1))] => len == 2,
        [Ok(Value::Int(_)), Ok(Value::Int(0 | 1)), Ok(Value::Int(n))] => len == 3 && *n >= 0,
        _ => false,
    };
    if !shape {
        return Some(format!(
            "unexpected replies to the pipeline's tail (CLIENT ID, HSET{}): {answers:?}",
            if len == 3 { ", WAIT" } else { "" }
        ));
    }
    for plan in planned {
        if plan.first + plan.commands > commands - len
            || plan.shared.is_some_and(|at| at >= commands - len)
        {
            return Some("the plan does not fit the pipeline's replies".into());
        }
        if let Expect::Guarded { .. } = plan.expect {
            match replies.get(plan.first) {
                // An error reply is judged per event (refused for good, or retried).
                Some(Ok(Value::Int(0 | 1))) | Some(Err(_)) => {}
                other => return Some(format!("unexpected reply to the stale guard: {other:?}")),
            }
        }
    }
    None
}

/// Error replies that Redis or an operator clears in time (memory, replication, loading, a
/// busy script, auth or ACL changes, cluster moves): retried, never dead-lettered.
const TRANSIENT_CODES: &[&str] = &[
    "NOSCRIPT",
    "LOADING",
    "BUSY",
    "TRYAGAIN",
    "CLUSTERDOWN",
    "MOVED",
    "ASK",
    "READONLY",
    "MASTERDOWN",
    "OOM",
    "NOREPLICAS",
    "MISCONF",
    "NOAUTH",
    "WRONGPASS",
    "NOPERM",
];

/// Errors that retrying cannot fix: the event is dead-lettered instead. Only a server's
/// error reply about this one command can be; anything else (connection lost, timeout) is
/// retried. An unknown reply (`WRONGTYPE`, or a script error such as Redis 6's wrapped
/// `ERR Error running script … WRONGTYPE`) would fail the same way forever, so retrying it
/// would only stall every partition behind one event.
pub fn is_permanent(e: &RedisError) -> bool {
    if e.is_io_error() || e.is_timeout() || e.is_connection_dropped() || e.is_connection_refusal() {
        return false;
    }
    match e.code() {
        Some(code) => !TRANSIENT_CODES.contains(&code),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server(code: &str) -> RedisError {
        redis::make_extension_error(code.to_owned(), Some("detail".to_owned()))
    }

    fn guarded(first: usize) -> Planned {
        Planned {
            first,
            commands: 1,
            shared: None,
            expect: Expect::Guarded { seq: 1 },
        }
    }

    fn tail() -> Vec<RedisResult<Value>> {
        vec![Ok(Value::Int(7)), Ok(Value::Int(0))]
    }

    #[test]
    fn a_full_answer_passes() {
        let planned = [guarded(0), guarded(1)];
        let mut replies = vec![Ok(Value::Int(1)), Err(server("WRONGTYPE"))];
        replies.extend(tail());
        assert_eq!(malformed(4, &planned, &replies, Tail::default()), None);
    }

    #[test]
    fn a_short_reply_vector_is_never_an_acknowledgement() {
        let planned = [guarded(0), guarded(1)];
        let mut replies = vec![Ok(Value::Int(1))];
        replies.extend(tail());
        let why = malformed(4, &planned, &replies, Tail::default()).expect("refused");
        assert!(why.contains("3 replies to a pipeline of 4"), "{why}");
        assert!(malformed(4, &planned, &[], Tail::default()).is_some());
    }

    #[test]
    fn a_guard_answer_other_than_0_or_1_is_retried_not_cached() {
        for odd in [
            Value::Okay,
            Value::Nil,
            Value::Int(2),
            Value::SimpleString("1".into()),
        ] {
            let mut replies = vec![Ok(odd.clone())];
            replies.extend(tail());
            let why = malformed(3, &[guarded(0)], &replies, Tail::default()).expect("refused");
            assert!(why.contains("stale guard"), "{odd:?}: {why}");
        }
    }

    #[test]
    fn a_tail_that_is_not_an_id_and_a_flag_is_retried() {
        let replies = vec![Ok(Value::Okay), Ok(Value::Int(0))];
        assert!(malformed(2, &[], &replies, Tail::default()).is_some());
        let replies = vec![Ok(Value::Int(3)), Ok(Value::Int(5))];
        assert!(malformed(2, &[], &replies, Tail::default()).is_some());
        assert_eq!(malformed(2, &[], &tail(), Tail::default()), None);
    }

    #[test]
    fn a_whole_answer_is_read_with_its_connection_and_marker() {
        let mut replies = vec![Ok(Value::Int(1)), Err(server("WRONGTYPE"))];
        replies.push(Ok(Value::Int(42)));
        replies.push(Ok(Value::Int(1)));
        match judge(4, &[guarded(0), guarded(1)], Ok(replies), Tail::default()) {
            Judged::Answered {
                replies,
                connection,
                marker_created,
            } => {
                assert_eq!((connection, marker_created, replies.len()), (42, true, 4));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_transient_error_anywhere_retries_the_batch() {
        let mut replies = vec![Ok(Value::Int(1)), Err(server("NOSCRIPT"))];
        replies.extend(tail());
        match judge(4, &[guarded(0), guarded(1)], Ok(replies), Tail::default()) {
            Judged::Retry(retry) => {
                assert!(retry.reload_scripts);
                assert!(retry.reason.starts_with("NOSCRIPT"), "{}", retry.reason);
            }
            other => panic!("{other:?}"),
        }
        let lost = RedisError::from(std::io::Error::from(std::io::ErrorKind::ConnectionReset));
        assert!(matches!(
            judge(3, &[guarded(0)], Err(lost), Tail::default()),
            Judged::Retry(Retry {
                reload_scripts: false,
                ..
            })
        ));
        let short = vec![Ok(Value::Int(1))];
        assert!(matches!(
            judge(3, &[guarded(0)], Ok(short), Tail::default()),
            Judged::Retry(_)
        ));
    }

    #[test]
    fn transient_replies_are_retried_and_deterministic_ones_dead_letter() {
        for code in [
            "OOM", "READONLY", "BUSY", "LOADING", "NOSCRIPT", "NOAUTH", "MISCONF",
        ] {
            assert!(!is_permanent(&server(code)), "{code}");
        }
        for code in ["WRONGTYPE", "ERR"] {
            assert!(is_permanent(&server(code)), "{code}");
        }
        let io = RedisError::from(std::io::Error::from(std::io::ErrorKind::ConnectionReset));
        assert!(!is_permanent(&io));
    }
}

#[cfg(test)]
mod wait_tests {
    use super::*;
    fn tail3(n: i64) -> Vec<RedisResult<Value>> {
        vec![Ok(Value::Int(7)), Ok(Value::Int(0)), Ok(Value::Int(n))]
    }

    #[test]
    fn too_few_replicas_is_a_retry_never_an_acknowledgement() {
        let tail = Tail {
            wait_replicas: 2,
            wait_timeout_ms: 100,
        };
        assert_eq!(tail.len(), 3);
        match judge(3, &[], Ok(tail3(1)), tail) {
            Judged::Retry(retry) => {
                assert!(retry.reason.contains("1 of 2 replicas"), "{}", retry.reason)
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            judge(3, &[], Ok(tail3(2)), tail),
            Judged::Answered { connection: 7, .. }
        ));
        assert!(matches!(
            judge(3, &[], Ok(tail3(3)), tail),
            Judged::Answered { .. }
        ));
        // A WAIT that failed (e.g. not allowed) is an error reply: transient or not, the
        // batch is not acknowledged.
        let mut refused = tail3(0);
        refused[2] = Err(redis::make_extension_error(
            "NOPERM".into(),
            Some("no WAIT".into()),
        ));
        assert!(matches!(judge(3, &[], Ok(refused), tail), Judged::Retry(_)));
        // Without WAIT configured, a third tail reply does not fit.
        assert!(matches!(
            judge(3, &[], Ok(tail3(2)), Tail::default()),
            Judged::Retry(_)
        ));
    }
}
