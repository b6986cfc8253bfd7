//! The writer's rounds driven by hand: orderings a running thread produces only under
//! load.

use super::*;
use crate::journal::{format, record_cost, recover, JournalConfig, QueuedAcks, SyncMode};

fn append(
    w: &mut Writer,
    round: &mut Round,
    seq: u64,
) -> oneshot::Receiver<Result<u64, JournalError>> {
    let payload = format!("record {seq}").into_bytes();
    let (reply, rx) = oneshot::channel();
    w.take(
        Command::Append {
            seq,
            frame: format::encode_frame(&payload, 1),
            cost: record_cost(payload.len()),
            reply,
        },
        round,
    );
    rx
}

/// A writer on a new journal in `dir` (driven by hand, no thread), its shared state and
/// the first sequence number.
fn writer(dir: &std::path::Path, config: JournalConfig) -> (Writer, Arc<Shared>, u64) {
    let shared = Arc::new(Shared {
        dir: dir.to_path_buf(),
        max_bytes: config.max_bytes,
        ..Shared::default()
    });
    let (w, _, first) = recover::recover(dir, config, shared.clone()).expect("open");
    (w, shared, first)
}

/// A record written again and its old copy acknowledged (the broker's compaction): the
/// ack is queued outside the channel, so a wake-up taken before the new copy's append
/// brings it early. With one append per round (`always`) the new copy comes a round
/// later; the old one must stay pending until then, or a crash between the two rounds
/// loses both (the state_sessions compaction test lost c0..c57 on a loaded CI machine).
#[test]
fn a_queued_ack_waits_for_the_appends_sent_before_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut w, shared, first) = writer(
        dir.path(),
        JournalConfig {
            sync: SyncMode::Always,
            ..JournalConfig::default()
        },
    );
    // Round 0: the old copy.
    let mut round = Round::default();
    let _old = append(&mut w, &mut round, first);
    assert!(!w.finish(round));
    assert_eq!(w.pending_records, 1);
    // An unrelated append (first + 1) and the new copy (first + 2) are sent, then the old
    // copy is acknowledged: queued with the barrier `first + 3`.
    *shared.queued_acks() = QueuedAcks {
        seqs: vec![first],
        barrier: first + 3,
    };
    // Round 1: a wake-up, then the unrelated append; `always` ends the round there.
    let mut round = Round::default();
    w.take(Command::Ack, &mut round);
    let _unrelated = append(&mut w, &mut round, first + 1);
    assert!(!w.finish(round));
    assert_eq!(w.pending_records, 2, "the old copy is still pending");
    // Round 2: the new copy; now the old one goes.
    let mut round = Round::default();
    let _new = append(&mut w, &mut round, first + 2);
    assert!(!w.finish(round));
    assert_eq!(w.pending_records, 2, "old acknowledged, new pending");
    assert!(w.waiting_acks.is_empty());
}

/// An ack queued while the writer was busy sends no wake-up (`Journal::queue_acks`);
/// the writer must find it when it is about to wait, not wait past it: here the channel
/// is already closed, so waiting past the queue would end the writer with the ack
/// never applied.
#[test]
fn a_writer_about_to_wait_takes_acks_queued_without_a_wake_up() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut w, shared, first) = writer(dir.path(), JournalConfig::default());
    let mut round = Round::default();
    let _durable = append(&mut w, &mut round, first);
    assert!(!w.finish(round));
    assert_eq!(w.pending_records, 1);
    *shared.queued_acks() = QueuedAcks {
        seqs: vec![first],
        barrier: first + 1,
    };
    let (tx, rx) = mpsc::channel::<Command>();
    drop(tx);
    let Some(Ok(command)) = w.wait(&rx) else {
        panic!("the writer waited past a queued ack");
    };
    assert!(!shared.writer_waiting.load(Ordering::SeqCst));
    let mut round = Round::default();
    w.take(command, &mut round);
    assert!(!w.finish(round));
    assert_eq!(w.pending_records, 0, "the queued ack was applied");
    assert!(
        matches!(w.wait(&rx), Some(Err(()))),
        "nothing queued: the closed channel ends the writer"
    );
}
