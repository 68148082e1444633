//! Micro-benchmarks of what every proxied request pays for, besides the network.
//! Run: `cargo bench --bench hot_path`. The end-to-end overhead (direct vs through
//! credproxy, in one run) is measured by `benches/e2e.sh`.

use std::str::FromStr;
use std::time::Duration;

use bytes::Bytes;
use credproxy::config::ResolvedRoute as Route;
use credproxy::credentials::{
    AcsKey, AwsMaterial, Cached, Credential, Material, Secret, Source, StaticKey,
};
use credproxy::headers::strip_request;
use credproxy::proxy::route::{RouteTable, upstream_uri};
use credproxy::schemes::{AcsHmacScheme, Apply, HeaderScheme, Rejection, Scheme, SigV4Scheme};
use credproxy::upstream::Upstream;
use criterion::{Criterion, criterion_group, criterion_main};
use hmac::Mac;
use http::uri::{Authority, PathAndQuery, Scheme as UriScheme};
use http::{HeaderMap, HeaderName, HeaderValue, Request};
use http_body_util::Full;

fn route(prefix: &str, host: &str) -> Route {
    Route {
        prefix: prefix.into(),
        upstream: Ok(Upstream {
            scheme: UriScheme::HTTPS,
            authority: Authority::from_str(host).unwrap(),
            base_path: String::new(),
        }),
        template: None,
        credential: 0,
        max_in_flight: 1024,
        stream_idle_timeout: None,
        strip_headers: Vec::new(),
        groups: None,
        identity: None,
        translate: None,
        http2: Default::default(),
        // Only the prefix and upstream are read here.
        targets: Vec::new(),
        failover: credproxy::config::Failover::defaults(1),
    }
}

/// The headers Claude Code sends on a `/v1/messages` call.
fn client_headers() -> HeaderMap {
    [
        ("host", "127.0.0.1:8787"),
        ("x-api-key", "dummy"),
        ("authorization", "Bearer dummy"),
        ("anthropic-version", "2023-06-01"),
        (
            "anthropic-beta",
            "claude-code-20250219,interleaved-thinking-2025-05-14",
        ),
        ("content-type", "application/json"),
        ("content-length", "8192"),
        ("user-agent", "claude-cli/2.0.0 (external, cli)"),
        ("x-app", "cli"),
        (
            "x-claude-code-session-id",
            "6a1f8c7e-0000-4000-8000-000000000000",
        ),
        ("x-stainless-lang", "js"),
        ("accept", "application/json"),
        ("connection", "keep-alive"),
    ]
    .into_iter()
    .map(|(k, v)| (HeaderName::from_static(k), HeaderValue::from_static(v)))
    .collect()
}

fn route_match(c: &mut Criterion) {
    let table = RouteTable::new(vec![
        route("/", "api.anthropic.com"),
        route("/bedrock", "bedrock-runtime.us-east-1.amazonaws.com"),
        route("/vertex", "us-east5-aiplatform.googleapis.com"),
        route("/foundry", "r.services.ai.azure.com"),
    ]);
    let path = PathAndQuery::from_static(
        "/bedrock/model/us.anthropic.claude-sonnet-4-5-20250929-v1:0/invoke",
    );
    c.bench_function("route_match_and_upstream_uri_4_routes", |b| {
        b.iter(|| {
            let route = &table.find(std::hint::black_box(path.path())).unwrap().route;
            upstream_uri(&route.prefix, route.upstream.as_ref().unwrap(), &path).unwrap()
        })
    });
}

fn strip_and_inject(c: &mut Criterion) {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let scheme = Scheme::Header(HeaderScheme::new(
        Apply::Header(HeaderName::from_static("x-api-key")),
        Rejection::Unauthorized,
    ));
    let cache = Cached::new(
        "anthropic",
        Source::Static(StaticKey::Literal(Secret::new(
            "sk-ant-api03-0123456789abcdef0123456789abcdef",
        ))),
    );
    let credential = runtime.block_on(cache.get()).unwrap();
    let headers = client_headers();
    let body = Bytes::from(vec![b'x'; 8192]);
    c.bench_function("strip_client_headers_and_inject_x_api_key", |b| {
        b.iter(|| {
            let mut request = Request::new(Full::new(body.clone()));
            *request.headers_mut() = headers.clone();
            strip_request(request.headers_mut());
            scheme.apply(&mut request, &body, &credential).unwrap();
            request
        })
    });
    c.bench_function("credential_cache_hit", |b| {
        b.to_async(&runtime)
            .iter(|| async { cache.get().await.unwrap() })
    });
}

fn aws_credential() -> Credential {
    let credentials = aws_credential_types::Credentials::new(
        "AKIAIOSFODNN7EXAMPLE",
        "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
        Some("FwoGZXIvYXdzEJr//////////wEaDEXAMPLETOKEN".to_string()),
        None,
        "bench",
    );
    let identity =
        aws_smithy_runtime_api::client::identity::Identity::new(credentials.clone(), None);
    Credential {
        material: Material::Aws(AwsMaterial {
            credentials,
            identity,
            region: Some("us-east-1".into()),
        }),
        expires_at: None,
        generation: 1,
    }
}

