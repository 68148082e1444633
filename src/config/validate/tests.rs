//! Needs every kind: runs in the default build (all cloud features).
#![cfg(all(feature = "aws", feature = "google", feature = "azure"))]

use std::path::{Path, PathBuf};
use std::time::Duration;

use http::HeaderName;

use super::*;
use crate::config::{DEFAULT_LISTEN, EMBEDDED_DEFAULT, Resolved};
use crate::credentials::azure::AzureMethod;
use crate::credentials::google::DEFAULT_SCOPE as DEFAULT_GOOGLE_SCOPE;
use crate::fields::Problem;
use crate::kinds::Environment;
use crate::kinds::api_key::KeySpec;
use crate::kinds::aws::AwsSpec;
use crate::kinds::azure::AzureSpec;
use crate::kinds::google::GoogleSpec;
use crate::kinds::key_source::KeyFrom;
use crate::kinds::vertex_host;
use crate::schemes::{Apply, Rejection};

fn parse(text: &str) -> Result<Config, ConfigError> {
    Config::parse(
        text,
        ConfigOrigin::File(PathBuf::from("/etc/credproxy/test.toml")),
    )
}

fn problems(text: &str) -> Vec<Problem> {
    parse(text).expect_err("config should be rejected").problems
}

fn spec<T: 'static>(config: &Config, index: usize) -> &T {
    let any: &dyn std::any::Any = config.credentials[index].spec.as_ref();
    any.downcast_ref::<T>()
        .unwrap_or_else(|| panic!("not that kind: {:?}", config.credentials[index].spec))
}

fn key_spec(config: &Config, index: usize) -> &KeySpec {
    spec(config, index)
}

/// Resolves against an environment holding just `vars`.
fn resolve(config: Config, vars: &[(&str, &str)]) -> Resolved {
    let env = Environment::from_pairs(vars.iter().copied());
    tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap()
        .block_on(config.resolve(&env))
}

fn upstream_of(resolved: &Resolved, prefix: &str) -> Result<String, String> {
    let route = resolved
        .routes()
        .map(|(_, r)| r)
        .find(|r| r.prefix == prefix)
        .unwrap();
    route
        .upstream
        .as_ref()
        .map(|u| u.to_string())
        .map_err(Clone::clone)
}

fn fixed(route: &crate::config::Route) -> &crate::upstream::Upstream {
    match &route.upstream {
        UpstreamSpec::Fixed(upstream) => upstream,
        UpstreamSpec::Template(t) => panic!("a template: {t}"),
    }
}

const MINIMAL: &str = r#"
[credentials.anthropic]
kind = "api_key"
env = "ANTHROPIC_API_KEY"

[[routes]]
prefix = "/"
upstream = "https://api.anthropic.com"
credential = "anthropic"
"#;

#[test]
fn embedded_default_is_valid() {
    let config = Config::parse(EMBEDDED_DEFAULT, ConfigOrigin::Embedded).unwrap();
    assert_eq!(config.listeners.len(), 1);
    assert_eq!(config.listeners[0].addr.to_string(), DEFAULT_LISTEN);
    assert_eq!(
        fixed(&config.listeners[0].routes[0]).to_string(),
        "https://api.anthropic.com"
    );
    let key = key_spec(&config, 0);
    assert_eq!(
        key.source.helper_env.as_deref(),
        Some("CREDPROXY_API_KEY_HELPER")
    );
    assert!(matches!(&key.source.from, Some(KeyFrom::Env(v)) if v == "ANTHROPIC_API_KEY"));
}

#[test]
fn example_config_is_valid() {
    let text = include_str!("../../../config.example.toml");
    let config = Config::parse(
        text,
        ConfigOrigin::File(PathBuf::from("config.example.toml")),
    )
    .unwrap_or_else(|e| panic!("config.example.toml is invalid:\n{e}"));
    assert!(
        config.credentials.len() >= 3,
        "the example shows every key source"
    );
}

