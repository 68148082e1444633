//! The employee's side of the gateway: `kind = "oidc"`, `credproxy login` (browser and
//! device flows), `credproxy token`, `credproxy logout`, and the proxy refreshing the login
//! — all against the fake OpenID provider in `support::op`.

use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

use crate::support::op::{CLIENT_ID, EMAIL, FakeOp, SUBJECT};
use crate::support::*;

fn local_config(op: &FakeOp, upstream: &str, extra: &str) -> String {
    format!(
        r#"listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"

[credentials.corp]
kind = "oidc"
issuer = "{issuer}"
client_id = "{CLIENT_ID}"
{extra}

[[routes]]
prefix = "/"
upstream = "{upstream}"
credential = "corp"
"#,
        issuer = op.issuer()
    )
}

/// credproxy with the test's state folder (where logins are kept) and no browser.
fn run<'a>(scratch: &'a Scratch, config: &str) -> Spawn<'a> {
    credproxy(scratch, config)
        .env("XDG_STATE_HOME", scratch.path("state").to_str().unwrap())
        .env("CREDPROXY_NO_BROWSER", "1")
}

/// `credproxy login corp` with the test as the browser: fetches the printed authorize URL
/// and follows its redirect to credproxy's loopback listener. Returns the exit status and
/// everything printed.
async fn browser_login(scratch: &Scratch, config: &str) -> (bool, String) {
    let mut login = run(scratch, config)
        .arg("--log-level=trace")
        .arg("login")
        .arg("corp")
        .listeners(0)
        .start();
    login.wait_for_output("Waiting for the browser").await;
    let output = login.output();
    let url = output
        .split_whitespace()
        .find(|w| w.starts_with("http://") && w.contains("/authorize?"))
        .expect("the authorize URL is printed")
        .to_string();
    let consent = get(&url).await;
    assert_eq!(consent.status, 302, "{}", consent.text());
    let callback = consent.headers["location"].to_str().unwrap().to_string();
    assert!(callback.starts_with("http://127.0.0.1:"), "{callback}");
    let landed = get(&callback).await;
    assert_eq!(landed.status, 200);
    assert!(landed.text().contains("Logged in"), "{}", landed.text());
    let status = login.exit_status().await;
    (status.success(), login.output())
}

fn claims(token: &str) -> serde_json::Value {
    let payload = token.split('.').nth(1).expect("a JWT");
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap()
}

fn bearer_of(request: &Recorded) -> String {
    request
        .header("authorization")
        .and_then(|v| v.strip_prefix("Bearer "))
        .expect("a bearer token")
        .to_string()
}

fn assert_no_token_in(op: &FakeOp, text: &str, what: &str) {
    for token in op.read(|s| s.issued.clone()) {
        assert!(
            !text.contains(&token),
            "a token leaked into {what}:\n{text}"
        );
    }
}