fn signing(c: &mut Criterion) {
    let sigv4 = Scheme::SigV4(SigV4Scheme::new("bedrock".into(), None));
    let aws = aws_credential();
    let uri: http::Uri = "https://bedrock-runtime.us-east-1.amazonaws.com/model/us.anthropic.claude-sonnet-4-5-20250929-v1:0/invoke"
        .parse()
        .unwrap();
    for (name, size) in [("1kib", 1024), ("8kib", 8 * 1024), ("1mib", 1024 * 1024)] {
        let body = Bytes::from(vec![b'x'; size]);
        c.bench_function(&format!("sigv4_sign_bedrock_invoke_{name}_body"), |b| {
            b.iter(|| {
                let mut request = Request::new(Full::new(body.clone()));
                *request.uri_mut() = uri.clone();
                request
                    .headers_mut()
                    .insert("content-type", HeaderValue::from_static("application/json"));
                sigv4.apply(&mut request, &body, &aws).unwrap();
                request
            })
        });
    }

    let acs = Scheme::AcsHmac(AcsHmacScheme);
    let key = hmac::Hmac::<sha2::Sha256>::new_from_slice(b"acs-bench-access-key-0123456789abcdef")
        .unwrap();
    let acs_credential = Credential {
        material: Material::AcsKey(AcsKey {
            mac: key,
            endpoint: None,
        }),
        expires_at: None,
        generation: 1,
    };
    let acs_uri: http::Uri =
        "https://res.communication.azure.com/emails:send?api-version=2023-03-31"
            .parse()
            .unwrap();
    let body = Bytes::from(vec![b'x'; 8 * 1024]);
    c.bench_function("acs_hmac_sign_8kib_body", |b| {
        b.iter(|| {
            let mut request = Request::new(Full::new(body.clone()));
            *request.uri_mut() = acs_uri.clone();
            acs.apply(&mut request, &body, &acs_credential).unwrap();
            request
        })
    });
}

/// What `[callers]` adds per request: a static token (a hash and a lookup), a JWT seen
/// before (a hash and a cache hit), and a JWT's full check (the signature verified) per
/// algorithm. Compare with `strip_client_headers_and_inject_x_api_key`, the header-only path.
fn caller_validation(c: &mut Criterion) {
    use credproxy::callers::{Callers, token_sha256};
    use credproxy::config::{CallersConfig, JwtConfig, KeysFrom, StaticToken};
    use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, jwk};

    let runtime = tokio::runtime::Runtime::new().unwrap();
    let keys: Vec<(Algorithm, rcgen::KeyPair)> = vec![
        (
            Algorithm::RS256,
            rcgen::KeyPair::generate_for(&rcgen::PKCS_RSA_SHA256).unwrap(),
        ),
        (
            Algorithm::ES256,
            rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap(),
        ),
        (
            Algorithm::EdDSA,
            rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap(),
        ),
    ];
    let mut set = jwk::JwkSet { keys: Vec::new() };
    let mut tokens = Vec::new();
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 3600;
    for (algorithm, pair) in &keys {
        let (private, public) = (pair.serialize_pem(), pair.public_key_pem());
        let (encoding, decoding) = match algorithm {
            Algorithm::RS256 => (
                EncodingKey::from_rsa_pem(private.as_bytes()).unwrap(),
                DecodingKey::from_rsa_pem(public.as_bytes()).unwrap(),
            ),
            Algorithm::ES256 => (
                EncodingKey::from_ec_pem(private.as_bytes()).unwrap(),
                DecodingKey::from_ec_pem(public.as_bytes()).unwrap(),
            ),
            _ => (
                EncodingKey::from_ed_pem(private.as_bytes()).unwrap(),
                DecodingKey::from_ed_pem(public.as_bytes()).unwrap(),
            ),
        };
        let kid = format!("{algorithm:?}");
        let mut key = jwk::Jwk::from_decoding_key(&decoding, Some(*algorithm)).unwrap();
        key.common.key_id = Some(kid.clone());
        set.keys.push(key);
        let mut header = Header::new(*algorithm);
        header.kid = Some(kid);
        let claims = serde_json::json!({"iss": "https://idp.example", "aud": "credproxy",
            "sub": "alice", "email": "alice@example.com", "groups": ["eng"], "exp": exp});
        tokens.push((
            *algorithm,
            jsonwebtoken::encode(&header, &claims, &encoding).unwrap(),
        ));
    }
    let dir = tempfile::tempdir().unwrap();
    let jwks = dir.path().join("jwks.json");
    std::fs::write(&jwks, serde_json::to_string(&set).unwrap()).unwrap();
    let config = CallersConfig {
        jwt: Some(JwtConfig {
            issuer: "https://idp.example".into(),
            keys: KeysFrom::Discovery,
            audiences: vec!["credproxy".into()],
            email_domains: vec!["example.com".into()],
            require_email_verified: false,
            email_claim: "email".into(),
            groups_claim: "groups".into(),
            clock_skew: Duration::from_secs(60),
            jwks_max_age: Duration::from_secs(3600),
            jwks_refetch_interval: Duration::from_secs(10),
        }),
        tokens: vec![StaticToken {
            name: "ci".into(),
            sha256: token_sha256("robot-token"),
            groups: vec![],
        }],
        header: None,
    };
    let client = credproxy::client::with_settings(&credproxy::client::Settings {
        connect_timeout: Duration::from_secs(1),
        ..Default::default()
    })
    .unwrap();
    let mut config = config;
    if let Some(jwt) = config.jwt.as_mut() {
        jwt.keys = KeysFrom::File(credproxy::fields::ConfigPath::new(
            jwks.to_str().unwrap(),
            None,
        ));
    }
    let callers = Callers::new(&config, Some(jwks), client);
    let headers = |token: &str| {
        let mut headers = client_headers();
        headers.insert(
            "authorization",
            HeaderValue::from_str(&format!("Bearer {token}")).unwrap(),
        );
        headers
    };
    let robot = headers("robot-token");
    c.bench_function("caller_static_token", |b| {
        b.to_async(&runtime)
            .iter(|| async { callers.authenticate(&robot).await.unwrap() })
    });
    for (algorithm, token) in &tokens {
        let person = headers(token);
        c.bench_function(&format!("caller_jwt_{algorithm:?}_cached"), |b| {
            b.to_async(&runtime)
                .iter(|| async { callers.authenticate(&person).await.unwrap() })
        });
        c.bench_function(&format!("caller_jwt_{algorithm:?}_full_check"), |b| {
            b.to_async(&runtime)
                .iter(|| async { callers.authenticate_uncached(&person).await.unwrap() })
        });
    }
    drop(dir);
}