#[test]
fn targets_inherit_the_routes_per_upstream_keys_unless_they_set_their_own() {
    let text = r#"
[credentials.a]
kind = "api_key"
value = "a"
[credentials.b]
kind = "api_key"
value = "b"
[[routes]]
prefix = "/"
upstream_http2 = "never"
stream_idle_timeout = "30s"
strategy = "spread"
max_cooldown = "2m"
targets = [
  { upstream = "https://one.example", credential = "a" },
  { upstream = "https://two.example", credential = "b", upstream_http2 = "always", stream_idle_timeout = "5s", weight = 3, name = "two" },
]
"#;
    let config = parse(text).unwrap();
    let route = &config.listeners[0].routes[0];
    let [one, two] = &route.targets[..] else {
        panic!("two targets: {:?}", route.targets);
    };
    assert_eq!(
        (one.http2, one.stream_idle_timeout),
        (crate::config::Http2::Never, Some(Duration::from_secs(30)))
    );
    assert_eq!((one.weight, one.name.as_deref()), (1, None));
    assert_eq!(
        (two.http2, two.stream_idle_timeout),
        (crate::config::Http2::Always, Some(Duration::from_secs(5)))
    );
    assert_eq!(
        (two.weight, two.name.as_deref(), two.credential),
        (3, Some("two"), 1)
    );
    assert_eq!(route.failover.strategy, crate::config::Strategy::Spread);
    assert_eq!(route.failover.max_attempts, 2, "all targets, up to 3");
    assert_eq!(route.failover.max_cooldown, Duration::from_secs(120));
    // The route's own fields are its first target's.
    assert_eq!(route.credential, 0);
    let resolved = resolve(config, &[]);
    let route = resolved.routes().next().unwrap().1;
    let names: Vec<&str> = route.targets.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(names, ["0", "two"]);
    // The one-target form is one target with the defaults.
    let one = parse("[credentials.a]\nkind = \"api_key\"\nvalue = \"a\"\n[[routes]]\nprefix = \"/\"\nupstream = \"https://one.example\"\ncredential = \"a\"\n").unwrap();
    let route = &one.listeners[0].routes[0];
    assert_eq!(route.targets.len(), 1);
    assert_eq!(route.failover, crate::config::Failover::defaults(1));
}

#[test]
fn target_names_are_header_safe_and_distinct() {
    let text = r#"
[credentials.a]
kind = "api_key"
value = "a"
[[routes]]
prefix = "/"
targets = [
  { upstream = "https://one.example", credential = "a", name = "1" },
  { upstream = "https://two.example", credential = "a" },
  { upstream = "https://three.example", credential = "a", name = "key b" },
]
"#;
    let found = problems(text);
    let messages: Vec<&str> = found.iter().map(|p| p.message.as_str()).collect();
    assert!(
        messages.contains(&"two targets of this route are called `1`"),
        "{messages:?}"
    );
    assert!(
        messages.contains(&"`key b` is not a target name"),
        "{messages:?}"
    );
    let empty = problems(
        "[credentials.a]\nkind = \"api_key\"\nvalue = \"a\"\n[[routes]]\nprefix = \"/\"\ntargets = []\n",
    );
    assert_eq!(empty[0].message, "`targets` lists 0 targets", "{empty:?}");
    assert_eq!((empty[0].line, empty[0].column), (6, 11), "{empty:?}");
}

#[test]
fn workers_default_to_one_per_cpu_and_take_a_count() {
    let base = "[credentials.a]\nkind = \"api_key\"\nenv = \"K\"\n[[routes]]\nprefix = \"/\"\nupstream = \"https://api.anthropic.com\"\ncredential = \"a\"\n";
    assert_eq!(parse(base).unwrap().workers, 0, "0: one per CPU");
    assert_eq!(parse(&format!("workers = 3\n{base}")).unwrap().workers, 3);
    let p = problems(&format!("workers = -1\n{base}"));
    assert_eq!((p[0].line, p[0].column), (1, 11), "{p:?}");
    assert!(
        p[0].hint.as_deref().unwrap_or_default().contains("0"),
        "{p:?}"
    );
}

#[test]
fn kubernetes_config_is_valid() {
    let text = include_str!("../../../deploy/kubernetes/config.toml");
    let config = Config::parse(text, ConfigOrigin::File(PathBuf::from("config.toml")))
        .unwrap_or_else(|e| panic!("deploy/kubernetes/config.toml is invalid:\n{e}"));
    assert!(config.watch_config);
    assert_eq!(config.admin.addr().unwrap().port(), 9787);
}

#[test]
fn gateway_example_is_valid() {
    let text = include_str!("../../../examples/gateway.toml");
    let config = Config::parse(text, ConfigOrigin::File(PathBuf::from("gateway.toml")))
        .unwrap_or_else(|e| panic!("examples/gateway.toml is invalid:\n{e}"));
    assert!(config.tls.is_some());
    let callers = config.callers.unwrap();
    assert!(callers.jwt.is_some() && !callers.tokens.is_empty());
}

