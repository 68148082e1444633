//! AWS credentials from aws-config's default chain: environment, shared config and
//! credentials files (`profile`), IAM Identity Center (SSO), `credential_process`, web
//! identity, ECS/EKS container endpoints and EC2 instance metadata — optionally assuming a
//! role on top. The chain itself does not cache; [`super::cache`] does.

use std::path::PathBuf;

use aws_config::BehaviorVersion;
use aws_config::meta::region::ProvideRegion;
use aws_config::profile::ProfileFileRegionProvider;
use aws_config::sts::AssumeRoleProvider;
use aws_credential_types::Credentials;
use aws_credential_types::credential_feature::AwsCredentialFeature;
use aws_credential_types::provider::error::CredentialsError;
use aws_credential_types::provider::{ProvideCredentials, SharedCredentialsProvider};
use aws_runtime::env_config::file::{EnvConfigFileKind, EnvConfigFiles};
use aws_smithy_runtime_api::client::identity::Identity;
use aws_smithy_types::error::display::DisplayErrorContext;
use aws_types::region::Region;
use tokio::sync::OnceCell;

use super::{Fetched, Lifetime, Material, SourceError};

/// Which AWS identity to use: the chain's defaults unless named here.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AwsSettings {
    pub profile: Option<String>,
    /// For the chain's own calls (STS, SSO).
    pub region: Option<String>,
    pub role_arn: Option<String>,
    pub external_id: Option<String>,
    pub session_name: Option<String>,
}

/// Credentials plus the signing identity made from them once per fetch.
#[derive(Debug, Clone)]
pub struct AwsMaterial {
    pub credentials: Credentials,
    pub identity: Identity,
    /// The chain's region, for signing when the upstream host names none.
    pub region: Option<String>,
}

#[derive(Debug)]
pub struct AwsChain {
    spec: AwsSettings,
    /// Built on first use: loading the chain reads profile files and may be slow.
    loaded: OnceCell<(SharedCredentialsProvider, Option<Region>)>,
}

impl AwsChain {
    pub fn new(spec: AwsSettings) -> Self {
        AwsChain {
            spec,
            loaded: OnceCell::new(),
        }
    }

    pub fn describe(&self) -> String {
        let mut text = String::from("aws chain");
        if let Some(profile) = &self.spec.profile {
            text.push_str(&format!(" (profile {profile})"));
        }
        if let Some(role) = &self.spec.role_arn {
            text.push_str(&format!(" assuming {role}"));
        }
        text
    }

    async fn provider(&self) -> &(SharedCredentialsProvider, Option<Region>) {
        self.loaded
            .get_or_init(|| async {
                let mut loader = aws_config::defaults(BehaviorVersion::latest());
                if let Some(profile) = &self.spec.profile {
                    loader = loader.profile_name(profile);
                }
                if let Some(region) = &self.spec.region {
                    loader = loader.region(Region::new(region.clone()));
                }
                let config = loader.load().await;
                let region = config.region().cloned();
                let chain = config
                    .credentials_provider()
                    .unwrap_or_else(|| SharedCredentialsProvider::new(NoProvider));
                let provider = match &self.spec.role_arn {
                    None => chain,
                    Some(role) => {
                        let mut builder = AssumeRoleProvider::builder(role)
                            .session_name(
                                self.spec
                                    .session_name
                                    .clone()
                                    .unwrap_or_else(|| "credproxy".into()),
                            )
                            .configure(&config);
                        if let Some(id) = &self.spec.external_id {
                            builder = builder.external_id(id);
                        }
                        SharedCredentialsProvider::new(builder.build_from_provider(chain).await)
                    }
                };
                (provider, region)
            })
            .await
    }

