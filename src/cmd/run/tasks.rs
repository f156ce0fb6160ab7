//! The agent's tasks, supervised: each runs until the stop token is cancelled. One that ends
//! before (it returned, or panicked) is an error: logged with its name, it takes `/readyz`
//! down, and `run` reports it when the agent stops. Threads (the interposer's, the tap's) are
//! watched the same way through a blocking join.

use crate::http::Readiness;
use std::collections::HashMap;
use std::future::Future;
use tokio::task::{Id, JoinError, JoinSet};

/// What the agent runs, by name.
pub(super) struct Tasks {
    set: JoinSet<()>,
    names: HashMap<Id, &'static str>,
    ready: Readiness,
    ended_early: Vec<&'static str>,
}

impl Tasks {
    /// No task yet; `ready` goes down when one ends early.
    pub(super) fn new(ready: Readiness) -> Self {
        Self {
            set: JoinSet::new(),
            names: HashMap::new(),
            ready,
            ended_early: Vec::new(),
        }
    }

    /// Runs `task` as `name`.
    pub(super) fn spawn(
        &mut self,
        name: &'static str,
        task: impl Future<Output = ()> + Send + 'static,
    ) {
        let handle = self.set.spawn(task);
        self.names.insert(handle.id(), name);
    }

    /// Watches `thread` as `name`: it ends when the thread does.
    pub(super) fn watch_thread(&mut self, name: &'static str, thread: std::thread::JoinHandle<()>) {
        self.spawn(name, async move {
            // A panic in the thread is the thread's end too; the log names it below.
            if let Ok(Err(_)) = tokio::task::spawn_blocking(move || thread.join()).await {
                tracing::error!(task = name, "thread panicked");
            }
        });
    }

    /// Runs until `shutdown` resolves, handling the tasks that end before it.
    pub(super) async fn until(&mut self, shutdown: impl Future<Output = ()>) {
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                () = &mut shutdown => return,
                Some(done) = self.set.join_next_with_id() => self.ended(done, true),
            }
        }
    }

    /// Waits for every task to end (after the stop token was cancelled); returns the names of
    /// those that ended before it.
    pub(super) async fn drain(mut self) -> Vec<&'static str> {
        while let Some(done) = self.set.join_next_with_id().await {
            self.ended(done, false);
        }
        self.ended_early
    }

    fn ended(&mut self, done: Result<(Id, ()), JoinError>, early: bool) {
        let id = match &done {
            Ok((id, ())) => *id,
            Err(e) => e.id(),
        };
        let name = self.names.remove(&id).unwrap_or("unnamed");
        match done {
            Err(e) if e.is_panic() => {
                let what = e.into_panic();
                let message = what
                    .downcast_ref::<&str>()
                    .map(|s| (*s).to_string())
                    .or_else(|| what.downcast_ref::<String>().cloned())
                    .unwrap_or_default();
                tracing::error!(task = name, panic = %message, "task panicked; /readyz reports not ready");
                self.fail(name);
            }
            Err(_) => {}
            Ok(_) if early => {
                tracing::error!(
                    task = name,
                    "task ended before shutdown; /readyz reports not ready"
                );
                self.fail(name);
            }
            Ok(_) => {}
        }
    }

    fn fail(&mut self, name: &'static str) {
        self.ready.set(false);
        self.ended_early.push(name);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use tokio_util::sync::CancellationToken;

    #[tokio::test(start_paused = true)]
    async fn a_task_that_ends_early_takes_readiness_down_and_is_named() {
        let ready = Readiness::default();
        ready.set(true);
        let stop = CancellationToken::new();
        let mut tasks = Tasks::new(ready.clone());
        let s = stop.clone();
        tasks.spawn("steady", async move { s.cancelled().await });
        tasks.spawn("quits", async {});
        tasks.spawn("panics", async {
            tokio::time::sleep(Duration::from_secs(1)).await;
            panic!("boom");
        });
        tasks
            .until(tokio::time::sleep(Duration::from_secs(5)))
            .await;
        assert!(!ready.get());
        stop.cancel();
        let mut early = tasks.drain().await;
        early.sort_unstable();
        assert_eq!(early, ["panics", "quits"]);
    }

    #[tokio::test]
    async fn tasks_that_run_until_stopped_are_no_error() {
        let ready = Readiness::default();
        ready.set(true);
        let stop = CancellationToken::new();
        let mut tasks = Tasks::new(ready.clone());
        for name in ["a", "b"] {
            let s = stop.clone();
            tasks.spawn(name, async move { s.cancelled().await });
        }
        let thread_stop = stop.clone();
        let thread = std::thread::spawn(move || {
            while !thread_stop.is_cancelled() {
                std::thread::sleep(Duration::from_millis(1));
            }
        });
        tasks.watch_thread("thread", thread);
        // (Paused time would not advance while a blocking task runs: shut down at once.)
        tokio::task::yield_now().await;
        tasks.until(std::future::ready(())).await;
        assert!(ready.get());
        stop.cancel();
        assert!(tasks.drain().await.is_empty());
    }
}
