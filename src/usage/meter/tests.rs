//! Every answer shape end to end through [`Meter`]: realistic answers (the providers'
//! documented shapes), plain and compressed, split at every byte, cut short, without
//! usage, failing, and large.

use std::io::Write;

use http::HeaderMap;

use super::*;
use crate::eventstream::{encode_chunk, encode_frame};

fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
    let mut map = HeaderMap::new();
    for (name, value) in pairs {
        map.append(
            http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
            value.parse().unwrap(),
        );
    }
    map
}

fn tokens(input: u64, output: u64, cache_creation: u64, cache_read: u64) -> Tokens {
    Tokens {
        input,
        output,
        cache_creation,
        cache_read,
    }
}

fn meter(headers: &HeaderMap, chunks: &[&[u8]]) -> Option<Tokens> {
    let mut meter = Meter::new(headers);
    for chunk in chunks {
        meter.feed(chunk);
    }
    meter.finish()
}

const SSE: &str = "text/event-stream; charset=utf-8";
const JSON: &str = "application/json";
const EVENT_STREAM: &str = "application/vnd.amazon.eventstream";

// Anthropic Messages API (also Vertex, Foundry, Bedrock invoke's body).
const ANTHROPIC_JSON: &str = r#"{"id":"msg_01XFDUDYJgAACzvnptvVoYEL","type":"message","role":"assistant","model":"claude-sonnet-4-5-20250929","content":[{"type":"text","text":"Hello! The \"usage\" of a word is how it is used."},{"type":"tool_use","id":"toolu_01A09q90qw90lq917835lq9","name":"get_weather","input":{"location":"San Francisco, CA","usage":{"input_tokens":1}}}],"stop_reason":"tool_use","stop_sequence":null,"usage":{"input_tokens":2095,"cache_creation_input_tokens":1024,"cache_read_input_tokens":4096,"cache_creation":{"ephemeral_5m_input_tokens":1024,"ephemeral_1h_input_tokens":0},"output_tokens":503,"service_tier":"standard"}}"#;

fn anthropic_sse() -> String {
    let mut s = String::new();
    s += "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_1nZdL29xx5MUA1yADyHTEsnR8uuvGzszyY\",\"type\":\"message\",\"role\":\"assistant\",\"content\":[],\"model\":\"claude-sonnet-4-5-20250929\",\"stop_reason\":null,\"stop_sequence\":null,\"usage\":{\"input_tokens\":472,\"cache_creation_input_tokens\":100,\"cache_read_input_tokens\":2048,\"cache_creation\":{\"ephemeral_5m_input_tokens\":100,\"ephemeral_1h_input_tokens\":0},\"output_tokens\":2,\"service_tier\":\"standard\"}}}\n\n";
    s += "event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n";
    s += "event: ping\ndata: {\"type\": \"ping\"}\n\n";
    for word in [
        "Hello",
        "! Here",
        " is the \\\"usage\\\": {\\\"output_tokens\\\": 1}",
        " you asked",
        " for.",
    ] {
        s += &format!(
            "event: content_block_delta\ndata: {{\"type\":\"content_block_delta\",\"index\":0,\"delta\":{{\"type\":\"text_delta\",\"text\":\"{word}\"}}}}\n\n"
        );
    }
    s += "event: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":0}\n\n";
    s += "event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\",\"stop_sequence\":null},\"usage\":{\"output_tokens\":120}}\n\n";
    // Newer streams repeat the input and cache counts in a (cumulative) message_delta.
    s += "event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\",\"stop_sequence\":null},\"usage\":{\"input_tokens\":472,\"cache_creation_input_tokens\":100,\"cache_read_input_tokens\":2048,\"output_tokens\":143,\"server_tool_use\":{\"web_search_requests\":0}}}\n\n";
    s += "event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n";
    s
}
const ANTHROPIC_SSE_TOKENS: Tokens = Tokens {
    input: 472,
    output: 143,
    cache_creation: 100,
    cache_read: 2048,
};

