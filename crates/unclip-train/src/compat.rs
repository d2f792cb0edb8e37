//! Whether a checkpoint may be resumed under the current config, and the config hash.

use serde::Serialize;

use crate::config::RunConfig;

pub(crate) fn config_hash(resolved: &str) -> String {
    format!("{:016x}", unclip_rng::purpose_id(resolved))
}

/// Keys that may change between a checkpoint and the run resuming it.
const RESUMABLE_CHANGES: &[&str] = &[
    "optim.max_steps",
    "checkpoint.",
    "validation.",
    "preview.",
    "logging.",
    "devices",
    "data.workers",
    "data.prefetch_batches",
    "data.val_shards",
    "data.val_embeddings",
    "data.remote.",
];

fn flatten(prefix: &str, v: &serde_json::Value, out: &mut Vec<(String, String)>) {
    match v {
        serde_json::Value::Object(m) => {
            for (k, v) in m {
                let p = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                flatten(&p, v, out);
            }
        }
        other => out.push((prefix.to_owned(), other.to_string())),
    }
}

/// The settings that differ between two configs and forbid resuming, one per line
/// (`optim.lr: 0.0001 (checkpoint) ≠ 0.0002 (now)`).
pub fn incompatible_changes<C: Serialize>(old: &RunConfig<C>, new: &RunConfig<C>) -> Vec<String> {
    let (mut a, mut b) = (Vec::new(), Vec::new());
    flatten("", &serde_json::to_value(old).unwrap_or_default(), &mut a);
    flatten("", &serde_json::to_value(new).unwrap_or_default(), &mut b);
    let b: std::collections::BTreeMap<_, _> = b.into_iter().collect();
    let a: std::collections::BTreeMap<_, _> = a.into_iter().collect();
    let mut keys: Vec<&String> = a.keys().chain(b.keys()).collect();
    keys.sort();
    keys.dedup();
    let none = "(absent)".to_owned();
    let mut out = Vec::new();
    for k in keys {
        if RESUMABLE_CHANGES.iter().any(|p| k == p || k.starts_with(p)) {
            continue;
        }
        let (x, y) = (a.get(k).unwrap_or(&none), b.get(k).unwrap_or(&none));
        if x != y {
            out.push(format!("  {k}: {x} (checkpoint) ≠ {y} (now)"));
        }
    }
    out
}
