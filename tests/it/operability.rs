//! What an operator sees and changes without a restart: health, readiness, metrics and
//! status on the admin listener, `credproxy status`, and live reload.

use std::time::Duration;

use http_body_util::BodyExt;
use nix::sys::signal::Signal;

use crate::support::*;

/// A line of the metrics text with this name and these labels, and its value.
fn metric(text: &str, name: &str, labels: &[&str]) -> Option<f64> {
    text.lines()
        .filter(|l| l.starts_with(name) && !l.starts_with('#'))
        .find(|l| labels.iter().all(|label| l.contains(label)))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

#[tokio::test]
async fn admin_endpoints_report_health_readiness_metrics_and_status() {
    let upstream = FakeUpstream::accepting_key("good-key-123").await;
    let scratch = Scratch::new();
    let d = scratch.path("").display().to_string();
    let config = format!(
        r#"listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"

[credentials.good]
kind = "api_key"
helper = "echo good-key-123"

[credentials.late]
kind = "api_key"
helper = "cat {d}/late-key"

[[routes]]
prefix = "/"
upstream = "{upstream}"
credential = "good"

[[routes]]
prefix = "/late"
upstream = "{upstream}"
credential = "late"
"#,
        upstream = upstream.url()
    );
    let proxy = credproxy(&scratch, &config).start();
    proxy.wait_for_output("credential not available yet").await;
    // Both warm up at once; only `good` can become ready.
    proxy.wait_for_output("credential ready").await;
    assert_eq!(get(&proxy.admin_url("/healthz").await).await.status, 200);

    // Not ready: `late` has no value yet, and /readyz says why.
    let ready = get(&proxy.admin_url("/readyz").await).await;
    assert_eq!(ready.status, 503, "{}", ready.text());
    let waiting = &ready.json()["waiting"];
    assert_eq!(waiting.as_array().unwrap().len(), 1, "{waiting}");
    assert_eq!(waiting[0]["credential"], "late");
    assert!(
        waiting[0]["reason"]
            .as_str()
            .unwrap()
            .contains("exited with status 1"),
        "{waiting}"
    );

    // Status says which credential fails and why; never a value.
    let status = get(&proxy.admin_url("/status").await).await;
    assert_eq!(status.status, 200);
    let json = status.json();
    let by_name = |name: &str| {
        json["credentials"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == name)
            .unwrap()
            .clone()
    };
    assert_eq!(by_name("good")["state"], "ready");
    assert_eq!(by_name("good")["kind"], "api_key");
    assert_eq!(by_name("late")["state"], "failing");
    assert!(
        by_name("late")["last_error"]["message"]
            .as_str()
            .unwrap()
            .contains("exited with status 1")
    );
    assert_eq!(json["routes"].as_array().unwrap().len(), 2);
    assert!(
        !status.text().contains("good-key-123"),
        "a value reached /status"
    );

    // The source recovers: credproxy fetches again by itself (no request needed) and the
    // process becomes ready.
    scratch.write("late-key", "good-key-123");
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while get(&proxy.admin_url("/readyz").await).await.status != 200 {
        assert!(std::time::Instant::now() < deadline, "{}", proxy.output());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        post(&proxy.url("/late/v1/messages"), "{}").await.status,
        200
    );

    // Metrics count what was sent.
    for _ in 0..3 {
        assert_eq!(post(&proxy.url("/v1/messages"), "{}").await.status, 200);
    }
    assert_eq!(post(&proxy.url("/../x"), "{}").await.status, 400);
    let metrics = get(&proxy.admin_url("/metrics").await).await;
    assert_eq!(metrics.status, 200);
    assert!(
        metrics.headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/openmetrics-text")
    );
    let text = metrics.text();
    let requests = |labels: &[&str]| metric(&text, "credproxy_requests_total", labels);
    assert_eq!(
        requests(&["route=\"/\"", "status=\"200\"", "attempts=\"1\""]),
        Some(3.0),
        "{text}"
    );
    assert_eq!(requests(&["route=\"/late\"", "status=\"200\""]), Some(1.0));
    assert_eq!(requests(&["route=\"-\"", "status=\"400\""]), Some(1.0));
    assert_eq!(
        metric(
            &text,
            "credproxy_request_duration_seconds_count",
            &["route=\"/\""]
        ),
        Some(3.0)
    );
    assert_eq!(
        metric(
            &text,
            "credproxy_upstream_duration_seconds_count",
            &["route=\"/\""]
        ),
        Some(3.0)
    );
    assert_eq!(
        metric(
            &text,
            "credproxy_credential_fetches_total",
            &["credential=\"late\"", "result=\"error\""]
        ),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        metric(
            &text,
            "credproxy_credential_fetches_total",
            &["credential=\"good\"", "result=\"ok\""]
        ),
        Some(1.0)
    );
    assert!(metric(&text, "credproxy_connections_open", &["listener="]).is_some());
    assert!(!text.contains("good-key-123"));
    assert!(!text.contains("v1/messages"), "no raw path is a label");

    // The admin listener is not a proxy: no route serves there.
    let wrong = get(&proxy.admin_url("/v1/messages").await).await;
    assert_eq!(wrong.status, 404);
}

#[tokio::test]
async fn credproxy_status_shows_a_failing_credentials_cause() {
    let scratch = Scratch::new();
    let port = Scratch::free_port();
    let config = format!(
        r#"listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:{port}"
[credentials.broken]
kind = "api_key"
helper = "echo 'vault: permission denied' >&2; exit 3"
[[routes]]
prefix = "/"
upstream = "https://api.anthropic.com"
credential = "broken"
"#
    );
    let proxy = credproxy(&scratch, &config).start();
    proxy.wait_for_output("admin endpoints ready").await;
    proxy.wait_for_output("credential not available yet").await;
    let (status, stdout, stderr) = credproxy(&scratch, &config).run_async("status").await;
    assert_eq!(status.code(), Some(1), "{stdout}{stderr}");
    let line = stdout
        .lines()
        .find(|l| l.starts_with("broken"))
        .unwrap_or_else(|| panic!("{stdout}"));
    assert!(line.contains("failing"), "{stdout}");
    assert!(line.contains("exited with status 3"), "{stdout}");
    assert!(stdout.contains("CREDENTIAL"), "{stdout}");
    assert!(stdout.contains("https://api.anthropic.com"), "{stdout}");
}

#[tokio::test]
async fn reload_swaps_routes_keeps_cached_credentials_and_refuses_a_broken_file() {
    let gate = std::sync::Arc::new(tokio::sync::Semaphore::new(0));
    let first =
        FakeUpstream::gated_stream(&gate, vec!["data: 1\n\n".into(), "data: 2\n\n".into()]).await;
    let second = FakeUpstream::start(|_| Reply::status(200, r#"{"from":"second"}"#)).await;
    let scratch = Scratch::new();
    scratch.write("key", "k");
    let helper = scratch.counting_helper("0");
    let extra_port = Scratch::free_port();
    let config = |upstream: &str, extra: &str| {
        format!(
            r#"listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"
watch_config = true

[credentials.key]
kind = "api_key"
helper = "{helper}"

[[routes]]
prefix = "/"
upstream = "{upstream}"
credential = "key"
{extra}"#
        )
    };
    let proxy = credproxy(&scratch, &config(&first.url(), "")).start();
    proxy.wait_for_output("credential ready").await;
    // A stream in flight on the old config.
    let mut body = stream_after_first_frame(&proxy.url("/v1/messages"), "data: 1\n\n").await;

    // A good file: the route moves, a route and a listener are added.
    let added = format!(
        "\n[[routes]]\nprefix = \"/new\"\nupstream = \"{}\"\ncredential = \"key\"\n\n[[routes]]\nprefix = \"/\"\nlisten = \"127.0.0.1:{extra_port}\"\nupstream = \"{}\"\ncredential = \"key\"\n",
        second.url(),
        second.url()
    );
    scratch.write("credproxy.toml", &config(&second.url(), &added));
    proxy.signal(Signal::SIGHUP);
    proxy.wait_for_output("configuration reloaded").await;
    let answer = post(&proxy.url("/v1/messages"), "{}").await;
    assert_eq!(answer.text(), r#"{"from":"second"}"#);
    assert_eq!(post(&proxy.url("/new/v1/messages"), "{}").await.status, 200);
    let extra = format!("http://127.0.0.1:{extra_port}/v1/messages");
    assert_eq!(post(&extra, "{}").await.status, 200);
    assert_eq!(
        scratch.lines("runs"),
        1,
        "the unchanged credential was not fetched again"
    );
    // The stream that started before the reload finishes on the old upstream.
    gate.add_permits(1);
    let frame = body.frame().await.unwrap().unwrap().into_data().unwrap();
    assert_eq!(frame, "data: 2\n\n");
    assert!(body.frame().await.is_none());

    // A broken file: every problem logged, the old config keeps serving.
    scratch.write(
        "credproxy.toml",
        "listen = \"127.0.0.1:0\"\n[[routes]]\nprefix = 7\n",
    );
    proxy.signal(Signal::SIGHUP);
    proxy.wait_for_output("configuration not reloaded").await;
    proxy.wait_for_output("credproxy.toml:3:").await;
    assert_eq!(post(&proxy.url("/new/v1/messages"), "{}").await.status, 200);

    // watch_config: a changed file is picked up without a signal; the listener it no
    // longer names stops accepting.
    scratch.write("credproxy.toml", &config(&second.url(), "# edited\n"));
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while tokio::net::TcpStream::connect(("127.0.0.1", extra_port))
        .await
        .is_ok()
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the removed listener still accepts:\n{}",
            proxy.output()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    proxy.wait_for_output("trigger=\"watch_config\"").await;
    assert_eq!(post(&proxy.url("/v1/messages"), "{}").await.status, 200);

    // The watcher may also have seen the files the signals loaded: at least these.
    let metrics = get(&proxy.admin_url("/metrics").await).await.text();
    let applied = metric(
        &metrics,
        "credproxy_config_reloads_total",
        &["result=\"applied\""],
    );
    assert!(applied.is_some_and(|n| n >= 2.0), "{metrics}");
    let rejected = metric(
        &metrics,
        "credproxy_config_reloads_total",
        &["result=\"rejected\""],
    );
    assert!(rejected.is_some_and(|n| n >= 1.0), "{metrics}");
    assert_eq!(scratch.lines("runs"), 1);
}