const OPENAI_JSON: &str = r#"{"id":"chatcmpl-B9MHDbslfkBeAs8l4bebGdFOJ6PeG","object":"chat.completion","created":1741570283,"model":"gpt-4o-2024-08-06","choices":[{"index":0,"message":{"role":"assistant","content":"The image shows a wooden boardwalk.","refusal":null,"annotations":[]},"logprobs":null,"finish_reason":"stop"}],"usage":{"prompt_tokens":1117,"completion_tokens":46,"total_tokens":1163,"prompt_tokens_details":{"cached_tokens":1024,"audio_tokens":0},"completion_tokens_details":{"reasoning_tokens":0,"audio_tokens":0,"accepted_prediction_tokens":0,"rejected_prediction_tokens":0}},"service_tier":"default","system_fingerprint":"fp_fc9f1d7035"}"#;

fn openai_sse() -> String {
    let chunk = |choices: &str, usage: &str| {
        format!(
            "data: {{\"id\":\"chatcmpl-123\",\"object\":\"chat.completion.chunk\",\"created\":1694268190,\"model\":\"gpt-4o-mini\",\"system_fingerprint\":\"fp_44709d6fcb\",\"choices\":[{choices}],\"usage\":{usage}}}\n\n"
        )
    };
    let mut s = chunk(
        r#"{"index":0,"delta":{"role":"assistant","content":""},"logprobs":null,"finish_reason":null}"#,
        "null",
    );
    s += &chunk(
        r#"{"index":0,"delta":{"content":"Hello"},"logprobs":null,"finish_reason":null}"#,
        "null",
    );
    s += &chunk(
        r#"{"index":0,"delta":{},"logprobs":null,"finish_reason":"stop"}"#,
        "null",
    );
    s += &chunk(
        "",
        r#"{"prompt_tokens":2006,"completion_tokens":300,"total_tokens":2306,"prompt_tokens_details":{"cached_tokens":1920}}"#,
    );
    s += "data: [DONE]\n\n";
    s
}

const CONVERSE_JSON: &str = r#"{"metrics":{"latencyMs":1275},"output":{"message":{"content":[{"text":"Here is a usage example."}],"role":"assistant"}},"stopReason":"end_turn","usage":{"inputTokens":30,"outputTokens":628,"totalTokens":658,"cacheReadInputTokens":12,"cacheWriteInputTokens":3},"metrics2":{"latencyMs":1}}"#;

/// InvokeModelWithResponseStream: Anthropic events in `chunk` frames; the last one adds
/// Bedrock's invocation metrics.
fn bedrock_stream() -> Vec<u8> {
    let events = [
        r#"{"type":"message_start","message":{"id":"msg_bdrk_01","type":"message","role":"assistant","model":"claude-sonnet-4-5-20250929","content":[],"stop_reason":null,"stop_sequence":null,"usage":{"input_tokens":25,"cache_creation_input_tokens":0,"cache_read_input_tokens":0,"output_tokens":1}}}"#,
        r#"{"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}"#,
        r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Hi"}}"#,
        r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":" there"}}"#,
        r#"{"type":"content_block_stop","index":0}"#,
        r#"{"type":"message_delta","delta":{"stop_reason":"end_turn","stop_sequence":null},"usage":{"output_tokens":12}}"#,
        r#"{"type":"message_stop","amazon-bedrock-invocationMetrics":{"inputTokenCount":25,"outputTokenCount":12,"invocationLatency":610,"firstByteLatency":402,"cacheReadInputTokenCount":7,"cacheWriteInputTokenCount":5}}"#,
    ];
    events.iter().flat_map(|e| encode_chunk(e)).collect()
}

fn converse_event(kind: &'static str, payload: &str) -> Vec<u8> {
    encode_frame(
        &[
            (":event-type", kind),
            (":content-type", "application/json"),
            (":message-type", "event"),
        ],
        payload.as_bytes().to_vec(),
    )
}

