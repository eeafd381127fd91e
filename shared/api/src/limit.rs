//! Run starts per caller: a token bucket per key (the bearer token; one shared bucket when the
//! server has no API key). Per process: on Lambda each streamer instance keeps its own buckets,
//! so the reserved concurrency of the streamer bounds the total.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

/// Up to `per_minute` starts a minute per key, in bursts of at most that many.
pub struct StartLimit {
    per_minute: u32,
    buckets: Mutex<HashMap<String, Bucket>>,
}

struct Bucket {
    tokens: f64,
    at: Instant,
}

impl StartLimit {
    pub fn new(per_minute: u32) -> Self {
        Self {
            per_minute: per_minute.max(1),
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes one start for `key`, or says in how many whole seconds the next one is allowed.
    pub fn take(&self, key: &str, now: Instant) -> Result<(), u64> {
        let rate = f64::from(self.per_minute) / 60.0;
        let capacity = f64::from(self.per_minute);
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        let bucket = buckets.entry(key.to_owned()).or_insert(Bucket {
            tokens: capacity,
            at: now,
        });
        let elapsed = now.saturating_duration_since(bucket.at).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * rate).min(capacity);
        bucket.at = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            return Ok(());
        }
        Err(((1.0 - bucket.tokens) / rate).ceil().max(1.0) as u64)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn a_caller_past_its_rate_waits_and_others_do_not() {
        // GIVEN two starts a minute per key
        let limit = StartLimit::new(2);
        let t0 = Instant::now();
        // WHEN one key starts three runs at once
        assert_eq!(limit.take("a", t0), Ok(()));
        assert_eq!(limit.take("a", t0), Ok(()));
        // THEN the third is refused with the wait until the next token (30 s at 2/min)
        assert_eq!(limit.take("a", t0), Err(30));
        // AND another key is not affected
        assert_eq!(limit.take("b", t0), Ok(()));
        // AND after the wait the first key may start again
        assert_eq!(limit.take("a", t0 + Duration::from_secs(30)), Ok(()));
    }
}
