//! A fake OpenID provider for a native client (`credproxy login`), over plain http on
//! 127.0.0.1 (an `http://` issuer is accepted on loopback): discovery, authorize with
//! auto-consent (a 302 to the loopback `redirect_uri`), the token endpoint
//! (authorization_code with PKCE S256 checked, refresh_token with rotation and reuse
//! detection, the device grant with `authorization_pending` and `slow_down`), device
//! authorization, JWKS and revocation.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::jwk::JwkSet;
use serde_json::json;
use sha2::{Digest, Sha256};

use super::idp::{SigningKey, now};
use super::{FakeUpstream, Recorded, Reply};

pub const CLIENT_ID: &str = "credproxy-cli";
pub const SUBJECT: &str = "emp-42";
pub const EMAIL: &str = "ada@example.com";

struct Grant {
    nonce: Option<String>,
    challenge: String,
    redirect_uri: String,
}

#[derive(Default)]
struct Device {
    polls: u32,
    poll_times: Vec<Instant>,
}

/// What the test can set and read.
pub struct OpState {
    issuer: String,
    codes: HashMap<String, Grant>,
    /// Refresh token → (its session, used already).
    refresh: HashMap<String, (u32, bool)>,
    dead_sessions: HashSet<u32>,
    devices: HashMap<String, Device>,
    next: u32,
    /// ID tokens live this long, issued this long ago.
    pub id_token_life: i64,
    pub backdate: i64,
    /// Sign ID tokens with a key the JWKS does not hold (under the published `kid`).
    pub tamper: bool,
    /// Answers refresh requests this much later (to make refreshes overlap).
    pub refresh_delay: Duration,
    /// Device polls answered `authorization_pending` before approval; the poll (1-based)
    /// answered `slow_down` instead.
    pub device_pending: u32,
    pub device_slow_down_at: Option<u32>,
    /// Offer no revocation endpoint.
    pub no_revocation: bool,
    /// The token endpoint answers 503.
    pub token_endpoint_down: bool,
    /// Counters.
    pub refreshes: u32,
    pub reuses: u32,
    pub revoked: Vec<String>,
    pub device_poll_times: Vec<Instant>,
    /// Every token this provider ever issued, for leak checks.
    pub issued: Vec<String>,
}

pub struct FakeOp {
    pub server: FakeUpstream,
    pub state: Arc<Mutex<OpState>>,
}

impl FakeOp {
    pub async fn start() -> Self {
        let key = Arc::new(SigningKey::ec("op-key-1"));
        let impostor = Arc::new(SigningKey::ec("op-key-1"));
        let state = Arc::new(Mutex::new(OpState {
            issuer: String::new(),
            codes: HashMap::new(),
            refresh: HashMap::new(),
            dead_sessions: HashSet::new(),
            devices: HashMap::new(),
            next: 0,
            id_token_life: 3600,
            backdate: 0,
            tamper: false,
            refresh_delay: Duration::ZERO,
            device_pending: 2,
            device_slow_down_at: None,
            no_revocation: false,
            token_endpoint_down: false,
            refreshes: 0,
            reuses: 0,
            revoked: Vec::new(),
            device_poll_times: Vec::new(),
            issued: Vec::new(),
        }));
        let shared = Arc::clone(&state);
        let server = FakeUpstream::start(move |request| {
            let mut state = shared.lock().unwrap();
            handle(&mut state, request, &key, &impostor)
        })
        .await;
        state.lock().unwrap().issuer = server.url();
        FakeOp { server, state }
    }

    pub fn issuer(&self) -> String {
        self.server.url()
    }

    pub fn set(&self, change: impl FnOnce(&mut OpState)) {
        change(&mut self.state.lock().unwrap());
    }

    pub fn read<T>(&self, look: impl FnOnce(&OpState) -> T) -> T {
        look(&self.state.lock().unwrap())
    }

    /// Ends every session: their refresh tokens get `invalid_grant` from now on.
    pub fn end_sessions(&self) {
        let mut state = self.state.lock().unwrap();
        let sessions: Vec<u32> = state.refresh.values().map(|(s, _)| *s).collect();
        state.dead_sessions.extend(sessions);
    }

