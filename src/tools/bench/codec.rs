//! The daemon's own work per event without any I/O: records copied into chunks, decoded,
//! planned into pipelines and encoded to RESP, with the guard's answers fed back as Redis
//! would give them. One thread, so the figure is what one core of metacache can do when
//! Kafka and Redis cost nothing — the part of the end-to-end figures that is ours.

use std::time::Instant;

use super::workload::BenchRecord;
use crate::model::{Event, Limits};
use crate::pipeline::record::{chunk_records, Chunk, Origin};
use crate::pipeline::sink::redis::plan::{Expect, PlanInput, Planner, Ttls};
use crate::pipeline::sink::redis::versions::KnownVersions;
use crate::pipeline::sink::redis::KeyLayout;

/// What one pass over the records did.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CodecRun {
    pub events: u64,
    pub seconds: f64,
    /// RESP bytes the pipelines came to.
    pub bytes: u64,
    pub commands: u64,
}

/// Runs the records through decode → plan → encode in batches of `max_batch`.
pub fn run(records: &[BenchRecord], max_batch: usize) -> CodecRun {
    let limits = Limits::default();
    let planner = Planner::new(KeyLayout::new(""), Ttls::default());
    let mut versions = KnownVersions::new(crate::config::DEFAULT_GUARD_CACHE, 0);
    let per_chunk = chunk_records(max_batch);
    let started = Instant::now();
    let (mut bytes, mut commands) = (0u64, 0u64);
    for (b, batch) in records.chunks(max_batch.max(1)).enumerate() {
        let mut decoded = Vec::with_capacity(batch.len());
        for (c, slice) in batch.chunks(per_chunk).enumerate() {
            let mut chunk = Chunk::with_capacity(per_chunk);
            for (i, r) in slice.iter().enumerate() {
                let origin = Origin {
                    topic: r.kind(),
                    partition: 0,
                    offset: (b * max_batch + c * per_chunk + i) as i64,
                    generation: 0,
                };
                chunk.push(origin, 0, Some(r.key.as_bytes()), Some(&r.value));
            }
            decoded.extend(chunk.decode(&limits));
        }
        let now = Instant::now();
        let plan = planner.plan_batch(
            decoded.iter().map(|r| PlanInput {
                event: r.decoded.as_ref().ok(),
                epoch: Some(0),
            }),
            &mut versions,
            now,
        );
        let packed = plan.pipe.get_packed_pipeline();
        bytes += packed.len() as u64;
        commands += plan.pipe.len() as u64;
        std::hint::black_box(&packed);
        // Every guard writes (the stream moves forward), as Redis would answer.
        for (record, planned) in decoded.iter().zip(&plan.planned) {
            if let (Expect::Guarded { seq }, Ok(Event::DeviceUpsert(d))) =
                (planned.expect, &record.decoded)
            {
                versions.guard_answered(
                    d.device_id(),
                    seq,
                    d.last_updated_ms(),
                    Some(0),
                    true,
                    now,
                );
            }
        }
    }
    CodecRun {
        events: records.len() as u64,
        seconds: started.elapsed().as_secs_f64(),
        bytes,
        commands,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tools::bench::workload::{generate, Workload};

    #[test]
    fn every_event_is_planned_and_repeats_become_plain_sets() {
        let records = generate(Workload::Devices, 4_000, 500, 1);
        let run = run(&records, 256);
        assert_eq!(run.events, 4_000);
        // One SET or script per event, plus one ZADD per batch.
        assert_eq!(run.commands, 4_000 + 4_000_u64.div_ceil(256));
        assert!(run.bytes > 4_000 * 250, "{run:?}");
    }
}
