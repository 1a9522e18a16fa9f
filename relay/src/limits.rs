//! Explicit limits on what guessing costs: failed admin logins and failed
//! device-code approvals back off per account (or approver) and per client
//! address, and argon2 verifications (≈19 MiB and tens of milliseconds
//! each) run at most [`ARGON2_CONCURRENCY`] at a time. Each refusal says
//! when to try again (HTTP 429 with `Retry-After`).
//!
//! The counters live in this relay's memory: behind a load balancer of N
//! relays a guesser gets up to N times the budget (shared counters in the
//! session store are future work). The client address is the TCP peer,
//! never a forwarded header a client could write.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::Semaphore;
use tokio::time::Instant;

/// Failures a key may have before it must wait (the next attempt waits).
pub const FREE_FAILURES: u32 = 5;
/// The first wait; each further failure doubles it.
pub const FIRST_BACKOFF: Duration = Duration::from_secs(1);
/// The longest wait.
pub const MAX_BACKOFF: Duration = Duration::from_secs(15 * 60);
/// Failures are forgotten this long after the last one.
pub const FAILURE_MEMORY: Duration = Duration::from_secs(15 * 60);
/// Client addresses get more failures than one account: several people
/// may share an address (NAT).
pub const ADDRESS_FREE_FAILURES: u32 = 20;
/// argon2 verifications running at once, per relay.
pub const ARGON2_CONCURRENCY: usize = 2;
/// How long a login waits for an argon2 slot before it is told to retry.
pub const ARGON2_QUEUE_WAIT: Duration = Duration::from_secs(5);
/// Keys remembered at most; past it, forgotten failures are swept out.
const MAX_TRACKED: usize = 100_000;

/// "Not now": try again after this long.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("too many failed attempts: try again in {} s", retry_after_s(*.0))]
pub struct TooMany(pub Duration);

/// Whole seconds to wait, at least one (the `Retry-After` value).
pub fn retry_after_s(wait: Duration) -> u64 {
    wait.as_secs() + u64::from(wait.subsec_nanos() > 0)
}

#[derive(Debug, Clone, Copy)]
struct Failures {
    count: u32,
    last: Instant,
    blocked_until: Option<Instant>,
}

/// Failure counts with exponential backoff, by key (an email, an
/// address, an approver).
#[derive(Debug)]
pub struct Backoff {
    free: u32,
    entries: Mutex<HashMap<String, Failures>>,
}

impl Backoff {
    pub fn new(free: u32) -> Self {
        Self {
            free,
            entries: Mutex::default(),
        }
    }

    /// Refuse while `key` must wait.
    pub fn check(&self, key: &str, now: Instant) -> Result<(), TooMany> {
        let entries = self.lock();
        match entries.get(key).and_then(|f| f.blocked_until) {
            Some(until) if until > now => Err(TooMany(until - now)),
            _ => Ok(()),
        }
    }

    /// Count a failure of `key`; once it has used its free ones it must
    /// wait, twice as long after each further failure.
    pub fn failed(&self, key: &str, now: Instant) {
        let mut entries = self.lock();
        if entries.len() >= MAX_TRACKED {
            entries.retain(|_, f| now.duration_since(f.last) < FAILURE_MEMORY);
        }
        let entry = entries.entry(key.to_owned()).or_insert(Failures {
            count: 0,
            last: now,
            blocked_until: None,
        });
        if now.duration_since(entry.last) >= FAILURE_MEMORY {
            entry.count = 0;
        }
        entry.count = entry.count.saturating_add(1);
        entry.last = now;
        if let Some(over) = entry.count.checked_sub(self.free) {
            let wait = FIRST_BACKOFF
                .saturating_mul(1u32 << over.min(20))
                .min(MAX_BACKOFF);
            entry.blocked_until = Some(now + wait);
        }
    }

    /// `key` succeeded: its failures are forgotten.
    pub fn succeeded(&self, key: &str) {
        self.lock().remove(key);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Failures>> {
        // Only whole-entry updates happen under the lock: never torn.
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Every limit of one relay process.
#[derive(Debug)]
pub struct Limits {
    /// Failed admin logins, by email.
    pub login_accounts: Backoff,
    /// Failed admin logins, by client address.
    pub login_addresses: Backoff,
    /// Failed device-code approvals, by approver (token hash).
    pub approvers: Backoff,
    /// Failed device-code approvals, by client address.
    pub approve_addresses: Backoff,
    /// argon2 verifications in progress.
    pub argon2: Semaphore,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            login_accounts: Backoff::new(FREE_FAILURES),
            login_addresses: Backoff::new(ADDRESS_FREE_FAILURES),
            approvers: Backoff::new(FREE_FAILURES),
            approve_addresses: Backoff::new(ADDRESS_FREE_FAILURES),
            argon2: Semaphore::new(ARGON2_CONCURRENCY),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_failures_then_doubling_waits_up_to_the_cap() {
        let backoff = Backoff::new(3);
        let t0 = Instant::now();
        for _ in 0..2 {
            backoff.failed("ada", t0);
        }
        assert_eq!(backoff.check("ada", t0), Ok(()), "three are free");
        backoff.failed("ada", t0);
        assert_eq!(backoff.check("ada", t0), Err(TooMany(FIRST_BACKOFF)));
        assert_eq!(backoff.check("ada", t0 + FIRST_BACKOFF), Ok(()));
        backoff.failed("ada", t0);
        assert_eq!(backoff.check("ada", t0), Err(TooMany(FIRST_BACKOFF * 2)));
        for _ in 0..30 {
            backoff.failed("ada", t0);
        }
        assert_eq!(backoff.check("ada", t0), Err(TooMany(MAX_BACKOFF)));
        assert_eq!(backoff.check("bob", t0), Ok(()), "keys are separate");
    }

    #[test]
    fn success_and_time_forget_failures() {
        let backoff = Backoff::new(2);
        let t0 = Instant::now();
        backoff.failed("ada", t0);
        backoff.failed("ada", t0);
        assert!(backoff.check("ada", t0).is_err());
        backoff.succeeded("ada");
        assert_eq!(backoff.check("ada", t0), Ok(()));
        backoff.failed("ada", t0);
        let later = t0 + FAILURE_MEMORY;
        backoff.failed("ada", later);
        assert_eq!(backoff.check("ada", later), Ok(()), "the old one expired");
    }

    #[test]
    fn retry_after_rounds_up() {
        assert_eq!(retry_after_s(Duration::from_millis(1)), 1);
        assert_eq!(retry_after_s(Duration::from_secs(2)), 2);
        assert_eq!(retry_after_s(Duration::from_millis(2001)), 3);
    }
}
