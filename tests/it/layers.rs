//! The module map holds: every module in `src/` uses only modules below it in [`LAYERS`],
//! so there is no import cycle. A new module must be given its place here.
//!
//! The same check by hand: `grep -rhoE 'crate::[a-z_]+' src/MODULE | sort -u` lists what a
//! module uses; none of those may use it back.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Bottom first. A module may use the modules before it, never one after it.
const LAYERS: &[&str] = &[
    "runtime",
    "failure",
    "files",
    "headers",
    "upstream",
    "fields",
    "credentials",
    "schemes",
    "kinds",
    "config",
    "telemetry",
    "client",
    "callers",
    "login",
    "proxy",
    "server",
    "cli",
    "app",
];

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// Every `crate::NAME` a text refers to, `use crate::{a, b::c}` groups included.
fn uses(text: &str) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    for (i, _) in text.match_indices("crate::") {
        let rest = &text[i + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let group = &group[..group.find('}').unwrap_or(group.len())];
            for item in group.split(',') {
                let name: String = item
                    .trim()
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                if !name.is_empty() {
                    found.insert(name);
                }
            }
        } else {
            let name: String = rest
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            if !name.is_empty() {
                found.insert(name);
            }
        }
    }
    found
}

#[test]
fn every_module_uses_only_the_layers_below_it() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for file in files {
        let relative = file.strip_prefix(&src).unwrap();
        let module = relative
            .components()
            .next()
            .unwrap()
            .as_os_str()
            .to_string_lossy()
            .trim_end_matches(".rs")
            .to_string();
        if module == "lib" || module == "main" {
            continue;
        }
        // Comments may name any module (`[`crate::proxy`]` in a doc); code may not.
        let code: String = std::fs::read_to_string(&file)
            .unwrap()
            .lines()
            .filter(|line| !line.trim_start().starts_with("//"))
            .collect::<Vec<_>>()
            .join("\n");
        let used = uses(&code);
        graph
            .entry(module.clone())
            .or_default()
            .extend(used.into_iter().filter(|m| *m != module));
    }
    let mut wrong = Vec::new();
    for (module, used) in &graph {
        let Some(level) = LAYERS.iter().position(|l| l == module) else {
            wrong.push(format!("`{module}` has no place in LAYERS"));
            continue;
        };
        for other in used {
            match LAYERS.iter().position(|l| l == other) {
                Some(other_level) if other_level < level => {}
                Some(_) => wrong.push(format!("`{module}` uses `{other}`, which sits above it")),
                None => wrong.push(format!("`{module}` uses `{other}`, which has no place")),
            }
        }
    }
    let map: Vec<String> = graph
        .iter()
        .map(|(m, used)| {
            format!(
                "{m} -> {}",
                used.iter().cloned().collect::<Vec<_>>().join(", ")
            )
        })
        .collect();
    assert!(
        wrong.is_empty(),
        "{}\n\nthe map:\n{}",
        wrong.join("\n"),
        map.join("\n")
    );
}