    pub fn token_requests(&self) -> usize {
        self.server
            .requests()
            .iter()
            .filter(|r| r.path_and_query == "/token")
            .count()
    }
}

fn json_reply(status: u16, body: serde_json::Value) -> Reply {
    Reply::status(status, body.to_string())
}

fn oauth_error(error: &str) -> Reply {
    json_reply(
        400,
        json!({"error": error, "error_description": format!("fake op: {error}")}),
    )
}

fn handle(
    state: &mut OpState,
    request: &Recorded,
    key: &SigningKey,
    impostor: &SigningKey,
) -> Reply {
    let issuer = state.issuer.clone();
    let (path, query) = request
        .path_and_query
        .split_once('?')
        .unwrap_or((&request.path_and_query, ""));
    let params = |text: &[u8]| -> HashMap<String, String> {
        form_urlencoded::parse(text).into_owned().collect()
    };
    match (request.method.as_str(), path) {
        ("GET", "/.well-known/openid-configuration") => {
            let mut document = json!({
                "issuer": issuer,
                "authorization_endpoint": format!("{issuer}/authorize"),
                "token_endpoint": format!("{issuer}/token"),
                "device_authorization_endpoint": format!("{issuer}/device"),
                "jwks_uri": format!("{issuer}/jwks"),
                "revocation_endpoint": format!("{issuer}/revoke"),
                "code_challenge_methods_supported": ["S256"],
            });
            if state.no_revocation {
                document
                    .as_object_mut()
                    .unwrap()
                    .remove("revocation_endpoint");
            }
            json_reply(200, document)
        }
        ("GET", "/jwks") => json_reply(
            200,
            serde_json::to_value(JwkSet {
                keys: vec![key.jwk.clone()],
            })
            .unwrap(),
        ),
        ("GET", "/authorize") => {
            let q = params(query.as_bytes());
            let field = |k: &str| q.get(k).cloned().unwrap_or_default();
            if field("client_id") != CLIENT_ID
                || field("response_type") != "code"
                || field("code_challenge_method") != "S256"
                || field("code_challenge").is_empty()
                || !field("redirect_uri").starts_with("http://127.0.0.1:")
            {
                return Reply::status(400, "bad authorization request");
            }
            state.next += 1;
            let code = format!("code-{}", state.next);
            state.codes.insert(
                code.clone(),
                Grant {
                    nonce: q.get("nonce").cloned(),
                    challenge: field("code_challenge"),
                    redirect_uri: field("redirect_uri"),
                },
            );
            let location = format!(
                "{}?code={code}&state={}",
                field("redirect_uri"),
                form_urlencoded::byte_serialize(field("state").as_bytes()).collect::<String>()
            );
            Reply::Full {
                status: 302,
                headers: vec![("location", location)],
                body: Default::default(),
            }
        }
        ("POST", "/device") => {
            let form = params(&request.body);
            if form.get("client_id").map(String::as_str) != Some(CLIENT_ID) {
                return oauth_error("invalid_client");
            }
            state.next += 1;
            let device_code = format!("device-{}", state.next);
            state.devices.insert(device_code.clone(), Device::default());
            json_reply(
                200,
                json!({
                    "device_code": device_code,
                    "user_code": "WDJB-MJHT",
                    "verification_uri": format!("{issuer}/activate"),
                    "verification_uri_complete": format!("{issuer}/activate?user_code=WDJB-MJHT"),
                    "expires_in": 600,
                    "interval": 1,
                }),
            )
        }
        ("POST", "/revoke") => {
            let form = params(&request.body);
            if let Some(token) = form.get("token") {
                state.revoked.push(token.clone());
                if let Some((session, _)) = state.refresh.get(token).copied() {
                    state.dead_sessions.insert(session);
                }
            }
            Reply::status(200, "")
        }
        ("POST", "/token") if state.token_endpoint_down => Reply::status(503, "down"),
        ("POST", "/token") => {
            let form = params(&request.body);
            if form.get("client_id").map(String::as_str) != Some(CLIENT_ID) {
                return oauth_error("invalid_client");
            }
            match form.get("grant_type").map(String::as_str) {
                Some("authorization_code") => {
                    let Some(grant) = form.get("code").and_then(|c| state.codes.remove(c)) else {
                        return oauth_error("invalid_grant");
                    };
                    let verifier = form.get("code_verifier").cloned().unwrap_or_default();
                    let challenge = URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()));
                    if challenge != grant.challenge
                        || form.get("redirect_uri") != Some(&grant.redirect_uri)
                    {
                        return oauth_error("invalid_grant");
                    }
                    state.next += 1;
                    let session = state.next;
                    json_reply(200, tokens(state, session, grant.nonce, key, impostor))
                }
                Some("refresh_token") => {
                    let token = form.get("refresh_token").cloned().unwrap_or_default();
                    let Some((session, used)) = state.refresh.get(&token).copied() else {
                        return oauth_error("invalid_grant");
                    };
                    if used {
                        // Reuse of a rotated refresh token: the whole session is revoked.
                        state.reuses += 1;
                        state.dead_sessions.insert(session);
                        return oauth_error("invalid_grant");
                    }
                    if state.dead_sessions.contains(&session) {
                        return oauth_error("invalid_grant");
                    }
                    state.refresh.insert(token, (session, true));
                    state.refreshes += 1;
                    let answer = tokens(state, session, None, key, impostor);
                    Reply::After {
                        delay: state.refresh_delay,
                        reply: Box::new(json_reply(200, answer)),
                    }
                }
                Some("urn:ietf:params:oauth:grant-type:device_code") => {
                    let code = form.get("device_code").cloned().unwrap_or_default();
                    let (pending, slow_at) = (state.device_pending, state.device_slow_down_at);
                    let Some(device) = state.devices.get_mut(&code) else {
                        return oauth_error("invalid_grant");
                    };
                    device.polls += 1;
                    device.poll_times.push(Instant::now());
                    let polls = device.polls;
                    let times = device.poll_times.clone();
                    state.device_poll_times = times;
                    if slow_at == Some(polls) {
                        return oauth_error("slow_down");
                    }
                    if polls <= pending {
                        return oauth_error("authorization_pending");
                    }
                    state.devices.remove(&code);
                    state.next += 1;
                    let session = state.next;
                    json_reply(200, tokens(state, session, None, key, impostor))
                }
                _ => oauth_error("unsupported_grant_type"),
            }
        }
        _ => Reply::status(404, "{}"),
    }
}

