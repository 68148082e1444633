//! A shared gateway: callers prove who they are with a JWT from the company's identity
//! provider (a fake one over TLS, keys made here) or a static token known by its hash;
//! email domains and route groups decide who may use what; the listener speaks TLS and
//! picks up a renewed certificate without dropping connections.

use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::json;

use crate::support::idp::{FakeIdp, SigningKey, now};
use crate::support::tls::TestCa;
use crate::support::*;

const ROBOT_TOKEN: &str = "robot-token-7f3a9c";

fn sha256_hex(text: &str) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(text.as_bytes()))
}

fn gateway_config(idp: &FakeIdp, upstream: &str, ca_file: &str) -> String {
    format!(
        r#"listen = "127.0.0.1:0"
ca_file = "{ca_file}"

[callers]
issuer = "{issuer}"
audiences = ["credproxy"]
email_domains = ["Example.com"]
header = "x-gateway-token"
jwks_refetch_interval = "2s"

[[callers.tokens]]
name = "ci"
sha256 = "{robot}"
groups = ["eng"]

[credentials.key]
kind = "api_key"
value = "real-upstream-key"

[[routes]]
prefix = "/"
upstream = "{upstream}"
credential = "key"

[[routes]]
prefix = "/eng"
upstream = "{upstream}"
credential = "key"
groups = ["eng", "admins"]
"#,
        issuer = idp.issuer(),
        robot = sha256_hex(ROBOT_TOKEN),
    )
}

fn claims(idp: &FakeIdp, sub: &str, email: &str, groups: &[&str]) -> serde_json::Value {
    json!({
        "iss": idp.issuer(),
        "aud": "credproxy",
        "sub": sub,
        "email": email,
        "email_verified": true,
        "groups": groups,
        "iat": now(),
        "exp": now() + 600,
    })
}

async fn call(url: &str, header: (&str, &str)) -> Answer {
    send(
        Request::post(url)
            .header(header.0, header.1)
            .header("anthropic-version", "2023-06-01")
            .body(Full::new(Bytes::from("{}")))
            .unwrap(),
    )
    .await
}

async fn bearer(url: &str, token: &str) -> Answer {
    call(url, ("authorization", &format!("Bearer {token}"))).await
}

/// 401 `authentication_error` from the caller side, with `needle` in the message.
fn refused(answer: &Answer, needle: &str) {
    assert_eq!(answer.status, 401, "{}", answer.text());
    let (kind, message) = answer.error();
    assert_eq!(kind, "authentication_error");
    assert!(message.contains(needle), "{needle:?} not in {message}");
    assert_eq!(answer.headers["x-credproxy-error"], "caller");
}

fn forbidden(answer: &Answer, needle: &str) {
    assert_eq!(answer.status, 403, "{}", answer.text());
    let (kind, message) = answer.error();
    assert_eq!(kind, "permission_error");
    assert!(message.contains(needle), "{needle:?} not in {message}");
    assert_eq!(answer.headers["x-credproxy-error"], "caller");
}

