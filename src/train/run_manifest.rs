//! The run-level manifest, `saes.json` in the output folder: every SAE of
//! the run with its hook, folder and the rank that trained it, as sparsify
//! and SAELens users look for one file listing a sweep's results.

use std::path::Path;

use super::config::TrainConfig;
use super::ranks::{owner_of, Role};
use crate::dist::ProcessGroup;
use crate::error::Result;
use crate::io::atomic::write_atomic;

/// The run-level list of SAEs, in the output folder.
pub const RUN_MANIFEST_FILE: &str = "saes.json";

/// The run's manifest, `saes.json`: every SAE with its hook, folder and the
/// rank that trained it. Written by rank 0 once every rank has finished
/// (a barrier), so it lists only folders that exist.
pub(super) fn write_run_manifest(
    cfg: &TrainConfig,
    role: &Role,
    out: &Path,
    writes: bool,
    (steps, tokens): (u64, u64),
) -> Result<()> {
    if let Some(group) = role.group() {
        group.barrier()?;
    }
    if !writes {
        return Ok(());
    }
    let world = role.group().map_or(1, ProcessGroup::world_size);
    let n = cfg.saes.len();
    let saes: Vec<serde_json::Value> = cfg
        .saes
        .iter()
        .enumerate()
        .map(|(i, spec)| {
            let rank = match role {
                Role::Modules(_) => owner_of(i, n, world),
                _ => 0,
            };
            serde_json::json!({
                "name": spec.name(),
                "hook_name": spec.hook,
                "architecture": spec.architecture.name(),
                "path": spec.name(),
                "trained_by_rank": rank,
            })
        })
        .collect();
    let manifest = serde_json::json!({
        "world_size": world,
        "distribute_modules": matches!(role, Role::Modules(_)),
        "steps": steps,
        "tokens": tokens,
        "saes": saes,
    });
    let text = serde_json::to_string_pretty(&manifest)? + "\n";
    write_atomic(&out.join(RUN_MANIFEST_FILE), text.as_bytes())
}
