use std::path::PathBuf;

use super::*;
use crate::config::EMBEDDED_DEFAULT;

#[test]
fn the_embedded_default_serves_what_this_build_has() {
    let config = Config::parse(EMBEDDED_DEFAULT, ConfigOrigin::Embedded)
        .expect("the embedded default is valid in every build");
    let kinds: Vec<&str> = config
        .credentials
        .iter()
        .map(|c| c.spec.kind().name())
        .collect();
    assert!(kinds.contains(&"api_key"), "{kinds:?}");
    assert!(!kinds.contains(&"aws"), "{kinds:?}");
    let prefixes: Vec<&str> = config
        .listeners
        .iter()
        .flat_map(|l| &l.routes)
        .map(|r| r.prefix.as_str())
        .collect();
    assert!(
        prefixes.contains(&"/"),
        "the Anthropic API route: {prefixes:?}"
    );
    assert!(
        !prefixes.iter().any(|p| p.starts_with("/bedrock")),
        "routes on a left-out credential are left out too: {prefixes:?}"
    );
}

#[test]
fn a_file_naming_a_kind_this_build_lacks_says_which_build_has_it() {
    let text = "[credentials.cloud]\nkind = \"aws\"\n\n[[routes]]\nprefix = \"/bedrock\"\nupstream = \"https://bedrock-runtime.us-east-1.amazonaws.com\"\ncredential = \"cloud\"\n";
    let error = Config::parse(
        text,
        ConfigOrigin::File(PathBuf::from("/etc/credproxy.toml")),
    )
    .expect_err("an aws credential cannot work in this build");
    let problem = &error.problems[0];
    assert_eq!((problem.line, problem.column), (2, 8), "{problem:?}");
    assert!(
        problem.message.contains("compiled without"),
        "{}",
        problem.message
    );
    let hint = problem.hint.as_deref().unwrap_or_default();
    assert!(hint.contains("`aws` feature"), "{hint}");
    assert_eq!(
        error.problems.len(),
        1,
        "its route is not reported a second time: {:?}",
        error.problems
    );
}

#[test]
fn a_placeholder_no_kind_here_fills_says_so() {
    let text = "[credentials.key]\nkind = \"api_key\"\nenv = \"K\"\n\n[[routes]]\nprefix = \"/vertex\"\nupstream = \"https://{vertex_host}\"\ncredential = \"key\"\n";
    let error = Config::parse(
        text,
        ConfigOrigin::File(PathBuf::from("/etc/credproxy.toml")),
    )
    .expect_err("nothing in this build fills {vertex_host}");
    let problem = &error.problems[0];
    assert_eq!(problem.line, 7, "{problem:?}");
    assert!(problem.message.contains("compiled without"), "{problem:?}");
    assert!(
        problem
            .hint
            .as_deref()
            .unwrap_or_default()
            .contains("cloud features"),
        "{problem:?}"
    );
}
