//! Decoding, the stage between the source and the sink: each chunk of raw records becomes
//! events, in order, and a record the contract refuses takes the [`Rejects`] route to the
//! dead-letter stage at once, so the sink only ever sees valid events.
//!
//! It is a stage of its own but not a task of its own: the sink's task calls it for each
//! chunk it takes in, so everything an event allocates is freed by the thread that
//! allocated it. When decoding ran on another thread (the consumer's), handing hundreds of
//! small allocations per batch across to be freed cost that thread a third of its time
//! (the profiles behind `record.rs`); a task in between would bring that hop back.

use std::sync::Arc;

use tokio::sync::mpsc;

use crate::model::{Limits, Reject};
use crate::pipeline::dead_letter::DeadLetter;
use crate::pipeline::record::{Chunk, Record};
use crate::stats::Stats;

pub struct Decode {
    limits: Limits,
    rejects: Rejects,
}

impl Decode {
    pub fn new(limits: Limits, rejects: Rejects) -> Self {
        Decode { limits, rejects }
    }

    /// Decodes `chunk`: events join `into`, in order; rejected records go to dead letters.
    pub async fn admit(&self, chunk: Chunk, into: &mut Vec<Record>) {
        for record in chunk.decode(&self.limits) {
            match &record.decoded {
                Ok(_) => into.push(record),
                Err(reject) => {
                    let reject = reject.clone();
                    self.rejects.send(record, reject).await;
                }
            }
        }
    }
}

/// The way into the dead-letter stage, for any stage that refuses a record: the decoder
/// (the contract says no) and the sink (Redis says no for good).
#[derive(Clone)]
pub struct Rejects {
    dead_letters: mpsc::Sender<DeadLetter>,
    stats: Arc<Stats>,
}

impl Rejects {
    pub fn new(dead_letters: mpsc::Sender<DeadLetter>, stats: Arc<Stats>) -> Self {
        Rejects {
            dead_letters,
            stats,
        }
    }

    /// Counts `reject` under its reason and hands the record to the dead-letter stage,
    /// which acknowledges it once the dead-letter topic has its copy.
    pub async fn send(&self, record: Record, reject: Reject) {
        self.stats.topic(record.origin.topic).reject(reject.reason);
        // Only its own bytes: a dead letter waiting for the broker must not keep its whole
        // chunk alive.
        let record = record.detached();
        // The dead-letter stage only stops when the daemon does; if it is gone the record
        // stays unacknowledged and is replayed after a restart, which loses nothing.
        let _ = self.dead_letters.send(DeadLetter { record, reject }).await;
    }
}
