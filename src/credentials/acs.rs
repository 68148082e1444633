//! Azure Communication Services access keys: a connection string
//! (`endpoint=https://<res>.communication.azure.com/;accesskey=<base64>`) or the bare key,
//! from any key source (env, file, helper). Turned into a ready HMAC key once per fetch.

use std::fmt;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, Mac};
use sha2::Sha256;

use super::{Fetched, Material, SourceError};

/// The HMAC-SHA256 state keyed with the decoded access key; cloned per request.
#[derive(Clone)]
pub struct AcsKey {
    pub mac: Hmac<Sha256>,
    /// The connection string's endpoint, when it had one (shown by `credproxy check`).
    pub endpoint: Option<String>,
}

impl fmt::Debug for AcsKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AcsKey")
            .field("mac", &super::Secret::REDACTED)
            .field("endpoint", &self.endpoint)
            .finish()
    }
}

/// Parses what a key source produced into an [`AcsKey`].
pub fn from_key(fetched: Fetched) -> Result<Fetched, SourceError> {
    let Material::Token(token) = &fetched.material else {
        return Err(SourceError::unrecoverable(
            "an ACS credential needs a key or connection string",
        ));
    };
    let (endpoint, key) = parse(token.secret().expose())?;
    let bytes = STANDARD
        .decode(key.trim())
        .map_err(|_| SourceError::unrecoverable("the ACS access key is not base64"))?;
    let mac = Hmac::<Sha256>::new_from_slice(&bytes).expect("HMAC takes keys of any length");
    Ok(Fetched {
        material: Material::AcsKey(AcsKey {
            mac,
            endpoint: endpoint.clone(),
        }),
        lifetime: fetched.lifetime,
        via: endpoint.map(|e| format!("endpoint {e}")).or(fetched.via),
    })
}

/// `endpoint=...;accesskey=...`: split on `;`, then on the first `=`; keys are
/// case-insensitive; a trailing `/` on the endpoint is dropped. Text with no `;` that does
/// not start with a known key is the bare key (base64 may end in `=` padding).
fn parse(text: &str) -> Result<(Option<String>, &str), SourceError> {
    let text = text.trim();
    let lower = text.to_ascii_lowercase();
    if !text.contains(';') && !lower.starts_with("endpoint=") && !lower.starts_with("accesskey=") {
        return Ok((None, text));
    }
    let mut endpoint = None;
    let mut key = None;
    for part in text.split(';').map(str::trim).filter(|p| !p.is_empty()) {
        let Some((name, value)) = part.split_once('=') else {
            continue;
        };
        match name.trim().to_ascii_lowercase().as_str() {
            "endpoint" => endpoint = Some(value.trim().trim_end_matches('/').to_string()),
            "accesskey" => key = Some(value.trim()),
            _ => {}
        }
    }
    let key = key
        .ok_or_else(|| SourceError::unrecoverable("the ACS connection string has no accesskey"))?;
    Ok((endpoint, key))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_strings_split_on_semicolons_then_the_first_equals() {
        let (endpoint, key) =
            parse("endpoint=https://res.communication.azure.com/;accesskey=abc+/def==").unwrap();
        assert_eq!(
            endpoint.as_deref(),
            Some("https://res.communication.azure.com")
        );
        assert_eq!(key, "abc+/def==");
        let (endpoint, key) =
            parse(" AccessKey=k==; Endpoint=https://x.communication.azure.com ").unwrap();
        assert_eq!(
            (endpoint.as_deref(), key),
            (Some("https://x.communication.azure.com"), "k==")
        );
        assert_eq!(
            parse("c2VjcmV0a2V5MTIzNA==").unwrap(),
            (None, "c2VjcmV0a2V5MTIzNA==")
        );
        let missing = parse("endpoint=https://x.communication.azure.com;accesskeyy=1").unwrap_err();
        assert!(missing.message().contains("no accesskey"), "{}", missing);
    }
}