#[test]
fn failover_example_is_valid() {
    let text = include_str!("../../../examples/failover.toml");
    let config = Config::parse(text, ConfigOrigin::File(PathBuf::from("failover.toml")))
        .unwrap_or_else(|e| panic!("examples/failover.toml is invalid:\n{e}"));
    let routes = &config.listeners[0].routes;
    assert_eq!(routes[0].targets.len(), 3);
    assert_eq!(routes[1].failover.strategy, crate::config::Strategy::Spread);
    assert_eq!(routes[1].targets[2].weight, 2);
}

#[test]
fn minimal_config_gets_defaults() {
    let config = parse(MINIMAL).unwrap();
    assert_eq!(config.max_body, 32 * 1024 * 1024);
    let key = key_spec(&config, 0);
    assert_eq!(
        key.apply,
        Apply::Header(HeaderName::from_static("x-api-key"))
    );
    assert_eq!(key.source.helper_ttl, Duration::from_secs(300));
}

#[test]
fn syntax_errors_carry_line_and_column() {
    let p = problems("listen = \"127.0.0.1:8787\"\nmax_body = = 3\n");
    assert_eq!((p[0].line, p[0].column), (2, 12));
}

#[test]
fn unknown_keys_are_located_and_the_valid_ones_listed() {
    let text = MINIMAL.replace(
        "env = \"ANTHROPIC_API_KEY\"",
        "env = \"ANTHROPIC_API_KEY\"\nenvv = \"X\"",
    );
    let p = problems(&text);
    assert_eq!((p[0].line, p[0].column), (5, 1));
    assert!(
        p[0].message.contains("unknown field `envv`"),
        "{}",
        p[0].message
    );
    assert!(
        p[0].message.contains("`helper`"),
        "lists the valid keys: {}",
        p[0].message
    );
}

#[test]
fn every_semantic_problem_is_reported_at_once() {
    let text = r#"
listen = "0.0.0.0:8787"
max_body = "lots"

[credentials.a]
kind = "api_key"
env = "A"
helper = "cat key"

[credentials.b]
kind = "aws_magic"

[[routes]]
prefix = "bedrock"
upstream = "http://example.com"
credential = "missing"
"#;
    let p = problems(text);
    let at = |line: usize| {
        p.iter()
            .find(|p| p.line == line)
            .unwrap_or_else(|| panic!("no problem on line {line}: {p:#?}"))
    };
    assert!(at(2).message.contains("not a loopback address"));
    assert!(
        at(2)
            .hint
            .as_deref()
            .unwrap()
            .contains("allow_non_loopback = true")
    );
    assert!(at(3).message.contains("`lots` is not a size"));
    assert!(at(8).message.contains("`helper` is one too many"));
    assert!(at(11).message.contains("unknown kind `aws_magic`"));
    assert!(at(14).message.contains("not a path prefix"));
    assert!(at(15).message.contains("unencrypted"));
    assert_eq!(at(15).hint.as_deref(), Some("write https://example.com"));
    assert!(at(16).message.contains("`missing`, which is not defined"));
    assert_eq!(p.len(), 7, "{p:#?}");
}

#[test]
fn rendering_names_file_line_column_and_help() {
    let error = parse(&MINIMAL.replace("https://api.anthropic.com", "ftp://x")).unwrap_err();
    let text = error.to_string();
    assert!(
        text.starts_with("/etc/credproxy/test.toml:8:12: `ftp` is not a supported scheme"),
        "{text}"
    );
    assert!(text.contains("\n    help: write an https:// URL"), "{text}");
}

#[test]
fn non_loopback_listen_is_allowed_only_when_asked_for() {
    let text = format!("allow_non_loopback = true\nlisten = \"0.0.0.0:8787\"\n{MINIMAL}");
    assert_eq!(
        parse(&text).unwrap().listeners[0].addr.to_string(),
        "0.0.0.0:8787"
    );
}

