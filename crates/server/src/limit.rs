//! Requests a remote caller may make: a steady rate with room for a burst, per principal.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

use crate::Problem;

pub struct Limiter {
    per_second: f64,
    burst: f64,
    buckets: Mutex<HashMap<String, (f64, Instant)>>,
}

impl Limiter {
    pub fn new(per_second: f64, burst: f64) -> Limiter {
        Limiter {
            per_second,
            burst,
            buckets: Default::default(),
        }
    }

    /// Takes one request from `who`'s bucket, or says how long to wait.
    pub fn take(&self, who: &str) -> Result<(), Problem> {
        let now = Instant::now();
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        let (tokens, at) = buckets.entry(who.to_string()).or_insert((self.burst, now));
        *tokens =
            (*tokens + now.duration_since(*at).as_secs_f64() * self.per_second).min(self.burst);
        *at = now;
        if *tokens < 1.0 {
            let wait = (1.0 - *tokens) / self.per_second;
            return Err(Problem::rate_limited(format!(
                "too many requests from {who}: at most {} a second; try again in {:.1}s",
                self.per_second, wait
            )));
        }
        *tokens -= 1.0;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_limiter_allows_a_burst_then_the_rate() {
        let limiter = Limiter::new(10.0, 3.0);
        for _ in 0..3 {
            limiter.take("home").unwrap();
        }
        let err = limiter.take("home").unwrap_err();
        assert_eq!(err.code, "rate-limited");
        limiter.take("provider:acme").unwrap();
        std::thread::sleep(std::time::Duration::from_millis(120));
        limiter.take("home").unwrap();
    }
}
