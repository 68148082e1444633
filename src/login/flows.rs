//! `credproxy login`: the two ways a person signs in from a terminal.
//!
//! - Browser (RFC 8252): authorization code with PKCE (S256) and a redirect to a one-shot
//!   listener on `http://127.0.0.1:{random port}/callback`; `state` and `nonce` checked. The
//!   URL is always printed; a browser is opened where one can be.
//! - Device (RFC 8628): a code the person types at the provider's page on any device, for
//!   machines without a display; polled at the interval the provider asks, slower on
//!   `slow_down`.

use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::rand::{SecureRandom, SystemRandom};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use super::provider::{ProviderError, TokenAnswer};
use super::session::Session;
use crate::callers::Caller;
use crate::kinds::oidc::Flow;

/// How long the browser flow waits for the redirect.
const BROWSER_WAIT: Duration = Duration::from_secs(300);
/// The provider's polling interval when it names none (RFC 8628 §3.2).
const DEFAULT_INTERVAL: Duration = Duration::from_secs(5);
/// What `slow_down` adds to the interval (RFC 8628 §3.5).
const SLOW_DOWN: Duration = Duration::from_secs(5);
/// Google's issuer, which asks for refresh tokens its own way.
const GOOGLE_ISSUER: &str = "https://accounts.google.com";
/// Set to anything to never open a browser (the URL is printed all the same).
pub const NO_BROWSER_VAR: &str = "CREDPROXY_NO_BROWSER";

/// The browser flow where there is a display, else the device flow.
pub fn choose(flow: Flow, device: bool) -> Flow {
    match flow {
        _ if device => Flow::Device,
        Flow::Auto if has_display() => Flow::Browser,
        Flow::Auto => Flow::Device,
        other => other,
    }
}

fn has_display() -> bool {
    let set = |var: &str| std::env::var_os(var).is_some_and(|v| !v.is_empty());
    if set("SSH_CONNECTION") || set("SSH_TTY") {
        return set("DISPLAY") || set("WAYLAND_DISPLAY");
    }
    cfg!(target_os = "macos") || set("DISPLAY") || set("WAYLAND_DISPLAY")
}

/// Signs the person in with `flow`, checks the answer, and returns it with who it names.
/// `say` prints a line for the person.
pub async fn sign_in(
    session: &Session,
    flow: Flow,
    say: &dyn Fn(&str),
) -> Result<(TokenAnswer, Option<String>), String> {
    match flow {
        Flow::Device => device(session, say).await.map(|a| (a, None)),
        Flow::Browser | Flow::Auto => browser(session, say)
            .await
            .map(|(answer, nonce)| (answer, Some(nonce))),
    }
}

/// Who signed in, for the person: subject, email, groups, expiry.
pub fn who(caller: &Caller) -> String {
    let mut text = caller.label.to_string();
    if !caller.groups.is_empty() {
        text.push_str(&format!(" (groups: {})", caller.groups.join(", ")));
    }
    text
}

async fn browser(session: &Session, say: &dyn Fn(&str)) -> Result<(TokenAnswer, String), String> {
    let provider = session.provider();
    let spec = provider.spec();
    let endpoints = provider.endpoints().await.map_err(|e| e.to_string())?;
    let Some(authorize) = endpoints.authorization_endpoint.clone() else {
        return Err(format!(
            "{} offers no authorization endpoint; use `credproxy login --device {}`",
            spec.issuer,
            session.name()
        ));
    };
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| format!("cannot listen on 127.0.0.1 for the browser's redirect: {e}"))?;
    let port = listener.local_addr().map_err(|e| e.to_string())?.port();
    let redirect_uri = format!("http://127.0.0.1:{port}/callback");
    let verifier = random()?;
    let challenge = URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()));
    let state = random()?;
    let nonce = random()?;
    let scope = spec.scopes.join(" ");
    // Finished before any await: the serializer is not `Send`.
    let query = {
        let mut query = form_urlencoded::Serializer::new(String::new());
        query
            .append_pair("response_type", "code")
            .append_pair("client_id", &spec.client_id)
            .append_pair("redirect_uri", &redirect_uri)
            .append_pair("scope", &scope)
            .append_pair("state", &state)
            .append_pair("nonce", &nonce)
            .append_pair("code_challenge", &challenge)
            .append_pair("code_challenge_method", "S256");
        // Google takes no `offline_access` scope: it gives a refresh token for
        // `access_type=offline`, and again on a later login only with `prompt=consent`.
        let google = spec.issuer == GOOGLE_ISSUER;
        if google {
            query.append_pair("access_type", "offline");
        }
        if google || spec.scopes.iter().any(|s| s == "offline_access") {
            // Strict providers ignore `offline_access` without it (OpenID Connect Core §11).
            query.append_pair("prompt", "consent");
        }
        if let Some(audience) = &spec.audience {
            query.append_pair("audience", audience);
        }
        query.finish()
    };
    let separator = if authorize.contains('?') { '&' } else { '?' };
    let url = format!("{authorize}{separator}{query}");
    say("Open this URL in a browser to log in:");
    say(&format!("  {url}"));
    if open_browser(&url) {
        say("(a browser was opened)");
    }
    say(&format!(
        "Waiting for the browser to come back to {redirect_uri} ..."
    ));
    let code = tokio::time::timeout(BROWSER_WAIT, callback(&listener, &state))
        .await
        .map_err(|_| {
            format!(
                "no browser came back within {}; run the command again, or use --device",
                humantime::format_duration(BROWSER_WAIT)
            )
        })??;
    let answer = provider
        .token(&[
            ("grant_type", "authorization_code"),
            ("code", &code),
            ("redirect_uri", &redirect_uri),
            ("code_verifier", &verifier),
        ])
        .await
        .map_err(|e| format!("the identity provider refused the login: {e}"))?;
    Ok((answer, nonce))
}

