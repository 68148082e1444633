//! `[usage]`, `[prices."MODEL"]` and `[[quotas]]`: where usage goes, what tokens cost and
//! who may spend how much. Read and checked here; counting and admission live in `usage`
//! (the module above `telemetry`), docs/usage.md explains them for an admin.

use std::str::FromStr;

use http::HeaderName;

use crate::credentials::Secret;
use crate::fields::{Checker, ConfigPath, Table, Text};

/// The `[usage]` table.
#[derive(Debug, Clone, PartialEq)]
pub struct UsageConfig {
    /// `log`: one JSON record per answered model request, appended; reopened when renamed.
    pub log: Option<ConfigPath>,
    /// `tag_header`: a client's free-form label (a benchmark run, a project).
    pub tag_header: HeaderName,
    pub store: Store,
    /// `state_dir`: where the embedded store keeps its counters across restarts (else the
    /// platform's state directory, resolved with the environment).
    pub state_dir: Option<ConfigPath>,
    pub on_store_error: OnStoreError,
}

impl Default for UsageConfig {
    fn default() -> Self {
        UsageConfig {
            log: None,
            tag_header: HeaderName::from_static(DEFAULT_TAG_HEADER),
            store: Store::Embedded,
            state_dir: None,
            on_store_error: OnStoreError::Allow,
        }
    }
}

pub const DEFAULT_TAG_HEADER: &str = "x-credproxy-tag";

/// `store`: where the counters live.
#[derive(Debug, Clone, PartialEq)]
pub enum Store {
    /// In this process, saved to a state file: one machine.
    Embedded,
    /// `redis://` or `rediss://`: shared by every instance that names it. The URL may hold
    /// a password, hence a [`Secret`].
    Redis(Secret),
}

/// `on_store_error`: what admission does while the shared store cannot be reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnStoreError {
    /// Serve, count locally, flush when the store is back.
    Allow,
    /// Answer 503 until the store is back.
    Deny,
}

/// One model's prices, US dollars per million tokens.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Price {
    pub input: f64,
    pub output: f64,
    pub cache_read: f64,
    pub cache_write: f64,
}

/// `[prices."MODEL"]`: exact model ids first, then `*`-suffix patterns, longest first.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Prices {
    exact: std::collections::HashMap<String, Price>,
    /// (prefix before the `*`, price), longest prefix first.
    patterns: Vec<(String, Price)>,
}

impl Prices {
    /// The price of `model`, if the table names it.
    pub fn of(&self, model: &str) -> Option<&Price> {
        self.exact.get(model).or_else(|| {
            self.patterns
                .iter()
                .find(|(prefix, _)| model.starts_with(prefix.as_str()))
                .map(|(_, price)| price)
        })
    }

    pub fn is_empty(&self) -> bool {
        self.exact.is_empty() && self.patterns.is_empty()
    }
}

/// `per`: whose window a quota counts in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Per {
    Caller,
    Group,
    Tag,
    All,
}

impl Per {
    pub fn name(self) -> &'static str {
        match self {
            Per::Caller => "caller",
            Per::Group => "group",
            Per::Tag => "tag",
            Per::All => "all",
        }
    }
}

/// A `[[quotas]]` entry. The match lists: `None` matches everything.
#[derive(Debug, Clone, PartialEq)]
pub struct Quota {
    pub name: String,
    pub groups: Option<Vec<String>>,
    pub callers: Option<Vec<String>>,
    pub routes: Option<Vec<String>>,
    pub models: Option<Vec<String>>,
    pub tags: Option<Vec<String>>,
    pub per: Per,
    pub limits: QuotaLimits,
}

/// What a quota allows in each window; at least one is set.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct QuotaLimits {
    pub requests_per_minute: Option<u64>,
    pub tokens_per_minute: Option<u64>,
    pub tokens_per_day: Option<u64>,
    pub spend_per_day: Option<f64>,
    pub spend_per_month: Option<f64>,
}

pub(super) fn read_usage(
    root: &mut Table,
    cx: &mut Checker,
    base_dir: Option<&std::path::Path>,
) -> UsageConfig {
    let mut usage = UsageConfig::default();
    let Some(mut table) = root.table(cx, "usage") else {
        return usage;
    };
    usage.log = table
        .string(cx, "log")
        .map(|p| ConfigPath::new(p.get_ref().trim(), base_dir));
    usage.state_dir = table
        .string(cx, "state_dir")
        .map(|p| ConfigPath::new(p.get_ref().trim(), base_dir));
    if let Some(text) = table.string(cx, "tag_header") {
        match HeaderName::from_str(text.get_ref().trim()) {
            Ok(name) if !crate::headers::is_never_forwarded(&name) => usage.tag_header = name,
            _ => cx.report(
                text.span(),
                format!("`{}` cannot be the tag header", text.get_ref()),
                format!(
                    "write a custom header name such as \"{DEFAULT_TAG_HEADER}\" (letters, digits and `-`)"
                ),
            ),
        }
    }
    if let Some(text) = table.string(cx, "store") {
        usage.store = store(cx, &text).unwrap_or(Store::Embedded);
    }
    if let Some(text) = table.string(cx, "on_store_error") {
        match text.get_ref().trim() {
            "allow" => usage.on_store_error = OnStoreError::Allow,
            "deny" => usage.on_store_error = OnStoreError::Deny,
            other => cx.report(
                text.span(),
                format!("`on_store_error = \"{other}\"` is not a choice"),
                "write \"allow\" (serve and count locally) or \"deny\" (503 until the store is back)"
                    .to_string(),
            ),
        }
    }
    table.finish(cx);
    usage
}

