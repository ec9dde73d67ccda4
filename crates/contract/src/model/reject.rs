//! Why an event was set aside. A rejection always names the field and the reason, so the
//! dead-letter headers and the rejection counters tell an operator what to fix upstream.

use std::fmt;

/// The class of a rejection; its [`as_str`](RejectReason::as_str) form is the stable label
/// used in dead-letter headers and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RejectReason {
    /// The value is larger than `limits.max_message_bytes`.
    TooLarge,
    /// The value is not UTF-8.
    InvalidUtf8,
    /// The value is not one JSON object (syntax error, trailing data, too deep, not an object).
    InvalidJson,
    /// A required field is absent (or null where null is not allowed).
    MissingField,
    /// A field has the wrong JSON type.
    WrongType,
    /// A field appears twice in the same object.
    DuplicateField,
    /// A field's value breaks a rule: empty, too long, control characters, too many items.
    InvalidValue,
    /// `last_updated` is not an RFC 3339 timestamp with an offset, or is out of range.
    InvalidTimestamp,
    /// The metric-catalog `op` is not `replace`, `add` or `remove`.
    UnknownOp,
    /// The Kafka key names another device / namespace than the payload.
    KeyMismatch,
    /// A tombstone without a usable Kafka key: nothing says what to delete.
    MissingKey,
    /// Redis refused the write for good (e.g. WRONGTYPE: a foreign value under a key
    /// metacache owns). Set by the writer, never by decoding.
    RedisRejected,
}

impl RejectReason {
    /// Every reason, for documentation and for pre-registering metric labels.
    pub const ALL: [RejectReason; 12] = [
        RejectReason::TooLarge,
        RejectReason::InvalidUtf8,
        RejectReason::InvalidJson,
        RejectReason::MissingField,
        RejectReason::WrongType,
        RejectReason::DuplicateField,
        RejectReason::InvalidValue,
        RejectReason::InvalidTimestamp,
        RejectReason::UnknownOp,
        RejectReason::KeyMismatch,
        RejectReason::MissingKey,
        RejectReason::RedisRejected,
    ];

    /// The stable snake_case label.
    pub fn as_str(self) -> &'static str {
        match self {
            RejectReason::TooLarge => "too_large",
            RejectReason::InvalidUtf8 => "invalid_utf8",
            RejectReason::InvalidJson => "invalid_json",
            RejectReason::MissingField => "missing_field",
            RejectReason::WrongType => "wrong_type",
            RejectReason::DuplicateField => "duplicate_field",
            RejectReason::InvalidValue => "invalid_value",
            RejectReason::InvalidTimestamp => "invalid_timestamp",
            RejectReason::UnknownOp => "unknown_op",
            RejectReason::KeyMismatch => "key_mismatch",
            RejectReason::MissingKey => "missing_key",
            RejectReason::RedisRejected => "redis_rejected",
        }
    }
}

impl fmt::Display for RejectReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A rejected event: the reason class, the field at fault (if one is), and a message for
/// humans.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reject {
    pub reason: RejectReason,
    /// The offending field, e.g. `last_updated` or `metric_names[3]`; `None` when the record
    /// as a whole is at fault (bad JSON, too large).
    pub field: Option<String>,
    pub message: String,
}

impl Reject {
    pub fn new(reason: RejectReason, field: Option<&str>, message: impl Into<String>) -> Self {
        Reject {
            reason,
            field: field.map(str::to_owned),
            message: message.into(),
        }
    }
}

impl fmt::Display for Reject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.field {
            Some(field) => write!(f, "{}: field `{}`: {}", self.reason, field, self.message),
            None => write!(f, "{}: {}", self.reason, self.message),
        }
    }
}

impl std::error::Error for Reject {}
