//! Microsoft Entra ID tokens from azure_identity 1.0. It has no DefaultAzureCredential, so
//! the chain is built here in the usual order — client secret, workload identity, managed
//! identity, Azure CLI, Azure Developer CLI — or one method is named in config.
//!
//! azure_identity caches per credential instance and cannot be told to drop a token, so
//! every fetch uses a fresh instance (constructors do no I/O). Its default retry policy
//! turns a dead endpoint into ~80 s and "retry policy expired" — and any retry policy ends
//! in that message, hiding the cause — so it retries nothing: the cache in front is the
//! retry layer (a failed fetch is not remembered; the next request or the next
//! refresh-ahead tries again).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use azure_core::cloud::{CloudConfiguration, CustomConfiguration};
use azure_core::credentials::TokenCredential;
use azure_core::http::{ClientOptions, RetryOptions};
use azure_identity::{
    AzureCliCredential, AzureDeveloperCliCredential, ClientAssertionCredentialOptions,
    ClientSecretCredential, ClientSecretCredentialOptions, ManagedIdentityCredential,
    ManagedIdentityCredentialOptions, UserAssignedId, WorkloadIdentityCredential,
    WorkloadIdentityCredentialOptions,
};

use super::{Fetched, Lifetime, Material, Secret, SourceError, Token};

/// Which Entra credential to use and for what; environment variables fill what is unset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AzureSettings {
    pub method: AzureMethod,
    pub scope: String,
    /// `https://login.microsoftonline.us` and the like; else `$AZURE_AUTHORITY_HOST`, else public.
    pub authority_host: Option<String>,
    /// Override `$AZURE_TENANT_ID` / `$AZURE_CLIENT_ID` (the client id also picks a
    /// user-assigned managed identity).
    pub tenant_id: Option<String>,
    pub client_id: Option<String>,
}

/// Which Entra credential to use; `Auto` tries them in the usual order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AzureMethod {
    Auto,
    ClientSecret,
    WorkloadIdentity,
    ManagedIdentity,
    AzureCli,
    AzureDeveloperCli,
}

impl AzureMethod {
    pub const NAMES: &[(&str, AzureMethod)] = &[
        ("auto", AzureMethod::Auto),
        ("client_secret", AzureMethod::ClientSecret),
        ("workload_identity", AzureMethod::WorkloadIdentity),
        ("managed_identity", AzureMethod::ManagedIdentity),
        ("azure_cli", AzureMethod::AzureCli),
        ("azure_developer_cli", AzureMethod::AzureDeveloperCli),
    ];
}

/// The scope Claude Code asks for (Anthropic's docs also use `https://ai.azure.com/.default`).
pub const DEFAULT_SCOPE: &str = "https://cognitiveservices.azure.com/.default";

#[derive(Debug)]
pub struct AzureChain {
    spec: AzureSettings,
}

impl AzureChain {
    pub fn new(spec: AzureSettings) -> Self {
        AzureChain { spec }
    }

    pub fn describe(&self) -> String {
        match self.spec.method {
            AzureMethod::Auto => "azure chain".to_string(),
            method => format!("azure {}", method_name(method)),
        }
    }

    fn var(name: &str) -> Option<String> {
        std::env::var(name)
            .ok()
            .map(|v| v.trim().to_string())
            .filter(|v| !v.is_empty())
    }

    fn tenant_id(&self) -> Option<String> {
        self.spec
            .tenant_id
            .clone()
            .or_else(|| Self::var("AZURE_TENANT_ID"))
    }

    fn client_id(&self) -> Option<String> {
        self.spec
            .client_id
            .clone()
            .or_else(|| Self::var("AZURE_CLIENT_ID"))
    }

    /// Which method answers: the configured one, or the first whose settings are present.
    /// Never probes the network to find out, so nothing configured fails at once.
    fn method(&self) -> Result<AzureMethod, SourceError> {
        if self.spec.method != AzureMethod::Auto {
            return Ok(self.spec.method);
        }
        if Self::var("AZURE_CLIENT_SECRET").is_some()
            && self.tenant_id().is_some()
            && self.client_id().is_some()
        {
            return Ok(AzureMethod::ClientSecret);
        }
        if Self::var("AZURE_FEDERATED_TOKEN_FILE").is_some() {
            return Ok(AzureMethod::WorkloadIdentity);
        }
        if Self::var("IDENTITY_ENDPOINT").is_some() || on_azure_vm() {
            return Ok(AzureMethod::ManagedIdentity);
        }
        if on_path("az") {
            return Ok(AzureMethod::AzureCli);
        }
        if on_path("azd") {
            return Ok(AzureMethod::AzureDeveloperCli);
        }
        Err(SourceError::not_configured(
            "no Azure credentials found: set AZURE_TENANT_ID, AZURE_CLIENT_ID and AZURE_CLIENT_SECRET, \
             or AZURE_FEDERATED_TOKEN_FILE (workload identity), run where a managed identity is \
             available (IDENTITY_ENDPOINT), or run `az login`",
        ))
    }

