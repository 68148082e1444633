//! `credproxy usage`: asks the running credproxy (its admin listener) for `/usage` and
//! prints one dimension's totals as a table, largest spend first — by default by caller;
//! `--tag T` for one benchmark run's or project's requests.

use std::process::ExitCode;

use serde_json::Value;

use super::status::{admin_addr, fetch_admin};
use super::table::table;
use crate::config::Resolved;

/// What to break the totals down by and for which window.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum By {
    Caller,
    Group,
    Tag,
    Route,
    Model,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum WindowArg {
    Minute,
    Day,
    Month,
}

pub async fn run(resolved: &Resolved, by: By, tag: Option<&str>, window: WindowArg) -> ExitCode {
    if by == By::Tag && tag.is_some() {
        return super::failed(
            "`--tag` already keeps one tag's requests: break them down with `--by caller`, `group`, `route` or `model`",
        );
    }
    let addr = match admin_addr(resolved, "usage") {
        Ok(addr) => addr,
        Err(error) => return super::failed(error),
    };
    let window = match window {
        WindowArg::Minute => "minute",
        WindowArg::Day => "day",
        WindowArg::Month => "month",
    };
    let mut path = format!("/usage?window={window}");
    if let Some(tag) = tag {
        let encoded: String = form_urlencoded::byte_serialize(tag.as_bytes()).collect();
        path.push_str(&format!("&tag={encoded}"));
    }
    match fetch_admin(addr, &path).await {
        Ok(report) => {
            print!("{}", format_usage(&report, by));
            ExitCode::SUCCESS
        }
        Err(error) => super::failed(error),
    }
}

/// The report's `by` dimension as a table with a total line.
pub fn format_usage(report: &Value, by: By) -> String {
    let dimension = match by {
        By::Caller => "caller",
        By::Group => "group",
        By::Tag => "tag",
        By::Route => "route",
        By::Model => "model",
    };
    let row = |name: &str, t: &Value| {
        let n = |key: &str| t[key].as_u64().unwrap_or(0).to_string();
        vec![
            name.to_string(),
            n("requests"),
            n("input_tokens"),
            n("output_tokens"),
            n("cache_creation_input_tokens"),
            n("cache_read_input_tokens"),
            format!("{:.4}", t["cost_usd"].as_f64().unwrap_or(0.0)),
        ]
    };
    let mut rows: Vec<(f64, Vec<String>)> = report["by"][dimension]
        .as_object()
        .into_iter()
        .flatten()
        .map(|(name, t)| (t["cost_usd"].as_f64().unwrap_or(0.0), row(name, t)))
        .collect();
    rows.sort_by(|a, b| b.0.total_cmp(&a.0).then_with(|| a.1[0].cmp(&b.1[0])));
    let mut rows: Vec<Vec<String>> = rows.into_iter().map(|(_, r)| r).collect();
    rows.push(row("(total)", &report["total"]));
    let title = match report["tag"].as_str() {
        Some(tag) => format!("tag {tag}, "),
        None => String::new(),
    };
    let mut out = format!(
        "Usage ({title}{} {}, store: {})\n",
        report["window"].as_str().unwrap_or("?"),
        report["period"].as_str().unwrap_or("?"),
        report["store"].as_str().unwrap_or("?"),
    );
    out.push_str(&table(
        &[
            &dimension.to_uppercase(),
            "REQUESTS",
            "INPUT",
            "OUTPUT",
            "CACHE_WRITE",
            "CACHE_READ",
            "COST_USD",
        ],
        &rows,
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_lists_the_biggest_spender_first_and_a_total() {
        let report = serde_json::json!({
            "window": "day", "period": "2026-12-07", "tag": null, "store": "embedded",
            "total": {"requests": 3, "cost_usd": 0.5},
            "by": {"caller": {
                "a@example.com": {"requests": 1, "input_tokens": 10, "cost_usd": 0.1},
                "b@example.com": {"requests": 2, "input_tokens": 20, "cost_usd": 0.4},
            }},
        });
        let text = format_usage(&report, By::Caller);
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[0].contains("day 2026-12-07"), "{text}");
        assert!(lines[1].starts_with("CALLER"), "{text}");
        assert!(lines[2].starts_with("b@example.com"), "{text}");
        assert!(lines[3].starts_with("a@example.com"), "{text}");
        assert!(
            lines[4].starts_with("(total)") && lines[4].ends_with("0.5000"),
            "{text}"
        );
    }
}
