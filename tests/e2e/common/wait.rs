//! The harness's one way to wait: poll a condition until it holds, or fail after a limit with a
//! message that says what was awaited and what the world looked like (a log, the last scrape).

use std::future::Future;
use std::time::{Duration, Instant};

/// Polls `ready` every `every` (sleeping the thread) until it holds; after `limit`, panics with
/// `why()`.
pub fn until(
    limit: Duration,
    every: Duration,
    mut ready: impl FnMut() -> bool,
    why: impl FnOnce() -> String,
) {
    let deadline = Instant::now() + limit;
    while !ready() {
        assert!(Instant::now() < deadline, "{}", why());
        std::thread::sleep(every);
    }
}

/// [`until`] for async conditions, sleeping on the runtime instead of the thread.
pub async fn until_async<F: Future<Output = bool>>(
    limit: Duration,
    every: Duration,
    mut ready: impl FnMut() -> F,
    why: impl FnOnce() -> String,
) {
    let deadline = Instant::now() + limit;
    while !ready().await {
        assert!(Instant::now() < deadline, "{}", why());
        tokio::time::sleep(every).await;
    }
}
