//! Google OAuth access tokens for Vertex AI, from gcp_auth: a service-account key file, or
//! Google's application-default chain. gcp_auth hard-codes the metadata server's host, so
//! that one link — a single GET with `Metadata-Flavor: Google` — is done here, honouring
//! `GCE_METADATA_HOST` / `GCE_METADATA_IP` as Google's own client libraries do.
//!
//! gcp_auth caches tokens inside each provider instance and cannot be told to drop one, so
//! every fetch builds a fresh instance (constructors are cheap): a refresh after a 401 then
//! really is a new token. The cache in front provides refresh-ahead and single-flight.

use std::path::{Path, PathBuf};

use std::time::{Duration, SystemTime};

use bytes::Bytes;
use gcp_auth::{
    ConfigDefaultCredentials, CustomServiceAccount, GCloudAuthorizedUser, TokenProvider,
};
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use super::{Fetched, Lifetime, Material, Secret, SourceError, Token};

/// Which Google credentials to use and for what.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GoogleSettings {
    /// A service-account key file instead of the application-default chain.
    pub key_file: Option<PathBuf>,
    pub scopes: Vec<String>,
    /// Sent as `x-goog-user-project` (billing and quota for user credentials).
    pub quota_project: Option<String>,
}

pub const DEFAULT_SCOPE: &str = "https://www.googleapis.com/auth/cloud-platform";

/// Where gcloud's `application-default login` writes user credentials.
const ADC_FILE: &str = ".config/gcloud/application_default_credentials.json";
const METADATA_DEFAULT_HOST: &str = "metadata.google.internal";
const METADATA_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug)]
pub struct GoogleChain {
    spec: GoogleSettings,
}

/// The link of the chain that will answer, decided from the environment and files alone.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Link {
    KeyFile(PathBuf),
    ApplicationCredentials(PathBuf),
    GcloudUserCredentials,
    Metadata(String),
    GcloudCli,
}

impl GoogleChain {
    pub fn new(spec: GoogleSettings) -> Self {
        GoogleChain { spec }
    }

    pub fn describe(&self) -> String {
        match &self.spec.key_file {
            Some(path) => format!("google key file {}", path.display()),
            None => "google application-default chain".to_string(),
        }
    }

    /// The quota project for `x-goog-user-project`: the config's, else the one gcloud's
    /// user credentials name (only when those are the link in use).
    pub fn quota_project(&self) -> Option<String> {
        if let Some(project) = &self.spec.quota_project {
            return Some(project.clone());
        }
        match self.link() {
            Ok(Link::GcloudUserCredentials) => read_json(&adc_file()?)
                .ok()?
                .get("quota_project_id")?
                .as_str()
                .map(str::to_string),
            _ => None,
        }
    }

    /// The project a key file names, when the link in use is one (for `credproxy env`).
    pub fn key_file_project(&self) -> Option<String> {
        match self.link().ok()? {
            Link::KeyFile(path) | Link::ApplicationCredentials(path) => read_json(&path)
                .ok()?
                .get("project_id")?
                .as_str()
                .map(str::to_string),
            _ => None,
        }
    }

    /// Google's order: an explicit key file, `GOOGLE_APPLICATION_CREDENTIALS`, gcloud's
    /// application-default user credentials, the metadata server (when an emulator is named
    /// or this is a Google Cloud machine), the `gcloud` CLI. Never guesses at the network:
    /// with nothing configured it fails at once instead of waiting on a metadata timeout.
    fn link(&self) -> Result<Link, SourceError> {
        if let Some(path) = &self.spec.key_file {
            return Ok(Link::KeyFile(path.clone()));
        }
        if let Some(path) =
            std::env::var_os("GOOGLE_APPLICATION_CREDENTIALS").filter(|p| !p.is_empty())
        {
            return Ok(Link::ApplicationCredentials(PathBuf::from(path)));
        }
        if adc_file().is_some_and(|p| p.is_file()) {
            return Ok(Link::GcloudUserCredentials);
        }
        for var in ["GCE_METADATA_HOST", "GCE_METADATA_IP"] {
            if let Ok(host) = std::env::var(var)
                && !host.trim().is_empty()
            {
                return Ok(Link::Metadata(host.trim().to_string()));
            }
        }
        if on_google_cloud() {
            return Ok(Link::Metadata(METADATA_DEFAULT_HOST.to_string()));
        }
        if gcloud_on_path() {
            return Ok(Link::GcloudCli);
        }
        Err(SourceError::not_configured(
            "no Google credentials found: set GOOGLE_APPLICATION_CREDENTIALS to a service-account key file, \
             run `gcloud auth application-default login`, set `key_file` in the credential, \
             or run on Google Cloud (GCE_METADATA_HOST names a metadata server emulator)",
        ))
    }

