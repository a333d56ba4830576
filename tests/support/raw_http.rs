#![allow(dead_code)]
//! A tiny HTTP/1.1 server for answers no real server gives (gzip bombs, huge declared
//! lengths) and for recording exactly what the sidecar sent (the `Authorization` header),
//! over plain TCP or TLS. Each connection gets one answer, then is closed.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

type Answer = dyn Fn(&str) -> Vec<u8> + Send + Sync;

pub struct RawServer {
    pub addr: SocketAddr,
    heads: Arc<Mutex<Vec<String>>>,
    task: JoinHandle<()>,
}

impl Drop for RawServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A whole HTTP answer with a body and `Connection: close`.
pub fn response(status: u16, headers: &[(&str, &str)], body: &[u8]) -> Vec<u8> {
    let mut out = format!("HTTP/1.1 {status} X\r\nconnection: close\r\n");
    for (k, v) in headers {
        out.push_str(&format!("{k}: {v}\r\n"));
    }
    out.push_str(&format!("content-length: {}\r\n\r\n", body.len()));
    let mut out = out.into_bytes();
    out.extend_from_slice(body);
    out
}

/// A JSON answer with `X-elastic-product: Elasticsearch` (the crate checks it).
pub fn json_response(status: u16, body: &str) -> Vec<u8> {
    response(
        status,
        &[
            ("content-type", "application/json"),
            ("x-elastic-product", "Elasticsearch"),
        ],
        body.as_bytes(),
    )
}

impl RawServer {
    /// Plain TCP on 127.0.0.1; `answer(request head)` gives the bytes to send back.
    pub async fn start(answer: impl Fn(&str) -> Vec<u8> + Send + Sync + 'static) -> Self {
        Self::start_inner(answer, None).await
    }

    /// TLS on 127.0.0.1 with the given server configuration.
    pub async fn start_tls(
        answer: impl Fn(&str) -> Vec<u8> + Send + Sync + 'static,
        tls: tokio_rustls::TlsAcceptor,
    ) -> Self {
        Self::start_inner(answer, Some(tls)).await
    }

    async fn start_inner(
        answer: impl Fn(&str) -> Vec<u8> + Send + Sync + 'static,
        tls: Option<tokio_rustls::TlsAcceptor>,
    ) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let heads = Arc::new(Mutex::new(Vec::new()));
        let answer: Arc<Answer> = Arc::new(answer);
        let h = heads.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let (answer, heads, tls) = (answer.clone(), h.clone(), tls.clone());
                tokio::spawn(async move {
                    match tls {
                        None => serve_one(stream, &*answer, &heads).await,
                        Some(acceptor) => {
                            if let Ok(s) = acceptor.accept(stream).await {
                                serve_one(s, &*answer, &heads).await;
                            }
                        }
                    }
                });
            }
        });
        Self { addr, heads, task }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Request heads received so far (request line and headers, lowercase names kept as sent).
    pub fn heads(&self) -> Vec<String> {
        self.heads.lock().unwrap().clone()
    }
}

async fn serve_one<S: AsyncRead + AsyncWrite + Unpin>(
    mut s: S,
    answer: &Answer,
    heads: &Mutex<Vec<String>>,
) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        match s.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    let len: usize = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().ok())?
        })
        .unwrap_or(0);
    while buf.len() < head_end + len {
        match s.read(&mut chunk).await {
            Ok(0) | Err(_) => break,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    heads.lock().unwrap().push(head.clone());
    let out = answer(&head);
    let _ = s.write_all(&out).await;
    let _ = s.flush().await;
    let _ = s.shutdown().await;
}

/// The `name` header's value in a recorded request head.
pub fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}
