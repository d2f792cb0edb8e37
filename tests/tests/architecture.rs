//! The workspace's shape, checked from its manifests and sources: dependencies point one way
//! (cli → train / infer → the stage layer → the leaves), inference never reaches the trainer or
//! the dataset tools, no crate imports itself in a circle, and no source file grows past 800
//! lines. A change that breaks one of these fails here, with the culprit named.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Every workspace package: name → (folder, unclip dependencies, unclip dev-dependencies).
type Packages = BTreeMap<String, (PathBuf, BTreeSet<String>, BTreeSet<String>)>;

fn packages() -> Packages {
    let root = root();
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(root.join("crates"))
        .expect("crates/")
        .map(|e| e.expect("entry").path())
        .collect();
    dirs.push(root.join("data-tools"));
    dirs.push(root.join("tests"));
    let mut out = Packages::new();
    for dir in dirs {
        let text = std::fs::read_to_string(dir.join("Cargo.toml")).expect("Cargo.toml");
        let mut name = String::new();
        let mut section = String::new();
        let (mut deps, mut dev) = (BTreeSet::new(), BTreeSet::new());
        for line in text.lines().map(str::trim) {
            if line.starts_with('[') {
                section = line.to_owned();
                continue;
            }
            let key = line.split('=').next().unwrap_or("").trim();
            if section == "[package]" && key == "name" {
                name = line.split('"').nth(1).expect("package name").to_owned();
            } else if key.starts_with("unclip-") {
                match section.as_str() {
                    "[dependencies]" => deps.insert(key.to_owned()),
                    "[dev-dependencies]" => dev.insert(key.to_owned()),
                    _ => false,
                };
            }
        }
        out.insert(name, (dir, deps, dev));
    }
    out
}

/// The unclip crates `name` reaches through normal dependencies (and, with `dev`, its own
/// dev-dependencies at the first step).
fn reach(p: &Packages, name: &str, dev: bool) -> BTreeSet<String> {
    let (_, deps, devs) = &p[name];
    let mut todo: Vec<String> = deps
        .iter()
        .chain(devs.iter().filter(|_| dev))
        .cloned()
        .collect();
    let mut seen = BTreeSet::new();
    while let Some(n) = todo.pop() {
        if seen.insert(n.clone()) {
            todo.extend(p[&n].1.iter().cloned());
        }
    }
    seen
}

#[test]
fn inference_needs_neither_the_trainer_nor_the_dataset_tools() {
    let p = packages();
    let reached = reach(&p, "unclip-infer", true);
    for forbidden in [
        "unclip-train",
        "unclip-data-tools",
        "unclip-embed",
        "unclip-eval",
    ] {
        assert!(
            !reached.contains(forbidden),
            "unclip-infer reaches {forbidden}: {reached:?}"
        );
    }
    assert!(reached.contains("unclip-stages"), "{reached:?}");
}

#[test]
fn dependencies_point_down_the_pipeline() {
    let p = packages();
    // Each layer may use only the layers after it in this list (and the shared leaves).
    let layers: [&[&str]; 8] = [
        &["unclip-cli"],
        &["unclip-eval"],
        &["unclip-train", "unclip-infer"],
        &["unclip-stages", "unclip-embed"],
        &[
            "unclip-models",
            "unclip-diffusion",
            "unclip-clip",
            "unclip-data-tools",
        ],
        &["unclip-kernels", "unclip-data"],
        &["unclip-layout"],
        &["unclip-config", "unclip-rng", "unclip-fs"],
    ];
    let level = |n: &str| layers.iter().position(|l| l.contains(&n));
    for (name, (_, deps, _)) in &p {
        let Some(mine) = level(name) else {
            continue;
        };
        for d in deps {
            let theirs = level(d).unwrap_or_else(|| panic!("{d} is in no layer"));
            assert!(
                theirs > mine || (theirs == mine && name == d),
                "{name} depends on {d}, which is not below it"
            );
        }
    }
    // The leaves never import each other's insides: models and the sampler stay apart.
    let models = reach(&p, "unclip-models", false);
    assert!(!models.contains("unclip-diffusion"), "{models:?}");
    assert!(!reach(&p, "unclip-diffusion", false).contains("unclip-models"));
}