/// A token answer for `session`, with a new (rotated) refresh token.
fn tokens(
    state: &mut OpState,
    session: u32,
    nonce: Option<String>,
    key: &SigningKey,
    impostor: &SigningKey,
) -> serde_json::Value {
    state.next += 1;
    let n = state.next;
    let iat = now() - state.backdate;
    let mut claims = json!({
        "iss": state.issuer,
        "sub": SUBJECT,
        "aud": CLIENT_ID,
        "iat": iat,
        "exp": iat + state.id_token_life,
        "email": EMAIL,
        "email_verified": true,
        "groups": ["eng", "ai-users"],
        "n": n,
    });
    if let Some(nonce) = nonce {
        claims["nonce"] = json!(nonce);
    }
    let signer = if state.tamper { impostor } else { key };
    let id_token = signer.sign(&claims);
    let access_token = format!("opaque-access-{n}-{}", "a".repeat(16));
    let refresh_token = format!("refresh-{n}-{}", "r".repeat(16));
    state
        .refresh
        .insert(refresh_token.clone(), (session, false));
    state.issued.extend([
        id_token.clone(),
        access_token.clone(),
        refresh_token.clone(),
    ]);
    json!({
        "token_type": "Bearer",
        "access_token": access_token,
        "id_token": id_token,
        "refresh_token": refresh_token,
        "expires_in": state.id_token_life - state.backdate,
    })
}
