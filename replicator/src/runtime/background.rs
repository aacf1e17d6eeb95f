//! Long-running background routines under one supervisor. The scheduler, the safety net, the tag
//! pollers and the forwarders each state their work ([`Routine::step`]) and how long to wait after
//! it ([`Next`]); [`supervise`] owns the rest: the wait a shutdown cuts short, the capped,
//! jittered backoff after failed steps, and the status each routine reports in the process's
//! [`Statuses`]. (The job workers' claim loop is not a routine: it has its own lease and grace.)
//!
//! # Invariants
//! - **Cancellation ends a routine promptly**: a wait at once; a step at once when the routine
//!   may be dropped half-way ([`Routine::interruptible`]), otherwise when the step ends.
//! - **Failures back off**: after `n` failed steps in a row the routine waits
//!   [`Routine::retry_in`] — by default the crate's one backoff schedule
//!   ([`crate::backoff`]) with [`Routine::retry`] — and the count resets on the first
//!   success. Every failure is logged once, here.
//! - **Status is current**: `Busy` while a step runs, `Idle` or `Backoff` while it waits, `Stopped`
//!   once it returned; with the failures in a row, the errors in total and the last error.
use std::collections::BTreeMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::backoff;
use crate::backoff::RetryPolicy;
use crate::locks::lock;

/// Backoff between failed steps unless a routine says otherwise: from 1 s, doubling, capped at
/// one minute.
pub const RETRY: RetryPolicy = RetryPolicy {
    max_attempts: u32::MAX,
    base: Duration::from_secs(1),
    max: Duration::from_secs(60),
};

/// What a routine does after a successful step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// Step again at once (more work is waiting).
    Now,
    /// Wait this long, then step again.
    After(Duration),
    /// Nothing left to do: the routine ends.
    Done,
}

/// One long-running loop: a step of work, then a wait.
pub trait Routine: Send + 'static {
    /// Why a step failed; logged and kept as the routine's last error.
    type Error: std::fmt::Display + Send;

    /// Names the routine in logs and statuses (`scheduler`, `safety-net`, `poller/<registry>`,
    /// `forwarder/<region>`).
    fn name(&self) -> String;

    /// One unit of work.
    fn step(&mut self) -> impl Future<Output = Result<Next, Self::Error>> + Send;

    /// Whether a step may be dropped half-way on shutdown (nothing is lost that the next start
    /// does not redo). Default: yes.
    fn interruptible(&self) -> bool {
        true
    }

    /// The backoff schedule of [`Routine::retry_in`]. Default: [`RETRY`].
    fn retry(&self) -> RetryPolicy {
        RETRY
    }

    /// How long to wait after `failures` failed steps in a row, the last with `error`. Default:
    /// the capped, jittered exponential backoff of [`Routine::retry`].
    fn retry_in(&self, failures: u32, error: &Self::Error) -> Duration {
        let _ = error;
        backoff::delay(&self.retry(), failures)
    }
}

/// What a routine is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// A step runs.
    Busy,
    /// Waiting after a successful step.
    Idle,
    /// Waiting after a failed step.
    Backoff,
    /// Returned (shutdown, or [`Next::Done`]).
    Stopped,
}

/// A routine's status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    pub state: State,
    /// Failed steps since the last success.
    pub failures: u32,
    /// Failed steps since start.
    pub errors: u64,
    pub last_error: Option<String>,
}

impl Default for Status {
    fn default() -> Status {
        Status {
            state: State::Busy,
            failures: 0,
            errors: 0,
            last_error: None,
        }
    }
}

/// The statuses of a process's routines, by name. Cheap to clone (shared).
#[derive(Debug, Clone, Default)]
pub struct Statuses(Arc<Mutex<BTreeMap<String, Status>>>);

impl Statuses {
    /// The status of the routine named `name`.
    pub fn get(&self, name: &str) -> Option<Status> {
        lock(&self.0).get(name).cloned()
    }

    /// Every routine's status, by name.
    pub fn all(&self) -> BTreeMap<String, Status> {
        lock(&self.0).clone()
    }

    fn update(&self, name: &str, change: impl FnOnce(&mut Status)) {
        change(lock(&self.0).entry(name.to_string()).or_default());
    }
}

