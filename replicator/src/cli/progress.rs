//! Progress while a sync runs: indicatif bars on a terminal, a log line every few seconds otherwise.
use std::io::IsTerminal;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use ferry_replicator::replicate::RunProgress;
use indicatif::{HumanBytes, ProgressBar, ProgressStyle};
use tokio_util::sync::CancellationToken;

use super::ProgressMode;

pub fn use_bars(mode: ProgressMode) -> bool {
    match mode {
        ProgressMode::Auto => std::io::stderr().is_terminal(),
        ProgressMode::Bars => true,
        ProgressMode::Plain => false,
    }
}

/// Shows `progress` until `done` is cancelled. The returned handle finishes the display.
pub fn spawn(
    progress: Arc<RunProgress>,
    mode: ProgressMode,
    done: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    let bars = use_bars(mode);
    tokio::spawn(async move {
        let bar = bars.then(|| {
            let b = ProgressBar::new(0);
            b.set_style(
                ProgressStyle::with_template(
                    "{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} tags  {msg}",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
            );
            b
        });
        let period = if bars {
            Duration::from_millis(150)
        } else {
            Duration::from_secs(5)
        };
        loop {
            let finished = tokio::select! {
                _ = tokio::time::sleep(period) => false,
                _ = done.cancelled() => true,
            };
            let s = progress.stats.snapshot();
            let (done_tags, total) = (
                progress.tags_done.load(Ordering::Relaxed),
                progress.tags_total.load(Ordering::Relaxed),
            );
            let msg = format!(
                "{} copied, blobs {} copied / {} mounted / {} skipped",
                HumanBytes(s.bytes_copied),
                s.blobs_copied,
                s.blobs_mounted,
                s.blobs_skipped
            );
            match &bar {
                Some(b) => {
                    b.set_length(total);
                    b.set_position(done_tags);
                    b.set_message(msg);
                    b.tick();
                }
                None if !finished && total > 0 => {
                    tracing::info!(tags_done = done_tags, tags_total = total, "progress: {msg}")
                }
                None => {}
            }
            if finished {
                if let Some(b) = bar {
                    b.finish_and_clear();
                }
                return;
            }
        }
    })
}
