//! `ferry admin registries …`: list, show, ping, apply and delete registries.
//!
//! Invariants: credentials show by reference only (`basic (env FERRY_EU_PASSWORD)`), never their
//! value; `ping` exits 1 when the registry is unreachable or rejects the credentials.
use std::path::PathBuf;

use clap::Subcommand;
use ferry_proto::v1;
use serde_json::json;

use super::apply::{apply, Kind};
use super::connection::Ctx;
use super::json::Ping;
use super::output::{align, or_dash, row, table, yes, Failure};
use ferry_proto::json::enum_name;

#[derive(Subcommand, Debug)]
pub enum RegistriesCommand {
    /// Every registry (credentials by reference only).
    List,
    /// One registry entry.
    Get { name: String },
    /// Check reachability, credentials, API version and referrers support; exit 1 when the
    /// registry is unreachable or rejects the credentials.
    Ping {
        name: String,
        /// Repository to probe the referrers API and chunked uploads in (needs push permission
        /// for the latter; nothing stays). Default: ferry-probe.
        #[arg(long)]
        repository: Option<String>,
    },
    /// Create or replace registries from a JSON file: one entry, an array, or a config file.
    Apply {
        #[arg(long, short = 'f')]
        file: PathBuf,
    },
    /// Delete a registry stored through the API.
    Delete { name: String },
}

pub async fn run(ctx: &Ctx, command: RegistriesCommand) -> Result<u8, Failure> {
    match command {
        RegistriesCommand::List => {
            let req = v1::ListRegistriesRequest {};
            let r = ctx
                .call(
                    "list registries",
                    ctx.registries().await?.list_registries(req),
                )
                .await?;
            ctx.emit(&r, || registries_table(&r.registries));
        }
        RegistriesCommand::Get { name } => {
            let req = v1::GetRegistryRequest { name: name.clone() };
            let what = format!("get registry {name}");
            let r = ctx
                .call(&what, ctx.registries().await?.get_registry(req))
                .await?;
            ctx.emit(&r, || registry_details(&r));
        }
        RegistriesCommand::Ping { name, repository } => {
            let req = v1::PingRegistryRequest {
                name: name.clone(),
                repository: repository.clone().unwrap_or_default(),
            };
            let what = format!("ping registry {name}");
            let p = ctx
                .call(&what, ctx.registries().await?.ping_registry(req))
                .await?;
            ctx.emit(&Ping::new(&name, &p), || ping_details(&name, &p));
            return Ok(if p.reachable && p.authenticated { 0 } else { 1 });
        }
        RegistriesCommand::Apply { file } => return apply(ctx, &file, Kind::Registry).await,
        RegistriesCommand::Delete { name } => {
            let req = v1::DeleteRegistryRequest { name: name.clone() };
            let what = format!("delete registry {name}");
            ctx.call(&what, ctx.registries().await?.delete_registry(req))
                .await?;
            ctx.emit(&json!({"deleted": name}), || {
                format!("deleted registry {name}")
            });
        }
    }
    Ok(0)
}

fn registries_table(registries: &[v1::Registry]) -> String {
    let header = [
        "NAME",
        "URL",
        "INSECURE",
        "CREDENTIAL",
        "POLL",
        "DEFINED IN",
    ];
    let rows = registries.iter().map(|r| {
        vec![
            r.name.clone(),
            r.url.clone(),
            yes(r.insecure),
            credential(r),
            poll(r.poll_interval_seconds),
            enum_name::<v1::Source>(r.source),
        ]
    });
    table(&header, rows)
}

fn registry_details(r: &v1::Registry) -> String {
    align(vec![
        row(["name", &r.name]),
        row(["url", &r.url]),
        row(["insecure", &yes(r.insecure)]),
        row(["credential", &credential(r)]),
        row(["polled every", &poll(r.poll_interval_seconds)]),
        row(["defined in", &enum_name::<v1::Source>(r.source)]),
    ])
}

fn credential(r: &v1::Registry) -> String {
    match (r.credential_type.as_str(), r.credential_ref.as_str()) {
        ("", _) => "none".into(),
        (t, "") => t.into(),
        (t, reference) => format!("{t} ({reference})"),
    }
}

fn poll(seconds: u64) -> String {
    if seconds == 0 {
        "-".into()
    } else {
        format!("{seconds}s")
    }
}

fn ping_details(name: &str, p: &v1::PingRegistryResponse) -> String {
    let mut rows = vec![
        row(["registry", name]),
        row(["reachable", &yes(p.reachable)]),
        row(["authenticated", &yes(p.authenticated)]),
        row(["api version", &p.api_version]),
        row(["auth scheme", or_dash(&p.auth_scheme)]),
        row(["referrers api", &yes(p.referrers_api)]),
        row(["chunked upload", &yes(p.chunked_upload)]),
        row(["latency", &format!("{} ms", p.latency_ms)]),
    ];
    if !p.error.is_empty() {
        rows.push(row(["error", &p.error]));
    }
    for note in &p.notes {
        rows.push(row(["note", note]));
    }
    align(rows)
}
