//! What is counted for one scope (a caller, a group, a tag, a route, a model, or one
//! quota's subject) in each window, and what requests in flight have reserved.

use serde::{Deserialize, Serialize};

use super::window::{self, Window};

/// Sums over some requests. `tokens()` is what token quotas count: input, output and
/// cache writes; cache reads count toward spend only, as the providers' rate limits do.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Totals {
    pub requests: u64,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cache_creation_input_tokens: u64,
    pub cache_read_input_tokens: u64,
    pub cost_usd: f64,
    /// Requests whose answer carried no usage.
    #[serde(default)]
    pub unknown_tokens: u64,
    /// Requests for a model with no price.
    #[serde(default)]
    pub unpriced: u64,
}

impl Totals {
    pub fn tokens(&self) -> u64 {
        self.input_tokens + self.output_tokens + self.cache_creation_input_tokens
    }

    pub fn add(&mut self, other: &Totals) {
        self.requests += other.requests;
        self.input_tokens += other.input_tokens;
        self.output_tokens += other.output_tokens;
        self.cache_creation_input_tokens += other.cache_creation_input_tokens;
        self.cache_read_input_tokens += other.cache_read_input_tokens;
        self.cost_usd += other.cost_usd;
        self.unknown_tokens += other.unknown_tokens;
        self.unpriced += other.unpriced;
    }

    pub fn is_zero(&self) -> bool {
        *self == Totals::default()
    }
}

/// One scope's counters.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Series {
    /// (second, totals) for the last sixty seconds; a slot is reused when its second is
    /// more than a minute old.
    #[serde(skip)]
    minute: Vec<(u64, Totals)>,
    pub day: (u32, Totals),
    pub month: (u32, Totals),
}

impl Series {
    /// Adds `totals` as of `second`.
    pub fn charge(&mut self, second: u64, totals: &Totals) {
        self.charge_second(second, totals);
        let day = window::day_of(second);
        if self.day.0 != day {
            self.day = (day, Totals::default());
        }
        self.day.1.add(totals);
        let month = window::month_of_day(day);
        if self.month.0 != month {
            self.month = (month, Totals::default());
        }
        self.month.1.add(totals);
    }

    /// Adds back counts taken for a shared store that did not take them.
    pub fn merge(&mut self, taken: &Series) {
        for (second, totals) in taken.seconds() {
            self.charge_second(*second, totals);
        }
        for (mine, theirs) in [(&mut self.day, &taken.day), (&mut self.month, &taken.month)] {
            if mine.0 == theirs.0 {
                mine.1.add(&theirs.1);
            } else if mine.1.is_zero() {
                *mine = *theirs;
            }
        }
    }

    fn charge_second(&mut self, second: u64, totals: &Totals) {
        if self.minute.is_empty() {
            self.minute = vec![(0, Totals::default()); 60];
        }
        let slot = &mut self.minute[(second % 60) as usize];
        if slot.0 > second {
            // A minute older than what the slot holds now: over already.
            return;
        }
        if slot.0 != second {
            *slot = (second, Totals::default());
        }
        slot.1.add(totals);
    }

    /// The sums in `window` as of `second`.
    pub fn in_window(&self, window: Window, second: u64) -> Totals {
        match window {
            Window::Minute => {
                let mut sum = Totals::default();
                for (at, totals) in &self.minute {
                    if *at + 60 > second && *at <= second {
                        sum.add(totals);
                    }
                }
                sum
            }
            Window::Day if self.day.0 == window::day_of(second) => self.day.1,
            Window::Month if self.month.0 == window::month_of_day(window::day_of(second)) => {
                self.month.1
            }
            Window::Day | Window::Month => Totals::default(),
        }
    }

