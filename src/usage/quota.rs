//! Which `[[quotas]]` a request falls under, in whose window, and whether that window
//! has room. A window is full once its use has reached the limit: a request is admitted
//! while use (plus what requests in flight have reserved) is below it.

use std::time::Duration;

use crate::config::usage::{Per, Quota};

use super::counters::Totals;
use super::scope::{Facts, Scope};
use super::window::{self, Window};

/// One quota window a request is counted in: the quota (by index) and its subject's
/// scope (`quota=NAME/group=eng`).
#[derive(Debug, Clone)]
pub struct Charged {
    pub quota: usize,
    pub scope: Scope,
}

/// Why a request is refused: the quota, the window that is spent and when it frees.
#[derive(Debug, Clone)]
pub struct Spent {
    pub quota: String,
    pub limit: String,
    pub frees_in: Duration,
}

/// The windows of `quotas` that `facts` falls under.
pub fn windows(quotas: &[Quota], facts: &Facts) -> Vec<Charged> {
    let mut charged = Vec::new();
    for (index, quota) in quotas.iter().enumerate() {
        if !matches(quota, facts) {
            continue;
        }
        let subjects: Vec<String> = match quota.per {
            Per::Caller => vec![format!("caller={}", facts.caller)],
            Per::All => vec!["all".to_string()],
            Per::Tag => facts.tag.iter().map(|t| format!("tag={t}")).collect(),
            Per::Group => facts
                .groups
                .iter()
                .filter(|g| quota.groups.as_ref().is_none_or(|list| list.contains(g)))
                .map(|g| format!("group={g}"))
                .collect(),
        };
        for subject in subjects {
            charged.push(Charged {
                quota: index,
                scope: Scope::from(format!("quota={}/{subject}", quota.name)),
            });
        }
    }
    charged
}

fn matches(quota: &Quota, facts: &Facts) -> bool {
    let one_of = |list: &Option<Vec<String>>, value: Option<&str>| {
        list.as_ref()
            .is_none_or(|list| value.is_some_and(|v| list.iter().any(|l| pattern(l, v))))
    };
    let groups_ok = quota
        .groups
        .as_ref()
        .is_none_or(|list| facts.groups.iter().any(|g| list.contains(g)));
    groups_ok
        && one_of(&quota.callers, Some(&facts.caller))
        && one_of(&quota.routes, Some(&facts.route))
        && one_of(&quota.models, facts.model.as_deref())
        && one_of(&quota.tags, facts.tag.as_deref())
}

/// `claude-sonnet-*` matches by prefix; anything else exactly.
fn pattern(written: &str, value: &str) -> bool {
    match written.strip_suffix('*') {
        Some(prefix) => value.starts_with(prefix),
        None => written == value,
    }
}

/// The use a window holds, split as the check needs it.
pub struct Use {
    /// Counted (here and, with a shared store, elsewhere) in each window.
    pub minute: Totals,
    pub day: Totals,
    pub month: Totals,
    /// Reserved by requests in flight (tokens, dollars).
    pub reserved_tokens: u64,
    pub reserved_cost: f64,
}

/// Checks one window of `quota` against its use at `second`; `minute_frees_in` tells
/// when a per-minute limit frees (it needs the per-second counts).
pub fn check(
    quota: &Quota,
    used: &Use,
    second: u64,
    minute_frees_in: impl Fn(u64, fn(&Totals) -> u64) -> u64,
) -> Result<(), Spent> {
    let limits = &quota.limits;
    let spent = |limit: String, frees_in: Duration| Spent {
        quota: quota.name.clone(),
        limit,
        frees_in,
    };
    if let Some(limit) = limits.requests_per_minute
        && used.minute.requests >= limit
    {
        let wait = minute_frees_in(limit, |t| t.requests);
        return Err(spent(
            format!("{limit} requests per minute"),
            Duration::from_secs(wait),
        ));
    }
    if let Some(limit) = limits.tokens_per_minute
        && used.minute.tokens() + used.reserved_tokens >= limit
    {
        let wait = minute_frees_in(limit.saturating_sub(used.reserved_tokens), Totals::tokens);
        return Err(spent(
            format!("{limit} tokens per minute"),
            Duration::from_secs(wait),
        ));
    }
    if let Some(limit) = limits.tokens_per_day
        && used.day.tokens() + used.reserved_tokens >= limit
    {
        return Err(spent(
            format!("{limit} tokens per day (UTC)"),
            window::until_next_day(second),
        ));
    }
    if let Some(limit) = limits.spend_per_day
        && used.day.cost_usd + used.reserved_cost >= limit
    {
        return Err(spent(
            format!("${limit} per day (UTC)"),
            window::until_next_day(second),
        ));
    }
    if let Some(limit) = limits.spend_per_month
        && used.month.cost_usd + used.reserved_cost >= limit
    {
        return Err(spent(
            format!("${limit} per month (UTC)"),
            window::until_next_month(second),
        ));
    }
    Ok(())
}

/// Which windows a quota needs to see (a shared store refreshes only those).
pub fn needs(quota: &Quota, window: Window) -> bool {
    let l = &quota.limits;
    match window {
        Window::Minute => l.requests_per_minute.is_some() || l.tokens_per_minute.is_some(),
        Window::Day => l.tokens_per_day.is_some() || l.spend_per_day.is_some(),
        Window::Month => l.spend_per_month.is_some(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::usage::QuotaLimits;

    fn quota(per: Per, groups: Option<&[&str]>, models: Option<&[&str]>) -> Quota {
        let list = |l: Option<&[&str]>| l.map(|l| l.iter().map(|s| s.to_string()).collect());
        Quota {
            name: "q".into(),
            groups: list(groups),
            callers: None,
            routes: None,
            models: list(models),
            tags: None,
            per,
            limits: QuotaLimits {
                requests_per_minute: Some(1),
                ..Default::default()
            },
        }
    }

    fn facts(groups: &[&str], model: Option<&str>) -> Facts {
        Facts {
            caller: "alice@example.com".into(),
            groups: groups.iter().map(|s| s.to_string()).collect(),
            tag: None,
            route: "/anthropic".into(),
            model: model.map(str::to_string),
        }
    }

    #[test]
    fn a_caller_in_two_matching_groups_is_charged_in_each() {
        let quotas = [quota(Per::Group, Some(&["eng", "ml"]), None)];
        let scopes: Vec<String> = windows(&quotas, &facts(&["eng", "ml", "sales"], None))
            .into_iter()
            .map(|c| c.scope.to_string())
            .collect();
        assert_eq!(scopes, ["quota=q/group=eng", "quota=q/group=ml"]);
        assert!(windows(&quotas, &facts(&["sales"], None)).is_empty());
    }

    #[test]
    fn a_model_pattern_matches_by_prefix_and_an_unknown_model_matches_no_list() {
        let quotas = [quota(Per::Caller, None, Some(&["claude-opus-*"]))];
        assert_eq!(
            windows(&quotas, &facts(&[], Some("claude-opus-4-5"))).len(),
            1
        );
        assert!(windows(&quotas, &facts(&[], Some("claude-haiku-4-5"))).is_empty());
        assert!(windows(&quotas, &facts(&[], None)).is_empty());
        let all = [quota(Per::All, None, None)];
        assert_eq!(
            windows(&all, &facts(&[], None))[0].scope.to_string(),
            "quota=q/all"
        );
    }
}
