//! Who and what a request is counted for. A scope names one set of counters:
//! `caller=alice@example.com`, `group=eng`, `tag=run-42`, `route=/anthropic`,
//! `model=claude-sonnet-4-5`, a tag's breakdown (`tag=run-42/model=...`), or one quota's
//! subject (`quota=eng-daily/group=eng`).

use std::fmt;
use std::sync::Arc;

/// The name of one set of counters.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Scope(Arc<str>);

impl From<String> for Scope {
    fn from(name: String) -> Self {
        Scope(name.into())
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl Scope {
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The quota of a quota subject's scope (`quota=NAME/...`).
    pub fn quota_name(&self) -> Option<&str> {
        self.0.strip_prefix("quota=")?.split('/').next()
    }

    /// (dimension, value) of a report scope such as `caller=alice`; a tag's breakdown
    /// (`tag=run/model=m`) gives (`model`, `m`) with its tag apart.
    pub fn split(&self) -> Option<(Option<&str>, &str, &str)> {
        let (tag, rest) = match self.0.strip_prefix("tag=") {
            Some(rest) => match rest.split_once('/') {
                Some((tag, rest)) => (Some(tag), rest),
                None => return Some((None, "tag", rest)),
            },
            None => (None, &*self.0),
        };
        if rest.starts_with("quota=") {
            return None;
        }
        let (dimension, value) = rest.split_once('=')?;
        Some((tag, dimension, value))
    }
}

/// What is known of a request when it is admitted.
#[derive(Debug, Clone)]
pub struct Facts {
    /// The caller's email or subject, `token:NAME` for a static token, `local` without
    /// `[callers]`.
    pub caller: String,
    pub groups: Vec<String>,
    pub tag: Option<String>,
    pub route: String,
    pub model: Option<String>,
}

impl Facts {
    /// The report scopes an answered request is counted in; `model` as reports name it
    /// (bounded: see the ledger).
    pub fn report_scopes(&self, model: &str) -> Vec<Scope> {
        let mut plain = vec![
            format!("caller={}", self.caller),
            format!("route={}", self.route),
            format!("model={model}"),
        ];
        plain.extend(self.groups.iter().map(|g| format!("group={g}")));
        let mut scopes: Vec<Scope> = Vec::with_capacity(plain.len() * 2 + 1);
        if let Some(tag) = &self.tag {
            scopes.push(Scope::from(format!("tag={tag}")));
            scopes.extend(plain.iter().map(|p| Scope::from(format!("tag={tag}/{p}"))));
        }
        scopes.extend(plain.into_iter().map(Scope::from));
        scopes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tagged_request_is_counted_under_its_tag_too() {
        let facts = Facts {
            caller: "local".into(),
            groups: vec!["eng".into()],
            tag: Some("run-1".into()),
            route: "/a".into(),
            model: Some("m".into()),
        };
        let scopes: Vec<String> = facts
            .report_scopes("m")
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert!(scopes.contains(&"tag=run-1".to_string()));
        assert!(scopes.contains(&"tag=run-1/model=m".to_string()));
        assert!(scopes.contains(&"group=eng".to_string()));
        let split = Scope::from("tag=run-1/caller=local".to_string());
        assert_eq!(split.split(), Some((Some("run-1"), "caller", "local")));
        assert_eq!(
            Scope::from("tag=run-1".to_string()).split(),
            Some((None, "tag", "run-1"))
        );
        assert_eq!(Scope::from("quota=q/all".to_string()).split(), None);
    }
}