/// What a translating route adds: rewriting a request (JSON parse, edit, serialise) and
/// turning one Bedrock event-stream frame into one SSE event. Compare with
/// `strip_client_headers_and_inject_x_api_key`, which every route pays.
fn translation(c: &mut Criterion) {
    use credproxy::config::translate::TranslateTo;
    use credproxy::proxy::translate::eventstream::EventStreamToSse;
    use credproxy::proxy::translate::{Translation, plan};

    let bedrock = Translation {
        to: TranslateTo::Bedrock,
        models: vec![(
            "claude-sonnet-4-5".into(),
            "us.anthropic.claude-sonnet-4-5-20250929-v1:0".into(),
        )],
        project: None,
        region: None,
    };
    let text = "x".repeat(8000);
    let body = Bytes::from(
        serde_json::json!({"model": "claude-sonnet-4-5", "max_tokens": 1024, "stream": true,
            "messages": [{"role": "user", "content": text}]})
        .to_string(),
    );
    let headers = client_headers();
    c.bench_function("translate_bedrock_messages_request_8kib", |b| {
        b.iter(|| {
            let mut headers = headers.clone();
            plan(
                &bedrock,
                &http::Method::POST,
                "/v1/messages",
                &mut headers,
                &body,
            )
            .unwrap()
        })
    });
    let event = r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Hello, world"}}"#;
    let frame = credproxy::proxy::translate::eventstream::encode_chunk(event);
    let mut decoder = EventStreamToSse::new();
    c.bench_function("translate_bedrock_stream_event", |b| {
        b.iter(|| decoder.feed(std::hint::black_box(&frame)))
    });
}

/// What usage metering adds to each chunk of a stream: the bulk of a stream is text
/// deltas, which the meter must pass over at next to no cost.
fn usage_metering(c: &mut Criterion) {
    use credproxy::usage::meter::Meter;
    let delta = "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"Hello, world\"}}\n\n";
    let mut sse = HeaderMap::new();
    sse.insert(
        "content-type",
        HeaderValue::from_static("text/event-stream"),
    );
    let mut meter = Meter::new(&sse);
    c.bench_function("usage_meter_sse_delta_event", |b| {
        b.iter(|| meter.feed(std::hint::black_box(delta.as_bytes())))
    });
    let event = r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Hello, world"}}"#;
    let frame = credproxy::eventstream::encode_chunk(event);
    let mut stream = HeaderMap::new();
    stream.insert(
        "content-type",
        HeaderValue::from_static("application/vnd.amazon.eventstream"),
    );
    let mut meter = Meter::new(&stream);
    c.bench_function("usage_meter_bedrock_stream_frame", |b| {
        b.iter(|| meter.feed(std::hint::black_box(&frame)))
    });
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_secs(1));
    targets = route_match, strip_and_inject, signing, caller_validation, translation, usage_metering
}
criterion_main!(benches);