#[tokio::test]
async fn browser_login_then_token_proxy_and_logout() {
    let op = FakeOp::start().await;
    let upstream = FakeUpstream::start(|_| Reply::status(200, r#"{"ok":true}"#)).await;
    let scratch = Scratch::new();
    let config = local_config(&op, &upstream.url(), "flow = \"browser\"");

    let (ok, output) = browser_login(&scratch, &config).await;
    assert!(ok, "{output}");
    assert!(
        output.contains(&format!(
            "logged in to {} as {SUBJECT} <{EMAIL}> (groups: eng, ai-users)",
            op.issuer()
        )),
        "{output}"
    );
    assert!(output.contains("the ID token expires at"), "{output}");
    let file = scratch.path("state/credproxy/logins/corp.json");
    assert!(
        output.contains(&format!("tokens kept in {}", file.display())),
        "{output}"
    );
    let mode = std::fs::metadata(&file).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    assert_no_token_in(&op, &output, "the login's output");

    let (status, token, stderr) = run(&scratch, &config)
        .arg("--log-level=trace")
        .run_async("token")
        .await;
    assert!(status.success(), "{stderr}");
    let token = token.trim().to_string();
    assert_eq!(claims(&token)["sub"], SUBJECT);
    assert!(!stderr.contains(&token), "{stderr}");

    let proxy = run(&scratch, &config).arg("--log-level=trace").start();
    let answer = post(&proxy.url("/v1/messages"), "{}").await;
    assert_eq!(answer.status, 200, "{}", answer.text());
    assert_eq!(bearer_of(&upstream.requests()[0]), token);
    let status = get(&proxy.admin_url("/status").await).await;
    assert_no_token_in(&op, &status.text(), "/status");
    assert_no_token_in(&op, &proxy.output(), "the proxy's log");
    drop(proxy);

    let (status, out, err) = run(&scratch, &config).run_async("logout").await;
    assert!(status.success(), "{err}");
    assert!(out.contains("revoked the login"), "{out}");
    assert!(!file.exists());
    let revoked = op.read(|s| s.revoked.clone());
    assert_eq!(revoked.len(), 1);
    assert!(revoked[0].starts_with("refresh-"));
    let (status, out, err) = run(&scratch, &config).run_async("token").await;
    assert!(!status.success());
    assert!(out.is_empty());
    assert!(err.contains("run `credproxy login corp`"), "{err}");
}

#[tokio::test]
async fn device_login_waits_while_pending_and_slows_down_when_asked() {
    let op = FakeOp::start().await;
    op.set(|s| {
        s.device_pending = 2;
        s.device_slow_down_at = Some(2);
    });
    let scratch = Scratch::new();
    // `flow = "auto"` with no display (the test's environment has none): the device flow.
    let config = local_config(&op, "http://127.0.0.1:9", "");
    let (status, out, err) = run(&scratch, &config)
        .arg("--log-level=trace")
        .run_async("login")
        .await;
    assert!(status.success(), "{out}{err}");
    assert!(
        err.contains(&format!(
            "open {}/activate and enter the code WDJB-MJHT",
            op.issuer()
        )),
        "{err}"
    );
    assert!(out.contains(&format!("as {SUBJECT} <{EMAIL}>")), "{out}");
    assert_no_token_in(
        &op,
        &format!("{out}{err}"),
        "the device login's trace output",
    );
    let polls = op.read(|s| s.device_poll_times.clone());
    assert_eq!(polls.len(), 3, "pending, slow_down, approved");
    assert!(polls[1] - polls[0] >= Duration::from_millis(950));
    // After `slow_down` the interval is 1 s + 5 s.
    assert!(polls[2] - polls[1] >= Duration::from_millis(5950));
    let (status, token, _) = run(&scratch, &config).run_async("token").await;
    assert!(status.success());
    assert_eq!(claims(token.trim())["email"], EMAIL);
}

#[tokio::test]
async fn a_tampered_id_token_is_refused_and_nothing_is_stored() {
    let op = FakeOp::start().await;
    op.set(|s| s.tamper = true);
    let scratch = Scratch::new();
    let config = local_config(&op, "http://127.0.0.1:9", "flow = \"browser\"");
    let (ok, output) = browser_login(&scratch, &config).await;
    assert!(!ok);
    assert!(output.contains("ID token is refused"), "{output}");
    assert!(output.contains("signature does not verify"), "{output}");
    assert!(!scratch.path("state/credproxy/logins/corp.json").exists());
}

#[tokio::test]
async fn the_proxy_refreshes_ahead_of_expiry_and_after_a_401_with_rotated_refresh_tokens() {
    let op = FakeOp::start().await;
    // Short-lived ID tokens: used until exp less a tenth of their life (0.8 s), renewed
    // in the background from three quarters of that.
    op.set(|s| s.id_token_life = 8);
    let reject_next = Arc::new(AtomicBool::new(false));
    let reject = Arc::clone(&reject_next);
    let upstream = FakeUpstream::start(move |_| {
        if reject.swap(false, Ordering::SeqCst) {
            Reply::anthropic_error(401, "authentication_error", "token expired")
        } else {
            Reply::status(200, r#"{"ok":true}"#)
        }
    })
    .await;
    let scratch = Scratch::new();
    let config = local_config(&op, &upstream.url(), "flow = \"browser\"");
    let (ok, output) = browser_login(&scratch, &config).await;
    assert!(ok, "{output}");
    let first_refresh = op.read(|s| s.refreshes);
    assert_eq!(first_refresh, 0);

    let proxy = run(&scratch, &config).arg("--log-level=trace").start();
    let url = proxy.url("/v1/messages");
    // Twelve seconds of steady traffic: every token sent is unexpired when it arrives, and
    // the login moved on to new tokens without a refresh token used twice.
    for _ in 0..24 {
        let answer = post(&url, "{}").await;
        assert_eq!(answer.status, 200, "{}", answer.text());
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let requests = upstream.requests();
    let mut seen = Vec::new();
    for request in &requests {
        let token = bearer_of(request);
        if !seen.contains(&token) {
            seen.push(token);
        }
    }
    assert!(seen.len() >= 2, "the token was never renewed");
    for token in &seen {
        assert!(claims(token)["exp"].as_i64().unwrap() > claims(token)["iat"].as_i64().unwrap());
    }
    let refreshes = op.read(|s| s.refreshes);
    assert!(refreshes >= 1);
    assert_eq!(op.read(|s| s.reuses), 0);

    // A 401 from the upstream: refreshed and replayed once, the client sees the 200.
    let before = upstream.count();
    reject_next.store(true, Ordering::SeqCst);
    let answer = post(&url, "{}").await;
    assert_eq!(answer.status, 200, "{}", answer.text());
    let requests = upstream.requests();
    assert_eq!(requests.len(), before + 2);
    assert_ne!(
        bearer_of(&requests[before]),
        bearer_of(&requests[before + 1])
    );
    assert_eq!(op.read(|s| s.refreshes), refreshes + 1);
    assert_eq!(op.read(|s| s.reuses), 0);
    assert_no_token_in(
        &op,
        &proxy.output(),
        "the proxy's trace log across refreshes",
    );
}

#[tokio::test]
async fn a_dead_refresh_token_says_to_log_in_again_without_retrying() {
    let op = FakeOp::start().await;
    // Tokens issued 50 minutes into their hour: past their refresh point from the start.
    op.set(|s| s.backdate = 3000);
    let upstream = FakeUpstream::start(|_| Reply::status(200, r#"{"ok":true}"#)).await;
    let scratch = Scratch::new();
    let config = local_config(&op, &upstream.url(), "flow = \"browser\"");
    let (ok, output) = browser_login(&scratch, &config).await;
    assert!(ok, "{output}");
    op.end_sessions();

    let proxy = run(&scratch, &config).start();
    let url = proxy.url("/v1/messages");
    let answer = post(&url, "{}").await;
    assert_eq!(answer.status, 401, "{}", answer.text());
    let (kind, message) = answer.error();
    assert_eq!(kind, "authentication_error");
    assert!(message.contains("run `credproxy login corp`"), "{message}");
    assert!(message.contains("invalid_grant"), "{message}");
    assert_eq!(answer.headers["x-should-retry"], "false");
    let asked = op.token_requests();
    let again = post(&url, "{}").await;
    assert_eq!(again.status, 401);
    assert_eq!(
        op.token_requests(),
        asked,
        "the dead refresh token was tried again"
    );
    assert_eq!(upstream.count(), 0);
    let status = get(&proxy.admin_url("/status").await).await.text();
    assert!(status.contains("run `credproxy login corp`"), "{status}");

    let (status, out, err) = run(&scratch, &config).run_async("token").await;
    assert!(!status.success());
    assert!(out.is_empty());
    assert!(err.contains("run `credproxy login corp`"), "{err}");
    let (status, out, _) = run(&scratch, &config).run_async("check").await;
    assert!(!status.success());
    assert!(out.contains("run `credproxy login corp`"), "{out}");
    assert_eq!(op.token_requests(), asked);
}

#[tokio::test]
async fn a_proxy_and_credproxy_token_refresh_one_rotating_login_at_once() {
    let op = FakeOp::start().await;
    // Every process that looks finds the token due for renewal, and each refresh takes a
    // while: the refreshes overlap unless the lock orders them.
    op.set(|s| {
        s.backdate = 3000;
        s.refresh_delay = Duration::from_millis(300);
    });
    let upstream = FakeUpstream::start(|_| Reply::status(200, r#"{"ok":true}"#)).await;
    let scratch = Scratch::new();
    let config = local_config(&op, &upstream.url(), "flow = \"browser\"");
    let (ok, output) = browser_login(&scratch, &config).await;
    assert!(ok, "{output}");
    let proxy = run(&scratch, &config).start();
    let url = proxy.url("/v1/messages");

    // One config file for all (each spawn would otherwise rewrite it while others read it).
    let shared = scratch.write("shared.toml", &config);
    let token = || {
        credproxy_default(&scratch)
            .arg("--config")
            .arg(shared.to_str().unwrap())
            .env("XDG_STATE_HOME", scratch.path("state").to_str().unwrap())
            .run_async("token")
    };
    let requests = async {
        let requests: Vec<_> = (0..4)
            .map(|_| {
                let url = url.clone();
                tokio::spawn(async move { post(&url, "{}").await })
            })
            .collect();
        let mut answers = Vec::new();
        for request in requests {
            answers.push(request.await.unwrap());
        }
        answers
    };
    let (a, b, c, d, answers) = tokio::join!(token(), token(), token(), token(), requests);
    for answer in answers {
        assert_eq!(answer.status, 200, "{}", answer.text());
    }
    for (status, out, err) in [a, b, c, d] {
        assert!(status.success(), "{err}");
        assert_eq!(claims(out.trim())["sub"], SUBJECT);
    }
    assert_eq!(
        op.read(|s| s.reuses),
        0,
        "a rotated refresh token was used twice"
    );
    assert!(op.read(|s| s.refreshes) >= 2);
    // The login survived: one more token still comes.
    let (status, _, err) = run(&scratch, &config).run_async("token").await;
    assert!(status.success(), "{err}");
    assert_eq!(op.read(|s| s.reuses), 0);
}

#[tokio::test]
async fn the_full_chain_laptop_to_gateway_to_upstream() {
    let op = FakeOp::start().await;
    op.set(|s| s.device_pending = 0);
    let upstream = FakeUpstream::accepting_key("real-upstream-key").await;
    let gateway_scratch = Scratch::new();
    let gateway_config = format!(
        r#"listen = "127.0.0.1:0"

[callers]
issuer = "{issuer}"
audiences = ["{CLIENT_ID}"]
email_domains = ["example.com"]

[credentials.key]
kind = "api_key"
value = "real-upstream-key"

[[routes]]
prefix = "/"
upstream = "{upstream}"
credential = "key"
groups = ["ai-users"]
"#,
        issuer = op.issuer(),
        upstream = upstream.url(),
    );
    let gateway = credproxy(&gateway_scratch, &gateway_config).start();

    let laptop = Scratch::new();
    let config = local_config(&op, &gateway.url(""), "");
    let (status, out, err) = run(&laptop, &config).run_async("login").await;
    assert!(status.success(), "{out}{err}");
    let proxy = run(&laptop, &config).start();
    let answer = post(&proxy.url("/v1/messages"), "{}").await;
    assert_eq!(answer.status, 200, "{}", answer.text());
    let requests = upstream.requests();
    assert_eq!(requests.len(), 1);
    assert_eq!(requests[0].header("x-api-key"), Some("real-upstream-key"));
    assert_eq!(requests[0].header("authorization"), None);
}

/// A JWT-shaped value with these times (the proxy reads, not verifies, what it sends).
fn jwt_expiring(iat: i64, exp: i64) -> String {
    format!(
        "{}.{}.c2ln",
        URL_SAFE_NO_PAD.encode(r#"{"alg":"ES256"}"#),
        URL_SAFE_NO_PAD.encode(format!(r#"{{"sub":"robot","iat":{iat},"exp":{exp}}}"#))
    )
}

#[tokio::test]
async fn a_helper_jwt_is_renewed_before_its_exp_not_its_ttl_and_an_expired_one_fails() {
    let upstream = FakeUpstream::start(|_| Reply::status(200, r#"{"ok":true}"#)).await;
    let scratch = Scratch::new();
    let now = crate::support::idp::now();
    let first = jwt_expiring(now, now + 5);
    scratch.write("token", &first);
    let helper = format!("cat {}", scratch.path("token").display());
    let config = config(
        &upstream.url(),
        &format!("apply = \"bearer\"\nhelper = \"{helper}\"\nttl = \"1h\""),
    );
    let proxy = credproxy(&scratch, &config).start();
    let url = proxy.url("/v1/messages");
    assert_eq!(post(&url, "{}").await.status, 200);
    let second = jwt_expiring(now, now + 3600);
    scratch.write("token", &second);
    // Within the hour's ttl, but the first JWT's exp (less half a second) comes first.
    let mut renewed = false;
    for _ in 0..40 {
        let answer = post(&url, "{}").await;
        assert_eq!(answer.status, 200, "{}", answer.text());
        let sent = bearer_of(upstream.requests().last().unwrap());
        if sent == second {
            renewed = true;
            break;
        }
        assert!(
            crate::support::idp::now() < now + 5,
            "an expired JWT was sent"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(renewed, "the helper was not run again before the JWT's exp");

    scratch.write("token", &jwt_expiring(now - 600, now - 120));
    let expired = credproxy(&scratch, &config).run_async("check").await;
    assert!(!expired.0.success());
    assert!(
        expired.1.contains("gave a JWT that expired 2m"),
        "{}",
        expired.1
    );
}

/// With a session bus offering the Secret Service (a desktop session), the login goes to the
/// desktop keyring and no file is written. Needs `dbus-run-session` and
/// `gnome-keyring-daemon`; skipped (saying so) where they are not installed.
#[tokio::test]
async fn the_secret_service_keeps_the_login_when_a_session_bus_offers_it() {
    let tools = ["/usr/bin/dbus-run-session", "/usr/bin/gnome-keyring-daemon"];
    if let Some(missing) = tools.iter().find(|t| !std::path::Path::new(t).exists()) {
        eprintln!("skipped: {missing} is not installed");
        return;
    }
    let op = FakeOp::start().await;
    op.set(|s| s.device_pending = 0);
    let scratch = Scratch::new();
    let config = local_config(&op, "http://127.0.0.1:9", "flow = \"device\"");
    let config_path = scratch.write("laptop.toml", &config);
    let runtime = scratch.path("runtime");
    std::fs::create_dir(&runtime).unwrap();
    std::fs::set_permissions(&runtime, std::fs::Permissions::from_mode(0o700)).unwrap();
    // One desktop session: an unlocked keyring, a login, then a token from another process.
    let session = scratch.write(
        "session.sh",
        &format!(
            "printf pw | /usr/bin/gnome-keyring-daemon --unlock --components=secrets >/dev/null 2>&1\n\
             {bin} --config {config} login corp && echo LOGIN-DONE && {bin} --config {config} token corp\n",
            bin = env!("CARGO_BIN_EXE_credproxy"),
            config = config_path.display(),
        ),
    );
    let output = tokio::task::spawn_blocking({
        let home = scratch.path("home");
        let state = scratch.path("state");
        move || {
            std::process::Command::new("/usr/bin/dbus-run-session")
                .arg("--")
                .arg("/bin/sh")
                .arg(&session)
                .env_clear()
                .env("PATH", "/usr/bin:/bin")
                .env("HOME", home)
                .env("XDG_STATE_HOME", state)
                .env("XDG_RUNTIME_DIR", runtime)
                .env("CREDPROXY_NO_BROWSER", "1")
                .output()
                .unwrap()
        }
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stdout}\n{stderr}");
    assert!(
        stdout
            .contains("tokens kept in the desktop keyring (Secret Service) (credproxy-login/corp)"),
        "{stdout}\n{stderr}"
    );
    let token = stdout.lines().last().unwrap();
    assert_eq!(claims(token)["sub"], SUBJECT);
    assert!(!scratch.path("state/credproxy/logins/corp.json").exists());
}

#[tokio::test]
async fn an_unreachable_provider_leaves_the_current_token_in_use_until_its_end() {
    let op = FakeOp::start().await;
    // Due for renewal (50 minutes into its hour) but valid for ten more minutes.
    op.set(|s| s.backdate = 3000);
    let scratch = Scratch::new();
    let config = local_config(&op, "http://127.0.0.1:9", "flow = \"browser\"");
    let (ok, output) = browser_login(&scratch, &config).await;
    assert!(ok, "{output}");
    op.set(|s| s.token_endpoint_down = true);
    let (status, token, err) = run(&scratch, &config).run_async("token").await;
    assert!(status.success(), "{err}");
    assert_eq!(claims(token.trim())["sub"], SUBJECT);
    assert!(
        err.contains("refresh failed; using the current token"),
        "{err}"
    );
    op.set(|s| s.token_endpoint_down = false);
    let (status, renewed, err) = run(&scratch, &config).run_async("token").await;
    assert!(status.success(), "{err}");
    assert_ne!(renewed, token);
    assert_eq!(op.read(|s| s.refreshes), 1);
}

#[tokio::test]
async fn an_access_token_login_sends_the_access_token_and_logout_works_without_revocation() {
    let op = FakeOp::start().await;
    op.set(|s| {
        s.device_pending = 0;
        s.no_revocation = true;
    });
    let upstream = FakeUpstream::start(|_| Reply::status(200, r#"{"ok":true}"#)).await;
    let scratch = Scratch::new();
    let config = local_config(
        &op,
        &upstream.url(),
        "token = \"access_token\"\napply = \"x-api-key\"",
    );
    let (status, out, err) = run(&scratch, &config)
        .arg("login")
        .run_async("--device")
        .await;
    assert!(status.success(), "{out}{err}");
    let proxy = run(&scratch, &config).start();
    let answer = post(&proxy.url("/v1/messages"), "{}").await;
    assert_eq!(answer.status, 200, "{}", answer.text());
    let sent = upstream.requests()[0]
        .header("x-api-key")
        .unwrap()
        .to_string();
    assert!(sent.starts_with("opaque-access-"), "{sent}");
    drop(proxy);
    let (status, out, err) = run(&scratch, &config).run_async("logout").await;
    assert!(status.success(), "{err}");
    assert!(out.contains("offers no revocation"), "{out}");
    assert!(out.contains("logged out of `corp`"), "{out}");
    assert!(op.read(|s| s.revoked.is_empty()));
}
