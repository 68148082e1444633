//! The one type that holds secret text.

use std::fmt;

/// Secret text (an API key, a token, a signing key). `Debug` and `Display` print
/// [`Secret::REDACTED`], so a secret that ends up in a log line, an error or a `{:?}` of a
/// larger struct shows as the marker. The value is reachable only through [`Secret::expose`],
/// which makes every use greppable.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Box<str>);

impl Secret {
    pub const REDACTED: &'static str = "** redacted **";

    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into().into_boxed_str())
    }

    /// The secret itself: only for putting it on the wire or signing with it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(Self::REDACTED)
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(Self::REDACTED)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_prints_redacted_in_every_format() {
        let secret = Secret::new("sk-ant-very-secret");
        assert_eq!(format!("{secret}"), "** redacted **");
        assert_eq!(format!("{secret:?}"), "** redacted **");
        assert_eq!(
            format!("{:?}", Some(vec![secret.clone()])),
            "Some([** redacted **])"
        );
        assert_eq!(secret.expose(), "sk-ant-very-secret");
    }
}
