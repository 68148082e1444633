//! The usage objects of every answer shape, and how what a stream reports adds up: later
//! values replace earlier ones (Anthropic's `message_delta` counts are cumulative), nothing
//! is summed.

use serde::Deserialize;

use super::Tokens;

/// Token counts as far as known: a field an answer never gave stays `None`.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(super) struct Counts {
    pub input: Option<u64>,
    pub output: Option<u64>,
    pub cache_creation: Option<u64>,
    pub cache_read: Option<u64>,
}

impl Counts {
    /// `later`'s fields where it has them, else this one's.
    pub fn then(self, later: Counts) -> Counts {
        Counts {
            input: later.input.or(self.input),
            output: later.output.or(self.output),
            cache_creation: later.cache_creation.or(self.cache_creation),
            cache_read: later.cache_read.or(self.cache_read),
        }
    }

    pub fn is_empty(&self) -> bool {
        *self == Counts::default()
    }

    pub fn tokens(self) -> Option<Tokens> {
        (!self.is_empty()).then(|| Tokens {
            input: self.input.unwrap_or(0),
            output: self.output.unwrap_or(0),
            cache_creation: self.cache_creation.unwrap_or(0),
            cache_read: self.cache_read.unwrap_or(0),
        })
    }
}

/// A `usage` object in any of the shapes: Anthropic's (also Bedrock invoke, Vertex,
/// Foundry), OpenAI's, Bedrock Converse's. Unknown fields (`totalTokens`,
/// `server_tool_use`, `cache_creation`'s split by TTL) are skipped.
#[derive(Debug, Default, Deserialize)]
pub(super) struct Usage {
    input_tokens: Option<u64>,
    output_tokens: Option<u64>,
    cache_creation_input_tokens: Option<u64>,
    cache_read_input_tokens: Option<u64>,
    prompt_tokens: Option<u64>,
    completion_tokens: Option<u64>,
    prompt_tokens_details: Option<PromptDetails>,
    #[serde(rename = "inputTokens")]
    converse_input: Option<u64>,
    #[serde(rename = "outputTokens")]
    converse_output: Option<u64>,
    #[serde(rename = "cacheReadInputTokens")]
    converse_cache_read: Option<u64>,
    #[serde(rename = "cacheWriteInputTokens")]
    converse_cache_write: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
struct PromptDetails {
    cached_tokens: Option<u64>,
}

impl Usage {
    pub fn counts(&self) -> Counts {
        // OpenAI counts cached prompt tokens inside `prompt_tokens`; Anthropic's
        // `input_tokens` leaves them out, and so do ours.
        let cached = self
            .prompt_tokens_details
            .as_ref()
            .and_then(|d| d.cached_tokens);
        let openai = Counts {
            input: self
                .prompt_tokens
                .map(|p| p.saturating_sub(cached.unwrap_or(0))),
            output: self.completion_tokens,
            cache_creation: None,
            cache_read: cached.filter(|_| self.prompt_tokens.is_some()),
        };
        let converse = Counts {
            input: self.converse_input,
            output: self.converse_output,
            cache_creation: self.converse_cache_write,
            cache_read: self.converse_cache_read,
        };
        let anthropic = Counts {
            input: self.input_tokens,
            output: self.output_tokens,
            cache_creation: self.cache_creation_input_tokens,
            cache_read: self.cache_read_input_tokens,
        };
        openai.then(converse).then(anthropic)
    }
}

/// Bedrock's `amazon-bedrock-invocationMetrics`, on the last event of an
/// invoke-with-response-stream answer: what Bedrock bills, so it has the last word.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct InvocationMetrics {
    input_token_count: Option<u64>,
    output_token_count: Option<u64>,
    cache_read_input_token_count: Option<u64>,
    cache_write_input_token_count: Option<u64>,
}

#[derive(Debug, Deserialize)]
struct Message {
    usage: Option<Usage>,
}

/// A stream event that may carry usage: Anthropic's `message_start` (`message.usage`) and
/// `message_delta` (`usage`), OpenAI's last chunk and ConverseStream's `metadata` event
/// (`usage`), Bedrock's last event (`amazon-bedrock-invocationMetrics`).
#[derive(Debug, Deserialize)]
struct Event {
    message: Option<Message>,
    usage: Option<Usage>,
    #[serde(rename = "amazon-bedrock-invocationMetrics")]
    metrics: Option<InvocationMetrics>,
}

/// What a stream has reported so far.
#[derive(Debug, Default)]
pub(super) struct Seen {
    reported: Counts,
    /// Bedrock's invocation metrics: they override what the events said.
    billed: Counts,
}

/// `"usage"` or Bedrock's metrics key: an event without either is not parsed at all.
static USAGE_KEY: std::sync::LazyLock<memchr::memmem::Finder<'static>> =
    std::sync::LazyLock::new(|| memchr::memmem::Finder::new(b"\"usage\""));
static METRICS_KEY: std::sync::LazyLock<memchr::memmem::Finder<'static>> =
    std::sync::LazyLock::new(|| {
        memchr::memmem::Finder::new(b"\"amazon-bedrock-invocationMetrics\"")
    });

