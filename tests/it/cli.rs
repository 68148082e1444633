//! The binary as a user meets it: config errors, `check`, `env`, logs, shutdown.

use std::time::Duration;

use crate::support::*;
use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full};

#[test]
fn config_errors_name_file_line_column_and_fix_and_exit_2() {
    let scratch = Scratch::new();
    let config = r#"listen = "127.0.0.1:0"
max_body = "huge"

[credentials.key]
kind = "api_key"
env = "KEY"
ttl = "5m"

[[routes]]
prefix = "/"
upstream = "http://api.example.com"
credential = "key"
"#;
    let (status, stdout, stderr) = credproxy(&scratch, config).run("run");
    assert_eq!(status.code(), Some(2), "{stderr}");
    assert!(stdout.is_empty(), "{stdout}");
    let file = scratch.path("credproxy.toml").display().to_string();
    assert!(
        stderr.contains(&format!("{file}:2:12: `huge` is not a size")),
        "{stderr}"
    );
    assert!(
        stderr.contains("help: write a size such as \"32MiB\""),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!("{file}:7:7: `ttl` applies only")),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!(
            "{file}:11:12: `http://api.example.com` would send credentials unencrypted"
        )),
        "{stderr}"
    );
    assert!(
        stderr.contains("help: write https://api.example.com"),
        "{stderr}"
    );

    let (status, _, stderr) = credproxy(&scratch, "listen = [\n").run("run");
    assert_eq!(status.code(), Some(2));
    assert!(
        stderr.contains(&format!("{file}:1:11: unclosed array, expected `]`")),
        "{stderr}"
    );

    let (status, _, stderr) = credproxy(&scratch, "lisen = \"127.0.0.1:0\"\n").run("check");
    assert_eq!(status.code(), Some(2));
    assert!(
        stderr.contains(&format!(
            "{file}:1:1: unknown field `lisen`, expected one of `listen`"
        )),
        "{stderr}"
    );
}

#[test]
fn the_example_config_is_valid_for_the_binary_too() {
    let scratch = Scratch::new();
    let example =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/config.example.toml"))
            .unwrap();
    let (status, stdout, stderr) = credproxy(&scratch, &example).run("env");
    assert!(status.success(), "{stderr}");
    assert!(
        stdout.contains("export ANTHROPIC_BASE_URL=http://127.0.0.1:8787\n"),
        "{stdout}"
    );
    assert!(
        stdout.contains("export ANTHROPIC_BASE_URL=http://127.0.0.1:8788\n"),
        "{stdout}"
    );
    assert!(
        stdout.contains("export ANTHROPIC_BASE_URL=http://127.0.0.1:8787/team\n"),
        "{stdout}"
    );
}

#[test]
fn check_fetches_every_credential_and_never_prints_a_value() {
    let scratch = Scratch::new();
    scratch.write("key", "sk-helper-secret-value");
    let config = format!(
        r#"[credentials.fromenv]
kind = "api_key"
env = "MY_KEY"
[credentials.fromhelper]
kind = "api_key"
helper = "cat {}"
[[routes]]
prefix = "/"
upstream = "https://api.anthropic.com"
credential = "fromenv"
[[routes]]
prefix = "/h"
upstream = "https://api.anthropic.com"
credential = "fromhelper"
"#,
        scratch.path("key").display()
    );
    let (status, stdout, stderr) = credproxy(&scratch, &config)
        .env("MY_KEY", "sk-env-secret-value")
        .run("check");
    assert!(status.success(), "{stdout}{stderr}");
    let row = |name: &str| {
        stdout
            .lines()
            .find(|l| l.starts_with(name))
            .unwrap_or_else(|| panic!("no {name} row:\n{stdout}"))
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")
    };
    assert_eq!(row("fromenv"), "fromenv api_key env MY_KEY never ok");
    assert!(row("fromhelper").ends_with("5m (ttl) ok"), "{stdout}");
    assert!(
        !stdout.contains("secret-value") && !stderr.contains("secret-value"),
        "{stdout}{stderr}"
    );

    let (status, stdout, _) = credproxy(&scratch, &config).run("check");
    assert_eq!(status.code(), Some(1));
    assert!(
        stdout.contains("FAILED: environment variable MY_KEY is not set"),
        "{stdout}"
    );
}