/// Runs `routine` until `cancel` fires or it is done, keeping its status in `statuses`.
pub async fn supervise<R: Routine>(mut routine: R, statuses: Statuses, cancel: CancellationToken) {
    let name = routine.name();
    let mut failures = 0u32;
    while !cancel.is_cancelled() {
        statuses.update(&name, |s| s.state = State::Busy);
        let result = if routine.interruptible() {
            tokio::select! {
                r = routine.step() => r,
                () = cancel.cancelled() => break,
            }
        } else {
            routine.step().await
        };
        let wait = match result {
            Ok(Next::Done) => break,
            Ok(next) => {
                failures = 0;
                statuses.update(&name, |s| {
                    s.state = State::Idle;
                    s.failures = 0;
                });
                match next {
                    Next::After(wait) => wait,
                    Next::Now | Next::Done => Duration::ZERO,
                }
            }
            Err(error) => {
                failures = failures.saturating_add(1);
                let wait = routine.retry_in(failures, &error);
                let error = error.to_string();
                tracing::warn!(routine = %name, attempt = failures, retry_in_ms = wait.as_millis() as u64, error = %error, "background step failed; retrying");
                statuses.update(&name, |s| {
                    s.state = State::Backoff;
                    s.failures = failures;
                    s.errors += 1;
                    s.last_error = Some(error);
                });
                wait
            }
        };
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = cancel.cancelled() => break,
        }
    }
    statuses.update(&name, |s| s.state = State::Stopped);
}

/// Spawns routines under one cancellation token and one [`Statuses`], and waits for them.
#[derive(Debug, Clone)]
pub struct Supervisor {
    cancel: CancellationToken,
    statuses: Statuses,
    tasks: TaskTracker,
}

impl Supervisor {
    /// Routines that stop on `cancel`.
    pub fn new(cancel: CancellationToken) -> Supervisor {
        Supervisor {
            cancel,
            statuses: Statuses::default(),
            tasks: TaskTracker::new(),
        }
    }

    /// Supervises `routine` in a task of its own.
    pub fn spawn<R: Routine>(&self, routine: R) {
        self.tasks.spawn(supervise(
            routine,
            self.statuses.clone(),
            self.cancel.clone(),
        ));
    }

    /// Spawns a task that is not a routine (a server) but stops on the same token and is waited
    /// for with the routines.
    pub fn spawn_task(&self, task: impl Future<Output = ()> + Send + 'static) {
        self.tasks.spawn(task);
    }

    /// A supervisor whose routines also stop on their own token ([`Supervisor::stop`]), sharing
    /// these statuses and this wait (a generation of pollers replaced on a reload).
    pub fn child(&self) -> Supervisor {
        Supervisor {
            cancel: self.cancel.child_token(),
            statuses: self.statuses.clone(),
            tasks: self.tasks.clone(),
        }
    }

    /// Stops this supervisor's routines (and its children's).
    pub fn stop(&self) {
        self.cancel.cancel();
    }

    /// The token the routines stop on.
    pub fn token(&self) -> CancellationToken {
        self.cancel.clone()
    }

    pub fn statuses(&self) -> &Statuses {
        &self.statuses
    }