#[test]
fn routes_group_by_listener() {
    let text = format!(
        "{MINIMAL}\n[[routes]]\nprefix = \"/v1/special/\"\nupstream = \"http://127.0.0.1:9/base/\"\ncredential = \"anthropic\"\n\n[[routes]]\nprefix = \"/own\"\nupstream = \"https://api.anthropic.com:443\"\ncredential = \"anthropic\"\nlisten = \"127.0.0.1:9999\"\n"
    );
    let config = parse(&text).unwrap();
    assert_eq!(config.listeners.len(), 2);
    let main: Vec<_> = config.listeners[0]
        .routes
        .iter()
        .map(|r| r.prefix.as_str())
        .collect();
    assert_eq!(main, ["/", "/v1/special"]);
    assert_eq!(fixed(&config.listeners[0].routes[1]).base_path, "/base");
    let own = &config.listeners[1];
    assert_eq!(own.addr.to_string(), "127.0.0.1:9999");
    assert_eq!(
        fixed(&own.routes[0]).authority.as_str(),
        "api.anthropic.com",
        "default port dropped"
    );
}

#[test]
fn a_prefix_no_request_could_reach_is_refused() {
    let p = problems(&MINIMAL.replace("prefix = \"/\"", "prefix = \"/a/../b\""));
    assert!(
        p[0].message.contains("`/a/../b` is not a path prefix"),
        "{p:#?}"
    );
}

#[test]
fn duplicate_prefix_on_one_listener_is_rejected() {
    let text = format!(
        "{MINIMAL}\n[[routes]]\nprefix = \"/\"\nupstream = \"https://b.example\"\ncredential = \"anthropic\"\n"
    );
    let p = problems(&text);
    assert!(p[0].message.contains("prefix `/` is used twice"), "{p:#?}");
}

#[test]
fn apply_forms() {
    let with = |apply: &str| {
        parse(&MINIMAL.replace(
            "env = \"ANTHROPIC_API_KEY\"",
            &format!("env = \"K\"\napply = \"{apply}\""),
        ))
    };
    let key = |c: Config| key_spec(&c, 0).apply.clone();
    assert_eq!(key(with("bearer").unwrap()), Apply::Bearer);
    assert_eq!(
        key(with("api-key").unwrap()),
        Apply::Header(HeaderName::from_static("api-key"))
    );
    assert!(
        with("authorization").unwrap_err().problems[0]
            .hint
            .as_deref()
            .unwrap()
            .contains("bearer")
    );
    assert!(with("transfer-encoding").is_err());
    assert!(with("bad header").is_err());
}

#[test]
fn key_sources_must_make_sense() {
    let only = |body: &str| parse(&MINIMAL.replace("env = \"ANTHROPIC_API_KEY\"", body));
    assert!(
        only("").unwrap_err().problems[0]
            .message
            .contains("nowhere to get the key")
    );
    assert!(
        only("env = \"sk-ant-api03-xyz-not-a-name\"")
            .unwrap_err()
            .problems[0]
            .message
            .contains("not an environment variable name")
    );
    assert!(
        only("env = \"K\"\nttl = \"5m\"").unwrap_err().problems[0]
            .message
            .contains("`ttl` applies only")
    );
    assert!(only("env = \"K\"\nhelper_timeout = \"5s\"").is_err());
    let helper = only("helper = \"cat ~/.key\"\nttl = \"90s\"\nhelper_timeout = \"5s\"").unwrap();
    let key = &key_spec(&helper, 0).source;
    assert_eq!(
        (key.helper_ttl, key.helper_timeout),
        (Duration::from_secs(90), Duration::from_secs(5))
    );
    let file = only("file = \"keys/anthropic\"").unwrap();
    let key = key_spec(&file, 0);
    assert!(
        matches!(&key.source.from, Some(KeyFrom::File { path, .. }) if path.as_written() == Path::new("/etc/credproxy/keys/anthropic"))
    );
    let literal = only("value = \"sk-literal\"").unwrap();
    assert!(
        !format!("{literal:?}").contains("sk-literal"),
        "a literal key never prints"
    );
}

const AWS: &str = r#"
[credentials.aws]
kind = "aws"

[[routes]]
prefix = "/bedrock"
upstream = "https://bedrock-runtime.{region}.amazonaws.com"
credential = "aws"
"#;

