//! Batching streamed text into delta events, so a long draft costs a bounded number of writes.

/// Gathers chunks and says when to flush: after `max_chars` characters or `max_age_ms`
/// milliseconds since the first unflushed chunk, whichever comes first. The very first chunk
/// of a stream is never held: the wait for the first token is the latency a watcher sees, so
/// it costs one extra write per stream rather than up to `max_age_ms` of it.
#[derive(Debug, Clone)]
pub struct DeltaBatcher {
    buf: String,
    first_at_ms: Option<u64>,
    /// Whether the first chunk has gone out.
    started: bool,
    max_chars: usize,
    max_age_ms: u64,
}

impl DeltaBatcher {
    pub fn new(max_chars: usize, max_age_ms: u64) -> Self {
        Self {
            buf: String::new(),
            first_at_ms: None,
            started: false,
            max_chars,
            max_age_ms,
        }
    }

    /// The same, but the first chunk waits like the others: for a store that bills every
    /// write, where the first token's extra write costs more than its wait.
    pub fn holding_first(mut self) -> Self {
        self.started = true;
        self
    }

    /// Adds a chunk; returns the batch to write if it is due.
    pub fn push(&mut self, chunk: &str, now_ms: u64) -> Option<String> {
        if chunk.is_empty() {
            return self.due(now_ms);
        }
        self.first_at_ms.get_or_insert(now_ms);
        self.buf.push_str(chunk);
        if !self.started {
            self.started = true;
            return self.flush();
        }
        self.due(now_ms)
    }

    /// The batch if its age or size says so.
    pub fn due(&mut self, now_ms: u64) -> Option<String> {
        let old = self
            .first_at_ms
            .is_some_and(|t| now_ms.saturating_sub(t) >= self.max_age_ms);
        if self.buf.len() >= self.max_chars || (old && !self.buf.is_empty()) {
            self.flush()
        } else {
            None
        }
    }

    /// Whatever is pending, now.
    pub fn flush(&mut self) -> Option<String> {
        self.first_at_ms = None;
        (!self.buf.is_empty()).then(|| std::mem::take(&mut self.buf))
    }

    /// When the pending batch falls due, if any is pending.
    pub fn deadline_ms(&self) -> Option<u64> {
        self.first_at_ms.map(|t| t + self.max_age_ms)
    }
}
