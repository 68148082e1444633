//! A fake OpenID Connect identity provider over TLS: discovery document, a JWKS the test
//! can rotate or break, and signing keys made at test time (RSA, EC P-256, Ed25519).

use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header};

use super::tls::TestCa;
use super::{FakeUpstream, Reply};

/// A signing key and its public JWK.
pub struct SigningKey {
    pub kid: String,
    pub algorithm: Algorithm,
    pub encoding: EncodingKey,
    pub jwk: Jwk,
    /// The public key in PEM, for the HMAC-confusion attack.
    pub public_pem: String,
}

impl SigningKey {
    pub fn rsa(kid: &str, algorithm: Algorithm) -> Self {
        Self::generate(
            kid,
            algorithm,
            &rcgen::PKCS_RSA_SHA256,
            EncodingKey::from_rsa_pem,
            DecodingKey::from_rsa_pem,
        )
    }

    pub fn ec(kid: &str) -> Self {
        Self::generate(
            kid,
            Algorithm::ES256,
            &rcgen::PKCS_ECDSA_P256_SHA256,
            EncodingKey::from_ec_pem,
            DecodingKey::from_ec_pem,
        )
    }

    pub fn ed25519(kid: &str) -> Self {
        Self::generate(
            kid,
            Algorithm::EdDSA,
            &rcgen::PKCS_ED25519,
            EncodingKey::from_ed_pem,
            DecodingKey::from_ed_pem,
        )
    }

    fn generate(
        kid: &str,
        algorithm: Algorithm,
        kind: &'static rcgen::SignatureAlgorithm,
        private: fn(&[u8]) -> jsonwebtoken::errors::Result<EncodingKey>,
        public: fn(&[u8]) -> jsonwebtoken::errors::Result<DecodingKey>,
    ) -> Self {
        let pair = rcgen::KeyPair::generate_for(kind).unwrap();
        let encoding = private(pair.serialize_pem().as_bytes()).unwrap();
        let decoding = public(pair.public_key_pem().as_bytes()).unwrap();
        Self::finish(kid, algorithm, encoding, &decoding, pair.public_key_pem())
    }

    fn finish(
        kid: &str,
        algorithm: Algorithm,
        encoding: EncodingKey,
        decoding: &DecodingKey,
        public_pem: String,
    ) -> Self {
        let mut jwk = Jwk::from_decoding_key(decoding, Some(algorithm)).unwrap();
        jwk.common.key_id = Some(kid.to_string());
        SigningKey {
            kid: kid.to_string(),
            algorithm,
            encoding,
            jwk,
            public_pem,
        }
    }

    /// A token with these claims, signed by this key and naming it.
    pub fn sign(&self, claims: &serde_json::Value) -> String {
        let mut header = Header::new(self.algorithm);
        header.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&header, claims, &self.encoding).unwrap()
    }
}

pub fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// The provider: `/.well-known/openid-configuration` and `/jwks`.
pub struct FakeIdp {
    pub server: FakeUpstream,
    keys: Arc<Mutex<Vec<Jwk>>>,
    failing: Arc<Mutex<bool>>,
    hanging: Arc<Mutex<bool>>,
}

impl FakeIdp {
    pub async fn start(ca: &TestCa, keys: &[&SigningKey]) -> Self {
        let published: Arc<Mutex<Vec<Jwk>>> =
            Arc::new(Mutex::new(keys.iter().map(|k| k.jwk.clone()).collect()));
        let failing = Arc::new(Mutex::new(false));
        let hanging = Arc::new(Mutex::new(false));
        let issuer: Arc<Mutex<String>> = Arc::default();
        let (set, down, stuck, named) = (
            Arc::clone(&published),
            Arc::clone(&failing),
            Arc::clone(&hanging),
            Arc::clone(&issuer),
        );
        let server = FakeUpstream::start_tls(ca, move |request| {
            if *down.lock().unwrap() {
                return Reply::status(503, "down");
            }
            if *stuck.lock().unwrap() {
                return Reply::Hang;
            }
            let issuer = named.lock().unwrap().clone();
            match request.path_and_query.as_str() {
                "/.well-known/openid-configuration" => Reply::status(
                    200,
                    serde_json::json!({"issuer": issuer, "jwks_uri": format!("{issuer}/jwks")})
                        .to_string(),
                ),
                "/jwks" => {
                    let keys = set.lock().unwrap().clone();
                    Reply::Full {
                        status: 200,
                        headers: vec![
                            ("content-type", "application/json".into()),
                            ("cache-control", "public, max-age=3600".into()),
                        ],
                        body: serde_json::to_string(&JwkSet { keys }).unwrap().into(),
                    }
                }
                _ => Reply::status(404, "{}"),
            }
        })
        .await;
        *issuer.lock().unwrap() = server.url();
        FakeIdp {
            server,
            keys: published,
            failing,
            hanging,
        }
    }

    pub fn issuer(&self) -> String {
        self.server.url()
    }

    /// Publishes `key` besides the current ones (a rotation's first step).
    pub fn publish(&self, key: &SigningKey) {
        self.keys.lock().unwrap().push(key.jwk.clone());
    }

    /// Makes every request fail with 503 (or succeed again).
    pub fn set_down(&self, down: bool) {
        *self.failing.lock().unwrap() = down;
    }

    /// Makes every request hang without an answer (or answer again).
    pub fn set_hanging(&self, hanging: bool) {
        *self.hanging.lock().unwrap() = hanging;
    }

    pub fn key_set_fetches(&self) -> usize {
        self.server
            .requests()
            .iter()
            .filter(|r| r.path_and_query == "/jwks")
            .count()
    }

    pub fn discovery_fetches(&self) -> usize {
        self.server
            .requests()
            .iter()
            .filter(|r| r.path_and_query.starts_with("/.well-known/"))
            .count()
    }
}
