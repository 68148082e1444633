//! The module map holds: every top-level module in `src/` uses only modules below it in
//! [`LAYERS`], so there is no import cycle. A new module must be given its place here; a
//! module that is gone must leave it. A unit test, so the build without the cloud
//! features (`cargo test --no-default-features --lib`) runs it too.
//!
//! A use is any `crate::NAME` in code (comments may name any module), inside nested
//! groups too (`use crate::{a::{b, c}, d}` uses `a` and `d`), and any `super::` chain that
//! climbs out of its top-level module into a sibling (`super::super::proxy` from
//! `src/client/http2.rs`).
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
    "eventstream",
    "upstream",
    "fields",
    "credentials",
    "schemes",
    "kinds",
    "config",
    "telemetry",
    "usage",
    "client",
    "callers",
    "login",
    "proxy",
    "server",
    "cli",
    "app",
];

/// Files that are no module of the map: the crate root, the binary, this test.
const OUTSIDE: &[&str] = &["lib", "main", "layers"];

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

fn ident(text: &str) -> &str {
    let end = text
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .unwrap_or(text.len());
    &text[..end]
}

/// The top-level names of a `{...}` group that starts `text` (just after its `{`), at any
/// nesting: `a::{b}, c` gives `a` and `c`.
fn group(text: &str, found: &mut BTreeSet<String>) {
    let mut depth = 0usize;
    let mut start_of_item = true;
    let mut rest = text;
    while let Some(c) = rest.chars().next() {
        match c {
            '{' => depth += 1,
            '}' if depth == 0 => return,
            '}' => depth -= 1,
            ',' if depth == 0 => start_of_item = true,
            c if c.is_whitespace() => {}
            _ if start_of_item && depth == 0 => {
                let name = ident(rest);
                if !name.is_empty() && name != "self" {
                    found.insert(name.to_string());
                }
                start_of_item = false;
                rest = &rest[name.len().max(1)..];
                continue;
            }
            _ => {}
        }
        rest = &rest[c.len_utf8()..];
    }
}

/// The top-level module names a path from the crate root starts with: `proxy::...` or a
/// `{...}` group.
fn top_level(rest: &str, found: &mut BTreeSet<String>) {
    match rest.strip_prefix('{') {
        Some(inner) => group(inner, found),
        None => {
            let name = ident(rest);
            if !name.is_empty() {
                found.insert(name.to_string());
            }
        }
    }
}

/// Every top-level module `code` in module `path` (e.g. `["client", "http2"]`) refers to.
fn uses(code: &str, path: &[String]) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    for (i, _) in code.match_indices("crate::") {
        // `foo_crate::` is another path.
        if code[..i]
            .chars()
            .next_back()
            .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_')
        {
            continue;
        }
        top_level(&code[i + "crate::".len()..], &mut found);
    }
    for (i, _) in code.match_indices("super::") {
        if code[..i]
            .chars()
            .next_back()
            .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
        {
            continue;
        }
        // Inside an inline `mod NAME { ... }` (unit tests, at a file's end), the first
        // `super::` only leaves that block.
        let inline = code[..i].contains("mod tests {") as usize;
        let mut rest = &code[i..];
        let mut climbs = 0;
        while let Some(after) = rest.strip_prefix("super::") {
            climbs += 1;
            rest = after;
        }
        // Climbing to the crate root: what follows is a top-level module.
        if climbs >= path.len() + inline {
            top_level(rest, &mut found);
        }
    }
    found
}

/// The module path of a file under `src/`: `client/http2.rs` → `[client, http2]`,
/// `client/mod.rs` → `[client]`.
fn module_path(relative: &Path) -> Vec<String> {
    let mut path: Vec<String> = relative
        .components()
        .map(|c| {
            c.as_os_str()
                .to_string_lossy()
                .trim_end_matches(".rs")
                .to_string()
        })
        .collect();
    if path.last().is_some_and(|l| l == "mod") {
        path.pop();
    }
    path
}

/// The map of `src/`: each top-level module and the top-level modules it uses.
fn graph(src: &Path) -> BTreeMap<String, BTreeSet<String>> {
    let mut files = Vec::new();
    rust_files(src, &mut files);
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for file in files {
        let path = module_path(file.strip_prefix(src).unwrap());
        let module = path[0].clone();
        if OUTSIDE.contains(&module.as_str()) {
            continue;
        }
        // Comments may name any module (`[`crate::proxy`]` in a doc); code may not.
        let code: String = std::fs::read_to_string(&file)
            .unwrap()
            .lines()
            .filter(|line| !line.trim_start().starts_with("//"))
            .collect::<Vec<_>>()
            .join("\n");
        graph
            .entry(module.clone())
            .or_default()
            .extend(uses(&code, &path).into_iter().filter(|m| *m != module));
    }
    graph
}

#[test]
fn every_module_uses_only_the_layers_below_it() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let graph = graph(&src);
    let mut wrong = Vec::new();
    for stale in LAYERS.iter().filter(|l| !graph.contains_key(**l)) {
        wrong.push(format!(
            "LAYERS names `{stale}`, which is no module in src/"
        ));
    }
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

#[test]
fn nested_groups_and_climbs_out_of_a_module_are_uses() {
    let path = |p: &str| module_path(Path::new(p));
    let found = uses(
        "use crate::{config::{Http2, Limits}, files};\nuse crate::headers;",
        &path("client/mod.rs"),
    );
    assert_eq!(
        found.into_iter().collect::<Vec<_>>(),
        ["config", "files", "headers"]
    );
    // From src/client/http2.rs, one `super::` is `client`; two reach the root.
    assert!(uses("use super::BoxError;", &path("client/http2.rs")).is_empty());
    assert_eq!(
        uses("use super::super::proxy::Proxy;", &path("client/http2.rs"))
            .into_iter()
            .collect::<Vec<_>>(),
        ["proxy"]
    );
    assert_eq!(
        uses("use super::{app, runtime};", &path("client.rs"))
            .into_iter()
            .collect::<Vec<_>>(),
        ["app", "runtime"]
    );
    // In a file's unit tests, one more `super::` stays in the module.
    let in_tests = "fn f() {}\nmod tests {\n    use super::super::FailureKind;\n}";
    assert!(uses(in_tests, &path("credentials/helper.rs")).is_empty());
    // `self` in a group is the module itself; other crates' paths are not ours.
    assert_eq!(
        uses(
            "use crate::{self as c, kinds}; x::my_crate::y",
            &path("a.rs")
        )
        .into_iter()
        .collect::<Vec<_>>(),
        ["kinds"]
    );
}
