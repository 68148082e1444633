//! A Google service account made at test time, and a fake OAuth token endpoint that checks
//! the RS256 JWT assertion gcp_auth sends (issuer, audience, scope, signature) before it
//! issues a token.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

use super::{FakeUpstream, Reply, Scratch};

pub const CLIENT_EMAIL: &str = "credproxy-test@test-project.iam.gserviceaccount.com";
pub const SCOPE: &str = "https://www.googleapis.com/auth/cloud-platform";

pub struct ServiceAccount {
    pub token_endpoint: FakeUpstream,
    pub key_file: std::path::PathBuf,
    issued: Arc<AtomicUsize>,
}

impl ServiceAccount {
    /// Writes a key file whose `token_uri` is a fake endpoint issuing `ya29.token-N`.
    pub async fn create(scratch: &Scratch, expires_in: u64) -> Self {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_RSA_SHA256).unwrap();
        // For RSA this is the PKCS#1 RSAPublicKey DER, the form ring verifies with.
        let public_key = key.public_key_raw().to_vec();
        let issued = Arc::new(AtomicUsize::new(0));
        let token_endpoint = {
            let issued = Arc::clone(&issued);
            // The endpoint's own URL is the audience; it is known only once it listens.
            let audience = Arc::new(std::sync::OnceLock::<String>::new());
            let aud = Arc::clone(&audience);
            let endpoint = FakeUpstream::start(move |req| {
                let audience = aud.get().expect("audience set");
                match check_assertion(&req.body, &public_key, audience) {
                    Ok(()) => {
                        let n = issued.fetch_add(1, Ordering::SeqCst) + 1;
                        Reply::status(200, format!(r#"{{"access_token":"ya29.token-{n}","expires_in":{expires_in},"token_type":"Bearer"}}"#))
                    }
                    Err(why) => Reply::status(400, format!(r#"{{"error":"invalid_grant","error_description":"{why}"}}"#)),
                }
            })
            .await;
            audience.set(format!("{}/token", endpoint.url())).unwrap();
            endpoint
        };
        let json = serde_json::json!({
            "type": "service_account",
            "project_id": "test-project",
            "private_key_id": "key-1",
            "private_key": key.serialize_pem(),
            "client_email": CLIENT_EMAIL,
            "client_id": "1234567890",
            "token_uri": format!("{}/token", token_endpoint.url()),
        });
        let key_file = scratch.write("service-account.json", &json.to_string());
        ServiceAccount {
            token_endpoint,
            key_file,
            issued,
        }
    }

    pub fn issued(&self) -> usize {
        self.issued.load(Ordering::SeqCst)
    }
}

fn check_assertion(body: &[u8], public_key: &[u8], audience: &str) -> Result<(), String> {
    let form: std::collections::HashMap<String, String> =
        form_urlencoded::parse(body).into_owned().collect();
    if form.get("grant_type").map(String::as_str)
        != Some("urn:ietf:params:oauth:grant-type:jwt-bearer")
    {
        return Err(format!("grant_type {:?}", form.get("grant_type")));
    }
    let jwt = form.get("assertion").ok_or("no assertion")?;
    let parts: Vec<&str> = jwt.split('.').collect();
    let [header, claims, signature] = parts[..] else {
        return Err("not a JWT".into());
    };
    // gcp_auth pads its base64url segments; Google accepts both forms.
    let decode = |part: &str| {
        URL_SAFE_NO_PAD
            .decode(part.trim_end_matches('='))
            .map_err(|e| e.to_string())
    };
    let signature = decode(signature)?;
    ring::signature::UnparsedPublicKey::new(
        &ring::signature::RSA_PKCS1_2048_8192_SHA256,
        public_key,
    )
    .verify(format!("{header}.{claims}").as_bytes(), &signature)
    .map_err(|_| "bad signature".to_string())?;
    let header: serde_json::Value =
        serde_json::from_slice(&decode(header)?).map_err(|e| e.to_string())?;
    let claims: serde_json::Value =
        serde_json::from_slice(&decode(claims)?).map_err(|e| e.to_string())?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let checks = [
        (header["alg"] == "RS256", "alg"),
        (claims["iss"] == CLIENT_EMAIL, "iss"),
        (claims["aud"] == audience, "aud"),
        (claims["scope"] == SCOPE, "scope"),
        (claims["exp"].as_i64().is_some_and(|exp| exp > now), "exp"),
        (
            claims["iat"].as_i64().is_some_and(|iat| iat <= now + 5),
            "iat",
        ),
    ];
    match checks.iter().find(|(ok, _)| !ok) {
        Some((_, claim)) => Err(format!("claim {claim} is wrong: {claims}")),
        None => Ok(()),
    }
}