    /// Waits until every task spawned here (or by a child) has returned; call after
    /// [`Supervisor::stop`]. Nothing may be spawned afterwards.
    pub async fn wait(&self) {
        self.tasks.close();
        self.tasks.wait().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Steps that fail `failing` times, then succeed, counting every step.
    struct Flaky {
        failing: u32,
        steps: Arc<Mutex<u32>>,
        wait: Duration,
    }

    impl Routine for Flaky {
        type Error = String;

        fn name(&self) -> String {
            "flaky".into()
        }

        async fn step(&mut self) -> Result<Next, String> {
            let mut steps = lock(&self.steps);
            *steps += 1;
            if *steps <= self.failing {
                return Err(format!("failure {steps}"));
            }
            Ok(Next::After(self.wait))
        }

        fn retry(&self) -> RetryPolicy {
            RetryPolicy {
                max_attempts: u32::MAX,
                base: Duration::from_secs(10),
                max: Duration::from_secs(40),
            }
        }
    }

    fn flaky(failing: u32, wait: Duration) -> (Flaky, Arc<Mutex<u32>>) {
        let steps = Arc::new(Mutex::new(0));
        let routine = Flaky {
            failing,
            steps: steps.clone(),
            wait,
        };
        (routine, steps)
    }

    #[tokio::test(start_paused = true)]
    async fn a_cancelled_routine_stops_during_its_wait_and_reports_stopped() {
        let (routine, steps) = flaky(0, Duration::from_secs(3600));
        let supervisor = Supervisor::new(CancellationToken::new());
        supervisor.spawn(routine);
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(*lock(&steps), 1);
        assert_eq!(
            supervisor.statuses().get("flaky").unwrap().state,
            State::Idle
        );
        supervisor.stop();
        tokio::time::timeout(Duration::from_millis(1), supervisor.wait())
            .await
            .expect("stops without waiting out the hour");
        assert_eq!(
            supervisor.statuses().get("flaky").unwrap().state,
            State::Stopped
        );
    }

    #[tokio::test(start_paused = true)]
    async fn failed_steps_back_off_and_the_first_success_resets_the_count() {
        let (routine, steps) = flaky(2, Duration::from_secs(3600));
        let supervisor = Supervisor::new(CancellationToken::new());
        supervisor.spawn(routine);
        tokio::time::sleep(Duration::from_millis(1)).await;
        let status = supervisor.statuses().get("flaky").unwrap();
        assert_eq!(status.state, State::Backoff);
        assert_eq!((status.failures, status.errors), (1, 1));
        assert_eq!(status.last_error.as_deref(), Some("failure 1"));
        // The first retry comes within [5 s, 10 s], not at once.
        tokio::time::sleep(Duration::from_secs(4)).await;
        assert_eq!(*lock(&steps), 1);
        tokio::time::sleep(Duration::from_secs(6)).await;
        assert_eq!(*lock(&steps), 2);
        assert_eq!(supervisor.statuses().get("flaky").unwrap().failures, 2);
        // The second within [10 s, 20 s] of it; then the step succeeds.
        tokio::time::sleep(Duration::from_secs(20)).await;
        assert_eq!(*lock(&steps), 3);
        let status = supervisor.statuses().get("flaky").unwrap();
        assert_eq!(status.state, State::Idle);
        assert_eq!((status.failures, status.errors), (0, 2));
        assert_eq!(status.last_error.as_deref(), Some("failure 2"));
        supervisor.stop();
        supervisor.wait().await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_successful_step_waits_what_the_routine_asked() {
        let (routine, steps) = flaky(0, Duration::from_secs(30));
        let supervisor = Supervisor::new(CancellationToken::new());
        supervisor.spawn(routine);
        tokio::time::sleep(Duration::from_secs(29)).await;
        assert_eq!(*lock(&steps), 1);
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert_eq!(*lock(&steps), 2);
        supervisor.stop();
        supervisor.wait().await;
    }

    /// A step that never ends unless dropped.
    struct Stuck {
        interruptible: bool,
    }

    impl Routine for Stuck {
        type Error = std::convert::Infallible;

        fn name(&self) -> String {
            "stuck".into()
        }

        async fn step(&mut self) -> Result<Next, Self::Error> {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            Ok(Next::Done)
        }

        fn interruptible(&self) -> bool {
            self.interruptible
        }
    }

    #[tokio::test(start_paused = true)]
    async fn cancellation_drops_an_interruptible_step_but_lets_another_finish() {
        let supervisor = Supervisor::new(CancellationToken::new());
        supervisor.spawn(Stuck {
            interruptible: true,
        });
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(
            supervisor.statuses().get("stuck").unwrap().state,
            State::Busy
        );
        supervisor.stop();
        tokio::time::timeout(Duration::from_millis(1), supervisor.wait())
            .await
            .expect("the step is dropped");

        let supervisor = Supervisor::new(CancellationToken::new());
        supervisor.spawn(Stuck {
            interruptible: false,
        });
        tokio::time::sleep(Duration::from_secs(1)).await;
        supervisor.stop();
        let waited = tokio::time::Instant::now();
        supervisor.wait().await;
        assert!(waited.elapsed() >= Duration::from_secs(3598));
    }

    #[tokio::test(start_paused = true)]
    async fn stopping_a_child_leaves_its_parents_routines_running() {
        let parent = Supervisor::new(CancellationToken::new());
        let child = parent.child();
        let (a, a_steps) = flaky(0, Duration::from_secs(10));
        parent.spawn(a);
        let (mut b, _) = flaky(0, Duration::from_secs(10));
        b.failing = 0;
        child.spawn(Renamed(b, "child"));
        tokio::time::sleep(Duration::from_secs(1)).await;
        child.stop();
        tokio::time::sleep(Duration::from_secs(10)).await;
        assert_eq!(
            parent.statuses().get("child").unwrap().state,
            State::Stopped
        );
        assert_eq!(*lock(&a_steps), 2);
        parent.stop();
        parent.wait().await;
    }

    /// `Flaky` under another name.
    struct Renamed(Flaky, &'static str);

    impl Routine for Renamed {
        type Error = String;

        fn name(&self) -> String {
            self.1.into()
        }

        fn step(&mut self) -> impl Future<Output = Result<Next, String>> + Send {
            self.0.step()
        }
    }
}
