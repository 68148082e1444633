//! Test fixtures: a scriptable fake upstream on 127.0.0.1:0, the credproxy binary spawned
//! with a clean environment, and small HTTP clients.
#![allow(dead_code)] // each test binary uses a different part of the fixtures

pub mod google;
pub mod sigv4;
pub mod tls;

use std::convert::Infallible;
use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::{Body, Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::sync::{Semaphore, mpsc};

// ── Fake upstream ────────────────────────────────────────────────────────────

/// A request as the fake upstream received it.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: String,
    /// Exactly the request-target bytes the upstream saw.
    pub path_and_query: String,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Recorded {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(|v| v.to_str().unwrap())
    }
}

/// What the fake answers.
pub enum Reply {
    Full {
        status: u16,
        headers: Vec<(&'static str, String)>,
        body: Bytes,
    },
    /// Sends `chunks` in order; before every chunk after the first it takes a permit from
    /// `gate`, so a test can prove each chunk reached the client before the next was sent.
    Stream {
        headers: Vec<(&'static str, String)>,
        chunks: Vec<Bytes>,
        gate: Option<Arc<Semaphore>>,
    },
    /// Never answers.
    Hang,
}

impl Reply {
    pub fn status(status: u16, body: impl Into<Bytes>) -> Reply {
        Reply::Full {
            status,
            headers: vec![("content-type", "application/json".into())],
            body: body.into(),
        }
    }

    pub fn anthropic_error(status: u16, kind: &str, message: &str) -> Reply {
        Reply::status(
            status,
            format!(r#"{{"type":"error","error":{{"type":"{kind}","message":"{message}"}}}}"#),
        )
    }
}

type Handler = Arc<dyn Fn(&Recorded) -> Reply + Send + Sync>;

pub struct FakeUpstream {
    pub addr: SocketAddr,
    tls: bool,
    requests: Arc<Mutex<Vec<Recorded>>>,
    task: tokio::task::JoinHandle<()>,
}

impl FakeUpstream {
    pub async fn start(handler: impl Fn(&Recorded) -> Reply + Send + Sync + 'static) -> Self {
        Self::start_with(handler, None).await
    }

    /// The same over https, with a certificate from `ca` for `localhost` and `127.0.0.1`.
    pub async fn start_tls(
        ca: &tls::TestCa,
        handler: impl Fn(&Recorded) -> Reply + Send + Sync + 'static,
    ) -> Self {
        Self::start_with(handler, Some(ca.acceptor.clone())).await
    }

    async fn start_with(
        handler: impl Fn(&Recorded) -> Reply + Send + Sync + 'static,
        tls: Option<tokio_rustls::TlsAcceptor>,
    ) -> Self {
        let is_tls = tls.is_some();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let handler: Handler = Arc::new(handler);
        let recorded = Arc::clone(&requests);
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let handler = Arc::clone(&handler);
                let recorded = Arc::clone(&recorded);
                let tls = tls.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req: Request<Incoming>| {
                        let handler = Arc::clone(&handler);
                        let recorded = Arc::clone(&recorded);
                        async move { Ok::<_, Infallible>(answer(req, &handler, &recorded).await) }
                    });
                    let builder =
                        hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                    match tls {
                        None => {
                            let _ = builder
                                .serve_connection(TokioIo::new(stream), service)
                                .await;
                        }
                        Some(acceptor) => {
                            let Ok(stream) = acceptor.accept(stream).await else {
                                return;
                            };
                            let _ = builder
                                .serve_connection(TokioIo::new(stream), service)
                                .await;
                        }
                    }
                });
            }
        });
        FakeUpstream {
            addr,
            tls: is_tls,
            requests,
            task,
        }
    }

    /// Answers every request with an SSE stream of `chunks`, each after the first sent only
    /// once the test adds a permit to `gate`.
    pub async fn gated_stream(gate: &Arc<Semaphore>, chunks: Vec<Bytes>) -> Self {
        let gate = Arc::clone(gate);
        Self::start(move |_| Reply::Stream {
            headers: vec![("content-type", "text/event-stream".into())],
            chunks: chunks.clone(),
            gate: Some(Arc::clone(&gate)),
        })
        .await
    }

    /// Accepts only `key` in `x-api-key`; anything else gets Anthropic's 401.
    pub async fn accepting_key(key: &'static str) -> Self {
        Self::start(move |req| {
            if req.header("x-api-key") == Some(key) {
                Reply::status(
                    200,
                    r#"{"type":"message","content":[{"type":"text","text":"hi"}]}"#,
                )
            } else {
                Reply::anthropic_error(401, "authentication_error", "invalid x-api-key")
            }
        })
        .await
    }

    pub fn url(&self) -> String {
        if self.tls {
            format!("https://localhost:{}", self.addr.port())
        } else {
            format!("http://{}", self.addr)
        }
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.requests.lock().unwrap().clone()
    }

    pub fn count(&self) -> usize {
        self.requests.lock().unwrap().len()
    }
}

