use std::sync::Mutex;

use super::*;

/// What the formatter under test wrote.
#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Capture {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Capture {
    type Writer = Capture;

    fn make_writer(&'a self) -> Capture {
        self.clone()
    }
}

/// The line as tracing's formatter writes it, set up as `telemetry::init` does.
fn through_tracing(line: &Line, format: LogFormat) -> String {
    let capture = Capture::default();
    let filter = tracing_subscriber::EnvFilter::new("info");
    let subscriber = super::super::subscriber(format, capture.clone(), false, filter);
    tracing::subscriber::with_default(subscriber, || line.trace());
    String::from_utf8(capture.0.lock().unwrap().clone()).unwrap()
}

fn direct(line: &Line, format: LogFormat) -> String {
    let mut out = Vec::new();
    line.render(format, SystemTime::now(), &mut out);
    String::from_utf8(out).unwrap()
}

/// The timestamp (`2026-12-02T06:30:41.554608Z`, 27 bytes) and the rest of the line.
fn split_time(line: &str, format: LogFormat) -> (&str, String) {
    let at = match format {
        LogFormat::Text => 0,
        LogFormat::Json => {
            assert!(line.starts_with("{\"timestamp\":\""), "{line}");
            14
        }
    };
    let time = &line[at..at + 27];
    assert!(humantime::parse_rfc3339(time).is_ok(), "{time} in {line}");
    (time, format!("{}{}", &line[..at], &line[at + 27..]))
}

fn typical() -> Line<'static> {
    Line {
        method: "POST",
        route: "/",
        path: "/v1/messages",
        status: 200,
        attempts: 1,
        served_by: None,
        upstream_ms: Some(0.470022),
        total_ms: 0.657614,
        credential: "bench",
        caller: "-",
        error: None,
        bytes: 1234,
        truncated: None,
    }
}

fn awkward() -> Line<'static> {
    Line {
        method: "GET",
        route: "-",
        path: "/v1/m\"e\\ss\tage\ns/é/\u{7f}/\u{200d}/🦀",
        status: 403,
        attempts: 0,
        served_by: Some("a \"b\"\tc"),
        upstream_ms: None,
        total_ms: 0.1 + 0.2,
        credential: "-",
        caller: "sub \"x\" <a@example.com>",
        error: Some("client"),
        bytes: 0,
        truncated: None,
    }
}

fn extremes() -> Line<'static> {
    Line {
        method: "DELETE",
        route: "/bedrock",
        path: "/model/x/invoke",
        status: 502,
        attempts: 2,
        served_by: Some("key-b"),
        upstream_ms: Some(1e-7),
        total_ms: 123_456.789,
        credential: "aws",
        caller: "",
        error: Some("upstream"),
        bytes: u64::MAX,
        truncated: Some("upstream"),
    }
}

#[test]
fn the_direct_line_is_the_one_tracing_writes() {
    for format in [LogFormat::Text, LogFormat::Json] {
        for line in [typical(), awkward(), extremes()] {
            let traced = through_tracing(&line, format);
            let written = direct(&line, format);
            let (_, traced_rest) = split_time(&traced, format);
            let (_, written_rest) = split_time(&written, format);
            assert_eq!(written_rest, traced_rest, "{format:?}");
            assert!(written.ends_with('\n') && written.matches('\n').count() == 1);
        }
    }
}

#[test]
fn a_json_line_is_one_object_with_numbers_as_numbers() {
    let json: serde_json::Value =
        serde_json::from_str(&direct(&typical(), LogFormat::Json)).unwrap();
    assert_eq!(json["status"], 200);
    assert_eq!(json["upstream_ms"], 0.470022);
    assert_eq!(json["target"], "credproxy::access");
    let odd: serde_json::Value =
        serde_json::from_str(&direct(&awkward(), LogFormat::Json)).unwrap();
    assert_eq!(odd["path"], awkward().path);
    assert!(odd.get("upstream_ms").is_none());
}

#[test]
fn only_clocks_between_1970_and_9999_are_rendered_here() {
    use std::time::UNIX_EPOCH;
    assert!(renderable(SystemTime::now()));
    assert!(renderable(UNIX_EPOCH));
    assert!(!renderable(UNIX_EPOCH - Duration::from_secs(1)));
    assert!(!renderable(
        UNIX_EPOCH + Duration::from_secs(253_402_300_800)
    ));
    let last = UNIX_EPOCH + Duration::from_secs(253_402_300_799);
    assert!(renderable(last));
    assert!(
        humantime::format_rfc3339_micros(last)
            .to_string()
            .starts_with("9999-12-31T23:59:59")
    );
}
