//! `ferry export` and `ferry import` (README "Air-gapped sites"): flags to options, progress as
//! `ferry sync` shows it, the summary, and the same exit codes — 0 done, 1 a tag was not exported
//! / a destination does not match the layout, 2 error (config, unreadable or hostile layout,
//! source unreachable), 130 interrupted.
//!
//! Each side contacts only its registries: an export builds a client with credentials for the
//! policy's source alone, an import for its destinations alone, so one config file serves both
//! sites without the other site's secrets.
use std::path::Path;
use std::sync::Arc;

use ferry_replicator::config::Config;
use ferry_replicator::layout::export::{export_policy, ExportOptions, ExportReport};
use ferry_replicator::layout::import::import_policy;
use ferry_replicator::layout::LayoutSource;
use ferry_replicator::replicate::{
    PreparedPolicy, Registries, RunProgress, SyncOptions, SyncReport, TagOutcome,
};
use indicatif::HumanBytes;
use tokio_util::sync::CancellationToken;

use super::commands::{cancel_on_signal, print_sync_summary, selected, ERROR, INTERRUPTED, NO, OK};
use super::{progress, ExportArgs, ImportArgs, RunFlags};

/// Which side of the air gap a command runs on.
#[derive(Clone, Copy)]
enum Side {
    Source,
    Destinations,
}

/// The policy `name` of the config at `path`, with clients for the registries of `side` only;
/// prints the problem on failure.
fn load(path: &Path, name: &str, side: Side) -> Option<PreparedPolicy> {
    let mut config = match Config::load(path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            return None;
        }
    };
    let policy = match selected(&config, Some(name)) {
        Ok(p) => p[0].clone(),
        Err(e) => {
            eprintln!("error: {e:#}");
            return None;
        }
    };
    let used: Vec<String> = match side {
        Side::Source => vec![policy.src_registry.name.clone()],
        Side::Destinations => policy.destinations().map(|d| d.name.clone()).collect(),
    };
    // The other side's registries are never contacted: their credentials need not be present.
    for r in config
        .registries
        .iter_mut()
        .filter(|r| !used.contains(&r.name))
    {
        r.credential = None;
    }
    match Registries::from_config(&config).and_then(|r| PreparedPolicy::new(&policy, &r)) {
        Ok(p) => Some(p),
        Err(e) => {
            eprintln!("error: {e}");
            None
        }
    }
}

/// Runs `work` with signals turning into cancellation and the progress display on.
async fn with_progress<T>(
    flags: &RunFlags,
    work: impl AsyncFnOnce(CancellationToken, Arc<RunProgress>) -> T,
) -> (T, bool) {
    let cancel = CancellationToken::new();
    let signals = cancel_on_signal(cancel.clone());
    let run_progress = Arc::new(RunProgress::default());
    let display_done = CancellationToken::new();
    let display = progress::spawn(run_progress.clone(), flags.progress, display_done.clone());
    let out = work(cancel.clone(), run_progress).await;
    display_done.cancel();
    let _ = display.await;
    let interrupted = cancel.is_cancelled();
    cancel.cancel();
    let _ = signals.await;
    (out, interrupted)
}

pub async fn export(args: ExportArgs) -> u8 {
    let Some(prepared) = load(&args.config, &args.policy, Side::Source) else {
        return ERROR;
    };
    let (result, interrupted) = with_progress(&args.run, async |cancel, progress| {
        let opts = ExportOptions {
            to: args.to.clone(),
            since: args.since.clone(),
            cancel,
            tag_parallelism: args.run.tag_parallelism,
            blob_parallelism: args.run.blob_parallelism,
            progress,
        };
        export_policy(&prepared, &opts).await
    })
    .await;
    if interrupted {
        return INTERRUPTED;
    }
    let report = match result {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: policy {}: {e}", prepared.policy.name);
            return ERROR;
        }
    };
    if args.run.json {
        super::print_json(&[&report]);
    } else {
        print_export_summary(&report);
    }
    if report.failed() > 0 {
        NO
    } else {
        OK
    }
}

fn print_export_summary(r: &ExportReport) {
    let n = |f: fn(&TagOutcome) -> bool| r.tags.iter().filter(|t| f(&t.outcome)).count();
    println!(
        "policy {}: exported to {} (export {}{}): tags {} written, {} unchanged, {} skipped, {} failed",
        r.policy,
        r.layout,
        r.id,
        r.since
            .as_deref()
            .map(|s| format!(", since {s}"))
            .unwrap_or_default(),
        n(|o| matches!(o, TagOutcome::Copied { .. })),
        n(|o| matches!(o, TagOutcome::Unchanged { .. })),
        n(|o| matches!(o, TagOutcome::Skipped { .. })),
        n(|o| matches!(o, TagOutcome::Failed { .. })),
    );
    let s = r.stats;
    println!(
        "  blobs {} written, {} already carried; {} manifests written; {} in {:.1} s",
        s.blobs_copied,
        s.blobs_skipped,
        s.manifests_pushed,
        HumanBytes(s.bytes_copied),
        r.seconds,
    );
    for t in &r.tags {
        match &t.outcome {
            TagOutcome::Failed { error } => {
                println!("  FAILED {}:{}: {error}", t.repository, t.tag)
            }
            TagOutcome::Skipped { reason } => {
                println!("  skipped {}:{}: {reason}", t.repository, t.tag)
            }
            _ => {}
        }
    }
}

pub async fn import(args: ImportArgs) -> u8 {
    let Some(prepared) = load(&args.config, &args.policy, Side::Destinations) else {
        return ERROR;
    };
    let layout = match LayoutSource::open(&args.from).await {
        Ok(l) => Arc::new(l),
        Err(e) => {
            eprintln!("error: {e}");
            return ERROR;
        }
    };
    let (report, interrupted) = with_progress(&args.run, async |cancel, progress| {
        let opts = SyncOptions {
            cancel,
            tag_parallelism: args.run.tag_parallelism,
            blob_parallelism: args.run.blob_parallelism,
            progress,
        };
        import_policy(&prepared, layout, &opts).await
    })
    .await;
    if args.run.json {
        super::print_json(&[&report]);
    } else {
        print_sync_summary(&report);
    }
    if interrupted {
        return INTERRUPTED;
    }
    if SyncReport::converged(&report) {
        OK
    } else {
        NO
    }
}