/// ConverseStream: its own events; usage in the last, `metadata`.
fn converse_stream() -> Vec<u8> {
    [
        converse_event("messageStart", r#"{"p":"abcdefghijkl","role":"assistant"}"#),
        converse_event("contentBlockDelta", r#"{"contentBlockIndex":0,"delta":{"text":"Hello"},"p":"abcd"}"#),
        converse_event("contentBlockDelta", r#"{"contentBlockIndex":0,"delta":{"text":" \"usage\": {}"},"p":"ab"}"#),
        converse_event("contentBlockStop", r#"{"contentBlockIndex":0,"p":"abcdefgh"}"#),
        converse_event("messageStop", r#"{"p":"abc","stopReason":"end_turn"}"#),
        converse_event("metadata", r#"{"metrics":{"latencyMs":560},"p":"abcdef","usage":{"inputTokens":21,"outputTokens":9,"totalTokens":30,"cacheReadInputTokens":4,"cacheWriteInputTokens":0}}"#),
    ]
    .concat()
}

/// Every shape with its content-type, extra headers and the tokens it reports.
fn shapes() -> Vec<(&'static str, &'static str, Vec<u8>, Tokens)> {
    vec![
        (
            "anthropic json",
            JSON,
            ANTHROPIC_JSON.into(),
            tokens(2095, 503, 1024, 4096),
        ),
        (
            "anthropic sse",
            SSE,
            anthropic_sse().into(),
            ANTHROPIC_SSE_TOKENS,
        ),
        (
            "openai json",
            JSON,
            OPENAI_JSON.into(),
            tokens(93, 46, 0, 1024),
        ),
        (
            "openai sse",
            "text/event-stream",
            openai_sse().into(),
            tokens(86, 300, 0, 1920),
        ),
        (
            "converse json",
            JSON,
            CONVERSE_JSON.into(),
            tokens(30, 628, 3, 12),
        ),
        (
            "bedrock stream",
            EVENT_STREAM,
            bedrock_stream(),
            tokens(25, 12, 5, 7),
        ),
        (
            "converse stream",
            EVENT_STREAM,
            converse_stream(),
            tokens(21, 9, 0, 4),
        ),
    ]
}

fn compress(coding: &str, bytes: &[u8]) -> Vec<u8> {
    use flate2::Compression;
    match coding {
        "gzip" | "x-gzip" => {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), Compression::default());
            e.write_all(bytes).unwrap();
            e.finish().unwrap()
        }
        "deflate" => {
            let mut e = flate2::write::ZlibEncoder::new(Vec::new(), Compression::default());
            e.write_all(bytes).unwrap();
            e.finish().unwrap()
        }
        "raw-deflate" => {
            let mut e = flate2::write::DeflateEncoder::new(Vec::new(), Compression::default());
            e.write_all(bytes).unwrap();
            e.finish().unwrap()
        }
        "br" => {
            let mut out = Vec::new();
            let mut e = brotli::CompressorWriter::new(&mut out, 4096, 5, 22);
            e.write_all(bytes).unwrap();
            drop(e);
            out
        }
        other => panic!("no coding {other}"),
    }
}

/// (content-encoding header, how the bytes are compressed)
const CODINGS: &[(&str, &str)] = &[
    ("gzip", "gzip"),
    ("x-gzip", "x-gzip"),
    ("deflate", "deflate"),
    ("deflate", "raw-deflate"),
    ("br", "br"),
];

#[test]
fn every_shape_split_at_every_byte() {
    for (name, content_type, body, expected) in shapes() {
        let h = headers(&[("content-type", content_type)]);
        assert_eq!(meter(&h, &[&body]), Some(expected), "{name} whole");
        for at in 0..=body.len() {
            let (a, b) = body.split_at(at);
            assert_eq!(meter(&h, &[a, b]), Some(expected), "{name} split at {at}");
        }
        let bytes: Vec<&[u8]> = body.chunks(1).collect();
        assert_eq!(meter(&h, &bytes), Some(expected), "{name} byte by byte");
    }
}

#[test]
fn every_shape_compressed_every_way_split_at_every_byte() {
    for (name, content_type, body, expected) in shapes() {
        for (header, how) in CODINGS {
            let packed = compress(how, &body);
            let h = headers(&[("content-type", content_type), ("content-encoding", header)]);
            assert_eq!(meter(&h, &[&packed]), Some(expected), "{name} {how}");
            for at in 0..=packed.len() {
                let (a, b) = packed.split_at(at);
                assert_eq!(
                    meter(&h, &[a, b]),
                    Some(expected),
                    "{name} {how} split at {at}"
                );
            }
            let bytes: Vec<&[u8]> = packed.chunks(1).collect();
            assert_eq!(
                meter(&h, &bytes),
                Some(expected),
                "{name} {how} byte by byte"
            );
        }
    }
}

#[test]
fn content_encoding_names_are_read_loosely_and_unknown_ones_give_no_usage() {
    let body = ANTHROPIC_JSON.as_bytes();
    let expected = Some(tokens(2095, 503, 1024, 4096));
    let gz = compress("gzip", body);
    assert_eq!(
        meter(&headers(&[("content-encoding", "GZIP")]), &[&gz]),
        expected
    );
    assert_eq!(
        meter(&headers(&[("content-encoding", "identity, gzip")]), &[&gz]),
        expected
    );
    assert_eq!(
        meter(&headers(&[("content-encoding", "identity")]), &[body]),
        expected
    );
    assert_eq!(
        meter(&headers(&[("content-encoding", "")]), &[body]),
        expected
    );
    // Not decodable here: nothing is read, and nothing breaks.
    for coding in ["zstd", "compress", "gzip, br", "x-custom"] {
        let h = headers(&[("content-encoding", coding)]);
        assert_eq!(meter(&h, &[body]), None, "{coding}");
        assert_eq!(meter(&h, &[&gz]), None, "{coding}");
    }
    let mut two = headers(&[("content-encoding", "gzip")]);
    two.append("content-encoding", "br".parse().unwrap());
    assert_eq!(meter(&two, &[&gz]), None);
    // Bedrock's headers still count whatever the body's coding.
    let h = headers(&[
        ("content-encoding", "zstd"),
        ("x-amzn-bedrock-input-token-count", "10"),
        ("x-amzn-bedrock-output-token-count", "20"),
    ]);
    assert_eq!(meter(&h, &[body]), Some(tokens(10, 20, 0, 0)));
}

#[test]
fn corrupt_compressed_answers_stop_metering_without_a_panic() {
    let sse = anthropic_sse();
    for (header, how) in CODINGS {
        let h = headers(&[("content-type", SSE), ("content-encoding", header)]);
        // Not compressed at all.
        assert_eq!(meter(&h, &[sse.as_bytes()]), None, "{how}");
        // Damaged after the first event: what was decoded before stands, if anything.
        let mut packed = compress(how, sse.as_bytes());
        let at = packed.len() / 2;
        packed[at..].iter_mut().for_each(|b| *b ^= 0x5a);
        let got = meter(&h, &[&packed]);
        assert!(
            got.is_none() || got.unwrap().output < ANTHROPIC_SSE_TOKENS.output,
            "{how}: {got:?}"
        );
    }
}

#[test]
fn a_decompression_bomb_stops_metering_instead_of_growing() {
    // 64 MiB of zeros: about 64 KiB of gzip, 50 bytes of brotli.
    let zeros = vec![0u8; 64 * 1024 * 1024];
    for (header, how) in [("gzip", "gzip"), ("br", "br")] {
        let mut bomb = compress(how, &zeros);
        // Whatever comes after the bomb is not read either.
        let h = headers(&[("content-type", SSE), ("content-encoding", header)]);
        let mut meter = Meter::new(&h);
        for chunk in bomb.chunks(16 * 1024) {
            meter.feed(chunk);
        }
        assert!(
            matches!(meter.body, Body::Stopped(_)),
            "{how}: {:?}",
            meter.body
        );
        bomb.extend(compress(how, anthropic_sse().as_bytes()));
        meter.feed(&bomb);
        assert_eq!(meter.finish(), None, "{how}");
    }
}

#[test]
fn a_stream_cut_short_counts_what_came_before_the_cut() {
    // Anthropic SSE cut inside the first message_delta: message_start's counts.
    let sse = anthropic_sse();
    let cut = sse.find("event: message_delta").unwrap() + 40;
    let h = headers(&[("content-type", SSE)]);
    assert_eq!(
        meter(&h, &[&sse.as_bytes()[..cut]]),
        Some(tokens(472, 2, 100, 2048))
    );
    // After the first message_delta: its output.
    let cut = sse.rfind("event: message_delta").unwrap();
    assert_eq!(
        meter(&h, &[&sse.as_bytes()[..cut]]),
        Some(tokens(472, 120, 100, 2048))
    );
    // Before any usage: none.
    assert_eq!(meter(&h, &[&sse.as_bytes()[..30]]), None);

    // The same, gzip-compressed and cut in the compressed bytes.
    let h = headers(&[("content-type", SSE), ("content-encoding", "gzip")]);
    let packed = compress("gzip", &sse.as_bytes()[..cut]);
    let got = meter(&h, &[&packed[..packed.len() - 8]]).unwrap();
    assert_eq!((got.input, got.cache_read), (472, 2048));

    // Bedrock's stream cut in the middle of its last frame: the events before it.
    let stream = bedrock_stream();
    let h = headers(&[("content-type", EVENT_STREAM)]);
    assert_eq!(
        meter(&h, &[&stream[..stream.len() - 10]]),
        Some(tokens(25, 12, 0, 0))
    );
    // ConverseStream cut before its metadata: nothing.
    let stream = converse_stream();
    assert_eq!(meter(&h, &[&stream[..stream.len() - 10]]), None);
    // A JSON answer cut before its usage: nothing.
    let h = headers(&[("content-type", JSON)]);
    let cut = ANTHROPIC_JSON.rfind("\"usage\"").unwrap() + 20;
    assert_eq!(meter(&h, &[&ANTHROPIC_JSON.as_bytes()[..cut]]), None);
}

#[test]
fn error_answers_and_answers_without_usage_give_none() {
    let json = headers(&[("content-type", JSON)]);
    for body in [
        r#"{"type":"error","error":{"type":"rate_limit_error","message":"Number of request tokens has exceeded your per-minute rate limit"},"request_id":"req_011CSHoEeqs5C35K2UUqR7Fy"}"#,
        r#"{"message":"Too many tokens, please wait before trying again."}"#,
        r#"{"error":{"message":"The model `gpt-5` does not exist","type":"invalid_request_error","param":null,"code":"model_not_found"}}"#,
        r#"{"data":[{"type":"model","id":"claude-sonnet-4-5-20250929"}],"has_more":false}"#,
        "<html><body>502 Bad Gateway</body></html>",
        "",
    ] {
        assert_eq!(meter(&json, &[body.as_bytes()]), None, "{body}");
    }
    assert_eq!(meter(&HeaderMap::new(), &[b"\x00\x01binary"]), None);

    // An SSE stream ended by an error event keeps what came before it.
    let sse = headers(&[("content-type", SSE)]);
    let stream = anthropic_sse();
    let cut = stream.find("event: content_block_start").unwrap();
    let errored = format!(
        "{}event: error\ndata: {{\"type\":\"error\",\"error\":{{\"type\":\"overloaded_error\",\"message\":\"Overloaded\"}}}}\n\n",
        &stream[..cut]
    );
    assert_eq!(
        meter(&sse, &[errored.as_bytes()]),
        Some(tokens(472, 2, 100, 2048))
    );
    // An OpenAI stream whose request did not ask for usage.
    let no_usage: String = openai_sse()
        .lines()
        .filter(|l| !l.contains("prompt_tokens"))
        .map(|l| format!("{l}\n"))
        .collect();
    assert_eq!(meter(&sse, &[no_usage.as_bytes()]), None);

    // Bedrock's stream ended by an exception frame.
    let es = headers(&[("content-type", EVENT_STREAM)]);
    let mut stream = encode_chunk(
        r#"{"type":"message_start","message":{"usage":{"input_tokens":9,"output_tokens":1}}}"#,
    );
    stream.extend(encode_frame(
        &[
            (":exception-type", "throttlingException"),
            (":content-type", "application/json"),
            (":message-type", "exception"),
        ],
        br#"{"message":"Too many requests, please wait before trying again."}"#.to_vec(),
    ));
    assert_eq!(meter(&es, &[&stream]), Some(tokens(9, 1, 0, 0)));
    // Bytes that are no event stream at all.
    assert_eq!(meter(&es, &[ANTHROPIC_JSON.as_bytes()]), None);
    assert_eq!(meter(&es, &[&[0, 0, 0, 1, 2, 3]]), None);
}

#[test]
fn bedrock_invoke_counts_its_headers_over_the_body() {
    let h = headers(&[
        ("content-type", JSON),
        ("x-amzn-bedrock-input-token-count", "2095"),
        ("x-amzn-bedrock-output-token-count", "503"),
        ("x-amzn-bedrock-cache-read-input-token-count", "4096"),
        ("x-amzn-bedrock-cache-write-input-token-count", "1024"),
        ("x-amzn-bedrock-invocation-latency", "2287"),
    ]);
    assert_eq!(
        meter(&h, &[ANTHROPIC_JSON.as_bytes()]),
        Some(tokens(2095, 503, 1024, 4096))
    );
    // The headers alone (a body cut short, or one with no usage).
    assert_eq!(
        meter(&h, &[b"{\"id\":"]),
        Some(tokens(2095, 503, 1024, 4096))
    );
    // Only some headers: the body gives the rest; a header that is no number is ignored.
    let h = headers(&[
        ("content-type", JSON),
        ("x-amzn-bedrock-input-token-count", "2000"),
        ("x-amzn-bedrock-output-token-count", "many"),
    ]);
    assert_eq!(
        meter(&h, &[ANTHROPIC_JSON.as_bytes()]),
        Some(tokens(2000, 503, 1024, 4096))
    );
}

#[test]
fn credproxys_translated_bedrock_stream_is_read_as_anthropic_sse_with_the_metrics() {
    // What `proxy::translate::eventstream` gives the client: each event byte for byte.
    let mut sse = String::new();
    sse += "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"usage\":{\"input_tokens\":25,\"output_tokens\":1}}}\n\n";
    sse += "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"Hi\"}}\n\n";
    sse += "event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\"},\"usage\":{\"output_tokens\":12}}\n\n";
    sse += "event: message_stop\ndata: {\"type\":\"message_stop\",\"amazon-bedrock-invocationMetrics\":{\"inputTokenCount\":26,\"outputTokenCount\":12,\"invocationLatency\":610,\"firstByteLatency\":402,\"cacheReadInputTokenCount\":0,\"cacheWriteInputTokenCount\":0}}\n\n";
    let h = headers(&[("content-type", SSE)]);
    assert_eq!(meter(&h, &[sse.as_bytes()]), Some(tokens(26, 12, 0, 0)));
}

#[test]
fn large_answers_are_metered_in_bounded_memory() {
    // A 24 MiB JSON answer fed in 16 KiB chunks, and a stream of 100k deltas.
    let text = "lorem ipsum ".repeat(2 * 1024 * 1024);
    let body = format!(
        r#"{{"id":"msg_1","type":"message","role":"assistant","content":[{{"type":"text","text":"{text}"}}],"stop_reason":"max_tokens","usage":{{"input_tokens":5,"output_tokens":64000}}}}"#
    );
    let h = headers(&[("content-type", JSON)]);
    let chunks: Vec<&[u8]> = body.as_bytes().chunks(16 * 1024).collect();
    let mut m = Meter::new(&h);
    for chunk in &chunks {
        m.feed(chunk);
        let Body::Plain(Shape::Json(tail)) = &m.body else {
            panic!("{:?}", m.body)
        };
        assert!(tail.window.len() <= json::WINDOW);
    }
    assert_eq!(m.finish(), Some(tokens(5, 64000, 0, 0)));

    let delta = "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"word \"}}\n\n";
    let sse = anthropic_sse();
    let (start, end) = sse.split_at(sse.find("event: content_block_stop").unwrap());
    let mut m = Meter::new(&headers(&[("content-type", SSE)]));
    m.feed(start.as_bytes());
    for _ in 0..100_000 {
        m.feed(delta.as_bytes());
    }
    // A single line far over the limit (a huge tool input) is skipped, not kept.
    m.feed(
        format!(
            "event: message_delta\ndata: {{\"pad\":\"{}\"}}\n\n",
            "x".repeat(4 * sse::MAX_LINE)
        )
        .as_bytes(),
    );
    m.feed(end.as_bytes());
    assert_eq!(m.finish(), Some(ANTHROPIC_SSE_TOKENS));

    // An event-stream frame larger than usage frames ever are is passed by unheld.
    let mut stream = encode_chunk(&format!(
        r#"{{"type":"content_block_delta","index":0,"delta":{{"type":"text_delta","text":"{}"}}}}"#,
        "y".repeat(1024 * 1024)
    ));
    stream.extend(bedrock_stream());
    let h = headers(&[("content-type", EVENT_STREAM)]);
    let mut m = Meter::new(&h);
    for chunk in stream.chunks(1000) {
        m.feed(chunk);
    }
    assert_eq!(m.finish(), Some(tokens(25, 12, 5, 7)));
}