#[tokio::test]
async fn jwt_callers_are_checked_admitted_and_attributed() {
    let ca = TestCa::new();
    let rsa = SigningKey::rsa("rsa-1", Algorithm::RS256);
    let pss = SigningKey::rsa("pss-1", Algorithm::PS256);
    let ec = SigningKey::ec("ec-1");
    let ed = SigningKey::ed25519("ed-1");
    let idp = FakeIdp::start(&ca, &[&rsa, &pss, &ec, &ed]).await;
    let upstream = FakeUpstream::start(|_| Reply::status(200, r#"{"ok":true}"#)).await;
    let scratch = Scratch::new();
    let ca_file = scratch.write("ca.pem", &ca.pem);
    let config = gateway_config(&idp, &upstream.url(), ca_file.to_str().unwrap());
    let proxy = credproxy(&scratch, &config)
        .arg("--log-level=trace")
        .start();
    let url = proxy.url("/v1/messages");
    let eng_url = proxy.url("/eng/v1/messages");

    // Every accepted algorithm; the caller's token never reaches the upstream.
    let mut tokens = Vec::new();
    for key in [&rsa, &pss, &ec, &ed] {
        let token = key.sign(&claims(&idp, "alice", "alice@example.com", &["eng"]));
        let answer = bearer(&url, &token).await;
        assert_eq!(answer.status, 200, "{:?}: {}", key.algorithm, answer.text());
        tokens.push(token);
    }
    let seen = upstream.requests();
    assert_eq!(seen.len(), 4);
    for request in &seen {
        assert_eq!(request.header("x-api-key"), Some("real-upstream-key"));
        assert_eq!(request.header("authorization"), None);
    }
    // Discovery once, the key set once: later tokens used the cached set.
    assert_eq!(idp.discovery_fetches(), 1);
    assert_eq!(idp.key_set_fetches(), 1);

    // The token may come in x-api-key or the configured header too; stripped either way.
    let token = rsa.sign(&claims(&idp, "bob", "bob@EXAMPLE.com", &[]));
    assert_eq!(call(&url, ("x-api-key", &token)).await.status, 200);
    assert_eq!(call(&url, ("x-gateway-token", &token)).await.status, 200);
    assert!(
        upstream
            .requests()
            .iter()
            .all(|r| r.header("x-gateway-token").is_none())
    );

    // Refusals, each naming what is wrong.
    let no_token = call(&url, ("x-other", "1")).await;
    refused(&no_token, "no caller token");
    assert_eq!(no_token.headers["x-should-retry"], "false");
    let mut expired = claims(&idp, "alice", "alice@example.com", &[]);
    expired["exp"] = json!(now() - 600);
    expired["iat"] = json!(now() - 1200);
    let answer = bearer(&url, &rsa.sign(&expired)).await;
    refused(&answer, "expired");
    assert!(
        answer.headers.get("x-should-retry").is_none(),
        "a fresh token helps: Claude Code re-runs apiKeyHelper after a 401"
    );
    let mut early = claims(&idp, "alice", "alice@example.com", &[]);
    early["nbf"] = json!(now() + 600);
    refused(&bearer(&url, &rsa.sign(&early)).await, "not valid yet");
    let mut future = claims(&idp, "alice", "alice@example.com", &[]);
    future["iat"] = json!(now() + 600);
    refused(
        &bearer(&url, &rsa.sign(&future)).await,
        "issued in the future",
    );
    let mut foreign = claims(&idp, "alice", "alice@example.com", &[]);
    foreign["iss"] = json!("https://evil.example");
    refused(&bearer(&url, &rsa.sign(&foreign)).await, "issuer");
    let mut elsewhere = claims(&idp, "alice", "alice@example.com", &[]);
    elsewhere["aud"] = json!("another-app");
    refused(&bearer(&url, &rsa.sign(&elsewhere)).await, "audience");
    // One signature character changed (not the last: its low bits are padding).
    let mut tampered = rsa.sign(&claims(&idp, "alice", "alice@example.com", &[]));
    let at = tampered.len() - 10;
    let swapped = if &tampered[at..=at] == "A" { "B" } else { "A" };
    tampered.replace_range(at..=at, swapped);
    refused(&bearer(&url, &tampered).await, "signature");
    // The attacks: unsigned, and HMAC keyed with the published public key.
    let b64 = |v: &serde_json::Value| {
        use base64::Engine;
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
    };
    let body = claims(&idp, "mallory", "mallory@example.com", &["admins"]);
    let unsigned = format!(
        "{}.{}.",
        b64(&json!({"alg": "none", "kid": "rsa-1"})),
        b64(&body)
    );
    refused(&bearer(&url, &unsigned).await, "unsigned");
    let mut header = Header::new(Algorithm::HS256);
    header.kid = Some("rsa-1".to_string());
    let confused = jsonwebtoken::encode(
        &header,
        &body,
        &EncodingKey::from_secret(rsa.public_pem.as_bytes()).unwrap(),
    )
    .unwrap();
    refused(&bearer(&url, &confused).await, "shared-secret");
    refused(&bearer(&url, "not-a-token").await, "not a JWT");

    // Domain capture and group mapping: 403 naming the rule (and the route).
    forbidden(
        &bearer(
            &url,
            &rsa.sign(&claims(&idp, "eve", "eve@other.com", &["eng"])),
        )
        .await,
        "email_domains",
    );
    let mut unverified = claims(&idp, "eve", "eve@example.com", &["eng"]);
    unverified["email_verified"] = json!(false);
    forbidden(&bearer(&url, &rsa.sign(&unverified)).await, "not verified");
    let mut silent = claims(&idp, "eve", "eve@example.com", &["eng"]);
    silent.as_object_mut().unwrap().remove("email_verified");
    forbidden(&bearer(&url, &rsa.sign(&silent)).await, "not verified");
    // Only the boolean verifies: the string "true" does not.
    let mut stringly = claims(&idp, "eve", "eve@example.com", &["eng"]);
    stringly["email_verified"] = json!("true");
    forbidden(&bearer(&url, &rsa.sign(&stringly)).await, "not verified");
    let sales = rsa.sign(&claims(&idp, "sam", "sam@example.com", &["sales"]));
    assert_eq!(bearer(&url, &sales).await.status, 200);
    forbidden(&bearer(&eng_url, &sales).await, "route `/eng`");
    assert_eq!(bearer(&eng_url, &tokens[0]).await.status, 200);

    // Static tokens: by hash, with their groups; an unknown one is refused.
    assert_eq!(call(&eng_url, ("x-api-key", ROBOT_TOKEN)).await.status, 200);
    refused(&bearer(&url, "robot-token-wrong").await, "not a JWT");

    // Rotation: an unknown kid makes one refetch (once the interval since the last fetch
    // has passed); garbage kids cannot make more.
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let before = idp.key_set_fetches();
    let rotated = SigningKey::ec("ec-2");
    let early_token = rotated.sign(&claims(&idp, "alice", "alice@example.com", &[]));
    refused(&bearer(&url, &early_token).await, "kid `ec-2`");
    assert_eq!(idp.key_set_fetches(), before + 1);
    for _ in 0..5 {
        refused(&bearer(&url, &early_token).await, "does not list");
    }
    assert_eq!(
        idp.key_set_fetches(),
        before + 1,
        "refetches are rate limited"
    );
    idp.publish(&rotated);
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let answer = bearer(&url, &early_token).await;
    assert_eq!(answer.status, 200, "{}", answer.text());
    assert_eq!(idp.key_set_fetches(), before + 2);

    // The provider goes down: the last good key set keeps serving.
    idp.set_down(true);
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let unknown = SigningKey::ec("ec-3").sign(&claims(&idp, "x", "x@example.com", &[]));
    refused(&bearer(&url, &unknown).await, "does not list");
    let fresh = rsa.sign(&claims(&idp, "carol", "carol@example.com", &[]));
    assert_eq!(bearer(&url, &fresh).await.status, 200);

    // Attribution: every line names the caller; no token is ever printed.
    proxy.wait_for_output("carol <carol@example.com>").await;
    let output = proxy.output();
    assert!(output.contains("alice <alice@example.com>"), "{output}");
    assert!(output.contains("token:ci"), "{output}");
    for secret in tokens.iter().chain([&fresh, &sales]) {
        let signature = secret.rsplit('.').next().unwrap();
        assert!(!output.contains(signature), "a token reached the log");
    }
    assert!(!output.contains(ROBOT_TOKEN));
}

#[tokio::test]
async fn a_key_file_needs_no_identity_provider_and_unknown_tokens_are_refused() {
    let key = SigningKey::ed25519("file-key");
    let scratch = Scratch::new();
    let jwks = serde_json::to_string(&jsonwebtoken::jwk::JwkSet {
        keys: vec![key.jwk.clone()],
    })
    .unwrap();
    scratch.write("jwks.json", &jwks);
    let upstream = FakeUpstream::start(|_| Reply::status(200, "{}")).await;
    let config = format!(
        r#"listen = "127.0.0.1:0"
[callers]
issuer = "https://idp.invalid/"
jwks_file = "jwks.json"
audiences = ["a", "b"]
groups_claim = "realm_access.roles"
[credentials.key]
kind = "api_key"
value = "k"
[[routes]]
prefix = "/"
upstream = "{}"
credential = "key"
groups = ["dev"]
"#,
        upstream.url()
    );
    let (status, stdout, _) = credproxy(&scratch, &config).run_async("check").await;
    assert!(status.success(), "{stdout}");
    assert!(
        stdout.contains("callers: issuer https://idp.invalid/: 1 signing key(s) fetched"),
        "{stdout}"
    );
    let (_, env, _) = credproxy(&scratch, &config).run_async("env").await;
    assert!(
        env.contains("export ANTHROPIC_AUTH_TOKEN=<your caller token>"),
        "{env}"
    );
    assert!(env.contains("this route admits members of: dev"), "{env}");
    let proxy = credproxy(&scratch, &config).start();
    let url = proxy.url("/v1/messages");
    let claims = |roles: &[&str]| {
        json!({"iss": "https://idp.invalid/", "aud": ["x", "b"], "sub": "svc",
               "exp": now() + 60, "realm_access": {"roles": roles}})
    };
    let answer = bearer(&url, &key.sign(&claims(&["dev"]))).await;
    assert_eq!(answer.status, 200, "{}", answer.text());
    forbidden(&bearer(&url, &key.sign(&claims(&["ops"]))).await, "dev");
    // HEAD (Claude Code's warm-up) is not exempt.
    let head = send(Request::head(proxy.url("/")).body(Full::default()).unwrap()).await;
    assert_eq!(head.status, 401);
}

#[tokio::test]
async fn a_tls_listener_serves_h2_and_http1_and_picks_up_a_new_certificate() {
    let ca = TestCa::new();
    let scratch = Scratch::new();
    let (cert, key) = ca.leaf();
    let cert_path = scratch.write("cert.pem", &cert);
    let key_path = scratch.write("key.pem", &key);
    let upstream = FakeUpstream::start(|_| Reply::status(200, r#"{"ok":1}"#)).await;
    let config = format!(
        "tls_cert = \"cert.pem\"\ntls_key = \"key.pem\"\n{}",
        route_config("/", &upstream.url())
    );
    let proxy = credproxy(&scratch, &config).start();
    let addr = proxy.addr();

    // One connection per ALPN protocol.
    let (stream, h2_cert, alpn) = tls_connect(&ca, addr, b"h2").await;
    assert_eq!(alpn.as_deref(), Some(&b"h2"[..]));
    let mut h2 = Connection::open(stream).await;
    assert_eq!(h2.post(addr).await, 200);
    let (stream, h1_cert, alpn) = tls_connect(&ca, addr, b"http/1.1").await;
    assert_eq!(alpn.as_deref(), Some(&b"http/1.1"[..]));
    assert_eq!(h2_cert, h1_cert);
    assert_eq!(http1_post(stream, addr).await, 200);

    // Renew: new connections get the new certificate; the open one keeps working.
    let (new_cert, new_key) = ca.leaf();
    std::fs::write(&key_path, new_key).unwrap();
    std::fs::write(&cert_path, new_cert).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        let (_, served, _) = tls_connect(&ca, addr, b"h2").await;
        if served != h2_cert {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the new certificate was not picked up:\n{}",
            proxy.output()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(h2.post(addr).await, 200, "the open connection survived");
    // A broken pair is refused and the current one kept.
    std::fs::write(&cert_path, "not a certificate").unwrap();
    proxy.wait_for_output("does not load").await;
    let (stream, served, _) = tls_connect(&ca, addr, b"h2").await;
    assert_ne!(served, h2_cert);
    assert_eq!(Connection::open(stream).await.post(addr).await, 200);
}

type TlsStream = tokio_rustls::client::TlsStream<tokio::net::TcpStream>;

/// An HTTP/2 connection over TLS.
struct Connection {
    send: hyper::client::conn::http2::SendRequest<Full<Bytes>>,
}

fn request(addr: std::net::SocketAddr) -> Request<Full<Bytes>> {
    Request::post(format!("https://localhost:{}/v1/messages", addr.port()))
        .body(Full::new(Bytes::from("{}")))
        .unwrap()
}

impl Connection {
    async fn open(stream: TlsStream) -> Self {
        let (send, connection) = hyper::client::conn::http2::handshake(
            hyper_util::rt::TokioExecutor::new(),
            TokioIo::new(stream),
        )
        .await
        .unwrap();
        tokio::spawn(connection);
        Connection { send }
    }

    async fn post(&mut self, addr: std::net::SocketAddr) -> u16 {
        let response = self.send.send_request(request(addr)).await.unwrap();
        let status = response.status().as_u16();
        let _ = response.into_body().collect().await;
        status
    }
}

/// One request over HTTP/1.1 on a TLS stream.
async fn http1_post(stream: TlsStream, addr: std::net::SocketAddr) -> u16 {
    let (mut send, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(connection);
    let mut request = request(addr);
    request.headers_mut().insert(
        "host",
        format!("localhost:{}", addr.port()).parse().unwrap(),
    );
    let response = send.send_request(request).await.unwrap();
    response.status().as_u16()
}

/// Connects trusting only the test CA and offering `alpn`: the stream, the server's leaf
/// certificate and the negotiated protocol.
async fn tls_connect(
    ca: &TestCa,
    addr: std::net::SocketAddr,
    alpn: &[u8],
) -> (TlsStream, Vec<u8>, Option<Vec<u8>>) {
    let config = std::sync::Arc::new(ca.client_config(&[alpn]));
    let connector = tokio_rustls::TlsConnector::from(config);
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let stream = connector.connect(name, tcp).await.unwrap();
    let (_, session) = stream.get_ref();
    let leaf = session.peer_certificates().unwrap()[0].to_vec();
    let negotiated = session.alpn_protocol().map(<[u8]>::to_vec);
    (stream, leaf, negotiated)
}

#[tokio::test]
async fn hash_token_prints_a_table_that_admits_the_token() {
    let scratch = Scratch::new();
    let (status, stdout, stderr) = credproxy_default(&scratch)
        .run_with_input(
            &["hash-token", "--name", "build-bot"],
            "tok-123-secret-0123456789\n",
        )
        .await;
    assert!(status.success(), "{stderr}");
    assert!(!stdout.contains("tok-123") && !stderr.contains("tok-123"));
    assert!(
        stdout.contains(&sha256_hex("tok-123-secret-0123456789")),
        "{stdout}"
    );
    let (status, _, stderr) = credproxy_default(&scratch)
        .run_with_input(&["hash-token"], "short\n")
        .await;
    assert_eq!(status.code(), Some(1));
    assert!(stderr.contains("--generate"), "{stderr}");
    let (status, printed, stderr) = credproxy_default(&scratch)
        .run_with_input(&["hash-token", "--generate"], "")
        .await;
    assert!(status.success(), "{stderr}");
    let generated = stderr.lines().last().unwrap();
    assert_eq!(generated.len(), 43, "256 bits in base64url: {stderr}");
    assert!(printed.contains(&sha256_hex(generated)), "{printed}");
    let upstream = FakeUpstream::start(|_| Reply::status(200, "{}")).await;
    let config = format!("{}\n{stdout}", route_config("/", &upstream.url()));
    let proxy = credproxy(&scratch, &config).start();
    let url = proxy.url("/v1/messages");
    assert_eq!(bearer(&url, "tok-123-secret-0123456789").await.status, 200);
    refused(
        &bearer(&url, "tok-123-other").await,
        "not one of the configured",
    );
    proxy.wait_for_output("token:build-bot").await;
}

#[tokio::test]
async fn without_the_providers_keys_jwt_callers_get_503_and_check_fails() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let scratch = Scratch::new();
    let upstream = FakeUpstream::start(|_| Reply::status(200, "{}")).await;
    let config = format!(
        "{}[callers]\nissuer = \"http://127.0.0.1:{port}\"\naudiences = [\"a\"]\n",
        route_config("/", &upstream.url())
    );
    let (status, stdout, _) = credproxy(&scratch, &config).run_async("check").await;
    assert_eq!(status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains("callers: issuer http://127.0.0.1:"),
        "{stdout}"
    );
    assert!(stdout.contains("FAILED"), "{stdout}");
    let proxy = credproxy(&scratch, &config).start();
    let token = SigningKey::ec("k").sign(&json!({"iss": "x", "aud": "a", "exp": now() + 60}));
    let answer = bearer(&proxy.url("/v1/messages"), &token).await;
    assert_eq!(answer.status, 503, "{}", answer.text());
    assert!(
        answer.text().contains("cannot be checked now"),
        "{}",
        answer.text()
    );
    assert_eq!(answer.headers["x-credproxy-error"], "caller");
    assert_eq!(upstream.count(), 0);
}

#[tokio::test]
async fn a_stale_key_set_keeps_serving_while_the_provider_hangs() {
    let ca = TestCa::new();
    let key = SigningKey::ec("ec-1");
    let idp = FakeIdp::start(&ca, &[&key]).await;
    let upstream = FakeUpstream::start(|_| Reply::status(200, "{}")).await;
    let scratch = Scratch::new();
    let ca_file = scratch.write("ca.pem", &ca.pem);
    let config = format!(
        "ca_file = \"{}\"\n{}[callers]\nissuer = \"{}\"\naudiences = [\"credproxy\"]\njwks_max_age = \"1s\"\n",
        ca_file.display(),
        route_config("/", &upstream.url()),
        idp.issuer()
    );
    let proxy = credproxy(&scratch, &config).start();
    let url = proxy.url("/v1/messages");
    let token = |sub: &str| key.sign(&claims(&idp, sub, "a@example.com", &[]));
    assert_eq!(bearer(&url, &token("first")).await.status, 200);
    let before = idp.server.count();
    idp.set_hanging(true);
    tokio::time::sleep(std::time::Duration::from_millis(1200)).await;
    // The set is stale and the provider does not answer: known keys keep working, without
    // waiting for the provider (a new `sub`, so no validated token is reused).
    for sub in ["second", "third", "fourth"] {
        let answer =
            tokio::time::timeout(std::time::Duration::from_secs(5), bearer(&url, &token(sub)))
                .await
                .expect("a token signed with a known key waited for the hanging provider");
        assert_eq!(answer.status, 200, "{}", answer.text());
    }
    // The stale set sent one background refresh to the provider (it still hangs there);
    // it runs on its own, so give it time to arrive before checking there is no second.
    let deadline = Instant::now() + Duration::from_secs(10);
    while idp.server.count() < before + 1 {
        assert!(
            Instant::now() < deadline,
            "no background refresh reached the provider\n{}",
            proxy.output()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for sub in ["fifth", "sixth"] {
        assert_eq!(bearer(&url, &token(sub)).await.status, 200);
    }
    // Time for a second refresh, had one been started, to reach the provider.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        idp.server.count(),
        before + 1,
        "one background refresh at a time\n{}",
        proxy.output()
    );
}

#[tokio::test]
async fn readyz_waits_for_the_providers_keys_and_follows_them_back() {
    let ca = TestCa::new();
    let key = SigningKey::ec("ec-1");
    let idp = FakeIdp::start(&ca, &[&key]).await;
    idp.set_down(true);
    let upstream = FakeUpstream::start(|_| Reply::status(200, "{}")).await;
    let scratch = Scratch::new();
    let ca_file = scratch.write("ca.pem", &ca.pem);
    let config = format!(
        "admin_listen = \"127.0.0.1:0\"\nca_file = \"{}\"\n{}[callers]\nissuer = \"{}\"\naudiences = [\"credproxy\"]\njwks_refetch_interval = \"1s\"\n",
        ca_file.display(),
        route_config("/", &upstream.url()),
        idp.issuer()
    );
    let proxy = credproxy(&scratch, &config).start();
    proxy
        .wait_for_output("identity provider keys not available yet")
        .await;
    // Every credential holds a value, but no JWT caller can be admitted: not ready.
    let ready = get(&proxy.admin_url("/readyz").await).await;
    assert_eq!(ready.status, 503, "{}", ready.text());
    let waiting = &ready.json()["waiting"];
    assert_eq!(waiting[0]["callers"], idp.issuer().as_str(), "{waiting}");
    // The provider recovers: the keys are fetched without a request, and ready follows.
    idp.set_down(false);
    let deadline = Instant::now() + Duration::from_secs(30);
    while get(&proxy.admin_url("/readyz").await).await.status != 200 {
        assert!(Instant::now() < deadline, "{}", proxy.output());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let token = key.sign(&claims(&idp, "ann", "ann@example.com", &[]));
    let answer = bearer(&proxy.url("/v1/messages"), &token).await;
    assert_eq!(answer.status, 200, "{}", answer.text());
}

#[tokio::test]
async fn claude_codes_start_up_probes_are_counted_apart_from_refusals() {
    let upstream = FakeUpstream::start(|_| Reply::status(200, "{}")).await;
    let scratch = Scratch::new();
    let config = format!(
        "admin_listen = \"127.0.0.1:0\"\n{}[callers]\n[[callers.tokens]]\nname = \"ci\"\nsha256 = \"{}\"\n",
        route_config("/", &upstream.url()),
        sha256_hex(ROBOT_TOKEN)
    );
    let proxy = credproxy(&scratch, &config).start();
    let no_token =
        |request: http::request::Builder| send(request.body(Full::new(Bytes::new())).unwrap());
    // What Claude Code sends at start, without a token: still refused, counted as probes.
    let warm = no_token(Request::head(proxy.url("/"))).await;
    assert_eq!(warm.status, 401);
    let profiles = no_token(Request::get(
        proxy.url("/bedrock/inference-profiles?type=SYSTEM_DEFINED"),
    ))
    .await;
    assert_eq!(profiles.status, 401);
    // A real request without a token, and a probe with a wrong one: refusals.
    assert_eq!(
        no_token(Request::post(proxy.url("/v1/messages")))
            .await
            .status,
        401
    );
    assert_eq!(
        send(
            Request::head(proxy.url("/"))
                .header("x-api-key", "wrong")
                .body(Full::new(Bytes::new()))
                .unwrap()
        )
        .await
        .status,
        401
    );
    let metrics = get(&proxy.admin_url("/metrics").await).await.text();
    let count = |reason: &str| {
        let line = format!("credproxy_caller_rejections_total{{reason=\"{reason}\"}} ");
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(&line))
            .unwrap_or_else(|| panic!("no {line}in\n{metrics}"))
            .to_string()
    };
    assert_eq!(count("probe"), "2");
    assert_eq!(count("missing"), "1");
    assert_eq!(count("unknown_token"), "1");
}

#[tokio::test]
async fn a_caller_refused_on_a_bedrock_route_gets_401_that_claude_code_shows_at_once() {
    let upstream = FakeUpstream::start(|_| Reply::status(200, "{}")).await;
    let scratch = Scratch::new();
    let config = format!(
        r#"listen = "127.0.0.1:0"
[callers]
[[callers.tokens]]
name = "ci"
sha256 = "{robot}"
groups = ["sales"]

[credentials.key]
kind = "api_key"
value = "k"

[credentials.bedrock]
kind = "bedrock_api_key"
value = "b"

[[routes]]
prefix = "/"
upstream = "{upstream}"
credential = "key"
groups = ["eng"]

[[routes]]
prefix = "/bedrock"
upstream = "{upstream}"
credential = "bedrock"
groups = ["eng"]
"#,
        robot = sha256_hex(ROBOT_TOKEN),
        upstream = upstream.url()
    );
    let proxy = credproxy(&scratch, &config).start();
    // Bedrock mode retries any 403 for minutes: the refusal is a 401 that says why and
    // asks not to retry.
    let bedrock = call(
        &proxy.url("/bedrock/model/claude/invoke-with-response-stream"),
        ("x-api-key", ROBOT_TOKEN),
    )
    .await;
    assert_eq!(bedrock.status, 401, "{}", bedrock.text());
    let (kind, message) = bedrock.error();
    assert_eq!(kind, "permission_error");
    assert!(message.contains("route `/bedrock`"), "{message}");
    assert_eq!(bedrock.headers["x-should-retry"], "false");
    assert_eq!(bedrock.headers["x-credproxy-error"], "caller");
    // Other modes keep the 403.
    forbidden(
        &call(&proxy.url("/v1/messages"), ("x-api-key", ROBOT_TOKEN)).await,
        "route `/`",
    );
    assert_eq!(upstream.count(), 0);
}

#[tokio::test]
async fn usage_names_each_caller_and_group_and_a_group_quota_spans_its_members() {
    let ca = TestCa::new();
    let rsa = SigningKey::rsa("rsa-1", Algorithm::RS256);
    let idp = FakeIdp::start(&ca, &[&rsa]).await;
    let upstream = FakeUpstream::start(|_| {
        Reply::status(
            200,
            r#"{"type":"message","usage":{"input_tokens":5,"output_tokens":2}}"#,
        )
    })
    .await;
    let scratch = Scratch::new();
    let ca_file = scratch.write("ca.pem", &ca.pem);
    let config = format!(
        "{}\n[usage]\nlog = \"usage.jsonl\"\n\n[[quotas]]\nname = \"eng-rpm\"\ngroups = [\"eng\"]\nper = \"group\"\nrequests_per_minute = 3\n",
        gateway_config(&idp, &upstream.url(), ca_file.to_str().unwrap())
    );
    let proxy = credproxy(&scratch, &config).start();
    let url = proxy.url("/v1/messages");
    let alice = rsa.sign(&claims(&idp, "alice", "alice@example.com", &["eng"]));
    assert_eq!(bearer(&url, &alice).await.status, 200);
    assert_eq!(bearer(&url, &alice).await.status, 200);
    // The robot is in `eng` too: the group's third request, then the window is full for
    // every member.
    assert_eq!(call(&url, ("x-api-key", ROBOT_TOKEN)).await.status, 200);
    let spent = bearer(&url, &alice).await;
    assert_eq!(spent.status, 429, "{}", spent.text());
    assert_eq!(spent.headers["x-credproxy-quota"], "eng-rpm");
    // A validly signed but expired token is refused, and its record names whose it was.
    let mut old = claims(&idp, "bob", "bob@example.com", &["eng"]);
    old["exp"] = json!(now() - 600);
    old["iat"] = json!(now() - 1200);
    refused(&bearer(&url, &rsa.sign(&old)).await, "expired");
    // Refused by a route's groups: the record names the caller as usage does.
    let carol = rsa.sign(&claims(&idp, "carol", "carol@example.com", &["sales"]));
    forbidden(&bearer(&proxy.url("/eng/v1/messages"), &carol).await, "eng");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let records: Vec<serde_json::Value> = loop {
        let text = std::fs::read_to_string(scratch.path("usage.jsonl")).unwrap_or_default();
        let records: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        if records.len() >= 6 || std::time::Instant::now() > deadline {
            break records;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    assert_eq!(records.len(), 6, "{records:?}");
    assert_eq!(records[0]["caller"], "alice@example.com");
    assert_eq!(records[0]["groups"], json!(["eng"]));
    assert_eq!(records[0]["input_tokens"], 5);
    assert_eq!(records[2]["caller"], "token:ci");
    assert_eq!(records[3]["status"], 429);
    assert_eq!(records[3]["quota"], "eng-rpm");
    assert_eq!(records[3]["caller"], "alice@example.com");
    assert_eq!(records[4]["status"], 401);
    assert_eq!(records[4]["caller"], "bob@example.com");
    assert_eq!(records[4]["route"], "/");
    assert_eq!(records[5]["status"], 403);
    assert_eq!(records[5]["caller"], "carol@example.com");
    assert_eq!(records[5]["groups"], json!(["sales"]));
    assert_eq!(records[5]["route"], "/eng");
}