#[test]
fn aws_credentials_take_their_own_keys_only() {
    let config = parse(&AWS.replace("kind = \"aws\"", "kind = \"aws\"\nprofile = \"dev\"\nregion = \"eu-west-1\"\nrole_arn = \"arn:aws:iam::1:role/r\"\nexternal_id = \"x\"\nservice = \"bedrock-mantle\"")).unwrap();
    let aws: &AwsSpec = spec(&config, 0);
    assert_eq!(aws.settings.profile.as_deref(), Some("dev"));
    assert_eq!(aws.service, "bedrock-mantle");

    let p = problems(&AWS.replace("kind = \"aws\"", "kind = \"aws\"\nenv = \"AWS_KEY\""));
    assert_eq!((p[0].line, p[0].column), (4, 7));
    assert!(
        p[0].message.contains("`env` does not apply to kind `aws`"),
        "{p:#?}"
    );
    assert!(
        p[0].hint.as_deref().unwrap().contains("`profile`"),
        "{p:#?}"
    );

    let p = problems(&AWS.replace(
        "kind = \"aws\"",
        "kind = \"aws\"\nregion = \"Virginia\"\nexternal_id = \"x\"",
    ));
    assert!(
        p[0].message.contains("`Virginia` is not an AWS region"),
        "{p:#?}"
    );
    assert!(p[1].message.contains("only when assuming a role"), "{p:#?}");

    let p = problems(&MINIMAL.replace(
        "kind = \"api_key\"",
        "kind = \"api_key\"\nprofile = \"dev\"",
    ));
    assert!(
        p[0].message
            .contains("`profile` does not apply to kind `api_key`"),
        "{p:#?}"
    );
}

#[test]
fn region_placeholders_are_filled_in_or_the_route_is_disabled() {
    let config = parse(AWS).unwrap();
    assert!(matches!(
        config.listeners[0].routes[0].upstream,
        UpstreamSpec::Template(_)
    ));
    let resolved = resolve(config, &[("AWS_REGION", "ap-south-1")]);
    assert_eq!(
        upstream_of(&resolved, "/bedrock").unwrap(),
        "https://bedrock-runtime.ap-south-1.amazonaws.com"
    );

    let home = tempfile::tempdir().unwrap();
    let no_profile = home.path().join("none").display().to_string();
    let resolved = resolve(
        parse(AWS).unwrap(),
        &[("AWS_CONFIG_FILE", no_profile.as_str())],
    );
    let reason = upstream_of(&resolved, "/bedrock").unwrap_err();
    assert!(reason.contains("set AWS_REGION"), "{reason}");

    // The profile's region, from the config file the environment names.
    let config_file = home.path().join("config");
    std::fs::write(&config_file, "[profile dev]\nregion = eu-north-1\n").unwrap();
    let config_file = config_file.display().to_string();
    let resolved = resolve(
        parse(AWS).unwrap(),
        &[
            ("AWS_CONFIG_FILE", config_file.as_str()),
            ("AWS_PROFILE", "dev"),
        ],
    );
    assert_eq!(
        upstream_of(&resolved, "/bedrock").unwrap(),
        "https://bedrock-runtime.eu-north-1.amazonaws.com"
    );
    let resolved = resolve(parse(AWS).unwrap(), &[]);
    let reason = upstream_of(&resolved, "/bedrock").unwrap_err();
    assert!(reason.contains("set AWS_REGION"), "{reason}");

    let p = problems(&MINIMAL.replace("https://api.anthropic.com", "https://{region}.example.com"));
    assert!(
        p[0].message
            .contains("only from an `aws` or `google` credential"),
        "{p:#?}"
    );
}

#[test]
fn bedrock_api_keys_default_to_bearer() {
    let text = MINIMAL.replace("kind = \"api_key\"", "kind = \"bedrock_api_key\"");
    let config = parse(&text).unwrap();
    let key = key_spec(&config, 0);
    assert_eq!(
        (key.apply.clone(), key.rejection),
        (Apply::Bearer, Rejection::BedrockApiKey)
    );
    assert_eq!(config.credentials[0].spec.kind().name(), "bedrock_api_key");
}

