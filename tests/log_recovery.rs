//! Recovery of the shard log from what a crash or a bad disk can leave: a torn tail at
//! every byte of the last batch, zero padding, a torn commit whose later blocks landed,
//! corruption in the middle of a segment (last and sealed), damaged indexes. Also group
//! commit and retention. All on real files through io_uring.

mod common;

use std::path::{Path, PathBuf};
use std::rc::Rc;

use common::{close, now_us, open, payload, record, run, temp_dir, tiny_config};
use spate::commit::{CommitConfig, Committer};
use spate::log::batch::BatchHeader;
use spate::log::segment::log_file_name;
use spate::log::{LogConfig, OpenError, ReadError, RecordIn, ShardLog};

fn batch(first_seq: u64, count: u64, len: usize) -> Vec<RecordIn> {
    (first_seq..first_seq + count)
        .map(|seq| {
            record(
                &format!("k{}", seq % 3),
                payload(seq, len),
                1_700_000_000_000_000 + seq,
            )
        })
        .collect()
}

/// Start offsets of the batches in a segment file, and where the last one ends.
fn batch_offsets(bytes: &[u8]) -> (Vec<usize>, usize) {
    let mut offsets = Vec::new();
    let mut at = 0;
    while let Ok(header) = BatchHeader::decode(&bytes[at..]) {
        offsets.push(at);
        at += header.length as usize;
    }
    (offsets, at)
}

/// Reads every record and checks it against [`batch`]'s contents.
async fn check_contents(log: &Rc<ShardLog>, expected: u64, len: usize) {
    let out = log.read(0, 10_000, 10 << 20).await.expect("read");
    assert_eq!(out.records.len() as u64, expected, "record count");
    for (i, r) in out.records.iter().enumerate() {
        assert_eq!(r.seq, i as u64);
        assert_eq!(
            r.data.as_ref(),
            payload(i as u64, len).as_slice(),
            "record {i}"
        );
    }
}

/// Writes three batches of three records, each in its own commit, and returns the file.
fn three_commits(dir: &Path) -> PathBuf {
    let dir = dir.to_path_buf();
    run(move || async move {
        let (committer, log) = open(&dir, LogConfig::default()).await;
        for b in 0..3 {
            log.append(&batch(b * 3, 3, 50)).await.expect("append");
        }
        close(committer, log).await;
        dir.join(log_file_name(0))
    })
}

#[test]
fn torn_tail_at_every_byte_of_the_last_batch_is_cut_and_earlier_batches_survive() {
    let source = temp_dir();
    let segment = three_commits(source.path());
    let bytes = std::fs::read(&segment).expect("segment");
    let (offsets, end) = batch_offsets(&bytes);
    assert_eq!(offsets.len(), 3);
    let last = offsets[2];
    let root = temp_dir();
    let mut cases = Vec::new();
    for cut in last..end {
        for padded in [false, true] {
            let dir = root.path().join(format!("cut-{cut}-{padded}"));
            std::fs::create_dir_all(&dir).expect("dir");
            let mut torn = bytes[..cut].to_vec();
            if padded {
                torn.resize(cut.div_ceil(4096) * 4096, 0);
            }
            std::fs::write(dir.join(log_file_name(0)), &torn).expect("write");
            cases.push(dir);
        }
    }
    let count = cases.len();
    run(move || async move {
        for dir in cases {
            let (committer, log) = open(&dir, LogConfig::default()).await;
            assert_eq!(log.next_seq(), 6, "{}", dir.display());
            check_contents(&log, 6, 50).await;
            // The log goes on from the cut: a new batch lands and survives a reopen.
            log.append(&batch(6, 3, 50))
                .await
                .expect("append after recovery");
            close(committer, log).await;
            let (committer, log) = open(&dir, LogConfig::default()).await;
            check_contents(&log, 9, 50).await;
            close(committer, log).await;
        }
    });
    assert!(
        count > 100,
        "every byte of the last batch was tried ({count} cases)"
    );
}

#[test]
fn zero_padded_tail_is_the_clean_end() {
    let dir = temp_dir();
    let segment = three_commits(dir.path());
    let mut bytes = std::fs::read(&segment).expect("segment");
    bytes.resize(bytes.len() + 1024 * 1024, 0);
    std::fs::write(&segment, &bytes).expect("pad");
    let path = dir.path().to_path_buf();
    run(move || async move {
        let (committer, log) = open(&path, LogConfig::default()).await;
        check_contents(&log, 9, 50).await;
        close(committer, log).await;
    });
}

