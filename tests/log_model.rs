//! The shard log against a plain in-memory model: random appends (alone and concurrent, so
//! several share one commit), reads from random positions with random budgets, timestamp
//! lookups, segment rolls and reopens, compared after every step. Prints its seed.

mod common;

use std::rc::Rc;

use common::{Rng, close, open, record, run, tiny_config};
use spate::log::{RecordIn, StartPosition};

#[derive(Clone, Debug)]
struct ModelRecord {
    key: Vec<u8>,
    data: Vec<u8>,
    arrival_us: u64,
}

fn random_batch(rng: &mut Rng, clock: &mut u64) -> Vec<RecordIn> {
    let count = 1 + rng.below(8) as usize;
    (0..count)
        .map(|_| {
            // Arrivals mostly move forward, sometimes step back: the log must clamp them.
            *clock += rng.below(2_000);
            let arrival = clock.saturating_sub(rng.below(3) * 1_500);
            let key = format!("key-{}", rng.below(20));
            let len = match rng.below(10) {
                0 => 0,
                1 => 3_000 + rng.below(5_000) as usize,
                _ => rng.below(400) as usize,
            };
            let data = (0..len).map(|_| rng.next() as u8).collect();
            record(&key, data, arrival)
        })
        .collect()
}

fn apply(model: &mut Vec<ModelRecord>, floor: &mut u64, first_seq: u64, batch: &[RecordIn]) {
    assert_eq!(
        first_seq as usize,
        model.len(),
        "sequence numbers must be dense"
    );
    for r in batch {
        *floor = (*floor).max(r.arrival_us);
        model.push(ModelRecord {
            key: r.partition_key.to_vec(),
            data: r.data.to_vec(),
            arrival_us: *floor,
        });
    }
}

#[test]
fn shard_log_matches_an_in_memory_model() {
    let mut rng = Rng::from_env("shard_log_matches_an_in_memory_model");
    run(move || async move {
        let dir = common::temp_dir();
        let (mut committer, mut log) = open(dir.path(), tiny_config()).await;
        let mut model: Vec<ModelRecord> = Vec::new();
        let mut floor = 0u64;
        let mut clock = 1_700_000_000_000_000u64;
        for step in 0..600 {
            match rng.below(100) {
                0..=29 => {
                    let batch = random_batch(&mut rng, &mut clock);
                    let ack = log.append(&batch).await.expect("append");
                    apply(&mut model, &mut floor, ack.first_seq, &batch);
                }
                30..=44 => {
                    let batches: Vec<Vec<RecordIn>> = (0..2 + rng.below(4))
                        .map(|_| random_batch(&mut rng, &mut clock))
                        .collect();
                    let acks =
                        futures::future::join_all(batches.iter().map(|b| log.append(b))).await;
                    for (ack, batch) in acks.into_iter().zip(&batches) {
                        let ack = ack.expect("concurrent append");
                        apply(&mut model, &mut floor, ack.first_seq, batch);
                    }
                }
                45..=79 => {
                    let from = rng.below(model.len() as u64 + 3);
                    let limit = 1 + rng.below(60) as usize;
                    let budget = 1 + rng.below(20_000) as usize;
                    check_read(&log, &model, from, limit, budget, step).await;
                }
                80..=89 => {
                    let at =
                        1_699_999_999_000_000 + rng.below(clock - 1_699_999_999_000_000 + 5_000);
                    let found = log
                        .resolve(StartPosition::AtTimestamp(at))
                        .await
                        .expect("resolve");
                    let expected = model
                        .iter()
                        .position(|r| r.arrival_us >= at)
                        .unwrap_or(model.len());
                    assert_eq!(found, expected as u64, "step {step}: AtTimestamp({at})");
                }
                90..=94 => {
                    let len = model.len() as u64;
                    let trim = log.resolve(StartPosition::TrimHorizon).await.expect("trim");
                    let latest = log.resolve(StartPosition::Latest).await.expect("latest");
                    assert_eq!((trim, latest), (0, len), "step {step}");
                    if len > 0 {
                        let seq = rng.below(len);
                        let after = log.resolve(StartPosition::AfterSequence(seq)).await;
                        assert_eq!(after.expect("after"), seq + 1);
                    }
                }
                _ => {
                    close(committer, log).await;
                    (committer, log) = open(dir.path(), tiny_config()).await;
                }
            }
            assert_eq!(log.next_seq(), model.len() as u64, "step {step}");
            assert_eq!(log.durable_next_seq(), model.len() as u64, "step {step}");
        }
        assert!(log.segment_count() > 3, "the test should roll segments");
        // A full read from the start, across every segment, sees every record once.
        check_read(&log, &model, 0, 10_000, 10 << 20, 600).await;
        close(committer, log).await;
    });
}

async fn check_read(
    log: &Rc<spate::log::ShardLog>,
    model: &[ModelRecord],
    from: u64,
    limit: usize,
    budget: usize,
    step: usize,
) {
    let mut seq = from;
    let mut records = Vec::new();
    // A big read may stop at a segment or cache boundary; keep reading until done.
    loop {
        let out = log
            .read(seq, limit - records.len(), budget)
            .await
            .expect("read");
        assert_eq!(out.tip_seq, model.len() as u64, "step {step}: tip");
        let got = out.records.len();
        records.extend(out.records);
        if got == 0 || records.len() >= limit || limit < 10_000 {
            seq = out.next_seq;
            break;
        }
        seq = out.next_seq;
    }
    let start = from.min(model.len() as u64) as usize;
    if start < model.len() {
        assert!(
            !records.is_empty(),
            "step {step}: read at {from} returned nothing"
        );
    }
    assert!(records.len() <= limit, "step {step}: limit");
    for (i, got) in records.iter().enumerate() {
        let want = &model[start + i];
        let seq_want = (start + i) as u64;
        assert_eq!(got.seq, seq_want, "step {step}: sequence");
        assert_eq!(
            got.partition_key.as_ref(),
            want.key.as_slice(),
            "step {step}: key"
        );
        assert_eq!(
            got.data.as_ref(),
            want.data.as_slice(),
            "step {step}: data at {seq_want}"
        );
        assert_eq!(
            got.arrival_us, want.arrival_us,
            "step {step}: arrival at {seq_want}"
        );
    }
    assert_eq!(seq, (start + records.len()) as u64, "step {step}: next_seq");
    if limit >= 10_000 {
        assert_eq!(records.len(), model.len() - start, "step {step}: full read");
    }
}
