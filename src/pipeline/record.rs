//! What travels between the stages: consumed records, in chunks from the consumer thread
//! to the writer, decoded there; and the acknowledgements that flow back so offsets can be
//! committed.
//!
//! The consumer thread copies what librdkafka hands it into a [`Chunk`] — one buffer for
//! a few hundred records — and does nothing else per record. Decoding happens on the
//! writer's side, so everything an event allocates is freed by the thread that allocated
//! it: when the consumer thread decoded, handing hundreds of small allocations per batch
//! to another thread to free cost it a third of its time, and the channel a send per
//! record.

use std::ops::Range;
use std::sync::Arc;

use crate::model::{self, Event, Limits, Reject, TopicKind};

/// Where a record came from: enough to commit its offset, to label dead letters, and to
/// tell whether its partition is still owned under the generation it was consumed in
/// ([`crate::pipeline::ownership`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Origin {
    pub topic: TopicKind,
    pub partition: i32,
    pub offset: i64,
    pub generation: u64,
}

impl Origin {
    pub fn partition_id(&self) -> crate::pipeline::ownership::PartitionId {
        (self.topic, self.partition)
    }
}

/// Most records in one chunk (fewer when batches are smaller, see [`chunk_records`]), and
/// about the most bytes: a chunk is sent when it is full, or as soon as librdkafka has
/// nothing more ready, so small chunks cost no latency.
pub const CHUNK_RECORDS: usize = 256;
pub const CHUNK_BYTES: usize = 256 * 1024;

/// Records per chunk for a writer batching `max_batch` events: never more than a batch,
/// so that the bounded channel in between still bounds records, not just chunks.
pub fn chunk_records(max_batch: usize) -> usize {
    max_batch.clamp(1, CHUNK_RECORDS)
}

/// Raw records, as consumed, sharing one buffer.
#[derive(Debug, Default)]
pub struct Chunk {
    bytes: Vec<u8>,
    entries: Vec<Entry>,
}

/// One record of a chunk.
#[derive(Debug, Clone)]
pub struct Entry {
    pub origin: Origin,
    /// The assignment epoch it was consumed under ([`crate::pipeline::ownership::Trust`]).
    pub epoch: u64,
    key: Option<Range<usize>>,
    value: Option<Range<usize>>,
}

impl Chunk {
    pub fn new() -> Self {
        Chunk::default()
    }

    /// An empty chunk with room for `records` records (it grows past that if asked).
    pub fn with_capacity(records: usize) -> Self {
        Chunk {
            bytes: Vec::new(),
            entries: Vec::with_capacity(records),
        }
    }

    /// Appends a record; `None` is a missing key, or a tombstone's missing value.
    pub fn push(&mut self, origin: Origin, epoch: u64, key: Option<&[u8]>, value: Option<&[u8]>) {
        let key = key.map(|k| self.copy(k));
        let value = value.map(|v| self.copy(v));
        self.entries.push(Entry {
            origin,
            epoch,
            key,
            value,
        });
    }

    fn copy(&mut self, bytes: &[u8]) -> Range<usize> {
        if self.bytes.capacity() == 0 {
            // Room for a full chunk of typical events without growing (a copy each time).
            self.bytes
                .reserve((self.entries.capacity() * 512).clamp(4096, CHUNK_BYTES));
        }
        let start = self.bytes.len();
        self.bytes.extend_from_slice(bytes);
        start..self.bytes.len()
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Full enough to send without waiting for more, at `max_records` a chunk.
    pub fn is_full(&self, max_records: usize) -> bool {
        self.entries.len() >= max_records || self.bytes.len() >= CHUNK_BYTES
    }

    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }

    /// Drops the records `keep` refuses (those of revoked partitions); their bytes stay
    /// until the chunk goes.
    pub fn retain(&mut self, keep: impl FnMut(&Entry) -> bool) {
        self.entries.retain(keep);
    }

    /// Decodes every record, in order, as it is taken.
    pub fn decode(self, limits: &Limits) -> impl Iterator<Item = Record> + '_ {
        let bytes = Arc::new(self.bytes);
        self.entries.into_iter().map(move |entry| {
            let key = entry.key.as_ref().map(|r| &bytes[r.clone()]);
            let value = entry.value.as_ref().map(|r| &bytes[r.clone()]);
            let decoded = model::decode(entry.origin.topic, key, value, limits);
            Record {
                origin: entry.origin,
                decoded,
                epoch: entry.epoch,
                raw: Raw {
                    bytes: Arc::clone(&bytes),
                    key: entry.key,
                    value: entry.value,
                },
            }
        })
    }
}

/// One Kafka record after decoding. Its raw key and value stay with it until it is
/// acknowledged, because a record Redis refuses for good is dead-lettered as it came.
#[derive(Debug)]
pub struct Record {
    pub origin: Origin,
    pub decoded: Result<Event, Reject>,
    /// The assignment epoch it was consumed under ([`crate::pipeline::ownership::Trust`]).
    pub epoch: u64,
    raw: Raw,
}

