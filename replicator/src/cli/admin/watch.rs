//! Following an execution (`ferry admin executions watch ID`, `ferry admin run --watch`) through
//! the `WatchExecution` stream: one progress bar per running task on a terminal, plain lines
//! otherwise, one JSON array of snapshots with `-o json`.
//!
//! Invariants: exit 0 only when the execution succeeded, 1 when it failed or was stopped, 2 when
//! the stream ended before the execution did; a task's end is shown once even when two snapshots
//! carry it; with `-o json` stdout holds only the document (bars go to stderr).
use std::collections::{HashMap, HashSet};
use std::io::IsTerminal as _;
use std::time::Duration;

use ferry_proto::v1;
use indicatif::{HumanBytes, MultiProgress, ProgressBar, ProgressStyle};

use super::connection::Ctx;
use super::output::{one_line, out, reference, Failure, Format};
use super::time::span;
use ferry_proto::json::enum_name;

/// Follows `WatchExecution` until the stream ends; exit 0 when the execution succeeded, 1 when
/// it failed or was stopped.
pub async fn watch_execution(ctx: &Ctx, id: &str) -> Result<u8, Failure> {
    let what = format!("watch execution {id}");
    let req = v1::WatchExecutionRequest {
        id: id.to_string(),
        interval_ms: 0,
    };
    let mut stream = ctx
        .stream(&what, ctx.executions().await?.watch_execution(req))
        .await?;
    let mut view = WatchView::new(ctx.output);
    let mut snapshots = Vec::new();
    let mut last = None;
    let ended = loop {
        match stream.message().await {
            Ok(Some(p)) => {
                view.update(&p);
                last = p.execution.clone().or(last);
                if ctx.output == Format::Json {
                    snapshots.push(p);
                }
            }
            Ok(None) => break Ok(()),
            Err(s) => break Err(Failure::status(&what, &s)),
        }
    };
    let shown = view.finish();
    ended?;
    let Some(e) = last else {
        return Err(Failure::other(
            &what,
            "the stream ended without a snapshot".into(),
        ));
    };
    let state = v1::ExecutionState::try_from(e.state).unwrap_or_default();
    ctx.emit(&snapshots, || {
        if shown {
            String::new()
        } else {
            summary_line(&e)
        }
    });
    match state {
        v1::ExecutionState::Succeeded => Ok(0),
        v1::ExecutionState::Failed | v1::ExecutionState::Stopped => Ok(1),
        _ => Err(Failure::other(
            &what,
            format!(
                "the stream ended while the execution was {}",
                enum_name::<v1::ExecutionState>(e.state)
            ),
        )),
    }
}

/// A running task's bar: `team/app:v1 → us ████░░ 1.2 MiB/3.0 MiB blobs 1 copied, …`.
const TASK_BAR: &str = "  {prefix} {bar:25} {bytes}/{total_bytes} {msg}";

/// A watched execution's progress: one bar per running task on a terminal (stderr), plain lines
/// on stdout otherwise (table output only: JSON output keeps stdout for the document).
struct WatchView {
    multi: Option<MultiProgress>,
    header: Option<ProgressBar>,
    bars: HashMap<String, ProgressBar>,
    plain: bool,
    /// Tasks whose end was shown: a finished task may come in two snapshots.
    ended: HashSet<String>,
    state: i32,
}

impl WatchView {
    fn new(output: Format) -> WatchView {
        let tty = std::io::stderr().is_terminal();
        let multi = tty.then(MultiProgress::new);
        let header = multi.as_ref().map(|m| {
            let b = m.add(ProgressBar::new_spinner());
            b.set_style(
                ProgressStyle::with_template("{spinner} {msg}")
                    .unwrap_or_else(|_| ProgressStyle::default_spinner()),
            );
            b.enable_steady_tick(Duration::from_millis(120));
            b
        });
        WatchView {
            multi,
            header,
            bars: HashMap::new(),
            plain: !tty && output == Format::Table,
            ended: HashSet::new(),
            state: 0,
        }
    }

    /// Shows the tasks that ended, then the execution's state (the order they happened in).
    fn update(&mut self, p: &v1::ExecutionProgress) {
        for t in &p.tasks {
            match v1::TaskState::try_from(t.state).unwrap_or_default() {
                v1::TaskState::Running => {
                    let Some(multi) = &self.multi else { continue };
                    let bar = self.bars.entry(t.id.clone()).or_insert_with(|| {
                        let b = multi.add(ProgressBar::new(0));
                        b.set_style(
                            ProgressStyle::with_template(TASK_BAR)
                                .unwrap_or_else(|_| ProgressStyle::default_bar()),
                        );
                        b.set_prefix(task_label(t));
                        b
                    });
                    bar.set_length(t.bytes_total.max(t.bytes_done));
                    bar.set_position(t.bytes_done);
                    bar.set_message(blobs(t));
                }
                v1::TaskState::Succeeded | v1::TaskState::Failed | v1::TaskState::Stopped => {
                    if !self.ended.insert(t.id.clone()) {
                        continue;
                    }
                    if let Some(bar) = self.bars.remove(&t.id) {
                        bar.finish_and_clear();
                    }
                    let line = task_end_line(t);
                    match &self.multi {
                        Some(m) => {
                            let _ = m.println(line);
                        }
                        None if self.plain => out(&line),
                        None => {}
                    }
                }
                _ => {}
            }
        }
        if let Some(e) = &p.execution {
            if let Some(h) = &self.header {
                h.set_message(summary_line(e));
            }
            if e.state != self.state && self.plain {
                out(&summary_line(e));
            }
            self.state = e.state;
        }
    }

    /// Clears the bars; true when plain lines already showed the final state.
    fn finish(self) -> bool {
        for bar in self.bars.values() {
            bar.finish_and_clear();
        }
        if let Some(h) = self.header {
            h.finish_and_clear();
        }
        self.plain
    }
}

/// `execution ID (policy P): running, tasks 3 succeeded, 0 failed, 2 running, 1 pending`.
fn summary_line(e: &v1::Execution) -> String {
    let c = e.counts.unwrap_or_default();
    let mut s = format!(
        "execution {} (policy {}): {}, tasks {} succeeded, {} failed, {} running, {} pending",
        e.id,
        e.policy,
        enum_name::<v1::ExecutionState>(e.state),
        c.succeeded,
        c.failed,
        c.running,
        c.pending
    );
    if c.stopped > 0 {
        s.push_str(&format!(", {} stopped", c.stopped));
    }
    if e.ended_at_ms > 0 {
        s.push_str(&format!(", took {}", span(e.started_at_ms, e.ended_at_ms)));
    }
    if !e.error.is_empty() {
        s.push_str(&format!(": {}", one_line(&e.error)));
    }
    s
}

fn task_label(t: &v1::Task) -> String {
    format!(
        "{} → {}",
        reference(&t.repository, &t.reference),
        t.destination
    )
}

fn blobs(t: &v1::Task) -> String {
    format!(
        "blobs {} copied, {} mounted, {} skipped",
        t.blobs_copied, t.blobs_mounted, t.blobs_skipped
    )
}

fn task_end_line(t: &v1::Task) -> String {
    let mut s = format!(
        "{}: {} ({}), {}, {}",
        task_label(t),
        enum_name::<v1::TaskState>(t.state),
        t.outcome,
        HumanBytes(t.bytes_done),
        blobs(t)
    );
    if !t.error.is_empty() {
        s.push_str(&format!(": {}", one_line(&t.error)));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bar_template_is_valid() {
        assert!(ProgressStyle::with_template(TASK_BAR).is_ok());
    }
}
