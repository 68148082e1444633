//! `credproxy secret set|delete NAME`: a credential's key in the OS keychain (the item
//! its `keychain = "SERVICE/ACCOUNT"` names), read from the terminal without echo or from
//! standard input when piped.

use std::process::ExitCode;

use crate::config::Config;
use crate::credentials::{KeychainItem, Secret, keychain};
use crate::kinds::key_source::KeyFrom;

/// What `credproxy secret` does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Set,
    Delete,
}

/// Whether any credential reads its key from the keychain.
pub fn uses_keychain(config: &Config) -> bool {
    config.credentials.iter().any(|c| {
        matches!(
            c.spec.key_source().and_then(|s| s.from.as_ref()),
            Some(KeyFrom::Keychain(_))
        )
    })
}

/// The keychain item credential `name` reads its key from (`credproxy secret`).
pub fn keychain_item(config: &Config, name: &str) -> Result<KeychainItem, String> {
    let Some(credential) = config.credentials.iter().find(|c| c.name == name) else {
        let names: Vec<String> = config
            .credentials
            .iter()
            .map(|c| format!("`{}`", c.name))
            .collect();
        return Err(format!(
            "{} has no credential `{name}`; its credentials are {}",
            config.origin.display_name(),
            names.join(", ")
        ));
    };
    match credential
        .spec
        .key_source()
        .and_then(|source| source.from.as_ref())
    {
        Some(KeyFrom::Keychain(item)) => Ok(item.clone()),
        _ => Err(format!(
            "credential `{name}` does not read its key from the keychain; write `keychain = \"credproxy/{name}\"` in [credentials.{name}] (instead of `env`, `file`, `value` or `helper`)"
        )),
    }
}

/// `credproxy secret set|delete NAME`.
pub fn run(config: &Config, action: Action, name: &str) -> ExitCode {
    let item = match keychain_item(config, name) {
        Ok(item) => item,
        Err(error) => return super::failed(error),
    };
    let store = match keychain::platform_store() {
        Ok(store) => store,
        Err(missing) => return super::failed(missing),
    };
    let outcome = match action {
        Action::Set => read_secret(
            &format!("key for credential `{name}` (keychain {item}): "),
            "key",
        )
        .and_then(|secret| {
            keychain::store_key(&store, &item, &secret)
                .map(|()| format!("stored the key of credential `{name}` in keychain {item}"))
        }),
        Action::Delete => keychain::delete_key(&store, &item).and_then(|deleted| {
            if deleted {
                Ok(format!(
                    "removed the key of credential `{name}` from keychain {item}"
                ))
            } else {
                Err(format!(
                    "keychain {item} holds no key for credential `{name}`"
                ))
            }
        }),
    };
    match outcome {
        Ok(done) => {
            println!("{done}");
            ExitCode::SUCCESS
        }
        Err(error) => super::failed(error),
    }
}

/// A secret from the terminal without echo, or from standard input when it is piped.
pub fn read_secret(prompt: &str, what: &str) -> Result<Secret, String> {
    use std::io::{IsTerminal, Read};
    let text = if std::io::stdin().is_terminal() {
        rpassword::prompt_password(prompt)
            .map_err(|e| format!("cannot read the {what} from the terminal: {e}"))?
    } else {
        let mut text = String::new();
        std::io::stdin()
            .read_to_string(&mut text)
            .map_err(|e| format!("cannot read the {what} from standard input: {e}"))?;
        text
    };
    let value = text.trim();
    if value.is_empty() {
        return Err(format!(
            "no {what} was given; type it at the prompt or pipe it in"
        ));
    }
    if value.contains(['\n', '\r']) {
        return Err(format!(
            "the {what} spans more than one line; give the {what} alone"
        ));
    }
    Ok(Secret::new(value))
}