#[test]
fn google_credentials_and_vertex_hosts() {
    let text = r#"
[credentials.google]
kind = "google"
key_file = "sa.json"
scopes = ["https://www.googleapis.com/auth/cloud-platform", "openid"]
quota_project = "billing"
project = "my-project"

[[routes]]
prefix = "/vertex"
upstream = "https://{vertex_host}"
credential = "google"
"#;
    let config = parse(text).unwrap();
    let google: &GoogleSpec = spec(&config, 0);
    assert_eq!(
        google.key_file.as_ref().map(|p| p.as_written()),
        Some(Path::new("/etc/credproxy/sa.json"))
    );
    assert_eq!(google.scopes.len(), 2);
    assert_eq!(google.quota_project.as_deref(), Some("billing"));
    let resolved = resolve(config, &[("CLOUD_ML_REGION", "europe-west1")]);
    assert_eq!(
        upstream_of(&resolved, "/vertex").unwrap(),
        "https://europe-west1-aiplatform.googleapis.com"
    );

    let default_scope = parse(&text.replace(
        "scopes = [\"https://www.googleapis.com/auth/cloud-platform\", \"openid\"]\n",
        "",
    ))
    .unwrap();
    let google: &GoogleSpec = spec(&default_scope, 0);
    assert_eq!(google.scopes, [DEFAULT_GOOGLE_SCOPE]);

    let p = problems(&text.replace("\"openid\"", "\"two words\"").replace(
        "project = \"my-project\"",
        "project = \"my-project\"\nregion = \"Europe West\"",
    ));
    assert!(
        p.iter()
            .any(|p| p.message.contains("`two words` is not an OAuth scope")),
        "{p:#?}"
    );
    assert!(
        p.iter()
            .any(|p| p.message.contains("not a Google Cloud region")),
        "{p:#?}"
    );

    let p = problems(&AWS.replace("bedrock-runtime.{region}.amazonaws.com", "{vertex_host}"));
    assert!(
        p[0].message
            .contains("`{vertex_host}` can be filled in only from a `google` credential"),
        "{p:#?}"
    );
}

#[test]
fn vertex_hosts_follow_google_naming() {
    assert_eq!(
        vertex_host("us-east5"),
        "us-east5-aiplatform.googleapis.com"
    );
    assert_eq!(vertex_host("global"), "aiplatform.googleapis.com");
    assert_eq!(vertex_host("us"), "aiplatform.us.rep.googleapis.com");
    assert_eq!(vertex_host("eu"), "aiplatform.eu.rep.googleapis.com");
}

#[test]
fn azure_and_acs_credentials() {
    let text = r#"
[credentials.foundry]
kind = "azure"
method = "managed_identity"
scope = "https://ai.azure.com/.default"
authority_host = "https://login.microsoftonline.us/"
client_id = "user-assigned-id"
key_env = "ANTHROPIC_FOUNDRY_API_KEY"
apply = "x-api-key"

[credentials.acs]
kind = "acs"
file = "acs-connection-string"

[[routes]]
prefix = "/foundry"
upstream = "{foundry_base}"
credential = "foundry"

[[routes]]
prefix = "/acs"
upstream = "https://res.communication.azure.com"
credential = "acs"
"#;
    let config = parse(text).unwrap();
    let azure: &AzureSpec = spec(&config, 1);
    assert_eq!(azure.settings.method, AzureMethod::ManagedIdentity);
    assert_eq!(
        azure.settings.authority_host.as_deref(),
        Some("https://login.microsoftonline.us")
    );
    assert_eq!(
        azure.key_apply,
        Apply::Header(HeaderName::from_static("x-api-key"))
    );
    assert_eq!(config.credentials[0].spec.kind().name(), "acs");
    let resolved = resolve(config, &[("ANTHROPIC_FOUNDRY_RESOURCE", "r")]);
    assert_eq!(
        upstream_of(&resolved, "/foundry").unwrap(),
        "https://r.services.ai.azure.com/anthropic"
    );

    let unset = resolve(parse(text).unwrap(), &[]);
    assert!(
        upstream_of(&unset, "/foundry")
            .unwrap_err()
            .contains("ANTHROPIC_FOUNDRY_RESOURCE")
    );

    let p = problems(
        &text
            .replace("method = \"managed_identity\"", "method = \"magic\"")
            .replace(
                "authority_host = \"https://login.microsoftonline.us/\"",
                "authority_host = \"http://login\"",
            ),
    );
    assert!(
        p.iter().any(|p| p
            .message
            .contains("`magic` is not an Azure credential method")
            && p.hint.as_deref().unwrap().contains("\"workload_identity\"")),
        "{p:#?}"
    );
    assert!(
        p.iter().any(|p| p.message.contains("not an https URL")),
        "{p:#?}"
    );

    let p = problems(&text.replace("key_env = \"ANTHROPIC_FOUNDRY_API_KEY\"\n", ""));
    assert!(
        p[0].message
            .contains("`apply` applies to the key of `key_env`"),
        "{p:#?}"
    );
    let p = problems(&text.replace(
        "upstream = \"{foundry_base}\"",
        "upstream = \"{foundry_base}/v1\"",
    ));
    assert!(p[0].message.contains("stands for a whole URL"), "{p:#?}");
    let p = problems(&text.replace(
        "file = \"acs-connection-string\"",
        "file = \"x\"\napply = \"bearer\"",
    ));
    assert!(
        p[0].message
            .contains("`apply` does not apply to kind `acs`"),
        "{p:#?}"
    );
}