    pub async fn fetch(&self) -> Result<Fetched, SourceError> {
        let (provider, region) = self.provider().await;
        let credentials = provider
            .provide_credentials()
            .await
            .map_err(|e| classify(&self.describe(), e))?;
        let lifetime = credentials
            .expiry()
            .map_or(Lifetime::UntilRejected, Lifetime::IssuerExpiry);
        let via = link(&credentials);
        let identity = Identity::new(credentials.clone(), credentials.expiry());
        Ok(Fetched {
            material: Material::Aws(AwsMaterial {
                credentials,
                identity,
                region: region.as_ref().map(|r| r.to_string()),
            }),
            lifetime,
            via,
        })
    }
}

/// The region that `profile` names in the shared config file at `config_file`, read with
/// aws-config's own parser; never the instance metadata service, so start-up on a laptop
/// does not wait on a link-local timeout.
pub async fn profile_region(profile: &str, config_file: PathBuf) -> Option<String> {
    let files = EnvConfigFiles::builder()
        .include_default_config_file(false)
        .with_file(EnvConfigFileKind::Config, config_file)
        .build();
    ProfileFileRegionProvider::builder()
        .profile_name(profile)
        .profile_files(files)
        .build()
        .region()
        .await
        .map(|r| r.to_string())
}

/// Which link of the chain answered, from the feature marks aws-config leaves on credentials.
fn link(credentials: &Credentials) -> Option<String> {
    let features = credentials.get_property::<Vec<AwsCredentialFeature>>()?;
    let names: Vec<&str> = features
        .iter()
        .filter_map(|f| {
            Some(match f {
                AwsCredentialFeature::CredentialsEnvVars => "environment variables",
                AwsCredentialFeature::CredentialsProfile => "profile",
                AwsCredentialFeature::CredentialsProfileSourceProfile => "source profile",
                AwsCredentialFeature::CredentialsProfileProcess
                | AwsCredentialFeature::CredentialsProcess => "credential_process",
                AwsCredentialFeature::CredentialsProfileSso
                | AwsCredentialFeature::CredentialsSso => "IAM Identity Center (SSO)",
                AwsCredentialFeature::CredentialsEnvVarsStsWebIdToken
                | AwsCredentialFeature::CredentialsProfileStsWebIdToken
                | AwsCredentialFeature::CredentialsStsAssumeRoleWebId => "web identity",
                AwsCredentialFeature::CredentialsStsAssumeRole => "assume role",
                AwsCredentialFeature::CredentialsHttp => "container endpoint",
                AwsCredentialFeature::CredentialsImds => "EC2 instance metadata",
                AwsCredentialFeature::CredentialsLogin
                | AwsCredentialFeature::CredentialsProfileLogin => "aws login",
                _ => return None,
            })
        })
        .collect();
    (!names.is_empty()).then(|| names.join(" + "))
}

/// AWS's words for configuration problems are shown; a provider's own failure can quote a
/// `credential_process`'s stderr or an endpoint's answer, so it goes to the log only.
fn classify(source: &str, error: CredentialsError) -> SourceError {
    match error {
        CredentialsError::CredentialsNotLoaded(_) => SourceError::not_configured(format!(
            "{source} found no credentials; configure AWS credentials (AWS_ACCESS_KEY_ID, a profile, SSO, a container or instance role)"
        ))
        .caused_by(error),
        CredentialsError::InvalidConfiguration(_) => {
            SourceError::unrecoverable(source).caused_by(error)
        }
        CredentialsError::ProviderTimedOut(_) => {
            SourceError::transient(format!("{source} timed out")).caused_by(error)
        }
        _ => SourceError::transient(format!(
            "{source} failed; the cause is in credproxy's log"
        ))
        .with_diagnostic(DisplayErrorContext(&error).to_string()),
    }
}

/// Stands in when aws-config finds no chain at all (it always does with default features).
#[derive(Debug)]
struct NoProvider;

impl ProvideCredentials for NoProvider {
    fn provide_credentials<'a>(
        &'a self,
    ) -> aws_credential_types::provider::future::ProvideCredentials<'a>
    where
        Self: 'a,
    {
        aws_credential_types::provider::future::ProvideCredentials::ready(Err(
            CredentialsError::not_loaded("aws-config found no credential chain"),
        ))
    }
}