/// Serves the loopback listener until the provider's redirect arrives with our `state`;
/// returns its `code`.
async fn callback(listener: &TcpListener, state: &str) -> Result<String, String> {
    loop {
        let (mut stream, _) = listener
            .accept()
            .await
            .map_err(|e| format!("the redirect listener failed: {e}"))?;
        let mut buffer = Vec::with_capacity(1024);
        let mut chunk = [0u8; 1024];
        while !buffer.windows(4).any(|w| w == b"\r\n\r\n") && buffer.len() < 16 * 1024 {
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => buffer.extend_from_slice(&chunk[..n]),
            }
        }
        let head = String::from_utf8_lossy(&buffer);
        let target = head
            .lines()
            .next()
            .and_then(|line| line.strip_prefix("GET "))
            .and_then(|rest| rest.split(' ').next())
            .unwrap_or("");
        let Some(query) = target.strip_prefix("/callback?") else {
            reply(&mut stream, "404 Not Found", "Not the login callback.").await;
            continue;
        };
        let params: Vec<(String, String)> = form_urlencoded::parse(query.as_bytes())
            .into_owned()
            .collect();
        let get = |key: &str| {
            params
                .iter()
                .find(|(k, _)| k == key)
                .map(|(_, v)| v.as_str())
        };
        if get("state") != Some(state) {
            reply(
                &mut stream,
                "400 Bad Request",
                "This answer is not for the login in progress.",
            )
            .await;
            continue;
        }
        if let Some(error) = get("error") {
            let description = get("error_description").unwrap_or("");
            reply(&mut stream, "400 Bad Request", "The login was refused.").await;
            return Err(format!(
                "the identity provider refused the login: {error} {description}"
            ));
        }
        let Some(code) = get("code") else {
            reply(&mut stream, "400 Bad Request", "The answer has no code.").await;
            return Err("the identity provider's redirect has no code".to_string());
        };
        reply(
            &mut stream,
            "200 OK",
            "Logged in to credproxy. You can close this tab.",
        )
        .await;
        return Ok(code.to_string());
    }
}

async fn reply(stream: &mut tokio::net::TcpStream, status: &str, text: &str) {
    let body = format!("<!doctype html><title>credproxy</title><p>{text}</p>\n");
    let response = format!(
        "HTTP/1.1 {status}\r\ncontent-type: text/html; charset=utf-8\r\ncontent-length: {}\r\ncache-control: no-store\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.write_all(response.as_bytes()).await;
    let _ = stream.shutdown().await;
}

async fn device(session: &Session, say: &dyn Fn(&str)) -> Result<TokenAnswer, String> {
    let provider = session.provider();
    let start = provider
        .device_authorization()
        .await
        .map_err(|e| format!("cannot start the device login: {e}"))?;
    say(&format!(
        "To log in, open {} and enter the code {}",
        start.verification_uri, start.user_code
    ));
    if let Some(complete) = &start.verification_uri_complete {
        say(&format!("  (or open {complete})"));
    }
    let deadline = Instant::now() + Duration::from_secs(start.expires_in);
    let mut interval = start.interval.map_or(DEFAULT_INTERVAL, Duration::from_secs);
    loop {
        tokio::time::sleep(interval).await;
        if Instant::now() >= deadline {
            return Err(
                "the device code expired before the login was approved; run the command again"
                    .to_string(),
            );
        }
        let polled = provider
            .token(&[
                ("grant_type", "urn:ietf:params:oauth:grant-type:device_code"),
                ("device_code", &start.device_code),
            ])
            .await;
        match polled {
            Ok(answer) => return Ok(answer),
            Err(ProviderError::OAuth { error, .. }) if error == "authorization_pending" => {}
            Err(ProviderError::OAuth { error, .. }) if error == "slow_down" => {
                interval += SLOW_DOWN;
            }
            Err(ProviderError::OAuth { error, .. }) if error == "expired_token" => {
                return Err(
                    "the device code expired before the login was approved; run the command again"
                        .to_string(),
                );
            }
            Err(ProviderError::OAuth { error, .. }) if error == "access_denied" => {
                return Err("the login was denied at the identity provider".to_string());
            }
            Err(error) => return Err(format!("the device login failed: {error}")),
        }
    }
}

/// 256 random bits, base64url: PKCE verifier, `state`, `nonce`.
fn random() -> Result<String, String> {
    let mut bytes = [0u8; 32];
    SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| "the system's random source failed".to_string())?;
    Ok(URL_SAFE_NO_PAD.encode(bytes))
}

/// Opens `url` in the desktop's browser, unless [`NO_BROWSER_VAR`] is set or there is no
/// display; whether one was started.
fn open_browser(url: &str) -> bool {
    if std::env::var_os(NO_BROWSER_VAR).is_some() || !has_display() {
        return false;
    }
    let opener = if cfg!(target_os = "macos") {
        "open"
    } else {
        "xdg-open"
    };
    std::process::Command::new(opener)
        .arg(url)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .is_ok()
}