    /// Seconds until the minute window's use of `measure` falls below `limit`, when
    /// `carried` (from elsewhere: other instances, requests in flight) stays as it is.
    pub fn minute_frees_in(
        &self,
        second: u64,
        carried: u64,
        limit: u64,
        measure: impl Fn(&Totals) -> u64,
    ) -> u64 {
        let mut live: Vec<&(u64, Totals)> = self
            .minute
            .iter()
            .filter(|(at, _)| *at + 60 > second && *at <= second)
            .collect();
        live.sort_by_key(|(at, _)| *at);
        let mut use_now: u64 = carried + live.iter().map(|(_, t)| measure(t)).sum::<u64>();
        for (at, totals) in live {
            if use_now < limit {
                break;
            }
            use_now -= measure(totals);
            if use_now < limit {
                return at + 60 - second;
            }
        }
        60
    }

    /// The counters of `minute`s that are over, and of past days and months, cleared; true
    /// when nothing is left (the series can be dropped).
    pub fn prune(&mut self, second: u64) -> bool {
        for slot in &mut self.minute {
            if slot.0 + 60 <= second {
                *slot = (0, Totals::default());
            }
        }
        let today = window::day_of(second);
        if self.day.0 != today {
            self.day = (today, Totals::default());
        }
        let month = window::month_of_day(today);
        if self.month.0 != month {
            self.month = (month, Totals::default());
        }
        if self.minute.iter().all(|(_, t)| t.is_zero()) {
            // A ring is 60 slots: a scope idle for a minute gives it back.
            self.minute = Vec::new();
        }
        self.minute.is_empty() && self.month.1.is_zero()
    }

    /// Whether nothing at all is counted (in any window, of any age).
    pub fn is_empty(&self) -> bool {
        self.minute.iter().all(|(_, t)| t.is_zero())
            && self.day.1.is_zero()
            && self.month.1.is_zero()
    }

    /// The day's and month's counts without the minute's seconds (what the state file
    /// keeps).
    pub fn calendar(&self) -> Series {
        Series {
            minute: Vec::new(),
            day: self.day,
            month: self.month,
        }
    }

    /// Takes the counts made since the last take (to send them to a shared store),
    /// leaving this series empty: per second for the minute, and the day and month.
    pub fn take(&mut self) -> Series {
        std::mem::take(self)
    }

    /// The per-second counts of the minute window, oldest first.
    pub fn seconds(&self) -> impl Iterator<Item = &(u64, Totals)> {
        self.minute.iter().filter(|(_, t)| !t.is_zero())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(tokens: u64) -> Totals {
        Totals {
            requests: 1,
            input_tokens: tokens,
            ..Totals::default()
        }
    }

    #[test]
    fn the_minute_slides_by_the_second_and_the_day_turns_at_midnight() {
        let mut series = Series::default();
        let midnight = 86_400 * 20_000;
        series.charge(midnight - 30, &one(10));
        series.charge(midnight - 1, &one(5));
        assert_eq!(series.in_window(Window::Minute, midnight).input_tokens, 15);
        assert_eq!(series.in_window(Window::Day, midnight).input_tokens, 0);
        assert_eq!(series.in_window(Window::Day, midnight - 1).input_tokens, 15);
        assert_eq!(
            series.in_window(Window::Minute, midnight + 30).input_tokens,
            5
        );
        assert_eq!(
            series.in_window(Window::Minute, midnight + 59).input_tokens,
            0
        );
    }

    #[test]
    fn the_minute_frees_when_enough_old_seconds_have_slid_out() {
        let mut series = Series::default();
        series.charge(1_000, &one(10));
        series.charge(1_020, &one(10));
        series.charge(1_040, &one(10));
        // At 1_050 the minute holds 30; below 25 once the second 1_000 leaves (at 1_060).
        assert_eq!(series.minute_frees_in(1_050, 0, 25, |t| t.input_tokens), 10);
        // Below 15 once 1_020 leaves too (at 1_080).
        assert_eq!(series.minute_frees_in(1_050, 0, 15, |t| t.input_tokens), 30);
        // Carried use that never leaves: the whole minute.
        assert_eq!(
            series.minute_frees_in(1_050, 100, 25, |t| t.input_tokens),
            60
        );
    }
}
