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
    /// Not spent yet: what is left is held by requests in flight, and frees when they end.
    pub in_flight: bool,
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
/// when a per-minute limit frees (it needs the per-second counts). A window that only
/// requests in flight fill (their reservations) frees when one of them ends: the wait
/// said is a second, not the window's end.
pub fn check(
    quota: &Quota,
    used: &Use,
    second: u64,
    minute_frees_in: impl Fn(u64, fn(&Totals) -> u64) -> u64,
) -> Result<(), Spent> {
    let limits = &quota.limits;
    let spent = |limit: String, frees_in: Duration, in_flight: bool| Spent {
        quota: quota.name.clone(),
        limit,
        frees_in,
        in_flight,
    };
    let held = Duration::from_secs(1);
    if let Some(limit) = limits.requests_per_minute
        && used.minute.requests >= limit
    {
        let wait = minute_frees_in(limit, |t| t.requests);
        let text = format!("{limit} requests per minute");
        return Err(spent(text, Duration::from_secs(wait), false));
    }
    let tokens = |t: &Totals| t.tokens();
    let windows = [
        (
            limits.tokens_per_minute,
            tokens(&used.minute),
            Window::Minute,
        ),
        (limits.tokens_per_day, tokens(&used.day), Window::Day),
    ];
    for (limit, committed, window) in windows {
        let Some(limit) = limit else { continue };
        if committed + used.reserved_tokens < limit {
            continue;
        }
        let (text, wait) = match window {
            Window::Minute => (
                format!("{limit} tokens per minute"),
                Duration::from_secs(minute_frees_in(limit, Totals::tokens)),
            ),
            _ => (
                format!("{limit} tokens per day (UTC)"),
                window::until_next_day(second),
            ),
        };
        return Err(match committed >= limit {
            true => spent(text, wait, false),
            false => spent(text, held, true),
        });
    }
    let spend = [
        (
            limits.spend_per_day,
            used.day.cost_usd,
            "day",
            window::until_next_day(second),
        ),
        (
            limits.spend_per_month,
            used.month.cost_usd,
            "month",
            window::until_next_month(second),
        ),
    ];
    for (limit, committed, name, wait) in spend {
        let Some(limit) = limit else { continue };
        if committed + used.reserved_cost < limit {
            continue;
        }
        let text = format!("${limit} per {name} (UTC)");
        return Err(match committed >= limit {
            true => spent(text, wait, false),
            false => spent(text, held, true),
        });
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
    fn a_window_only_reservations_fill_frees_in_a_second_and_a_spent_one_at_its_end() {
        let mut daily = quota(Per::Caller, None, None);
        daily.limits = QuotaLimits {
            tokens_per_day: Some(1000),
            ..Default::default()
        };
        let used = |committed: u64, reserved: u64| Use {
            minute: Totals::default(),
            day: Totals {
                input_tokens: committed,
                ..Totals::default()
            },
            month: Totals::default(),
            reserved_tokens: reserved,
            reserved_cost: 0.0,
        };
        let noon = 86_400 * 20_000 + 43_200;
        let never = |_: u64, _: fn(&Totals) -> u64| 60;
        assert!(
            check(&daily, &used(999, 0), noon, never).is_ok(),
            "below: admitted"
        );
        let full = check(&daily, &used(1000, 0), noon, never).unwrap_err();
        assert!(!full.in_flight);
        assert_eq!(
            full.frees_in.as_secs(),
            43_200,
            "at the limit: until midnight"
        );
        let held = check(&daily, &used(600, 400), noon, never).unwrap_err();
        assert!(held.in_flight, "only reservations fill it");
        assert_eq!(held.frees_in.as_secs(), 1);
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
