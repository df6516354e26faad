//! The operators' verbs: `codebox gc`, `codebox workspaces` and `codebox files`. Each asks the
//! same supervisor operation as its admin route (`POST /v1/admin/gc`, `GET
//! /v1/admin/workspaces`, `GET /v1/admin/files`) and, with `--json`, prints the very object
//! that route answers, so a script can use either; without it, a table for people.

use std::path::Path;
use std::process::ExitCode;

use bytesize::ByteSize;
use serde::Serialize;

use super::Overrides;
use codebox::api::dto::{FileUsageList, GcReport, WorkspaceList};
use codebox::ids::TenantId;
use codebox::{Config, Supervisor};

/// What every operator verb takes.
#[derive(Debug, clap::Args)]
pub struct Scope {
    /// Only this tenant (default: every tenant).
    #[arg(long)]
    tenant: Option<String>,
    /// Print the admin route's JSON instead of a table.
    #[arg(long)]
    json: bool,
}

impl Scope {
    fn tenant(&self) -> Option<TenantId> {
        self.tenant.as_deref().map(TenantId::from_stored)
    }
}

/// `codebox gc`.
#[derive(Debug, clap::Args)]
pub struct GcArgs {
    /// Report what a pass would remove, and remove nothing.
    #[arg(long)]
    dry_run: bool,
    #[command(flatten)]
    scope: Scope,
}

/// `codebox gc`: one reaper pass now, as the server's reaper runs it.
pub async fn gc(
    config_file: Option<&Path>,
    overrides: &Overrides,
    args: GcArgs,
) -> anyhow::Result<ExitCode> {
    let supervisor = open(config_file, overrides).await?;
    let tenant = args.scope.tenant();
    let report = GcReport::from(
        supervisor
            .reap_within(args.dry_run, tenant.as_ref())
            .await?,
    );
    show(args.scope.json, &report, |report| {
        let verb = if report.dry_run {
            "would remove"
        } else {
            "removed"
        };
        println!(
            "{verb}: {} containers, {} workspaces, {} expired files, {} purged files, {} orphan blobs; {} freed",
            report.containers.len(),
            report.workspaces.len(),
            report.files_expired.len(),
            report.files_purged.len(),
            report.blobs_swept.len(),
            ByteSize::b(report.bytes_freed).display().iec()
        );
        if let Some(holder) = &report.files_left_to {
            println!("files left to instance {holder}, which holds the reaper's lease");
        }
    })
}

/// `codebox workspaces`: every workspace with its owner, bytes and container.
pub async fn workspaces(
    config_file: Option<&Path>,
    overrides: &Overrides,
    scope: Scope,
) -> anyhow::Result<ExitCode> {
    let supervisor = open(config_file, overrides).await?;
    let tenant = scope.tenant();
    let list = WorkspaceList::from(supervisor.workspace_overview(tenant.as_ref()).await?);
    show(scope.json, &list, |list| {
        println!("TENANT\tUSER\tCHAT\tMESSAGE\tBYTES\tCONTAINER\tLAST USED");
        for workspace in &list.workspaces {
            println!(
                "{}\t{}\t{}\t{}\t{}\t{}\t{}",
                workspace.tenant,
                workspace.user_id,
                workspace.chat_id,
                workspace.message_id,
                ByteSize::b(workspace.bytes).display().iec(),
                workspace.container,
                workspace.last_used_at
            );
        }
    })
}

/// `codebox files`: live files and their bytes per tenant and user.
pub async fn files(
    config_file: Option<&Path>,
    overrides: &Overrides,
    scope: Scope,
) -> anyhow::Result<ExitCode> {
    let supervisor = open(config_file, overrides).await?;
    let tenant = scope.tenant();
    let usage = FileUsageList::from(supervisor.file_usage(tenant.as_ref()).await?);
    show(scope.json, &usage, |usage| {
        println!("TENANT\tUSER\tFILES\tBYTES");
        for user in &usage.users {
            println!(
                "{}\t{}\t{}\t{}",
                user.tenant,
                user.user_id,
                user.files,
                ByteSize::b(user.bytes).display().iec()
            );
        }
        println!(
            "total\t\t{}\t{}",
            usage.total_files,
            ByteSize::b(usage.total_bytes).display().iec()
        );
    })
}

/// The supervisor over the configured data folder, without starting anything: a running
/// server may share the folder, and these verbs only read it (or reap it, as its own reaper
/// would).
async fn open(config_file: Option<&Path>, overrides: &Overrides) -> anyhow::Result<Supervisor> {
    let config = Config::load(config_file, overrides)?;
    Ok(Supervisor::open(config).await?)
}

/// Prints `value` as the admin route's JSON, or as the `table` people read.
fn show<T: Serialize>(json: bool, value: &T, table: impl FnOnce(&T)) -> anyhow::Result<ExitCode> {
    if json {
        println!("{}", serde_json::to_string_pretty(value)?);
    } else {
        table(value);
    }
    Ok(ExitCode::SUCCESS)
}
