//! A scriptable fake upstream on 127.0.0.1:0 that records every request it receives.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::{Body, Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::sync::{Semaphore, mpsc};

use super::tls;

/// A request as the fake upstream received it.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: String,
    pub version: http::Version,
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
    /// Answers `reply` after `delay`.
    After {
        delay: std::time::Duration,
        reply: Box<Reply>,
    },
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
    /// Connections open now, and accepted in all.
    open: Arc<AtomicUsize>,
    accepted: Arc<AtomicUsize>,
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

    /// The same over https with a TLS set-up of the test's own (one demanding client
    /// certificates, say).
    pub async fn start_with_acceptor(
        acceptor: tokio_rustls::TlsAcceptor,
        handler: impl Fn(&Recorded) -> Reply + Send + Sync + 'static,
    ) -> Self {
        Self::start_with(handler, Some(acceptor)).await
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
        let open = Arc::new(AtomicUsize::new(0));
        let accepted = Arc::new(AtomicUsize::new(0));
        let (open_count, accepted_count) = (Arc::clone(&open), Arc::clone(&accepted));
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let handler = Arc::clone(&handler);
                let recorded = Arc::clone(&recorded);
                let tls = tls.clone();
                accepted_count.fetch_add(1, Ordering::SeqCst);
                let open = OpenConnection::new(&open_count);
                tokio::spawn(async move {
                    let _open = open;
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
            open,
            accepted,
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

    /// Connections open at the moment.
    pub fn open_connections(&self) -> usize {
        self.open.load(Ordering::SeqCst)
    }

    /// Connections accepted since the start.
    pub fn accepted_connections(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
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
        version: parts.version,
        path_and_query: parts
            .uri
            .path_and_query()
            .map(|p| p.as_str().to_string())
            .unwrap_or_default(),
        headers: parts.headers,
        body,
    };
    recorded.lock().unwrap().push(request.clone());
    respond(handler(&request)).await
}

async fn respond(reply: Reply) -> Response<BoxBody<Bytes, Infallible>> {
    match reply {
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
        Reply::After { delay, reply } => {
            tokio::time::sleep(delay).await;
            let reply = *reply;
            Box::pin(respond(reply)).await
        }
    }
}

/// Counts a connection as open until dropped.
struct OpenConnection(Arc<AtomicUsize>);

impl OpenConnection {
    fn new(count: &Arc<AtomicUsize>) -> Self {
        count.fetch_add(1, Ordering::SeqCst);
        OpenConnection(Arc::clone(count))
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
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