#[test]
fn env_prints_what_a_client_needs() {
    let scratch = Scratch::new();
    let (status, stdout, _) = credproxy(
        &scratch,
        &config("https://api.anthropic.com", r#"env = "K""#),
    )
    .run("env");
    assert!(status.success());
    assert_eq!(
        stdout,
        "# route / -> https://api.anthropic.com (credential `key`)\n\
         export ANTHROPIC_BASE_URL=http://127.0.0.1:0\n\
         export ANTHROPIC_AUTH_TOKEN=credproxy  # any value: credproxy removes it and applies the real key\n\n"
    );
}

#[test]
fn env_for_a_route_to_a_gateways_cloud_route_prints_that_clouds_mode() {
    let scratch = Scratch::new();
    let mut config = route_config("/bedrock", "https://gw.example.com/bedrock");
    for cloud in ["vertex", "foundry"] {
        config.push_str(&format!(
            "[[routes]]\nprefix = \"/{cloud}\"\nupstream = \"https://gw.example.com/{cloud}\"\ncredential = \"key\"\n"
        ));
    }
    let (status, stdout, _) = credproxy(&scratch, &config).run("env");
    assert!(status.success());
    assert!(!stdout.contains("ANTHROPIC_BASE_URL"), "{stdout}");
    for line in [
        "export CLAUDE_CODE_USE_BEDROCK=1",
        "export ANTHROPIC_BEDROCK_BASE_URL=http://127.0.0.1:0/bedrock",
        "export CLAUDE_CODE_SKIP_BEDROCK_AUTH=1",
        "export CLAUDE_CODE_USE_VERTEX=1",
        "export ANTHROPIC_VERTEX_BASE_URL=http://127.0.0.1:0/vertex/v1",
        "export CLAUDE_CODE_USE_FOUNDRY=1",
        "export ANTHROPIC_FOUNDRY_BASE_URL=http://127.0.0.1:0/foundry",
    ] {
        assert!(
            stdout.lines().any(|l| l == line),
            "{line:?} missing:\n{stdout}"
        );
    }
}

#[test]
fn the_embedded_default_is_used_without_a_config_and_printed_on_request() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_credproxy"))
        .arg("default-config")
        .env_clear()
        .output()
        .unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.contains("upstream = \"https://api.anthropic.com\""),
        "{text}"
    );

    let out = std::process::Command::new(env!("CARGO_BIN_EXE_credproxy"))
        .arg("check")
        .env_clear()
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("ANTHROPIC_API_KEY", "x")
        .output()
        .unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(out.status.success(), "{text}");
    assert!(
        text.starts_with("config: <embedded default config> (valid)"),
        "{text}"
    );
}