/// Whether `event` (one event's JSON) can carry usage: a `"usage"` key whose value is an
/// object (OpenAI streams send `"usage":null` on every chunk), or Bedrock's metrics. A
/// `"usage"` inside a string is escaped (`\"usage\"`), so it never matches.
fn may_carry_usage(event: &[u8]) -> bool {
    USAGE_KEY
        .find_iter(event)
        .any(|at| value_after_key(&event[at + USAGE_KEY.needle().len()..]).starts_with(b"{"))
        || METRICS_KEY.find(event).is_some()
}

/// What follows a key: its value's first bytes, or empty if no `:` follows.
pub(super) fn value_after_key(rest: &[u8]) -> &[u8] {
    let rest = rest.trim_ascii_start();
    match rest.strip_prefix(b":") {
        Some(value) => value.trim_ascii_start(),
        None => &[],
    }
}

impl Seen {
    /// One whole event (an SSE event's data, an event-stream event's JSON).
    pub fn event(&mut self, event: &[u8]) {
        if !may_carry_usage(event) {
            return;
        }
        let Ok(event) = serde_json::from_slice::<Event>(event) else {
            return;
        };
        for usage in [event.message.and_then(|m| m.usage), event.usage]
            .iter()
            .flatten()
        {
            self.reported = self.reported.then(usage.counts());
        }
        if let Some(m) = event.metrics {
            self.billed = self.billed.then(Counts {
                input: m.input_token_count,
                output: m.output_token_count,
                cache_creation: m.cache_write_input_token_count,
                cache_read: m.cache_read_input_token_count,
            });
        }
    }

    /// A `usage` object found in a JSON answer.
    pub fn usage(&mut self, usage: &Usage) {
        self.reported = self.reported.then(usage.counts());
    }

    /// All of it, with `headers` (Bedrock's token-count headers) over what the body said
    /// and the invocation metrics over both.
    pub fn counts(&self, headers: Counts) -> Counts {
        self.reported.then(headers).then(self.billed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seen(events: &[&str]) -> Counts {
        let mut seen = Seen::default();
        for e in events {
            seen.event(e.as_bytes());
        }
        seen.counts(Counts::default())
    }

    #[test]
    fn later_counts_replace_earlier_ones_and_are_never_added() {
        let counts = seen(&[
            r#"{"type":"message_start","message":{"usage":{"input_tokens":10,"cache_creation_input_tokens":5,"cache_read_input_tokens":0,"output_tokens":1}}}"#,
            r#"{"type":"message_delta","usage":{"output_tokens":7}}"#,
            r#"{"type":"message_delta","usage":{"input_tokens":12,"cache_read_input_tokens":null,"output_tokens":20}}"#,
        ]);
        assert_eq!(
            counts,
            Counts {
                input: Some(12),
                output: Some(20),
                cache_creation: Some(5),
                cache_read: Some(0),
            }
        );
    }

    #[test]
    fn openai_cached_prompt_tokens_are_cache_reads_not_input() {
        let counts = seen(&[
            r#"{"choices":[{"delta":{"content":"hi"}}],"usage":null}"#,
            r#"{"choices":[],"usage":{"prompt_tokens":100,"completion_tokens":9,"total_tokens":109,"prompt_tokens_details":{"cached_tokens":60}}}"#,
        ]);
        assert_eq!(
            counts.tokens().unwrap(),
            Tokens {
                input: 40,
                output: 9,
                cache_creation: 0,
                cache_read: 60
            }
        );
        // No details: all of the prompt is input.
        let counts = seen(&[
            r#"{"usage":{"prompt_tokens":100,"completion_tokens":9,"prompt_tokens_details":null}}"#,
        ]);
        assert_eq!(
            counts.tokens().unwrap(),
            Tokens {
                input: 100,
                output: 9,
                ..Tokens::default()
            }
        );
    }

    #[test]
    fn bedrock_metrics_override_the_events_and_headers() {
        let mut s = Seen::default();
        s.event(br#"{"type":"message_start","message":{"usage":{"input_tokens":10,"output_tokens":1}}}"#);
        s.event(br#"{"type":"message_stop","amazon-bedrock-invocationMetrics":{"inputTokenCount":11,"outputTokenCount":30,"invocationLatency":900,"firstByteLatency":300,"cacheReadInputTokenCount":4,"cacheWriteInputTokenCount":2}}"#);
        let headers = Counts {
            input: Some(99),
            ..Counts::default()
        };
        assert_eq!(
            s.counts(headers).tokens().unwrap(),
            Tokens {
                input: 11,
                output: 30,
                cache_creation: 2,
                cache_read: 4
            }
        );
    }

    #[test]
    fn events_that_cannot_carry_usage_are_not_parsed() {
        assert!(!may_carry_usage(
            br#"{"type":"content_block_delta","delta":{"text":"say \"usage\": {1}"}}"#
        ));
        assert!(!may_carry_usage(br#"{"usage":null,"choices":[]}"#));
        assert!(!may_carry_usage(br#"{"name":"usage"}"#));
        assert!(may_carry_usage(br#"{"usage" : {"output_tokens":1}}"#));
        assert!(may_carry_usage(
            br#"{"amazon-bedrock-invocationMetrics":{}}"#
        ));
        // Malformed or foreign JSON reports nothing.
        assert_eq!(
            seen(&[r#"{"usage":{"input_tokens":"many"}}"#, r#"{"usage":{"#]),
            Counts::default()
        );
        assert_eq!(seen(&[]).tokens(), None);
    }
}
