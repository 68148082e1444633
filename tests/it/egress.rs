//! Behind a corporate network: upstream connections through a CONNECT proxy (from the
//! environment or `egress_proxy`, with basic auth), NO_PROXY exceptions, `ca_file` added to
//! the system roots, and a client certificate for an upstream that demands one.

use crate::support::connect_proxy::ConnectProxy;
use crate::support::tls::TestCa;
use crate::support::*;

fn two_routes(ca_file: &str, proxied: &str, direct: &str, extra: &str) -> String {
    format!(
        r#"listen = "127.0.0.1:0"
ca_file = "{ca_file}"
{extra}
[credentials.key]
kind = "api_key"
value = "k"

[[routes]]
prefix = "/"
upstream = "{proxied}"
credential = "key"

[[routes]]
prefix = "/direct"
upstream = "{direct}"
credential = "key"
"#
    )
}

#[tokio::test]
async fn upstream_connections_go_through_the_environments_proxy_except_no_proxy() {
    let ca = TestCa::new();
    let tls_upstream =
        FakeUpstream::start_tls(&ca, |_| Reply::status(200, r#"{"via":"tls"}"#)).await;
    let plain = FakeUpstream::start(|_| Reply::status(200, r#"{"via":"plain"}"#)).await;
    let proxy = ConnectProxy::start(Some(("corp", "s3cret"))).await;
    let scratch = Scratch::new();
    let ca_file = scratch.write("ca.pem", &ca.pem);
    let config = two_routes(
        ca_file.to_str().unwrap(),
        &tls_upstream.url(),
        &plain.url(),
        "",
    );
    let running = credproxy(&scratch, &config)
        .env("https_proxy", &proxy.url(Some(("corp", "s3cret"))))
        .env("HTTP_PROXY", &proxy.url(Some(("corp", "s3cret"))))
        .env("NO_PROXY", "127.0.0.1")
        .arg("--log-level=trace")
        .start();
    let answer = post(&running.url("/v1/messages"), "{}").await;
    assert_eq!(answer.status, 200, "{}", answer.text());
    assert_eq!(answer.text(), r#"{"via":"tls"}"#);
    assert_eq!(
        proxy.targets(),
        [format!("localhost:{}", tls_upstream.addr.port())],
        "the https upstream was reached through one CONNECT tunnel"
    );
    // TLS ran end to end inside the tunnel: the upstream saw the real key.
    assert_eq!(tls_upstream.requests()[0].header("x-api-key"), Some("k"));
    // NO_PROXY: the plain upstream on 127.0.0.1 is reached directly.
    let answer = post(&running.url("/direct/v1/messages"), "{}").await;
    assert_eq!(answer.text(), r#"{"via":"plain"}"#);
    assert_eq!(proxy.targets().len(), 1);
    assert!(
        !running.output().contains("s3cret"),
        "the proxy password reached the log"
    );
}

#[tokio::test]
async fn the_configured_egress_proxy_needs_its_login() {
    let ca = TestCa::new();
    let upstream = FakeUpstream::start_tls(&ca, |_| Reply::status(200, "{}")).await;
    let proxy = ConnectProxy::start(Some(("corp", "right"))).await;
    let scratch = Scratch::new();
    let ca_file = scratch.write("ca.pem", &ca.pem);
    let wrong = format!("egress_proxy = \"{}\"", proxy.url(Some(("corp", "wrong"))));
    let config = two_routes(
        ca_file.to_str().unwrap(),
        &upstream.url(),
        &upstream.url(),
        &wrong,
    );
    let running = credproxy(&scratch, &config).start();
    let answer = post(&running.url("/v1/messages"), "{}").await;
    assert_eq!(answer.status, 502, "{}", answer.text());
    let (_, message) = answer.error();
    assert!(message.contains("egress proxy"), "{message}");
    assert!(
        !message.contains("wrong"),
        "the password is never echoed: {message}"
    );
    assert_eq!(upstream.count(), 0);

    let right = format!("egress_proxy = \"{}\"", proxy.url(Some(("corp", "right"))));
    let config = two_routes(
        ca_file.to_str().unwrap(),
        &upstream.url(),
        &upstream.url(),
        &right,
    );
    let (status, stdout, _) = credproxy(&scratch, &config).run_async("check").await;
    assert!(status.success(), "{stdout}");
    assert!(
        stdout.contains(&format!(
            "egress: proxy 127.0.0.1:{} (egress_proxy)",
            proxy.addr.port()
        )),
        "{stdout}"
    );
    assert!(!stdout.contains("right"), "{stdout}");
    let running = credproxy(&scratch, &config).start();
    assert_eq!(post(&running.url("/v1/messages"), "{}").await.status, 200);
}

#[tokio::test]
async fn a_route_presents_its_client_certificate_to_an_upstream_that_demands_one() {
    let ca = TestCa::new();
    let upstream = FakeUpstream::start_with_acceptor(ca.mtls_acceptor(), |_| {
        Reply::status(200, r#"{"mtls":true}"#)
    })
    .await;
    let scratch = Scratch::new();
    let ca_file = scratch.write("ca.pem", &ca.pem);
    let (cert, key) = ca.leaf();
    scratch.write("client.pem", &cert);
    scratch.write("client.key", &key);
    let config = format!(
        r#"listen = "127.0.0.1:0"
ca_file = "{}"
[credentials.key]
kind = "api_key"
value = "k"

[[routes]]
prefix = "/"
upstream = "{url}"
credential = "key"
client_cert = "client.pem"
client_key = "client.key"

[[routes]]
prefix = "/anonymous"
upstream = "{url}"
credential = "key"
"#,
        ca_file.display(),
        url = upstream.url()
    );
    let running = credproxy(&scratch, &config).start();
    let answer = post(&running.url("/v1/messages"), "{}").await;
    assert_eq!(answer.status, 200, "{}", answer.text());
    assert_eq!(answer.text(), r#"{"mtls":true}"#);
    let refused = post(&running.url("/anonymous/v1/messages"), "{}").await;
    assert_eq!(
        refused.status, 502,
        "without the certificate the upstream refuses"
    );
    assert_eq!(upstream.count(), 1);
}
