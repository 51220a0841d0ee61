//! The daemon's tasks, owned: each runs under a name in one `JoinSet`; the
//! daemon learns when one ends (returned, failed or panicked) instead of
//! running on without it, and its shutdown is bounded (a task that does
//! not finish in the grace period, such as an API stream a client holds
//! open, is cancelled).

use std::{collections::HashMap, future::Future, time::Duration};

use tokio::task::{Id, JoinSet};

/// How a task ended.
pub type Outcome = Result<(), String>;

/// The named tasks of a daemon.
#[derive(Default)]
pub struct Tasks {
    set: JoinSet<Outcome>,
    names: HashMap<Id, &'static str>,
}

impl Tasks {
    pub fn new() -> Tasks {
        Tasks::default()
    }

    /// Runs `task` as `name`.
    pub fn spawn<F>(&mut self, name: &'static str, task: F)
    where
        F: Future<Output = Outcome> + Send + 'static,
    {
        let handle = self.set.spawn(task);
        self.names.insert(handle.id(), name);
    }

    /// How many tasks are still running.
    pub fn len(&self) -> usize {
        self.set.len()
    }

    pub fn is_empty(&self) -> bool {
        self.set.is_empty()
    }

    /// Waits until a task ends: its name and how it ended (a panic is an
    /// `Err` with the panic's message). Pending for ever when none runs,
    /// so it can sit in a `select!` beside other branches.
    pub async fn next_end(&mut self) -> (&'static str, Outcome) {
        match self.set.join_next_with_id().await {
            Some(Ok((id, outcome))) => (self.name(id), outcome),
            Some(Err(e)) => {
                let name = self.name(e.id());
                let why = if e.is_panic() {
                    let p = e.into_panic();
                    let msg = p
                        .downcast_ref::<&str>()
                        .map(|s| (*s).to_owned())
                        .or_else(|| p.downcast_ref::<String>().cloned())
                        .unwrap_or_else(|| "a panic without a message".into());
                    format!("panicked: {msg}")
                } else {
                    "cancelled".into()
                };
                (name, Err(why))
            }
            None => std::future::pending().await,
        }
    }

    fn name(&mut self, id: Id) -> &'static str {
        self.names.remove(&id).unwrap_or("unnamed task")
    }

    /// After the stop was signalled: waits up to `grace` for every task,
    /// then cancels what is left; returns the names of the cancelled tasks.
    pub async fn shut_down(mut self, grace: Duration) -> Vec<&'static str> {
        let all_done = async {
            while !self.set.is_empty() {
                let _ = self.next_end().await;
            }
        };
        if tokio::time::timeout(grace, all_done).await.is_ok() {
            return Vec::new();
        }
        self.set.abort_all();
        let mut left: Vec<&'static str> = self.names.values().copied().collect();
        left.sort_unstable();
        // Reap the cancelled tasks (each ends at its next await point).
        while self.set.join_next().await.is_some() {}
        left
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn names_the_task_that_ended_and_why() {
        let mut t = Tasks::new();
        t.spawn("forever", std::future::pending());
        t.spawn("fails", async { Err("no route".into()) });
        assert_eq!(t.next_end().await, ("fails", Err("no route".into())));
        t.spawn("panics", async { panic!("injected") });
        assert_eq!(
            t.next_end().await,
            ("panics", Err("panicked: injected".into()))
        );
        assert_eq!(t.len(), 1);
    }

    #[tokio::test]
    async fn a_shutdown_is_bounded_and_names_what_it_cancelled() {
        let mut t = Tasks::new();
        t.spawn("api stream held open", std::future::pending());
        t.spawn("quick", async { Ok(()) });
        let started = std::time::Instant::now();
        let left = t.shut_down(Duration::from_millis(200)).await;
        assert_eq!(left, ["api stream held open"]);
        assert!(started.elapsed() < Duration::from_secs(5));
    }
}
