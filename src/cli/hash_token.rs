//! `credproxy hash-token [--name NAME] [--generate]`: the `[[callers.tokens]]` lines for a
//! caller token; only its SHA-256 is printed (a generated token once, on stderr).

use std::process::ExitCode;

use super::secret::read_secret;
use crate::credentials::Secret;

/// Shorter tokens could be found from their unsalted hash by trying candidates.
const MIN_TOKEN_LENGTH: usize = 24;

/// `credproxy hash-token [--name NAME] [--generate]`.
pub fn run(name: Option<&str>, generate: bool) -> ExitCode {
    let token = if generate {
        use base64::Engine;
        use ring::rand::SecureRandom;
        let mut bytes = [0u8; 32];
        if ring::rand::SystemRandom::new().fill(&mut bytes).is_err() {
            eprintln!("credproxy: the system's random source failed");
            return ExitCode::FAILURE;
        }
        let token = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
        eprintln!(
            "new caller token (shown once; give it to the robot, keep it nowhere else):\n{token}"
        );
        Ok(Secret::new(token))
    } else {
        read_secret("caller token (not echoed): ", "token").and_then(|token| {
            if token.expose().chars().count() < MIN_TOKEN_LENGTH {
                Err(format!(
                    "the token is shorter than {MIN_TOKEN_LENGTH} characters, so it could be guessed from its hash; use `credproxy hash-token --generate`"
                ))
            } else {
                Ok(token)
            }
        })
    };
    match token {
        Ok(token) => {
            let hash = hex::encode(crate::callers::token_sha256(token.expose()));
            match name {
                Some(name) => println!(
                    "[[callers.tokens]]\nname = {}\nsha256 = \"{hash}\"\n# groups = [\"ci\"]  # routes with `groups` admit the token only if it is in one",
                    toml::Value::String(name.to_string())
                ),
                None => println!("sha256 = \"{hash}\""),
            }
            ExitCode::SUCCESS
        }
        Err(error) => super::failed(error),
    }
}
