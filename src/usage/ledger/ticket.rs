//! A request admitted: what it reserved in its quota windows, and its record, finished
//! when the answer ends — or, when the client goes away before any answer (the request's
//! task is dropped), as a `499` cut by the client.

use std::sync::Arc;
use std::time::SystemTime;

use crate::usage::counters::Totals;
use crate::usage::meter::Tokens;
use crate::usage::quota::Charged;
use crate::usage::record::Record;
use crate::usage::scope::Facts;
use crate::usage::window;

use super::Ledger;

#[derive(Debug)]
pub struct Ticket {
    ledger: Arc<Ledger>,
    pub facts: Facts,
    pub(super) charged: Vec<Charged>,
    /// Reserved in each charged window: tokens, dollars.
    pub(super) reserved: (u64, f64),
    arrived: SystemTime,
    open: bool,
}

/// How a request ended.
#[derive(Debug, Default)]
pub struct Outcome {
    pub status: u16,
    pub tokens: Option<Tokens>,
    pub retried: bool,
    pub upstream_request_id: Option<String>,
    pub cut: Option<&'static str>,
}

/// The status a request's record gets when its client left before any answer (nginx's
/// "client closed request").
const CLIENT_LEFT: u16 = 499;

impl Ticket {
    pub(super) fn new(
        ledger: Arc<Ledger>,
        facts: Facts,
        charged: Vec<Charged>,
        arrived: SystemTime,
    ) -> Ticket {
        Ticket {
            ledger,
            facts,
            charged,
            reserved: (0, 0.0),
            arrived,
            open: true,
        }
    }

    /// Refused at admission: a record, no charge.
    pub(super) fn refused(&mut self, status: u16, quota: Option<String>) {
        self.open = false;
        if let Some(log) = &self.ledger.rules.load().log {
            log.write(&refusal_record(&self.facts, status, quota, self.arrived));
        }
    }

    /// Charges what the answer used in every scope of the request, releases the
    /// reservations and writes the record.
    pub fn finish(mut self, outcome: Outcome) {
        self.settle(outcome);
    }

    fn settle(&mut self, outcome: Outcome) {
        self.open = false;
        let ledger = Arc::clone(&self.ledger);
        let rules = ledger.rules.load();
        let ended = SystemTime::now();
        let second = window::epoch_seconds(ended);
        let model = self.facts.model.as_deref();
        let cost = outcome
            .tokens
            .as_ref()
            .and_then(|t| super::cost(&rules.prices, model, t));
        let tokens = outcome.tokens.unwrap_or_default();
        let used = Totals {
            requests: 0,
            input_tokens: tokens.input,
            output_tokens: tokens.output,
            cache_creation_input_tokens: tokens.cache_creation,
            cache_read_input_tokens: tokens.cache_read,
            cost_usd: cost.unwrap_or(0.0),
            unknown_tokens: u64::from(outcome.tokens.is_none()),
            unpriced: u64::from(outcome.tokens.is_some() && cost.is_none()),
        };
        let counted = Totals {
            requests: 1,
            ..used
        };
        // Only a model that answered with usage is named; others count as `unknown` or,
        // past the first 200, `other` (a model name comes from the client).
        let model_named = match outcome.tokens {
            Some(_) => ledger.model_named(model),
            None => "unknown".to_string(),
        };
        // Built before the book is locked: the lock covers the additions only.
        let scopes = self.facts.report_scopes(&model_named);
        {
            let mut book = ledger.book();
            for charged in &self.charged {
                let entry = book.entries.entry(charged.scope.clone()).or_default();
                entry.reserved_tokens = entry.reserved_tokens.saturating_sub(self.reserved.0);
                entry.reserved_cost = (entry.reserved_cost - self.reserved.1).max(0.0);
                entry.local.charge(second, &used);
                if outcome.tokens.is_some() {
                    let this = (used.tokens() as f64, used.cost_usd);
                    entry.average = Some(match entry.average {
                        None => this,
                        Some((t, c)) => (0.8 * t + 0.2 * this.0, 0.8 * c + 0.2 * this.1),
                    });
                }
            }
            for scope in scopes {
                book.entries
                    .entry(scope)
                    .or_default()
                    .local
                    .charge(second, &counted);
            }
            book.dirty = true;
        }
        if outcome.tokens.is_some() {
            self.count_metrics(&model_named, &tokens, cost);
        }
        if let Some(log) = &rules.log {
            let known = |n: u64| outcome.tokens.is_some().then_some(n);
            log.write(&Record {
                time: rfc3339(self.arrived),
                caller: self.facts.caller.clone(),
                groups: self.facts.groups.clone(),
                tag: self.facts.tag.clone(),
                route: self.facts.route.clone(),
                model: self.facts.model.clone(),
                status: outcome.status,
                input_tokens: known(tokens.input),
                output_tokens: known(tokens.output),
                cache_creation_input_tokens: known(tokens.cache_creation),
                cache_read_input_tokens: known(tokens.cache_read),
                cost_usd: used.cost_usd,
                unpriced: used.unpriced == 1,
                tokens_unknown: outcome.tokens.is_none(),
                duration_ms: ended
                    .duration_since(self.arrived)
                    .unwrap_or_default()
                    .as_millis() as u64,
                retried: outcome.retried,
                upstream_request_id: outcome.upstream_request_id,
                quota: None,
                cut: outcome.cut,
            });
        }
    }

    fn count_metrics(&self, model: &str, tokens: &Tokens, cost: Option<f64>) {
        let counters = self.ledger.counters(&self.facts.route, model);
        let counts = [
            tokens.input,
            tokens.output,
            tokens.cache_creation,
            tokens.cache_read,
        ];
        for (counter, n) in counters.tokens.iter().zip(counts) {
            counter.inc_by(n);
        }
        if let Some(cost) = cost {
            counters.spend.inc_by(cost);
        }
    }
}

impl Drop for Ticket {
    /// Still open: the request's task was dropped before it had an answer (its client
    /// went away); the upstream may still bill it, so it is recorded.
    fn drop(&mut self) {
        if self.open {
            self.settle(Outcome {
                status: CLIENT_LEFT,
                cut: Some("client"),
                ..Outcome::default()
            });
        }
    }
}

/// The record of a request refused before it reached the upstream.
pub(super) fn refusal_record(
    facts: &Facts,
    status: u16,
    quota: Option<String>,
    arrived: SystemTime,
) -> Record {
    Record {
        time: rfc3339(arrived),
        caller: facts.caller.clone(),
        groups: facts.groups.clone(),
        tag: facts.tag.clone(),
        route: facts.route.clone(),
        model: facts.model.clone(),
        status,
        input_tokens: None,
        output_tokens: None,
        cache_creation_input_tokens: None,
        cache_read_input_tokens: None,
        cost_usd: 0.0,
        unpriced: false,
        tokens_unknown: true,
        duration_ms: 0,
        retried: false,
        upstream_request_id: None,
        quota,
        cut: None,
    }
}

fn rfc3339(at: SystemTime) -> String {
    humantime::format_rfc3339_millis(at).to_string()
}
