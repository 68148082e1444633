//! `kind = "bedrock_api_key"`: a Bedrock API key (`AWS_BEARER_TOKEN_BEDROCK`) from a key
//! source, applied as `Authorization: Bearer`, refreshed after a 401 or Bedrock's 403
//! "Authentication failed".

use super::api_key::KeySpec;
use super::{Kind, Placeholder, ReadContext, Spec};
use crate::fields::{Checker, Table};
use crate::schemes::{Apply, Rejection};

pub struct BedrockApiKey;

impl Kind for BedrockApiKey {
    fn name(&self) -> &'static str {
        "bedrock_api_key"
    }

    fn placeholders(&self) -> &'static [Placeholder] {
        &[]
    }

    fn translations(&self) -> &'static [super::TranslateTo] {
        &[super::TranslateTo::Bedrock]
    }

    fn token_egress(&self) -> super::TokenEgress {
        super::TokenEgress::Ours
    }

    fn read(&self, table: &mut Table, cx: &mut Checker, at: &ReadContext) -> Option<Box<dyn Spec>> {
        KeySpec::read(table, cx, at, Apply::Bearer, Rejection::BedrockApiKey)
    }
}