fn store(cx: &mut Checker, text: &Text) -> Option<Store> {
    let written = text.get_ref().trim();
    if written == "embedded" {
        return Some(Store::Embedded);
    }
    let scheme_ok = written.starts_with("redis://") || written.starts_with("rediss://");
    let parses = scheme_ok && written.parse::<http::Uri>().is_ok();
    if !parses {
        cx.report(
            text.span(),
            "`store` must be \"embedded\" or a Redis URL",
            "write \"redis://HOST:PORT/DB\" (or \"rediss://\" for TLS), or leave `store` out for the embedded store"
                .to_string(),
        );
        return None;
    }
    Some(Store::Redis(Secret::new(written)))
}

pub(super) fn read_prices(root: &mut Table, cx: &mut Checker) -> Prices {
    let mut prices = Prices::default();
    for (model, mut table) in root.named_tables(cx, "prices") {
        let mut get = |key| {
            table
                .number(cx, key, 0.0..=1_000_000.0)
                .map_or(0.0, |n| *n.get_ref())
        };
        let price = Price {
            input: get("input"),
            output: get("output"),
            cache_read: get("cache_read"),
            cache_write: get("cache_write"),
        };
        table.finish(cx);
        let name = model.get_ref().trim();
        match name.strip_suffix('*') {
            Some(prefix) if prefix.contains('*') => cx.report(
                model.span(),
                format!("`{name}` has a `*` before its end"),
                "write an exact model id, or one `*` at the end (\"claude-sonnet-4-*\")"
                    .to_string(),
            ),
            Some(prefix) => prices.patterns.push((prefix.to_string(), price)),
            None if name.contains('*') => cx.report(
                model.span(),
                format!("`{name}` has a `*` before its end"),
                "write an exact model id, or one `*` at the end (\"claude-sonnet-4-*\")"
                    .to_string(),
            ),
            None => {
                prices.exact.insert(name.to_string(), price);
            }
        }
    }
    prices
        .patterns
        .sort_by(|a, b| b.0.len().cmp(&a.0.len()).then(a.0.cmp(&b.0)));
    prices
}