const CALLERS: &str = r#"
[callers]
issuer = "https://login.example.com/"
audiences = ["credproxy"]
email_domains = ["@Example.COM"]
groups_claim = "roles"
header = "x-gateway-token"

[[callers.tokens]]
name = "ci"
sha256 = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
groups = ["robots"]
"#;

#[test]
fn callers_are_read_with_their_defaults() {
    let text = format!("listen = \"0.0.0.0:8443\"\n{CALLERS}{MINIMAL}groups = [\"eng\"]\n");
    let config = parse(&text).unwrap();
    let callers = config.callers.as_ref().unwrap();
    let jwt = callers.jwt.as_ref().unwrap();
    assert_eq!(
        jwt.issuer, "https://login.example.com/",
        "`iss` is compared as written"
    );
    assert_eq!(jwt.keys, crate::config::KeysFrom::Discovery);
    assert_eq!(jwt.email_domains, ["example.com"]);
    assert_eq!(jwt.email_claim, "email");
    assert_eq!(jwt.groups_claim, "roles");
    assert_eq!(jwt.clock_skew, Duration::from_secs(60));
    assert_eq!(callers.tokens[0].name, "ci");
    assert_eq!(callers.tokens[0].sha256[0], 0x9f);
    assert_eq!(
        callers.header,
        Some(HeaderName::from_static("x-gateway-token"))
    );
    // Callers make a non-loopback listener acceptable without `allow_non_loopback`.
    assert_eq!(config.listeners[0].addr.to_string(), "0.0.0.0:8443");
    let route = &config.listeners[0].routes[0];
    assert_eq!(route.groups.as_deref(), Some(&["eng".to_string()][..]));
    // The caller's own header is stripped on every route.
    let resolved = resolve(config, &[]);
    let route = resolved.routes().next().unwrap().1;
    assert!(
        route
            .strip_headers
            .contains(&HeaderName::from_static("x-gateway-token"))
    );
}

#[test]
fn callers_mistakes_are_reported_with_what_to_write() {
    let cases: &[(&str, &str)] = &[
        (
            "[callers]\njwks_url = \"https://idp/keys\"\naudiences = [\"a\"]\n",
            "names no `issuer`",
        ),
        (
            "[callers]\nissuer = \"https://idp\"\n",
            "names no `audiences`",
        ),
        (
            "[callers]\nissuer = \"http://idp.example\"\naudiences = [\"a\"]\n",
            "must use https",
        ),
        (
            "[callers]\nissuer = \"https://idp\"\naudiences = [\"a\"]\njwks_url = \"https://idp/k\"\njwks_file = \"k.json\"\n",
            "both set",
        ),
        ("[callers]\n", "admits nobody"),
        (
            "[callers]\n[[callers.tokens]]\nname = \"ci\"\nsha256 = \"SECRET-TOKEN\"\n",
            "64 lowercase hex",
        ),
        (
            "[callers]\n[[callers.tokens]]\nsha256 = \"9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08\"\n",
            "no `name`",
        ),
        (
            "[callers]\nissuer = \"https://idp\"\naudiences = [\"a\"]\nemail_domains = [\"not a domain\"]\n",
            "not an email domain",
        ),
        (
            "[callers]\nissuer = \"https://idp\"\naudiences = [\"a\"]\nheader = \"host\"\n",
            "cannot carry a caller's token",
        ),
        ("tls_cert = \"cert.pem\"\n", "go together"),
        (
            "[callers]\nissuer = \"https://idp\"\naudiences = [\"a\"]\nemail_domains = []\n",
            "would admit every address",
        ),
        (
            "[callers]\nissuer = \"https://idp\"\naudiences = [\"a\"]\nemail_domains = [\"*.corp.com\"]\n",
            "not an email domain",
        ),
    ];
    for (extra, expected) in cases {
        let found = problems(&format!("{extra}{MINIMAL}"));
        assert!(
            found
                .iter()
                .any(|p| p.message.contains(expected) && p.hint.is_some()),
            "{expected:?} not among {found:#?}"
        );
    }
    let found = problems(&format!("{MINIMAL}groups = [\"eng\"]\n"));
    assert!(
        found[0].message.contains("needs a [callers] table"),
        "{found:#?}"
    );
    // Without callers, serving other machines still has to be asked for, TLS or not.
    let found = problems(&format!("listen = \"0.0.0.0:8787\"\n{MINIMAL}"));
    assert!(
        found[0].message.contains("not a loopback address"),
        "{found:#?}"
    );
    let tls =
        format!("listen = \"0.0.0.0:8443\"\ntls_cert = \"c.pem\"\ntls_key = \"k.pem\"\n{MINIMAL}");
    let found = problems(&tls);
    assert!(
        found[0].message.contains("not a loopback address"),
        "{found:#?}"
    );
    let config = parse(&format!("allow_non_loopback = true\n{tls}")).unwrap();
    assert_eq!(
        config.tls.unwrap().cert.as_written(),
        Path::new("/etc/credproxy/c.pem")
    );
}