/// `crate::a::b`, `use crate::{a, …}` and `super::a` module references of one source file
/// (`super` as the first element of a path taken relative to the parent module).
fn module_refs(text: &str) -> Vec<Vec<String>> {
    // Inline test modules (`mod tests { … }`, at the end of a file by convention) may import
    // anything.
    let code: String = text
        .split("mod tests {")
        .next()
        .unwrap_or("")
        .lines()
        .filter(|l| !l.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n");
    let mut out = Vec::new();
    let path_at = |rest: &str| -> Vec<String> {
        let path: String = rest
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == ':')
            .collect();
        path.split("::").map(str::to_owned).collect()
    };
    for (i, _) in code.match_indices("super::") {
        let before = code[..i].chars().last();
        if before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':') {
            continue;
        }
        let mut p = vec!["super".to_owned()];
        p.extend(path_at(&code[i + "super::".len()..]));
        out.push(p);
    }
    let mut rest = code.as_str();
    while let Some(i) = rest.find("crate::") {
        rest = &rest[i + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let end = group.find('}').unwrap_or(group.len());
            for item in group[..end].split(',') {
                out.push(item.trim().split("::").map(str::to_owned).collect());
            }
            continue;
        }
        out.push(path_at(rest));
    }
    out
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// The module path of `file` below `src` (`loader/mod.rs` → `["loader"]`).
fn module_of(src: &Path, file: &Path) -> Vec<String> {
    let rel = file
        .strip_prefix(src)
        .expect("below src")
        .with_extension("");
    let mut parts: Vec<String> = rel
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    if matches!(
        parts.last().map(String::as_str),
        Some("lib" | "mod" | "main")
    ) {
        parts.pop();
    }
    parts
}

#[test]
fn no_crate_imports_itself_in_a_circle() {
    for (name, (dir, _, _)) in packages() {
        let src = dir.join("src");
        let mut files = Vec::new();
        rust_files(&src, &mut files);
        let modules: BTreeMap<Vec<String>, PathBuf> = files
            .iter()
            .map(|f| (module_of(&src, f), f.clone()))
            .collect();
        let mut edges: BTreeMap<Vec<String>, BTreeSet<Vec<String>>> = BTreeMap::new();
        for (m, f) in &modules {
            let text = std::fs::read_to_string(f).expect("source");
            for mut path in module_refs(&text) {
                if path.first().is_some_and(|p| p == "super") {
                    let parent = &m[..m.len().saturating_sub(1)];
                    path = parent
                        .iter()
                        .cloned()
                        .chain(path.into_iter().skip(1))
                        .collect();
                }
                // The longest prefix of the path that is a module file of this crate.
                let target = (1..=path.len())
                    .rev()
                    .map(|k| path[..k].to_vec())
                    .find(|p| modules.contains_key(p));
                if let Some(t) = target.filter(|t| t != m) {
                    edges.entry(m.clone()).or_default().insert(t);
                }
            }
        }
        // A depth-first search for a back edge.
        fn visit(
            m: &Vec<String>,
            edges: &BTreeMap<Vec<String>, BTreeSet<Vec<String>>>,
            state: &mut BTreeMap<Vec<String>, u8>,
            stack: &mut Vec<Vec<String>>,
        ) -> Option<Vec<Vec<String>>> {
            state.insert(m.clone(), 1);
            stack.push(m.clone());
            for t in edges.get(m).into_iter().flatten() {
                match state.get(t) {
                    Some(1) => {
                        let from = stack.iter().position(|s| s == t).unwrap_or(0);
                        return Some(stack[from..].to_vec());
                    }
                    Some(_) => {}
                    None => {
                        if let Some(c) = visit(t, edges, state, stack) {
                            return Some(c);
                        }
                    }
                }
            }
            stack.pop();
            state.insert(m.clone(), 2);
            None
        }
        let mut state = BTreeMap::new();
        for m in modules.keys() {
            if !state.contains_key(m) {
                if let Some(cycle) = visit(m, &edges, &mut state, &mut Vec::new()) {
                    let names: Vec<String> = cycle.iter().map(|p| p.join("::")).collect();
                    panic!("{name}: the modules {names:?} import each other in a circle");
                }
            }
        }
    }
}

#[test]
fn no_source_file_is_over_800_lines() {
    let mut files = Vec::new();
    for (_, (dir, _, _)) in packages() {
        rust_files(&dir.join("src"), &mut files);
    }
    let long: Vec<String> = files
        .iter()
        .filter(|f| f.file_name().is_some_and(|n| n != "tests.rs"))
        .filter_map(|f| {
            let n = std::fs::read_to_string(f).expect("source").lines().count();
            (n > 800).then(|| format!("{} ({n} lines)", f.display()))
        })
        .collect();
    assert!(long.is_empty(), "split these files: {long:?}");
}
