//! Small HTTP clients: hyper over plain TCP, and raw bytes on a socket.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tokio::sync::Semaphore;

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

/// Opens a stream and reads its first frame, which must be `first`; the rest is left.
pub async fn stream_after_first_frame(url: &str, first: &str) -> Incoming {
    let mut body = open_stream(url).await.into_body();
    let frame = body.frame().await.unwrap().unwrap().into_data().unwrap();
    assert_eq!(frame, first);
    body
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

/// A config with one route, `prefix` to `upstream`, and its credential `name`, whose
/// table holds `table` (the lines after `[credentials.NAME]`): the shape most tests start
/// from.
pub fn one_route(name: &str, table: &str, prefix: &str, upstream: &str) -> String {
    format!(
        "listen = \"127.0.0.1:0\"\n\n[credentials.{name}]\n{table}\n\n[[routes]]\nprefix = \"{prefix}\"\nupstream = \"{upstream}\"\ncredential = \"{name}\"\n"
    )
}

/// One route, `prefix` to `upstream`, with the literal key `k`.
pub fn route_config(prefix: &str, upstream: &str) -> String {
    one_route("key", "kind = \"api_key\"\nvalue = \"k\"", prefix, upstream)
}

/// The route table every test config starts from: `/` to `upstream` with credential `key`.
pub fn config(upstream: &str, credential: &str) -> String {
    one_route(
        "key",
        &format!("kind = \"api_key\"\n{credential}"),
        "/",
        upstream,
    )
}
