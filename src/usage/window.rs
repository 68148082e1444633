//! The three windows usage is counted in, in UTC: the sliding minute (sixty one-second
//! buckets, so a per-minute quota frees second by second), the calendar day and the
//! calendar month — as the providers' own rate limits and invoices count.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

/// Which window a question is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Window {
    Minute,
    Day,
    Month,
}

impl Window {
    pub fn name(self) -> &'static str {
        match self {
            Window::Minute => "minute",
            Window::Day => "day",
            Window::Month => "month",
        }
    }

    pub fn parse(text: &str) -> Option<Window> {
        match text {
            "minute" => Some(Window::Minute),
            "day" => Some(Window::Day),
            "month" => Some(Window::Month),
            _ => None,
        }
    }
}

/// Seconds since the Unix epoch.
pub fn epoch_seconds(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs()
}

/// The day number (days since 1970-01-01, UTC) of `second`.
pub fn day_of(second: u64) -> u32 {
    (second / 86_400) as u32
}

/// The month number (`year * 12 + month - 1`) of a day number.
pub fn month_of_day(day: u32) -> u32 {
    let (year, month, _) = civil_from_days(day as i64);
    (year * 12 + month as i64 - 1) as u32
}

/// `2026-12-07`.
pub fn day_label(day: u32) -> String {
    let (year, month, dom) = civil_from_days(day as i64);
    format!("{year:04}-{month:02}-{dom:02}")
}

/// `2026-12`.
pub fn month_label(month: u32) -> String {
    format!("{:04}-{:02}", month / 12, month % 12 + 1)
}

/// How long from `second` until the next UTC midnight.
pub fn until_next_day(second: u64) -> Duration {
    Duration::from_secs(86_400 - second % 86_400)
}

/// How long from `second` until the first of the next UTC month.
pub fn until_next_month(second: u64) -> Duration {
    let month = month_of_day(day_of(second)) + 1;
    let (year, month) = ((month / 12) as i64, month % 12 + 1);
    let start = days_from_civil(year, month, 1) as u64 * 86_400;
    Duration::from_secs(start.saturating_sub(second))
}

/// (year, month 1-12, day 1-31) of a day number: Howard Hinnant's `civil_from_days`
/// (public domain), exact for the proleptic Gregorian calendar.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// The day number of (year, month 1-12, day 1-31): Hinnant's `days_from_civil`.
fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let yoe = year.rem_euclid(400);
    let month = month as i64;
    let doy = (153 * (if month > 2 { month - 3 } else { month + 9 }) + 2) / 5 + day as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calendar_days_and_months_match_known_dates() {
        // 2026-12-07T00:09:53Z.
        let second = 1_796_602_193;
        assert_eq!(day_label(day_of(second)), "2026-12-07");
        assert_eq!(month_label(month_of_day(day_of(second))), "2026-12");
        assert_eq!(day_label(0), "1970-01-01");
        assert_eq!(day_label(days_from_civil(2024, 2, 29) as u32), "2024-02-29");
        // The month after December is January of the next year.
        let to_january = until_next_month(second);
        let next = second + to_january.as_secs();
        assert_eq!(day_label(day_of(next)), "2027-01-01");
        assert_eq!(next % 86_400, 0);
        assert_eq!(until_next_day(second).as_secs(), 86_400 - 593);
    }

    #[test]
    fn every_day_of_four_centuries_round_trips() {
        for day in (-146_097 * 2)..(146_097 * 2) {
            let (y, m, d) = civil_from_days(day);
            assert_eq!(days_from_civil(y, m, d), day);
        }
    }
}
