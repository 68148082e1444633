//! `translate` and `models` on a route: serve the plain Anthropic Messages API in front of
//! Bedrock or Vertex AI (the translation itself lives in `proxy::translate`).

use crate::fields::{Checker, Table};

pub use crate::kinds::TranslateTo;

/// A validated `translate` with its model table (client name → cloud id, config order).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Translate {
    pub to: TranslateTo,
    pub models: Vec<(String, String)>,
}

/// Reads `translate` and `models`; `credential_kind` is the route's credential's kind when
/// known (a translation must match it).
pub(super) fn read(
    table: &mut Table,
    cx: &mut Checker,
    credential_kind: Option<&'static dyn crate::kinds::Kind>,
) -> Option<Translate> {
    let text = table.string(cx, "translate");
    let models_value = table.value("models");
    let Some(text) = text else {
        if let Some(models) = models_value {
            cx.report(
                models.span(),
                "`models` maps model names for a translating route, and this route has no `translate`",
                "add `translate = \"bedrock\"` or `translate = \"vertex\"`, or remove `models`".to_string(),
            );
        }
        return None;
    };
    let to = match text.get_ref().as_str() {
        "bedrock" => TranslateTo::Bedrock,
        "vertex" => TranslateTo::Vertex,
        other => {
            cx.report(
                text.span(),
                format!("`{other}` is not a translation"),
                format!(
                    "write `translate = \"bedrock\"` ({} credential) or `translate = \"vertex\"` ({} credential)",
                    TranslateTo::Bedrock.kinds().join(" or "),
                    TranslateTo::Vertex.kinds().join(" or ")
                ),
            );
            return None;
        }
    };
    if let Some(kind) = credential_kind
        && !kind.translations().contains(&to)
    {
        cx.report(
            text.span(),
            format!(
                "`translate = \"{}\"` needs a credential of kind {}, and this route's is `{}`",
                to.name(),
                to.kinds().join(" or "),
                kind.name()
            ),
            "use a credential of the matching kind on this route".to_string(),
        );
        return None;
    }
    let mut models = Vec::new();
    if let Some(value) = models_value {
        match value.get_ref().as_table() {
            Some(entries) => {
                for (name, id) in entries.iter() {
                    match id.get_ref().as_str() {
                        Some(id) if !id.trim().is_empty() && !name.get_ref().trim().is_empty() => {
                            models.push((name.get_ref().to_string(), id.trim().to_string()));
                        }
                        _ => cx.report(
                            id.span(),
                            format!("model `{}` maps to something other than a model id", name.get_ref()),
                            "write `models = { \"claude-sonnet-4-5\" = \"us.anthropic.claude-sonnet-4-5-20250929-v1:0\" }`".to_string(),
                        ),
                    }
                }
            }
            None => cx.report(
                value.span(),
                "`models` must be a table of model names to cloud ids",
                "write `models = { \"claude-sonnet-4-5\" = \"claude-sonnet-4-5@20250929\" }`"
                    .to_string(),
            ),
        }
    }
    Some(Translate { to, models })
}

/// A translating route's settings, resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Translation {
    pub to: TranslateTo,
    /// Client model name → cloud model id, in config order.
    pub models: Vec<(String, String)>,
    /// Vertex: the project and region the paths name.
    pub project: Option<String>,
    pub region: Option<String>,
}

impl Translation {
    /// The cloud id for a client's model name: the table's entry, else the name as it is
    /// (cloud ids and inference-profile ARNs work directly).
    pub fn model_id<'a>(&'a self, name: &'a str) -> &'a str {
        self.models
            .iter()
            .find(|(client, _)| client == name)
            .map_or(name, |(_, id)| id.as_str())
    }
}