pub(super) fn read_quotas(root: &mut Table, cx: &mut Checker) -> Vec<Quota> {
    let mut quotas: Vec<Quota> = Vec::new();
    for mut table in root.tables(cx, "quotas") {
        let span = table.span();
        let name = table.string(cx, "name");
        let mut list = |key| {
            table.strings(cx, key).map(|l| {
                l.into_inner()
                    .into_iter()
                    .map(|t| t.into_inner().trim().to_string())
                    .collect::<Vec<_>>()
            })
        };
        let (groups, callers, routes, models, tags) = (
            list("groups"),
            list("callers"),
            list("routes"),
            list("models"),
            list("tags"),
        );
        let per = table
            .string(cx, "per")
            .and_then(|text| match text.get_ref().trim() {
                "caller" => Some(Per::Caller),
                "group" => Some(Per::Group),
                "tag" => Some(Per::Tag),
                "all" => Some(Per::All),
                other => {
                    cx.report(
                        text.span(),
                        format!("`per = \"{other}\"` is not a choice"),
                        "write \"caller\", \"group\", \"tag\" or \"all\"".to_string(),
                    );
                    None
                }
            })
            .unwrap_or(Per::Caller);
        let mut count = |key| {
            table
                .integer(cx, key, 1..=u64::MAX >> 1)
                .map(|n| *n.get_ref())
        };
        let (requests_per_minute, tokens_per_minute, tokens_per_day) = (
            count("requests_per_minute"),
            count("tokens_per_minute"),
            count("tokens_per_day"),
        );
        let mut spend = |key| {
            table
                .number(cx, key, 0.000_001..=1e12)
                .map(|n| *n.get_ref())
        };
        let limits = QuotaLimits {
            requests_per_minute,
            tokens_per_minute,
            tokens_per_day,
            spend_per_day: spend("spend_per_day"),
            spend_per_month: spend("spend_per_month"),
        };
        table.finish(cx);
        let Some(name) = name else {
            cx.report(
                span,
                "a `[[quotas]]` entry has no `name`",
                "add `name = \"...\"`: it names the quota in 429 answers, `x-credproxy-quota` and metrics"
                    .to_string(),
            );
            continue;
        };
        if limits == QuotaLimits::default() {
            cx.report(
                name.span(),
                format!("quota `{}` sets no limit", name.get_ref()),
                "add one of `requests_per_minute`, `tokens_per_minute`, `tokens_per_day`, `spend_per_day`, `spend_per_month`"
                    .to_string(),
            );
        }
        let name_ok = !name.get_ref().is_empty()
            && name
                .get_ref()
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
        if !name_ok {
            cx.report(
                name.span(),
                format!("`{}` cannot name a quota", name.get_ref()),
                "use letters, digits, `-`, `_` and `.` (it goes into a header and metric labels)"
                    .to_string(),
            );
        }
        if quotas.iter().any(|q| q.name == *name.get_ref()) {
            cx.report(
                name.span(),
                format!("a second quota is named `{}`", name.get_ref()),
                "give each `[[quotas]]` entry its own name".to_string(),
            );
        }
        if per == Per::Group && groups.as_ref().is_some_and(|g| g.is_empty()) {
            cx.report(
                span.clone(),
                format!(
                    "quota `{}` counts per group but lists no group",
                    name.get_ref()
                ),
                "list the groups, or leave `groups` out to count in each of the caller's groups"
                    .to_string(),
            );
        }
        quotas.push(Quota {
            name: name.into_inner(),
            groups,
            callers,
            routes,
            models,
            tags,
            per,
            limits,
        });
    }
    quotas
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prices(text: &str) -> Prices {
        let mut cx = Checker::new(text);
        let document = crate::fields::parse_document(text, &mut cx).expect("parses");
        let mut root = Table::new(document.get_ref(), 0..0);
        let prices = read_prices(&mut root, &mut cx);
        assert!(cx.into_problems().is_empty());
        prices
    }

    /// Every problem of `text`'s `[usage]`, `[prices]` and `[[quotas]]`, as
    /// (line, column, message, hint).
    fn problems(text: &str) -> Vec<(usize, usize, String, String)> {
        let mut cx = Checker::new(text);
        let document = crate::fields::parse_document(text, &mut cx).expect("parses");
        let mut root = Table::new(document.get_ref(), 0..0);
        read_usage(&mut root, &mut cx, None);
        read_prices(&mut root, &mut cx);
        read_quotas(&mut root, &mut cx);
        cx.into_problems()
            .into_iter()
            .map(|p| (p.line, p.column, p.message, p.hint.unwrap_or_default()))
            .collect()
    }

    #[test]
    fn each_mistake_is_named_where_it_stands_with_what_to_write() {
        let found = problems(
            r#"[usage]
store = "postgres://db"
on_store_error = "maybe"
tag_header = "host"

[prices."claude-*-4"]
input = -1

[[quotas]]
name = "eng daily"
per = "team"
spend_per_day = 50
requests_per_hour = 10

[[quotas]]
groups = ["eng"]
tokens_per_day = 1000

[[quotas]]
name = "idle"
"#,
        );
        let at = |line: usize| {
            found
                .iter()
                .find(|p| p.0 == line)
                .unwrap_or_else(|| panic!("no problem on line {line}: {found:#?}"))
        };
        assert!(at(2).3.contains("redis://HOST:PORT/DB"), "{found:#?}");
        assert_eq!(at(2).1, 9);
        assert!(at(3).3.contains("\"allow\""), "{found:#?}");
        assert!(at(4).2.contains("cannot be the tag header"), "{found:#?}");
        assert!(at(6).3.contains("one `*` at the end"), "{found:#?}");
        assert!(at(7).2.contains("outside the allowed range"), "{found:#?}");
        assert!(at(10).3.contains("letters, digits"), "{found:#?}");
        assert!(at(11).3.contains("\"caller\", \"group\""), "{found:#?}");
        assert!(
            at(13).2.contains("unknown field `requests_per_hour`"),
            "{found:#?}"
        );
        assert!(at(13).2.contains("`requests_per_minute`"), "{found:#?}");
        assert!(at(15).2.contains("has no `name`"), "{found:#?}");
        assert!(at(20).2.contains("sets no limit"), "{found:#?}");
        assert!(at(20).3.contains("spend_per_month"), "{found:#?}");
    }

    #[test]
    fn an_exact_price_wins_over_a_pattern_and_the_longest_pattern_over_a_shorter() {
        let prices = prices(
            r#"
            [prices."claude-*"]
            input = 1
            [prices."claude-sonnet-*"]
            input = 3
            [prices."claude-sonnet-4-5"]
            input = 3.5
            "#,
        );
        assert_eq!(prices.of("claude-sonnet-4-5").unwrap().input, 3.5);
        assert_eq!(prices.of("claude-sonnet-4-6").unwrap().input, 3.0);
        assert_eq!(prices.of("claude-haiku-4-5").unwrap().input, 1.0);
        assert!(prices.of("gpt-4o").is_none());
    }
}
