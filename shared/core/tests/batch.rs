//! Batching streamed text into delta events.

use orchestrator_core::batch::DeltaBatcher;

/// A batcher whose first chunk (always written at once) has gone out.
fn started(max_chars: usize, max_age_ms: u64) -> DeltaBatcher {
    let mut b = DeltaBatcher::new(max_chars, max_age_ms);
    assert_eq!(b.push("first", 0).as_deref(), Some("first"));
    b
}

#[test]
fn the_first_chunk_of_a_stream_goes_out_at_once() {
    // GIVEN a batcher flushing at 256 characters or 50 ms
    let mut b = DeltaBatcher::new(256, 50);
    // WHEN the first token arrives
    // THEN it is written at once, however small: the watcher sees the first token now
    assert_eq!(b.push("Hi", 1_000).as_deref(), Some("Hi"));
    // AND the chunks after it are batched again
    assert_eq!(b.push(" there", 1_001), None);
    assert_eq!(b.deadline_ms(), Some(1_051));
    assert_eq!(b.due(1_051).as_deref(), Some(" there"));
    // AND an empty first chunk does not count as the first token
    let mut b = DeltaBatcher::new(256, 50);
    assert_eq!(b.push("", 0), None);
    assert_eq!(b.push("x", 1).as_deref(), Some("x"));
}

#[test]
fn a_batcher_holding_the_first_chunk_batches_it_like_the_rest() {
    // GIVEN a batcher for a store that bills every write: 200 ms, first chunk held
    let mut b = DeltaBatcher::new(4096, 200).holding_first();
    // WHEN the first tokens arrive THEN they wait for their batch
    assert_eq!(b.push("Hi", 1_000), None);
    assert_eq!(b.push(" there", 1_100), None);
    assert_eq!(b.deadline_ms(), Some(1_200));
    // AND go out together when it falls due
    assert_eq!(b.due(1_200).as_deref(), Some("Hi there"));
}

#[test]
fn a_batch_is_flushed_once_it_reaches_the_size_limit() {
    // GIVEN a batcher flushing at 11 characters or 1 s, its first chunk out
    let mut b = started(11, 1_000);
    // WHEN chunks arrive quickly
    assert_eq!(b.push("hello", 0), None);
    // THEN the chunk that reaches the limit exactly releases everything gathered so far
    assert_eq!(b.push(" world", 1).as_deref(), Some("hello world"));
    // AND the next batch starts empty
    assert_eq!(b.push("!", 2), None);
    assert_eq!(b.flush().as_deref(), Some("!"));
}

#[test]
fn a_batch_is_flushed_when_its_first_chunk_is_old_enough() {
    // GIVEN a batcher flushing at 1000 characters or 50 ms, its first chunk out
    let mut b = started(1_000, 50);
    assert_eq!(b.deadline_ms(), None);
    // WHEN chunks trickle in
    assert_eq!(b.push("a", 100), None);
    assert_eq!(b.deadline_ms(), Some(150));
    assert_eq!(b.push("b", 140), None);
    // THEN the age counts from the first chunk, not the last
    assert_eq!(b.due(149), None);
    assert_eq!(b.due(150).as_deref(), Some("ab"));
    // AND nothing is pending afterwards
    assert_eq!(b.deadline_ms(), None);
    assert_eq!(b.due(10_000), None);
    // AND a late chunk that is already old flushes on arrival
    assert_eq!(b.push("c", 200), None);
    assert_eq!(b.push("d", 260).as_deref(), Some("cd"));
}

#[test]
fn flush_hands_over_the_rest_once() {
    // GIVEN some pending text
    let mut b = started(100, 1_000);
    assert_eq!(b.push("tail", 0), None);
    // WHEN the stream ends
    // THEN flush returns it once, then nothing
    assert_eq!(b.flush().as_deref(), Some("tail"));
    assert_eq!(b.flush(), None);
    // AND empty chunks never produce an empty batch
    assert_eq!(b.push("", 5_000), None);
    assert_eq!(b.flush(), None);
}

#[test]
fn nothing_is_lost_or_reordered() {
    // GIVEN a long stream of chunks of varied sizes (some non-ASCII) at irregular times
    let mut seed: u64 = 0x2545_f491_4f6c_dd1d;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let words = ["a", "bc", "déf", "ghij ", "☀️", "\n", "", "klmnopqrstu"];
    let mut b = DeltaBatcher::new(16, 40);
    let (mut sent, mut received) = (String::new(), String::new());
    let mut batches = 0;
    let mut now = 0;
    for _ in 0..2_000 {
        now += next() % 30;
        let chunk = words[(next() % words.len() as u64) as usize];
        sent.push_str(chunk);
        // WHEN each is pushed, and the driver also polls between chunks
        for batch in [b.push(chunk, now), b.due(now + 5)].into_iter().flatten() {
            assert!(!batch.is_empty());
            received.push_str(&batch);
            batches += 1;
        }
    }
    received.extend(b.flush());
    // THEN the batches concatenate to exactly what was sent, in far fewer writes
    assert_eq!(received, sent);
    assert!(batches > 1 && batches < 2_000, "{batches} batches");
}