/// A record's bytes: spans of its chunk's buffer, shared by the chunk's records.
#[derive(Debug, Clone)]
struct Raw {
    bytes: Arc<Vec<u8>>,
    key: Option<Range<usize>>,
    value: Option<Range<usize>>,
}

impl Record {
    /// A record of its own (not from a chunk): decodes `key` and `value` as the writer
    /// would.
    pub fn decode(
        origin: Origin,
        epoch: u64,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
        limits: &Limits,
    ) -> Record {
        let decoded = model::decode(origin.topic, key, value, limits);
        let mut bytes = Vec::new();
        let mut keep = |part: Option<&[u8]>| {
            part.map(|p| {
                let start = bytes.len();
                bytes.extend_from_slice(p);
                start..bytes.len()
            })
        };
        let (key, value) = (keep(key), keep(value));
        Record {
            origin,
            decoded,
            epoch,
            raw: Raw {
                bytes: Arc::new(bytes),
                key,
                value,
            },
        }
    }

    /// The Kafka key, as consumed.
    pub fn key(&self) -> Option<&[u8]> {
        self.raw.key.as_ref().map(|r| &self.raw.bytes[r.clone()])
    }

    /// The Kafka value, as consumed; `None` for a tombstone.
    pub fn value(&self) -> Option<&[u8]> {
        self.raw.value.as_ref().map(|r| &self.raw.bytes[r.clone()])
    }

    /// The same record holding only its own bytes, so that keeping it (a dead letter
    /// waiting for the broker) does not keep its whole chunk alive.
    pub fn detached(self) -> Record {
        let mut bytes = Vec::new();
        let mut copy = |span: &Option<Range<usize>>| {
            span.as_ref().map(|r| {
                let start = bytes.len();
                bytes.extend_from_slice(&self.raw.bytes[r.clone()]);
                start..bytes.len()
            })
        };
        let key = copy(&self.raw.key);
        let value = copy(&self.raw.value);
        Record {
            origin: self.origin,
            decoded: self.decoded,
            epoch: self.epoch,
            raw: Raw {
                bytes: Arc::new(bytes),
                key,
                value,
            },
        }
    }
}

/// Records that are done — written and acknowledged by Redis, or acknowledged by the
/// dead-letter topic — and may count towards the committed watermark.
#[derive(Debug, Default)]
pub struct Ack {
    pub done: Vec<Origin>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn origin(offset: i64) -> Origin {
        Origin {
            topic: TopicKind::Device,
            partition: 0,
            offset,
            generation: 1,
        }
    }

    #[test]
    fn a_chunk_keeps_each_records_bytes_and_order() {
        let mut chunk = Chunk::new();
        chunk.push(origin(1), 7, Some(b"k1"), Some(b"not json"));
        chunk.push(origin(2), 7, None, None);
        chunk.push(origin(3), 8, Some(b""), Some(b"v3"));
        chunk.retain(|e| e.origin.offset != 2);
        let records: Vec<Record> = chunk.decode(&Limits::default()).collect();
        assert_eq!(records.len(), 2);
        assert_eq!(records[0].origin.offset, 1);
        assert_eq!(records[0].key(), Some(&b"k1"[..]));
        assert_eq!(records[0].value(), Some(&b"not json"[..]));
        assert!(records[0].decoded.is_err());
        assert_eq!(
            (records[1].key(), records[1].value()),
            (Some(&b""[..]), Some(&b"v3"[..]))
        );
        assert_eq!(records[1].epoch, 8);
        let detached = records.into_iter().nth(1).map(Record::detached);
        let detached = detached.unwrap();
        assert_eq!(detached.value(), Some(&b"v3"[..]));
        assert_eq!(detached.raw.bytes.len(), 2);
    }

    #[test]
    fn a_chunk_is_full_by_records_or_by_bytes() {
        let mut chunk = Chunk::new();
        for i in 0..CHUNK_RECORDS as i64 - 1 {
            chunk.push(origin(i), 0, None, Some(b"x"));
        }
        assert!(!chunk.is_full(CHUNK_RECORDS));
        assert!(chunk.is_full(8));
        chunk.push(origin(999), 0, None, Some(b"x"));
        assert!(chunk.is_full(CHUNK_RECORDS));
        let mut chunk = Chunk::new();
        chunk.push(origin(0), 0, None, Some(&vec![b' '; CHUNK_BYTES]));
        assert!(chunk.is_full(CHUNK_RECORDS));
        assert_eq!(chunk_records(8), 8);
        assert_eq!(chunk_records(100_000), CHUNK_RECORDS);
        assert_eq!(chunk_records(0), 1);
    }
}