    pub async fn fetch(&self) -> Result<Fetched, SourceError> {
        let link = self.link()?;
        let scopes: Vec<&str> = self.spec.scopes.iter().map(String::as_str).collect();
        let (token, expires_at, via) = match &link {
            Link::KeyFile(path) | Link::ApplicationCredentials(path) => {
                let account = service_account(path)?;
                let token = account
                    .token(&scopes)
                    .await
                    .map_err(|e| failed("service account", e))?;
                (
                    token.as_str().to_string(),
                    system_time(token.expires_at().timestamp()),
                    "service account key",
                )
            }
            Link::GcloudUserCredentials => {
                let user = ConfigDefaultCredentials::new()
                    .await
                    .map_err(|e| failed("gcloud application-default credentials", e))?;
                let token = user
                    .token(&scopes)
                    .await
                    .map_err(|e| failed("gcloud application-default credentials", e))?;
                (
                    token.as_str().to_string(),
                    system_time(token.expires_at().timestamp()),
                    "gcloud application-default credentials",
                )
            }
            Link::Metadata(host) => {
                let (token, expires_at) = metadata_token(host, &scopes).await?;
                (token, expires_at, "metadata server")
            }
            Link::GcloudCli => {
                // gcp_auth runs `gcloud` with a blocking std::process::Command: keep it off
                // the async workers.
                let scopes: Vec<String> = self.spec.scopes.clone();
                let handle = tokio::runtime::Handle::current();
                let token = tokio::task::spawn_blocking(move || {
                    handle.block_on(async {
                        let scopes: Vec<&str> = scopes.iter().map(String::as_str).collect();
                        GCloudAuthorizedUser::new().await?.token(&scopes).await
                    })
                })
                .await
                .map_err(|e| SourceError::transient(format!("gcloud CLI task failed: {e}")))?
                .map_err(|e| {
                    // The CLI's error quotes what it printed: for the log only.
                    SourceError::transient(
                        "gcloud CLI (`gcloud auth print-access-token`; run `gcloud auth login` first) failed; the cause is in credproxy's log",
                    )
                    .with_diagnostic(crate::failure::chain(&e))
                })?;
                (
                    token.as_str().to_string(),
                    system_time(token.expires_at().timestamp()),
                    "gcloud CLI",
                )
            }
        };
        Ok(Fetched {
            material: Material::Token(Token::new(Secret::new(token))?),
            lifetime: Lifetime::IssuerExpiry(expires_at),
            via: Some(via.to_string()),
        })
    }
}

fn service_account(path: &Path) -> Result<CustomServiceAccount, SourceError> {
    let json = read_json(path)?;
    match json.get("type").and_then(|t| t.as_str()) {
        Some("service_account") => CustomServiceAccount::from_file(path).map_err(|e| {
            SourceError::unrecoverable(format!("service-account key {}: {e}", path.display()))
        }),
        Some(other) => Err(SourceError::unrecoverable(format!(
            "{} holds `{other}` credentials; credproxy reads service-account keys there (for user credentials run `gcloud auth application-default login` and unset GOOGLE_APPLICATION_CREDENTIALS)",
            path.display()
        ))),
        None => Err(SourceError::unrecoverable(format!(
            "{} has no `type`; it is not a Google credentials file",
            path.display()
        ))),
    }
}

fn read_json(path: &Path) -> Result<serde_json::Value, SourceError> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        SourceError::not_configured(format!(
            "cannot read Google credentials {}: {e}",
            path.display()
        ))
    })?;
    serde_json::from_str(&text)
        .map_err(|e| SourceError::unrecoverable(format!("{} is not JSON: {e}", path.display())))
}

fn adc_file() -> Option<PathBuf> {
    std::env::var_os("HOME").map(|home| Path::new(&home).join(ADC_FILE))
}

/// What Google's libraries check on Linux before talking to the metadata server.
fn on_google_cloud() -> bool {
    std::fs::read_to_string("/sys/class/dmi/id/product_name")
        .is_ok_and(|name| name.trim().starts_with("Google"))
}

fn gcloud_on_path() -> bool {
    std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join("gcloud").is_file()))
}

fn failed(link: &str, error: gcp_auth::Error) -> SourceError {
    SourceError::transient(link).caused_by(error)
}

fn system_time(unix_seconds: i64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(unix_seconds.max(0) as u64)
}

/// One GET to the metadata server's token endpoint, as every Google client library does.
async fn metadata_token(host: &str, scopes: &[&str]) -> Result<(String, SystemTime), SourceError> {
    let url = format!(
        "http://{host}/computeMetadata/v1/instance/service-accounts/default/token?scopes={}",
        scopes.join(",")
    );
    let request = http::Request::get(&url)
        .header("metadata-flavor", "Google")
        .body(Empty::<Bytes>::new())
        .map_err(|e| SourceError::unrecoverable(format!("metadata server URL {url}: {e}")))?;
    let client: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let failure = |what: String| SourceError::transient(format!("metadata server {host}: {what}"));
    let exchange = async {
        let response = client
            .request(request)
            .await
            .map_err(|e| failure(e.to_string()))?;
        let status = response.status();
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|e| failure(e.to_string()))?
            .to_bytes();
        if !status.is_success() {
            return Err(failure(format!(
                "answered {status}: {}",
                String::from_utf8_lossy(&body[..body.len().min(200)])
            )));
        }
        Ok(body)
    };
    let body = tokio::time::timeout(METADATA_TIMEOUT, exchange)
        .await
        .map_err(|_| {
            failure(format!(
                "no answer within {}",
                humantime::format_duration(METADATA_TIMEOUT)
            ))
        })??;
    #[derive(serde::Deserialize)]
    struct MetadataToken {
        access_token: String,
        expires_in: u64,
    }
    let token: MetadataToken = serde_json::from_slice(&body)
        .map_err(|e| failure(format!("unexpected token response: {e}")))?;
    Ok((
        token.access_token,
        SystemTime::now() + Duration::from_secs(token.expires_in),
    ))
}