#[test]
fn corrupt_middle_batch_is_a_typed_error_naming_file_and_position() {
    let dir = temp_dir();
    let segment = three_commits(dir.path());
    let mut bytes = std::fs::read(&segment).expect("segment");
    let (offsets, _) = batch_offsets(&bytes);
    bytes[offsets[1] + 70] ^= 0x01;
    std::fs::write(&segment, &bytes).expect("corrupt");
    let path = dir.path().to_path_buf();
    let want = offsets[1] as u64;
    run(move || async move {
        let committer = Committer::start(CommitConfig::default());
        match ShardLog::open(&path, LogConfig::default(), committer.clone()).await {
            Err(OpenError::Corruption { path, corruption }) => {
                assert!(path.ends_with(log_file_name(0)));
                assert_eq!(corruption.position, want);
                let message = OpenError::Corruption { path, corruption }.to_string();
                assert!(message.contains("00000000000000000000.log"), "{message}");
                assert!(message.contains(&format!("byte {want}")), "{message}");
            }
            Err(other) => panic!("expected corruption, got {other}"),
            Ok(_) => panic!("expected corruption, the log opened"),
        }
        committer.shutdown().await;
    });
}

#[test]
fn torn_commit_whose_later_blocks_landed_is_cut_at_its_start() {
    let dir = temp_dir();
    let path = dir.path().to_path_buf();
    run(move || async move {
        let (committer, log) = open(&path, LogConfig::default()).await;
        log.append(&batch(0, 3, 50)).await.expect("append");
        // Three batches appended together share one commit.
        let batches = [batch(3, 3, 50), batch(6, 3, 50), batch(9, 3, 50)];
        let acks = futures::future::join_all(batches.iter().map(|b| log.append(b))).await;
        assert!(acks.iter().all(Result::is_ok));
        assert_eq!(
            committer.stats().commits,
            2,
            "the three batches shared one commit"
        );
        close(committer, log).await;
    });
    let segment = dir.path().join(log_file_name(0));
    let mut bytes = std::fs::read(&segment).expect("segment");
    let (offsets, _) = batch_offsets(&bytes);
    // The first block of the second commit never reached the disk.
    bytes[offsets[1] + 20] ^= 0xff;
    std::fs::write(&segment, &bytes).expect("tear");
    let path = dir.path().to_path_buf();
    run(move || async move {
        let (committer, log) = open(&path, LogConfig::default()).await;
        assert_eq!(log.next_seq(), 3);
        check_contents(&log, 3, 50).await;
        close(committer, log).await;
    });
}

fn many_segments(dir: &Path) -> Vec<u64> {
    let dir = dir.to_path_buf();
    run(move || async move {
        let (committer, log) = open(&dir, tiny_config()).await;
        for b in 0..40 {
            log.append(&batch(b * 4, 4, 300)).await.expect("append");
        }
        assert!(log.segment_count() >= 4);
        close(committer, log).await;
        let mut firsts: Vec<u64> = std::fs::read_dir(&dir)
            .expect("list")
            .filter_map(|e| {
                let name = e.ok()?.file_name().into_string().ok()?;
                spate::log::segment::parse_log_file_name(&name)
            })
            .collect();
        firsts.sort_unstable();
        firsts
    })
}

#[test]
fn damage_in_a_sealed_segment_is_reported_on_open_or_on_read() {
    let dir = temp_dir();
    let firsts = many_segments(dir.path());
    let segment = dir.path().join(log_file_name(firsts[1]));
    let mut bytes = std::fs::read(&segment).expect("segment");
    bytes[100] ^= 0x04;
    std::fs::write(&segment, &bytes).expect("corrupt");

    // With its index file present, open trusts the sealed segment; the read finds it.
    let path = dir.path().to_path_buf();
    let second = firsts[1];
    run(move || async move {
        let (committer, log) = open(&path, tiny_config()).await;
        match log.read(second, 100, 1 << 20).await {
            Err(ReadError::Corrupt { path, position, .. }) => {
                assert!(path.ends_with(log_file_name(second)));
                assert_eq!(position, 0);
            }
            other => panic!("expected a corrupt read, got {other:?}"),
        }
        // Other segments still read.
        assert_eq!(
            log.read(0, 1, 1 << 20).await.expect("read").records.len(),
            1
        );
        close(committer, log).await;
    });

    // Without it, open rescans the segment and refuses to start.
    let index = dir
        .path()
        .join(spate::log::segment::index_file_name(firsts[1]));
    std::fs::remove_file(index).expect("remove index");
    let path = dir.path().to_path_buf();
    run(move || async move {
        let committer = Committer::start(CommitConfig::default());
        let result = ShardLog::open(&path, tiny_config(), committer.clone()).await;
        assert!(
            matches!(&result, Err(OpenError::Corruption { path, .. }) if path.ends_with(log_file_name(second))),
            "expected corruption in the sealed segment"
        );
        committer.shutdown().await;
    });
}