/// Every secret the proxy handles in a run at the most verbose level, with every code path
/// that touches them (fetch, refresh, retry, h2, errors), must stay out of its output.
#[tokio::test]
async fn no_secret_reaches_the_output_at_trace_level() {
    const ENV_SECRET: &str = "sk-ant-env-SECRET-1111";
    const HELPER_OLD: &str = "sk-ant-helper-SECRET-2222";
    const HELPER_NEW: &str = "sk-ant-helper-SECRET-3333";
    const CLIENT_SECRET: &str = "sk-ant-client-SECRET-4444";
    const AWS_SECRET: &str = "aws-secret-SECRET-5555-wJalrXUtnFEMI";
    const AWS_TOKEN: &str = "aws-session-SECRET-6666-FwoGZXIvYXdzEJr";
    const GOOGLE_TOKEN: &str = "ya29.google-SECRET-7777";
    let metadata = FakeUpstream::start(|_| {
        Reply::status(
            200,
            format!(
                r#"{{"access_token":"{GOOGLE_TOKEN}","expires_in":3599,"token_type":"Bearer"}}"#
            ),
        )
    })
    .await;
    let upstream = FakeUpstream::start(|req| {
        let key = req
            .header("x-api-key")
            .or(req.header("authorization"))
            .unwrap_or("");
        if key.ends_with("1111")
            || key.ends_with("3333")
            || key.ends_with("7777")
            || key.starts_with("AWS4-HMAC-SHA256")
        {
            Reply::status(200, "{}")
        } else {
            Reply::anthropic_error(401, "authentication_error", "invalid x-api-key")
        }
    })
    .await;
    let scratch = Scratch::new();
    scratch.write("key", HELPER_OLD);
    let config = format!(
        r#"listen = "127.0.0.1:0"
[credentials.env]
kind = "api_key"
env = "ANTHROPIC_API_KEY"
[credentials.helper]
kind = "api_key"
helper = "{}"
apply = "bearer"
[[routes]]
prefix = "/"
upstream = "{1}"
credential = "env"
[credentials.aws]
kind = "aws"
region = "us-east-1"
[[routes]]
prefix = "/h"
upstream = "{1}"
credential = "helper"
[credentials.google]
kind = "google"
[[routes]]
prefix = "/aws"
upstream = "{1}"
credential = "aws"
[[routes]]
prefix = "/google"
upstream = "{1}"
credential = "google"
"#,
        scratch.counting_helper("0"),
        upstream.url()
    );
    for format in ["text", "json"] {
        scratch.write("key", HELPER_OLD);
        let _ = std::fs::remove_file(scratch.path("runs"));
        let proxy = credproxy(&scratch, &config)
            .env("ANTHROPIC_API_KEY", ENV_SECRET)
            .env("AWS_ACCESS_KEY_ID", "AKIATRACETEST")
            .env("AWS_SECRET_ACCESS_KEY", AWS_SECRET)
            .env("AWS_SESSION_TOKEN", AWS_TOKEN)
            .env("GCE_METADATA_HOST", &metadata.addr.to_string())
            .arg("--log-level")
            .arg("trace")
            .arg("--log-format")
            .arg(format)
            .start();
        proxy.wait_for_output("credential ready").await;
        scratch.write("key", HELPER_NEW);
        let dummy = |path: &str| {
            Request::post(proxy.url(path))
                .header("x-api-key", CLIENT_SECRET)
                .header("authorization", format!("Bearer {CLIENT_SECRET}"))
                .body(Full::new(Bytes::from("{}")))
                .unwrap()
        };
        assert_eq!(send(dummy("/v1/messages")).await.status, 200);
        assert_eq!(
            send(dummy("/h/v1/messages")).await.status,
            200,
            "refreshed after a 401"
        );
        assert_eq!(send(dummy("/aws/model/m/invoke")).await.status, 200);
        assert_eq!(
            send(dummy(
                "/google/v1/projects/p/locations/l/publishers/anthropic/models/m:rawPredict"
            ))
            .await
            .status,
            200
        );
        let h2: hyper_util::client::legacy::Client<_, Full<Bytes>> =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .http2_only(true)
                .build_http();
        let response = h2.request(dummy("/h/v1/messages")).await.unwrap();
        let _ = response.into_body().collect().await;
        let refreshed = upstream
            .requests()
            .iter()
            .filter(|r| {
                r.header("authorization")
                    .is_some_and(|a| a.ends_with("3333"))
            })
            .count();
        assert!(refreshed >= 2, "the refreshed helper key was used");

        // Log lines are written in batches: wait for the access line before reading it all.
        proxy.wait_for_output("credproxy::access").await;
        let output = proxy.output();
        assert!(
            output.contains("TRACE") || output.contains("\"level\":\"TRACE\""),
            "really at trace level"
        );
        assert!(
            upstream
                .requests()
                .iter()
                .any(|r| r.header("x-amz-security-token") == Some(AWS_TOKEN)),
            "the AWS route was used"
        );
        for secret in [
            ENV_SECRET,
            HELPER_OLD,
            HELPER_NEW,
            CLIENT_SECRET,
            AWS_SECRET,
            AWS_TOKEN,
            GOOGLE_TOKEN,
        ] {
            assert!(
                !output.contains(secret),
                "{secret} leaked in {format} output:\n{output}"
            );
            // Nor a recognisable part of it.
            assert!(!output.contains(&secret[7..]), "part of {secret} leaked");
        }
    }
}