impl Drop for FakeUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn answer(
    req: Request<Incoming>,
    handler: &Handler,
    recorded: &Mutex<Vec<Recorded>>,
) -> Response<BoxBody<Bytes, Infallible>> {
    let (parts, body) = req.into_parts();
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let request = Recorded {
        method: parts.method.to_string(),
        path_and_query: parts
            .uri
            .path_and_query()
            .map(|p| p.as_str().to_string())
            .unwrap_or_default(),
        headers: parts.headers,
        body,
    };
    recorded.lock().unwrap().push(request.clone());
    match handler(&request) {
        Reply::Full {
            status,
            headers,
            body,
        } => {
            let mut response = Response::new(Full::new(body).boxed());
            *response.status_mut() = StatusCode::from_u16(status).unwrap();
            for (k, v) in headers {
                response.headers_mut().insert(k, v.parse().unwrap());
            }
            response
        }
        Reply::Stream {
            headers,
            chunks,
            gate,
        } => {
            let (tx, rx) = mpsc::channel(1);
            tokio::spawn(async move {
                for (i, chunk) in chunks.into_iter().enumerate() {
                    if i > 0
                        && let Some(gate) = &gate
                    {
                        gate.acquire().await.unwrap().forget();
                    }
                    if tx.send(chunk).await.is_err() {
                        return;
                    }
                }
            });
            let mut response = Response::new(ChannelBody(rx).boxed());
            for (k, v) in headers {
                response.headers_mut().insert(k, v.parse().unwrap());
            }
            response
        }
        Reply::Hang => {
            std::future::pending::<()>().await;
            unreachable!()
        }
    }
}

struct ChannelBody(mpsc::Receiver<Bytes>);

impl Body for ChannelBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.0
            .poll_recv(cx)
            .map(|chunk| chunk.map(|b| Ok(Frame::data(b))))
    }
}

// ── The credproxy binary ─────────────────────────────────────────────────────

/// A scratch directory: config file, fake HOME, helper scripts and their counters.
pub struct Scratch {
    dir: tempfile::TempDir,
}

impl Scratch {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("home")).unwrap();
        // A PATH with the few tools helper scripts use and no cloud CLI (this machine may
        // have gcloud, az or aws installed; no test may run them).
        let bin = dir.path().join("bin");
        std::fs::create_dir(&bin).unwrap();
        for tool in [
            "sh", "cat", "sleep", "echo", "printf", "head", "tr", "dirname", "kill",
        ] {
            let found = ["/usr/bin", "/bin"]
                .iter()
                .map(|d| PathBuf::from(d).join(tool))
                .find(|p| p.exists());
            if let Some(target) = found {
                std::os::unix::fs::symlink(target, bin.join(tool)).unwrap();
            }
        }
        Scratch { dir }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.path(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    /// How many lines a file has (helpers append one per run).
    pub fn lines(&self, name: &str) -> usize {
        std::fs::read_to_string(self.path(name)).map_or(0, |t| t.lines().count())
    }

    /// A helper command that records each run in `runs` and prints the content of `key`.
    pub fn counting_helper(&self, delay: &str) -> String {
        let d = self.dir.path().display();
        format!("echo run >> {d}/runs; sleep {delay}; cat {d}/key")
    }
}

pub struct Spawn<'a> {
    scratch: &'a Scratch,
    /// None: run with the embedded default (no `--config`).
    config: Option<String>,
    listeners: usize,
    env: Vec<(String, String)>,
    args: Vec<String>,
}

