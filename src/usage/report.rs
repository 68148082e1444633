//! `GET /usage` (admin listener) and `credproxy usage`: the current window's totals by
//! caller, group, tag, route and model — all requests, or one tag's (a benchmark run).

use std::collections::BTreeMap;

use serde_json::{Value, json};

use super::counters::Totals;
use super::scope::Scope;
use super::window::{self, Window};

/// The dimensions a report breaks totals down by.
pub const DIMENSIONS: [&str; 5] = ["caller", "group", "tag", "route", "model"];

/// The report of `scopes` (every report scope's totals in `window`, at `second`); with
/// `tag`, only that tag's requests.
pub fn build(scopes: &[(Scope, Totals)], window: Window, second: u64, tag: Option<&str>) -> Value {
    let mut by: BTreeMap<&str, BTreeMap<&str, Totals>> =
        DIMENSIONS.iter().map(|d| (*d, BTreeMap::new())).collect();
    let mut quotas: BTreeMap<&str, Totals> = BTreeMap::new();
    for (scope, totals) in scopes {
        if let Some(subject) = scope.as_str().strip_prefix("quota=") {
            if tag.is_none() {
                quotas.insert(subject, *totals);
            }
            continue;
        }
        let Some((scope_tag, dimension, value)) = scope.split() else {
            continue;
        };
        if scope_tag != tag || (tag.is_some() && dimension == "tag") {
            continue;
        }
        if let Some(values) = by.get_mut(dimension) {
            values.entry(value).or_default().add(totals);
        }
    }
    // Every answered request is counted once per route: their sum is the total.
    let mut total = Totals::default();
    for totals in by["route"].values() {
        total.add(totals);
    }
    if tag.is_some() {
        by.remove("tag");
    }
    let day = window::day_of(second);
    let period = match window {
        Window::Minute => "the last 60 seconds".to_string(),
        Window::Day => window::day_label(day),
        Window::Month => window::month_label(window::month_of_day(day)),
    };
    json!({
        "window": window.name(),
        "period": period,
        "tag": tag,
        "total": total,
        "by": by,
        "quotas": quotas,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn totals(requests: u64, cost: f64) -> Totals {
        Totals {
            requests,
            cost_usd: cost,
            ..Totals::default()
        }
    }

    #[test]
    fn a_tag_report_holds_that_tag_alone() {
        let scopes: Vec<(Scope, Totals)> = [
            ("route=/a", totals(3, 0.3)),
            ("caller=local", totals(3, 0.3)),
            ("tag=run-1", totals(2, 0.2)),
            ("tag=run-1/route=/a", totals(2, 0.2)),
            ("tag=run-1/model=m", totals(2, 0.2)),
            ("quota=q/all", totals(3, 0.3)),
        ]
        .into_iter()
        .map(|(s, t)| (Scope::from(s.to_string()), t))
        .collect();
        let all = build(&scopes, Window::Day, 86_400 * 3, None);
        assert_eq!(all["total"]["requests"], 3);
        assert_eq!(all["by"]["tag"]["run-1"]["requests"], 2);
        assert_eq!(all["quotas"]["q/all"]["requests"], 3);
        assert_eq!(all["period"], "1970-01-04");
        let run = build(&scopes, Window::Day, 86_400 * 3, Some("run-1"));
        assert_eq!(run["total"]["requests"], 2);
        assert_eq!(run["by"]["model"]["m"]["cost_usd"], 0.2);
        assert!(run["by"].get("tag").is_none());
    }
}
