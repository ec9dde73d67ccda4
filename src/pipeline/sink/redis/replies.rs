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

/// Judges the answer to a pipeline of `commands` commands (its tail included) planned as
/// `planned`: a connection error, a transient error reply anywhere, or an answer that is
/// not whole and well-formed ([`malformed`]) is a retry, never an acknowledgement.
pub fn judge(commands: usize, planned: &[Planned], replies: Replies) -> Judged {
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
    if let Some(reason) = reason.or_else(|| malformed(commands, planned, &replies)) {
        return Judged::Retry(Retry {
            reason,
            reload_scripts,
        });
    }
    match &replies[commands - TAIL..] {
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

/// Commands every pipeline ends with: `CLIENT ID`, then `HSET metacache:writers`.
pub const TAIL: usize = 2;

/// Why `replies` is not a full, well-formed answer to a pipeline of `commands` commands
/// planned as `planned` (its tail included), if it is not. Such an answer is retried,
/// never acknowledged: a short reply vector would otherwise leave events without a reply
/// to judge, and a guard answer other than 0 or 1 would be cached as "written".
pub fn malformed(
    commands: usize,
    planned: &[Planned],
    replies: &[RedisResult<Value>],
) -> Option<String> {
    if replies.len() != commands || commands < TAIL {
        return Some(format!(
            "Redis answered {} replies to a pipeline of {commands} commands",
            replies.len()
        ));
    }
    let tail = &replies[commands - TAIL..];
    if !matches!(tail, [Ok(Value::Int(_)), Ok(Value::Int(0 | 1))]) {
        return Some(format!(
            "unexpected replies to CLIENT ID and HSET: {tail:?}"
        ));
    }
    for plan in planned {
        if plan.first + plan.commands > commands - TAIL
            || plan.shared.is_some_and(|at| at >= commands - TAIL)
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
        assert_eq!(malformed(4, &planned, &replies), None);
    }

    #[test]
    fn a_short_reply_vector_is_never_an_acknowledgement() {
        let planned = [guarded(0), guarded(1)];
        let mut replies = vec![Ok(Value::Int(1))];
        replies.extend(tail());
        let why = malformed(4, &planned, &replies).expect("refused");
        assert!(why.contains("3 replies to a pipeline of 4"), "{why}");
        assert!(malformed(4, &planned, &[]).is_some());
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
            let why = malformed(3, &[guarded(0)], &replies).expect("refused");
            assert!(why.contains("stale guard"), "{odd:?}: {why}");
        }
    }

    #[test]
    fn a_tail_that_is_not_an_id_and_a_flag_is_retried() {
        let replies = vec![Ok(Value::Okay), Ok(Value::Int(0))];
        assert!(malformed(2, &[], &replies).is_some());
        let replies = vec![Ok(Value::Int(3)), Ok(Value::Int(5))];
        assert!(malformed(2, &[], &replies).is_some());
        assert_eq!(malformed(2, &[], &tail()), None);
    }

    #[test]
    fn a_whole_answer_is_read_with_its_connection_and_marker() {
        let mut replies = vec![Ok(Value::Int(1)), Err(server("WRONGTYPE"))];
        replies.push(Ok(Value::Int(42)));
        replies.push(Ok(Value::Int(1)));
        match judge(4, &[guarded(0), guarded(1)], Ok(replies)) {
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
        match judge(4, &[guarded(0), guarded(1)], Ok(replies)) {
            Judged::Retry(retry) => {
                assert!(retry.reload_scripts);
                assert!(retry.reason.starts_with("NOSCRIPT"), "{}", retry.reason);
            }
            other => panic!("{other:?}"),
        }
        let lost = RedisError::from(std::io::Error::from(std::io::ErrorKind::ConnectionReset));
        assert!(matches!(
            judge(3, &[guarded(0)], Err(lost)),
            Judged::Retry(Retry {
                reload_scripts: false,
                ..
            })
        ));
        let short = vec![Ok(Value::Int(1))];
        assert!(matches!(
            judge(3, &[guarded(0)], Ok(short)),
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
