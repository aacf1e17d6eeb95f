//! `ferry admin`: the command-line client of the gRPC admin API.
use std::path::PathBuf;

/// Talk to a Ferry admin API.
#[derive(clap::Args, Debug)]
pub struct AdminArgs {
    /// Admin API endpoint, e.g. http://127.0.0.1:9443.
    #[arg(long, env = "FERRY_ADMIN_ENDPOINT")]
    pub endpoint: String,
    /// File with the bearer token. Default: FERRY_ADMIN_TOKEN.
    #[arg(long)]
    pub token_file: Option<PathBuf>,
}

pub async fn run(args: AdminArgs) -> u8 {
    eprintln!(
        "error: `ferry admin` has no commands yet (endpoint {})",
        args.endpoint
    );
    2
}
