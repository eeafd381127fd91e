//! A scripted HTTP server on 127.0.0.1:0: each call gets the next reply of the script (the last
//! one repeats), every request is recorded. Replies can be delayed, streamed in chunks, or cut
//! off mid-body (the connection drops without the chunked terminator).

#![allow(dead_code)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::Response;
use futures::StreamExt;
use serde_json::Value;

#[derive(Clone)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(&'static str, String)>,
    pub chunks: Vec<Bytes>,
    /// Drop the connection after the chunks instead of ending the body.
    pub cut: bool,
    /// Wait this long before answering.
    pub delay: Duration,
    /// Wait this long after the first chunk (a stream that stalls).
    pub stall: Duration,
}

impl Reply {
    pub fn json(status: u16, body: Value) -> Self {
        Self {
            status,
            headers: vec![("content-type", "application/json".into())],
            chunks: vec![Bytes::from(body.to_string())],
            cut: false,
            delay: Duration::ZERO,
            stall: Duration::ZERO,
        }
    }

    /// An SSE body, one chunk per `data:` line.
    pub fn sse(data: &[String]) -> Self {
        Self {
            status: 200,
            headers: vec![("content-type", "text/event-stream".into())],
            chunks: data
                .iter()
                .map(|d| Bytes::from(format!("data: {d}\n\n")))
                .collect(),
            cut: false,
            delay: Duration::ZERO,
            stall: Duration::ZERO,
        }
    }

    pub fn binary(content_type: &str, chunks: Vec<Bytes>) -> Self {
        Self {
            status: 200,
            headers: vec![("content-type", content_type.into())],
            chunks,
            cut: false,
            delay: Duration::ZERO,
            stall: Duration::ZERO,
        }
    }

    pub fn header(mut self, name: &'static str, value: &str) -> Self {
        self.headers.push((name, value.into()));
        self
    }

    pub fn cut(mut self) -> Self {
        self.cut = true;
        self
    }

    pub fn delayed(mut self, d: Duration) -> Self {
        self.delay = d;
        self
    }

    pub fn stalled(mut self, d: Duration) -> Self {
        self.stall = d;
        self
    }
}

#[derive(Debug, Clone)]
pub struct Recorded {
    pub path: String,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Recorded {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }
}

type Handler = dyn Fn(&Recorded, usize) -> Reply + Send + Sync;

#[derive(Clone)]
struct Shared {
    handler: Arc<Handler>,
    requests: Arc<Mutex<Vec<Recorded>>>,
}

pub struct MockServer {
    pub url: String,
    requests: Arc<Mutex<Vec<Recorded>>>,
}

impl MockServer {
    /// Answers each call with `handler(request, call index)`.
    pub async fn start(
        handler: impl Fn(&Recorded, usize) -> Reply + Send + Sync + 'static,
    ) -> Self {
        let shared = Shared {
            handler: Arc::new(handler),
            requests: Arc::default(),
        };
        let requests = shared.requests.clone();
        let app = axum::Router::new().fallback(answer).with_state(shared);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        Self { url, requests }
    }

    /// The nth call gets the nth reply; the last one repeats.
    pub async fn script(replies: Vec<Reply>) -> Self {
        Self::start(move |_, n| replies[n.min(replies.len() - 1)].clone()).await
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.requests.lock().unwrap().clone()
    }
}

async fn answer(State(s): State<Shared>, uri: Uri, headers: HeaderMap, body: Bytes) -> Response {
    let recorded = Recorded {
        path: uri.path().to_owned(),
        headers,
        body,
    };
    let n = {
        let mut all = s.requests.lock().unwrap();
        all.push(recorded.clone());
        all.len() - 1
    };
    let reply = (s.handler)(&recorded, n);
    if !reply.delay.is_zero() {
        tokio::time::sleep(reply.delay).await;
    }
    let stall = reply.stall;
    let cut = reply.cut;
    let chunks = futures::stream::iter(reply.chunks.into_iter().enumerate()).then(
        move |(i, c)| async move {
            if i == 1 && !stall.is_zero() {
                tokio::time::sleep(stall).await;
            }
            // A pause between chunks, so the client really reads them one by one.
            tokio::task::yield_now().await;
            Ok::<_, std::io::Error>(c)
        },
    );
    let body = if cut {
        Body::from_stream(chunks.chain(futures::stream::once(async {
            Err(std::io::Error::other("connection cut by the test"))
        })))
    } else {
        Body::from_stream(chunks)
    };
    let mut resp = Response::builder().status(StatusCode::from_u16(reply.status).unwrap());
    for (k, v) in reply.headers {
        resp = resp.header(k, v);
    }
    resp.body(body).unwrap()
}