    fn client_options(&self) -> ClientOptions {
        let mut options = ClientOptions {
            retry: RetryOptions::none(),
            ..ClientOptions::default()
        };
        if let Some(host) = &self.spec.authority_host {
            let mut cloud = CustomConfiguration::default();
            cloud.authority_host = host.clone();
            options.cloud = Some(Arc::new(CloudConfiguration::from(cloud)));
        }
        options
    }

    fn credential(&self, method: AzureMethod) -> Result<Arc<dyn TokenCredential>, SourceError> {
        let build_error = |e: azure_core::Error| {
            SourceError::unrecoverable(method_name(method)).caused_by(AzureCause(e))
        };
        let client_options = self.client_options();
        Ok(match method {
            AzureMethod::ClientSecret => {
                let missing = |what: &str| {
                    SourceError::not_configured(format!("client secret: {what} is not set"))
                };
                let tenant = self.tenant_id().ok_or_else(|| missing("AZURE_TENANT_ID"))?;
                let client = self.client_id().ok_or_else(|| missing("AZURE_CLIENT_ID"))?;
                let secret = Self::var("AZURE_CLIENT_SECRET")
                    .ok_or_else(|| missing("AZURE_CLIENT_SECRET"))?;
                let options = ClientSecretCredentialOptions { client_options };
                ClientSecretCredential::new(&tenant, client, secret.into(), Some(options))
                    .map_err(build_error)?
            }
            AzureMethod::WorkloadIdentity => {
                let options = WorkloadIdentityCredentialOptions {
                    credential_options: ClientAssertionCredentialOptions { client_options },
                    client_id: self.client_id(),
                    tenant_id: self.tenant_id(),
                    token_file_path: Self::var("AZURE_FEDERATED_TOKEN_FILE").map(PathBuf::from),
                };
                WorkloadIdentityCredential::new(Some(options)).map_err(build_error)?
            }
            AzureMethod::ManagedIdentity => {
                let options = ManagedIdentityCredentialOptions {
                    user_assigned_id: self.spec.client_id.clone().map(UserAssignedId::ClientId),
                    client_options,
                };
                ManagedIdentityCredential::new(Some(options)).map_err(build_error)?
            }
            AzureMethod::AzureCli => AzureCliCredential::new(None).map_err(build_error)?,
            AzureMethod::AzureDeveloperCli => {
                AzureDeveloperCliCredential::new(None).map_err(build_error)?
            }
            AzureMethod::Auto => unreachable!("resolved by method()"),
        })
    }

    pub async fn fetch(&self) -> Result<Fetched, SourceError> {
        let method = self.method()?;
        let credential = self.credential(method)?;
        let token = credential
            .get_token(&[self.spec.scope.as_str()], None)
            .await
            .map_err(|e| match method {
                // The CLIs' errors quote what they printed: for the log only.
                AzureMethod::AzureCli | AzureMethod::AzureDeveloperCli => {
                    SourceError::transient(format!(
                        "{} failed; the cause is in credproxy's log",
                        method_name(method)
                    ))
                    .with_diagnostic(error_text(&e))
                }
                _ => SourceError::transient(method_name(method)).caused_by(AzureCause(e)),
            })?;
        let expires = SystemTime::UNIX_EPOCH
            + Duration::from_secs(token.expires_on.unix_timestamp().max(0) as u64);
        Ok(Fetched {
            material: Material::Token(Token::new(Secret::new(token.token.secret()))?),
            lifetime: Lifetime::IssuerExpiry(expires),
            via: Some(method_name(method).replace('_', " ")),
        })
    }
}

fn method_name(method: AzureMethod) -> &'static str {
    AzureMethod::NAMES
        .iter()
        .find(|(_, m)| *m == method)
        .map_or("auto", |(name, _)| name)
}

/// An azure_core error as people read it: its own chain on one line, without the
/// troubleshooting links it appends.
#[derive(Debug)]
struct AzureCause(azure_core::Error);

impl std::fmt::Display for AzureCause {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&error_text(&self.0))
    }
}

impl std::error::Error for AzureCause {}

fn error_text(error: &azure_core::Error) -> String {
    let mut text = error
        .to_string()
        .lines()
        .filter(|l| !l.contains("aka.ms/azsdk") && !l.trim().is_empty())
        .collect::<Vec<_>>()
        .join(" ");
    let mut source = std::error::Error::source(error);
    while let Some(e) = source {
        let next = e.to_string();
        if !text.contains(&next) {
            text.push_str(&format!(": {next}"));
        }
        source = e.source();
    }
    text
}

/// What Azure's libraries check before using the VM metadata endpoint.
fn on_azure_vm() -> bool {
    std::fs::read_to_string("/sys/class/dmi/id/sys_vendor")
        .is_ok_and(|v| v.trim() == "Microsoft Corporation")
        && std::fs::read_to_string("/sys/class/dmi/id/chassis_asset_tag")
            .is_ok_and(|t| t.trim() == "7783-7084-3265-9085-8269-3286-77")
}

fn on_path(tool: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(tool).is_file()))
}