#[test]
fn an_oidc_credential_is_read_with_its_defaults_and_checked() {
    use crate::kinds::oidc::{DEFAULT_SCOPES, Flow, OidcSpec, Sent};
    let route = "[[routes]]\nprefix = \"/\"\nupstream = \"https://gateway.example.com\"\ncredential = \"corp\"\n";
    let config = parse(&format!(
        "[credentials.corp]\nkind = \"oidc\"\nissuer = \"https://login.example.com/\"\nclient_id = \"cli\"\n{route}"
    ))
    .unwrap();
    let oidc: &OidcSpec = spec(&config, 0);
    assert_eq!(oidc.issuer, "https://login.example.com");
    assert_eq!(oidc.scopes, DEFAULT_SCOPES);
    assert_eq!((oidc.flow, oidc.token), (Flow::Auto, Sent::IdToken));
    assert_eq!(oidc.apply, Apply::Bearer);

    let local = parse(&format!(
        "[credentials.corp]\nkind = \"oidc\"\nissuer = \"http://127.0.0.1:8080/realms/x\"\nclient_id = \"cli\"\nflow = \"device\"\ntoken = \"access_token\"\nscopes = [\"openid\"]\naudience = \"api\"\n{route}"
    ))
    .unwrap();
    let oidc: &OidcSpec = spec(&local, 0);
    assert_eq!((oidc.flow, oidc.token), (Flow::Device, Sent::AccessToken));
    assert_eq!(oidc.audience.as_deref(), Some("api"));

    let p = problems(&format!(
        "[credentials.corp]\nkind = \"oidc\"\nissuer = \"http://login.example.com\"\nflow = \"popup\"\ntoken = \"refresh_token\"\nscopes = [\"email\"]\n{route}"
    ));
    let messages: Vec<&str> = p.iter().map(|p| p.message.as_str()).collect();
    assert!(
        messages
            .iter()
            .any(|m| m.contains("`issuer` must use https")),
        "{p:?}"
    );
    assert!(
        messages.iter().any(|m| m.contains("names no `client_id`")),
        "{p:?}"
    );
    assert!(
        messages
            .iter()
            .any(|m| m.contains("`popup` is not a login flow")),
        "{p:?}"
    );
    assert!(
        messages
            .iter()
            .any(|m| m.contains("`refresh_token` is not a token")),
        "{p:?}"
    );
    assert!(
        messages.iter().any(|m| m.contains("lacks \"openid\"")),
        "{p:?}"
    );
}

#[test]
fn upstream_http2_and_the_connection_cap_are_checked() {
    let route = |http2: &str| {
        format!(
            "pool_max_connections_per_host = 0\n[credentials.key]\nkind = \"api_key\"\nvalue = \"k\"\n[[routes]]\nprefix = \"/\"\nupstream = \"https://api.anthropic.com\"\ncredential = \"key\"\nupstream_http2 = \"{http2}\"\n"
        )
    };
    let found = problems(&route("sometimes"));
    let http2 = found
        .iter()
        .find(|p| p.message.contains("upstream_http2"))
        .unwrap_or_else(|| panic!("{found:?}"));
    assert_eq!((http2.line, http2.column), (9, 18), "{http2:?}");
    assert!(
        http2.hint.as_deref().unwrap().contains("\"auto\""),
        "{http2:?}"
    );
    let cap = found
        .iter()
        .find(|p| p.message.contains("pool_max_connections_per_host"))
        .unwrap_or_else(|| panic!("{found:?}"));
    assert_eq!(cap.line, 1, "{cap:?}");
    let good = route("always").replace("pool_max_connections_per_host = 0", "");
    let config = parse(&good).unwrap();
    assert_eq!(
        config.listeners[0].routes[0].http2,
        crate::config::Http2::Always
    );
    assert_eq!(config.limits.pool_max_connections_per_host, 512);
}
