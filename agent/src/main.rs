//! `ferry-agent`: the per-region daemon that turns registry webhooks and tag polling into
//! replication jobs. Not implemented yet (issue 3): it parses its contract flags and refuses to run.
#![forbid(unsafe_code)]
use clap::Parser;

/// Ferry's per-region agent (registry webhooks and polling -> events -> queue).
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// Config file with registries and policies.
    #[arg(long)]
    config: std::path::PathBuf,
    /// Redis/Valkey URL of this region's queue.
    #[arg(long)]
    redis: String,
    /// Address for webhooks, /metrics and /healthz.
    #[arg(long)]
    listen: String,
}

fn main() -> anyhow::Result<()> {
    let _args = Args::parse();
    anyhow::bail!("ferry-agent is not implemented yet (see issue 3); use `ferry sync` for now")
}