/// Like [`credproxy`], with the embedded default config.
pub fn credproxy_default(scratch: &Scratch) -> Spawn<'_> {
    Spawn {
        scratch,
        config: None,
        listeners: 1,
        env: Vec::new(),
        args: Vec::new(),
    }
}

/// Starts credproxy with `config`, a clean environment (PATH, HOME in the scratch dir)
/// plus whatever `.env()` adds.
pub fn credproxy<'a>(scratch: &'a Scratch, config: &str) -> Spawn<'a> {
    Spawn {
        scratch,
        config: Some(config.to_string()),
        listeners: 1,
        env: Vec::new(),
        args: Vec::new(),
    }
}

impl Spawn<'_> {
    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }

    pub fn envs(mut self, pairs: &[(&str, String)]) -> Self {
        self.env
            .extend(pairs.iter().map(|(k, v)| (k.to_string(), v.clone())));
        self
    }

    /// How many listeners the config binds (the start waits for each).
    pub fn listeners(mut self, count: usize) -> Self {
        self.listeners = count;
        self
    }

    pub fn arg(mut self, arg: &str) -> Self {
        self.args.push(arg.into());
        self
    }

    fn command(&self, subcommand: Option<&str>) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_credproxy"));
        if let Some(config) = &self.config {
            command
                .arg("--config")
                .arg(self.scratch.write("credproxy.toml", config));
        }
        command
            .env_clear()
            .env("PATH", self.scratch.path("bin"))
            .env("HOME", self.scratch.path("home"))
            // Nothing may probe the real instance metadata address from a test.
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if let Some(sub) = subcommand {
            command.arg(sub);
        }
        command
    }

    /// Runs a one-shot subcommand (`check`, `env`) to completion.
    pub fn run(self, subcommand: &str) -> (ExitStatus, String, String) {
        let output = self.command(Some(subcommand)).output().unwrap();
        (
            output.status,
            String::from_utf8_lossy(&output.stdout).into_owned(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    }

    /// [`run`](Self::run) from async code, without blocking the runtime the fakes run on.
    pub async fn run_async(self, subcommand: &str) -> (ExitStatus, String, String) {
        let mut command = self.command(Some(subcommand));
        let output = tokio::task::spawn_blocking(move || command.output().unwrap())
            .await
            .unwrap();
        (
            output.status,
            String::from_utf8_lossy(&output.stdout).into_owned(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    }

    /// Starts the proxy and waits until every listener logged its address.
    pub fn start(self) -> Running {
        let mut child = self.command(None).spawn().unwrap();
        let output = Arc::new(Mutex::new(String::new()));
        let pipes: Vec<Box<dyn Read + Send>> = vec![
            Box::new(child.stdout.take().unwrap()),
            Box::new(child.stderr.take().unwrap()),
        ];
        for pipe in pipes {
            let output = Arc::clone(&output);
            std::thread::spawn(move || {
                for line in BufReader::new(pipe).lines() {
                    let Ok(line) = line else { return };
                    let mut out = output.lock().unwrap();
                    out.push_str(&line);
                    out.push('\n');
                }
            });
        }
        let mut running = Running {
            child,
            output,
            addrs: Vec::new(),
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let addrs = running.listening_addrs();
            if addrs.len() >= self.listeners {
                running.addrs = addrs;
                return running;
            }
            if let Some(status) = running.child.try_wait().unwrap() {
                panic!(
                    "credproxy exited with {status} before listening:\n{}",
                    running.output()
                );
            }
            assert!(
                Instant::now() < deadline,
                "credproxy did not start:\n{}",
                running.output()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

pub struct Running {
    child: Child,
    output: Arc<Mutex<String>>,
    /// Bound addresses in the order they were logged.
    pub addrs: Vec<SocketAddr>,
}

impl Running {
    pub fn addr(&self) -> SocketAddr {
        self.addrs[0]
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr())
    }

    /// Everything credproxy printed so far, stdout and stderr.
    pub fn output(&self) -> String {
        self.output.lock().unwrap().clone()
    }

    fn listening_addrs(&self) -> Vec<SocketAddr> {
        self.output()
            .lines()
            .filter(|l| l.contains("listening"))
            .filter_map(|l| {
                // Text lines carry `addr=IP:PORT`, JSON lines `"addr":"IP:PORT"`.
                l.split_whitespace()
                    .find_map(|w| w.strip_prefix("addr="))
                    .or_else(|| {
                        l.split("\"addr\":\"")
                            .nth(1)
                            .and_then(|rest| rest.split('"').next())
                    })
            })
            .filter_map(|a| a.parse().ok())
            .collect()
    }

    /// Waits until the output contains `text` (a log line the test depends on).
    pub async fn wait_for_output(&self, text: &str) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !self.output().contains(text) {
            assert!(
                Instant::now() < deadline,
                "no `{text}` in output:\n{}",
                self.output()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    pub fn signal(&self, signal: nix::sys::signal::Signal) {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.child.id() as i32), signal).unwrap();
    }

    /// Waits for the process to exit by itself.
    pub async fn exit_status(&mut self) -> ExitStatus {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "credproxy did not exit:\n{}",
                self.output()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ── Clients ──────────────────────────────────────────────────────────────────

pub struct Answer {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Answer {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }

    /// `error.type` and `error.message` of an Anthropic-shaped error body.
    pub fn error(&self) -> (String, String) {
        let json = self.json();
        assert_eq!(json["type"], "error", "{json}");
        (
            json["error"]["type"].as_str().unwrap().to_string(),
            json["error"]["message"].as_str().unwrap().to_string(),
        )
    }
}

pub fn client() -> Client<HttpConnector, Full<Bytes>> {
    Client::builder(TokioExecutor::new()).build_http()
}

/// Posts `{}` and returns the response with its body still streaming.
pub async fn open_stream(url: &str) -> Response<Incoming> {
    client()
        .request(
            Request::post(url)
                .body(Full::new(Bytes::from("{}")))
                .unwrap(),
        )
        .await
        .unwrap()
}

/// Reads a gated stream to its end, adding a permit to `gate` after each frame so the fake
/// sends the next one only once this one arrived. Panics if the stream stalls (a proxy that
/// buffers would never deliver the first frame alone).
pub async fn read_gated(body: Incoming, gate: &Semaphore) -> Vec<Bytes> {
    let mut body = body;
    let mut received = Vec::new();
    let read = async {
        while let Some(frame) = body.frame().await {
            if let Ok(data) = frame.unwrap().into_data() {
                received.push(data);
                gate.add_permits(1);
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(10), read)
        .await
        .expect("the stream stalled: frames were held back");
    received
}

/// Sends a request and reads the whole answer.
pub async fn send(request: Request<Full<Bytes>>) -> Answer {
    let response = client().request(request).await.unwrap();
    let (parts, body) = response.into_parts();
    Answer {
        status: parts.status.as_u16(),
        headers: parts.headers,
        body: body.collect().await.unwrap().to_bytes(),
    }
}

pub async fn get(url: &str) -> Answer {
    send(Request::get(url).body(Full::default()).unwrap()).await
}

pub async fn post(url: &str, body: &str) -> Answer {
    send(
        Request::post(url)
            .header("x-api-key", "dummy")
            .header("anthropic-version", "2023-06-01")
            .body(Full::new(Bytes::from(body.to_string())))
            .unwrap(),
    )
    .await
}

/// Writes raw request bytes on a fresh connection and returns the raw response head and
/// body (read until the server closes; send `Connection: close`).
pub async fn raw(addr: SocketAddr, request: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let exchange = async {
        // The server may answer (and close) before reading everything, e.g. with a 413.
        let _ = stream.write_all(request.as_bytes()).await;
        let mut response = Vec::new();
        let _ = stream.read_to_end(&mut response).await;
        response
    };
    let response = tokio::time::timeout(Duration::from_secs(10), exchange)
        .await
        .expect("no answer within 10 s");
    String::from_utf8_lossy(&response).into_owned()
}

/// The route table every test config starts from: `/` to `upstream` with credential `key`.
pub fn config(upstream: &str, credential: &str) -> String {
    format!(
        r#"listen = "127.0.0.1:0"

[credentials.key]
kind = "api_key"
{credential}

[[routes]]
prefix = "/"
upstream = "{upstream}"
credential = "key"
"#
    )
}