#[tokio::test]
async fn sigterm_lets_an_open_stream_finish_before_exiting() {
    let gate = std::sync::Arc::new(tokio::sync::Semaphore::new(0));
    let chunks = vec![Bytes::from("data: 1\n\n"), Bytes::from("data: 2\n\n")];
    let upstream = FakeUpstream::gated_stream(&gate, chunks).await;
    let scratch = Scratch::new();
    let mut proxy = credproxy(&scratch, &config(&upstream.url(), r#"value = "k""#)).start();
    let mut body = stream_after_first_frame(&proxy.url("/v1/messages"), "data: 1\n\n").await;

    proxy.signal(nix::sys::signal::Signal::SIGTERM);
    proxy.wait_for_output("shutting down").await;
    // New connections are refused while the open stream goes on.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while tokio::net::TcpStream::connect(proxy.addr()).await.is_ok() {
        assert!(
            std::time::Instant::now() < deadline,
            "still accepting 10 s after SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    gate.add_permits(1);
    let second = body.frame().await.unwrap().unwrap().into_data().unwrap();
    assert_eq!(second, "data: 2\n\n");
    assert!(body.frame().await.is_none());
    let status = proxy.exit_status().await;
    assert!(status.success(), "{status}");
}

#[tokio::test]
async fn the_access_log_follows_the_log_filter_in_both_formats() {
    let upstream = FakeUpstream::start(|_| Reply::status(200, "{}")).await;
    for format in ["text", "json"] {
        for (filter, logged) in [("info", true), ("info,credproxy::access=off", false)] {
            let scratch = Scratch::new();
            let mut proxy = credproxy(&scratch, &config(&upstream.url(), r#"value = "k""#))
                .arg("--log-format")
                .arg(format)
                .env("CREDPROXY_LOG", filter)
                .start();
            let answer = post(&proxy.url("/v1/messages?beta=true"), "{}").await;
            assert_eq!(answer.status, 200);
            proxy.signal(nix::sys::signal::Signal::SIGTERM);
            assert!(proxy.exit_status().await.success());
            proxy.wait_for_output("shutting down").await;
            let output = proxy.output();
            let line = output.lines().find(|l| l.contains("credproxy::access"));
            assert_eq!(line.is_some(), logged, "{format}, {filter}:\n{output}");
            if let Some(line) = line {
                assert!(
                    line.contains("/v1/messages") && !line.contains("beta"),
                    "{line}"
                );
                if format == "json" {
                    let json: serde_json::Value = serde_json::from_str(line).unwrap();
                    assert_eq!(json["status"], 200, "{line}");
                    assert_eq!(json["credential"], "key", "{line}");
                } else {
                    assert!(line.contains(" status=200 attempts=1 "), "{line}");
                }
            }
        }
    }
}

#[tokio::test]
async fn signals_sent_the_moment_credproxy_listens_are_handled() {
    // Every handler is in place before the first listener is bound: a SIGHUP and a SIGTERM
    // sent as soon as `listening` shows are a reload and a graceful stop, never the
    // default action (death by signal).
    let upstream = FakeUpstream::start(|_| Reply::status(200, "{}")).await;
    let scratch = Scratch::new();
    let mut proxy = credproxy(&scratch, &config(&upstream.url(), r#"value = "k""#)).start();
    proxy.signal(nix::sys::signal::Signal::SIGHUP);
    proxy.signal(nix::sys::signal::Signal::SIGTERM);
    let status = proxy.exit_status().await;
    assert!(status.success(), "{status}\n{}", proxy.output());
    proxy.wait_for_output("shutting down").await;
}

#[test]
fn every_problem_is_reported_at_once_and_zero_or_absurd_limits_are_refused() {
    let scratch = Scratch::new();
    let config = r#"listen = "127.0.0.1:0"
lisen = "127.0.0.1:1"
upstream_timeout = "0s"
max_body = "0B"
max_connections = 0

[credentials.key]
kind = "api_key"
helper = "cat key"
helper_timeout = "0s"
envv = "X"

[[routes]]
prefix = "/"
upstream = "https://api.anthropic.com"
credential = "key"
stream_idle_timeout = "0s"
upstream_typo = "x"
"#;
    let (status, _, stderr) = credproxy(&scratch, config).run("check");
    assert_eq!(status.code(), Some(2), "{stderr}");
    let file = scratch.path("credproxy.toml").display().to_string();
    for expected in [
        format!("{file}:2:1: unknown field `lisen`"),
        format!("{file}:3:20: `0s` is outside the allowed range 100ms to 1day"),
        format!("{file}:4:12: `0B` is outside the allowed range 1.0 KiB to 1.0 GiB"),
        format!("{file}:5:19: `max_connections` = 0 is outside the allowed range 1 to 1000000"),
        format!("{file}:10:18: `0s` is outside the allowed range 100ms to 1h"),
        format!("{file}:11:1: unknown field `envv`"),
        format!("{file}:17:23: `0s` is outside the allowed range 1s to 1day"),
        format!("{file}:18:1: unknown field `upstream_typo`"),
    ] {
        assert!(
            stderr.contains(&expected),
            "missing `{expected}` in:\n{stderr}"
        );
    }
    assert!(
        stderr.contains("help: write a duration between"),
        "{stderr}"
    );

    // A file that is not UTF-8 is told apart from a missing one.
    let path = scratch.path("latin1.toml");
    std::fs::write(&path, b"listen = \"127.0.0.1:0\"\n# caf\xe9\n").unwrap();
    let (status, _, stderr) = credproxy_default(&scratch)
        .arg("--config")
        .arg(path.to_str().unwrap())
        .run("check");
    assert_eq!(status.code(), Some(2));
    assert!(
        stderr.contains(&format!(
            "{}:2:6: the config file is not UTF-8 text",
            path.display()
        )),
        "{stderr}"
    );
    assert!(stderr.contains("help: save the file as UTF-8"), "{stderr}");
    assert!(!stderr.contains("pass an existing file"), "{stderr}");
}
