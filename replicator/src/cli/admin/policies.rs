//! `ferry admin policies …`: list, show, apply, delete, enable/disable and pause/resume
//! replication policies.
//!
//! Invariant: every command that changes a policy prints the policy as the server holds it
//! afterwards (`-o json`), so scripts never need a second call.
use std::path::PathBuf;

use clap::Subcommand;
use ferry_proto::v1;
use serde_json::{json, Value};

use super::apply::{apply, Kind};
use super::connection::Ctx;
use super::output::{align, or_dash, row, table, yes, Failure};
use ferry_proto::json::enum_name;

#[derive(Subcommand, Debug)]
pub enum PoliciesCommand {
    /// Every policy, from the config file and stored through the API.
    List,
    /// One policy with its JSON document.
    Get { name: String },
    /// Create or replace policies from a JSON file: one policy, an array, or a config file.
    Apply {
        #[arg(long, short = 'f')]
        file: PathBuf,
    },
    /// Delete a policy stored through the API.
    Delete { name: String },
    /// Set the policy's `enabled` field.
    Enable { name: String },
    /// Clear the policy's `enabled` field.
    Disable { name: String },
    /// Jobs of the policy wait instead of running.
    Pause { name: String },
    /// Let a paused policy's jobs run again.
    Resume { name: String },
}

pub async fn run(ctx: &Ctx, command: PoliciesCommand) -> Result<u8, Failure> {
    let (what, p) = match command {
        PoliciesCommand::List => {
            let req = v1::ListPoliciesRequest {};
            let r = ctx
                .call("list policies", ctx.policies().await?.list_policies(req))
                .await?;
            ctx.emit(&r, || policies_table(&r.policies));
            return Ok(0);
        }
        PoliciesCommand::Get { name } => {
            let req = v1::GetPolicyRequest { name: name.clone() };
            let what = format!("get policy {name}");
            let p = ctx
                .call(&what, ctx.policies().await?.get_policy(req))
                .await?;
            ctx.emit(&p, || policy_details(&p));
            return Ok(0);
        }
        PoliciesCommand::Apply { file } => return apply(ctx, &file, Kind::Policy).await,
        PoliciesCommand::Delete { name } => {
            let req = v1::DeletePolicyRequest { name: name.clone() };
            let what = format!("delete policy {name}");
            ctx.call(&what, ctx.policies().await?.delete_policy(req))
                .await?;
            ctx.emit(&json!({"deleted": name}), || {
                format!("deleted policy {name}")
            });
            return Ok(0);
        }
        PoliciesCommand::Enable { name } => ("enabled", set_enabled(ctx, &name, true).await?),
        PoliciesCommand::Disable { name } => ("disabled", set_enabled(ctx, &name, false).await?),
        PoliciesCommand::Pause { name } => {
            let req = v1::PausePolicyRequest { name: name.clone() };
            let what = format!("pause policy {name}");
            (
                "paused",
                ctx.call(&what, ctx.operations().await?.pause_policy(req))
                    .await?,
            )
        }
        PoliciesCommand::Resume { name } => {
            let req = v1::ResumePolicyRequest { name: name.clone() };
            let what = format!("resume policy {name}");
            (
                "resumed",
                ctx.call(&what, ctx.operations().await?.resume_policy(req))
                    .await?,
            )
        }
    };
    ctx.emit(&p, || format!("policy {} {what}", p.name));
    Ok(0)
}

/// `SetPolicyEnabled`: the policy as the server holds it afterwards.
async fn set_enabled(ctx: &Ctx, name: &str, enabled: bool) -> Result<v1::Policy, Failure> {
    let req = v1::SetPolicyEnabledRequest {
        name: name.to_string(),
        enabled,
    };
    let verb = if enabled { "enable" } else { "disable" };
    let what = format!("{verb} policy {name}");
    ctx.call(&what, ctx.policies().await?.set_policy_enabled(req))
        .await
}

fn policies_table(policies: &[v1::Policy]) -> String {
    let header = [
        "NAME",
        "MODE",
        "TRIGGER",
        "FROM",
        "TO",
        "ENABLED",
        "PAUSED",
        "DEFINED IN",
    ];
    let rows = policies.iter().map(|p| {
        vec![
            p.name.clone(),
            p.mode.clone(),
            p.trigger.clone(),
            p.src_registry.clone(),
            p.dest_registries.join(","),
            yes(p.enabled),
            yes(p.paused),
            enum_name::<v1::Source>(p.source),
        ]
    });
    table(&header, rows)
}

fn policy_details(p: &v1::Policy) -> String {
    let doc = serde_json::from_str::<Value>(&p.json)
        .ok()
        .and_then(|v| serde_json::to_string_pretty(&v).ok())
        .unwrap_or_else(|| p.json.clone());
    let fields = align(vec![
        row(["name", &p.name]),
        row(["description", or_dash(&p.description)]),
        row(["mode", &p.mode]),
        row(["trigger", &p.trigger]),
        row(["cron", or_dash(&p.cron)]),
        row(["from", &p.src_registry]),
        row(["to", &p.dest_registries.join(", ")]),
        row(["enabled", &yes(p.enabled)]),
        row(["paused", &yes(p.paused)]),
        row(["defined in", &enum_name::<v1::Source>(p.source)]),
    ]);
    format!("{fields}\n\n{doc}")
}