#[test]
fn missing_or_damaged_indexes_are_rebuilt_from_the_log() {
    let dir = temp_dir();
    let firsts = many_segments(dir.path());
    let index_of = |first| dir.path().join(spate::log::segment::index_file_name(first));
    std::fs::remove_file(index_of(firsts[0])).expect("remove");
    std::fs::write(index_of(firsts[1]), b"not an index").expect("garble");
    let path = dir.path().to_path_buf();
    run(move || async move {
        let (committer, log) = open(&path, tiny_config()).await;
        check_contents(&log, 160, 300).await;
        close(committer, log).await;
    });
    assert!(
        index_of(firsts[0]).exists(),
        "the rebuilt index was written back"
    );
    assert!(std::fs::metadata(index_of(firsts[1])).expect("index").len() > 12);
}

#[test]
fn concurrent_appends_share_one_commit_and_one_fsync() {
    let dir = temp_dir();
    let path = dir.path().to_path_buf();
    run(move || async move {
        let (committer, log) = open(&path, LogConfig::default()).await;
        let batches: Vec<Vec<RecordIn>> = (0..50).map(|b| batch(b * 2, 2, 10)).collect();
        let acks = futures::future::join_all(batches.iter().map(|b| log.append(b))).await;
        for (i, ack) in acks.into_iter().enumerate() {
            assert_eq!(ack.expect("append").first_seq, i as u64 * 2);
        }
        let stats = committer.stats();
        assert_eq!((stats.commits, stats.fsyncs, stats.batches), (1, 1, 50));
        close(committer, log).await;
    });
}

#[test]
fn a_lone_append_on_an_idle_core_does_not_wait_out_the_window() {
    let dir = temp_dir();
    let path = dir.path().to_path_buf();
    run(move || async move {
        let config = CommitConfig {
            window_us: 5_000_000,
            ..CommitConfig::default()
        };
        let committer = Committer::start(config);
        let log = ShardLog::open(&path, LogConfig::default(), committer.clone())
            .await
            .expect("open");
        for i in 0..2 {
            let started = std::time::Instant::now();
            log.append(&batch(i, 1, 10)).await.expect("append");
            // The first append finds an idle core and commits at once; the second comes
            // right after a commit and may wait for the (5 s) window.
            if i == 0 {
                assert!(started.elapsed() < std::time::Duration::from_secs(2));
            }
        }
        close(committer, log).await;
    });
}

#[test]
fn retention_deletes_whole_expired_segments_and_moves_the_trim_horizon() {
    let dir = temp_dir();
    let path = dir.path().to_path_buf();
    run(move || async move {
        let (committer, log) = open(&path, tiny_config()).await;
        let now = now_us();
        let hour = 3_600_000_000u64;
        let mut seq = 0;
        for (age_hours, batches) in [(30, 20), (1, 20)] {
            for _ in 0..batches {
                let records: Vec<RecordIn> = (seq..seq + 4)
                    .map(|s| record("k", payload(s, 300), now - age_hours * hour))
                    .collect();
                log.append(&records).await.expect("append");
                seq += 4;
            }
        }
        let segments = log.segment_count();
        let deleted = log.enforce_retention(now).await.expect("retention");
        assert!(
            deleted > 0 && deleted < segments,
            "deleted {deleted} of {segments}"
        );
        let trim = log.trim_horizon();
        assert!(trim > 0 && trim <= 80, "trim horizon {trim}");
        let out = log.read(0, 10_000, 10 << 20).await.expect("read");
        assert_eq!(out.records.first().map(|r| r.seq), Some(trim));
        assert_eq!(out.records.len() as u64, 160 - trim);
        for r in &out.records {
            assert_eq!(r.data.as_ref(), payload(r.seq, 300).as_slice());
        }
        // Everything expires: the active segment is replaced and the log stays writable.
        let later = now + 48 * hour;
        log.enforce_retention(later).await.expect("retention");
        assert_eq!(log.trim_horizon(), 160);
        assert!(
            log.read(0, 10, 1 << 20)
                .await
                .expect("read")
                .records
                .is_empty()
        );
        log.append(&[record("k", payload(160, 10), later)])
            .await
            .expect("append");
        close(committer, log).await;
        let (committer, log) = open(&path, tiny_config()).await;
        assert_eq!((log.trim_horizon(), log.next_seq()), (160, 161));
        close(committer, log).await;
        // Segments are sealed in the background; retention waits for that, so no index
        // file outlives its segment (the last pass sealed and deleted one at once).
        for entry in std::fs::read_dir(&path).expect("list") {
            let name = entry
                .expect("entry")
                .file_name()
                .into_string()
                .expect("utf-8");
            if let Some(stem) = name.strip_suffix(".idx") {
                let log_name = format!("{stem}.log");
                assert!(
                    path.join(&log_name).exists(),
                    "{name} outlived its segment {log_name}"
                );
            }
        }
    });
}
