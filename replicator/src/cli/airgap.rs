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
    PreparedPolicy, Registries, SyncOptions, SyncReport, TagOutcome,
};
use indicatif::HumanBytes;

use super::commands::{print_sync_summary, selected, with_progress, ERROR, INTERRUPTED, NO, OK};
use super::{ExportArgs, ImportArgs, JsonRuns};

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

pub async fn export(args: ExportArgs) -> u8 {
    let Some(prepared) = load(&args.config, &args.policy, Side::Source) else {
        return ERROR;
    };
    let (result, interrupted) = with_progress(args.run.progress, async |cancel, progress| {
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
    let json = args.run.json.then(JsonRuns::start);
    if let Some(j) = &json {
        j.begin(&prepared.policy.name);
    }
    let (report, interrupted) = with_progress(args.run.progress, async |cancel, progress| {
        let opts = SyncOptions {
            cancel,
            tag_parallelism: args.run.tag_parallelism,
            blob_parallelism: args.run.blob_parallelism,
            progress,
            tag_sink: json.as_ref().map(JsonRuns::sink),
        };
        import_policy(&prepared, layout, &opts).await
    })
    .await;
    match &json {
        Some(j) => {
            j.end(&report);
            if !j.finish() {
                return ERROR;
            }
        }
        None => print_sync_summary(&report),
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
