//! The interposer is transparent on the wire: against an HTTP/2 server that reports everything it
//! received, the same calls sent directly and through pullwatch give the server the same method,
//! URI, headers and body, and give the client the same status, headers, body and trailers. No
//! containerd and no root needed: the server is ours, the agent is the real binary.

use crate::common::agent::Agent;
use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Request, Response};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo};
use sha2::{Digest, Sha256};
use std::convert::Infallible;
use std::path::Path;
use std::time::Duration;
use tokio::net::{UnixListener, UnixStream};

type Body = http_body_util::combinators::BoxBody<Bytes, Infallible>;

/// What the server saw, as one comparable text: method, URI, sorted headers, body length and
/// SHA-256.
fn describe_request(parts: &http::request::Parts, body: &[u8]) -> String {
    format!(
        "{} {}\n{}\nbody {} bytes, sha256 {}",
        parts.method,
        parts.uri,
        sorted_headers(&parts.headers),
        body.len(),
        hex::encode(Sha256::digest(body))
    )
}

fn sorted_headers(h: &HeaderMap) -> String {
    let mut v: Vec<String> = h
        .iter()
        .map(|(k, v)| format!("{k}: {}", hex::encode(v.as_bytes())))
        .collect();
    v.sort();
    v.join("\n")
}

/// Answers every call with: a header carrying (hex) what it received, custom headers, the request
/// body echoed back in two DATA frames, and trailers (`grpc-status`, a percent-encoded
/// `grpc-message`, a binary `-bin` trailer).
async fn serve(listener: UnixListener) {
    while let Ok((stream, _)) = listener.accept().await {
        tokio::spawn(async move {
            let service = hyper::service::service_fn(|req: Request<Incoming>| async move {
                let (parts, body) = req.into_parts();
                let body = body.collect().await.map_or(Bytes::new(), |c| c.to_bytes());
                let seen = hex::encode(describe_request(&parts, &body));
                let mid = body.len() / 2;
                let mut trailers = HeaderMap::new();
                trailers.insert("grpc-status", HeaderValue::from_static("0"));
                trailers.insert("grpc-message", HeaderValue::from_static("fine%20%E2%9C%93"));
                trailers.insert("x-trailer-bin", HeaderValue::from_static("AAEC/w"));
                let frames = vec![
                    Ok::<_, Infallible>(Frame::data(body.slice(..mid))),
                    Ok(Frame::data(body.slice(mid..))),
                    Ok(Frame::trailers(trailers)),
                ];
                let resp = Response::builder()
                    .header("content-type", "application/grpc+proto")
                    .header("x-seen", seen)
                    .header("x-multi", "one")
                    .header("x-multi", "two")
                    .header("x-meta-bin", "3q2+7w")
                    .body(StreamBody::new(futures_util::stream::iter(frames)))
                    .unwrap();
                Ok::<_, Infallible>(resp)
            });
            // Like grpc-go (containerd), send no `date`.
            let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                .auto_date_header(false)
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

/// Everything the client got back, as one comparable text.
async fn call(sock: &Path, path: &str, headers: &[(&str, &str)], body: Bytes) -> String {
    let stream = UnixStream::connect(sock).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .handshake::<_, Body>(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let mut req = Request::builder()
        .method("POST")
        .uri(format!("http://localhost{path}"));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req.body(Full::new(body).boxed()).unwrap();
    let resp = tokio::time::timeout(Duration::from_secs(10), sender.send_request(req))
        .await
        .expect("answered in time")
        .unwrap();
    let (parts, body) = resp.into_parts();
    let collected = body.collect().await.unwrap();
    let trailers = collected.trailers().cloned().unwrap_or_default();
    let body = collected.to_bytes();
    format!(
        "status {}\nheaders\n{}\nbody {}\ntrailers\n{}",
        parts.status,
        sorted_headers(&parts.headers),
        hex::encode(body),
        sorted_headers(&trailers)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_arrive_and_return_byte_for_byte() {
    let dir = tempfile::tempdir().unwrap();
    let server_sock = dir.path().join("server.sock");
    tokio::spawn(serve(UnixListener::bind(&server_sock).unwrap()));
    let agent = Agent::start_proxy_to(dir.path(), &server_sock, &["--log-level", "warn"]);

    // Header names and values kubelet's grpc-go sends, plus custom and binary metadata; bodies
    // that are a gRPC frame, several frames, an empty one and bytes that are no gRPC at all.
    let headers = [
        ("content-type", "application/grpc"),
        ("te", "trailers"),
        ("user-agent", "grpc-go/1.72.0"),
        ("grpc-timeout", "1999999u"),
        ("grpc-accept-encoding", "gzip"),
        ("x-request-id", "A b\tc"),
        ("x-trace-bin", "AAECAwQ"),
    ];
    let mut frame = vec![0u8, 0, 0, 0, 5];
    frame.extend_from_slice(b"\x0a\x03abc");
    let big: Vec<u8> = (0..300_000u32).map(|i| (i * 31 % 251) as u8).collect();
    for (path, body) in [
        (
            "/runtime.v1.RuntimeService/Version",
            Bytes::from(frame.clone()),
        ),
        ("/runtime.v1.ImageService/ListImages", Bytes::new()),
        ("/runtime.v9.FutureService/NoSuchMethod", Bytes::from(big)),
        (
            "/runtime.v1.ImageService/PullImage",
            Bytes::from_static(b"\x00\x00\x00\x00\x04\xff\xff\xff\xff not a message"),
        ),
    ] {
        let direct = call(&server_sock, path, &headers, body.clone()).await;
        let proxied = call(&agent.proxy_sock, path, &headers, body).await;
        assert!(direct.contains("x-seen"), "{direct}");
        assert_eq!(direct, proxied, "{path}: direct (left) and proxied differ");
    }
}

/// Any bytes, HTTP/2 or not, cross pullwatch unchanged both ways: a raw server of the test
/// records what arrives and answers with its own bytes in odd pieces.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bytes_out_equal_bytes_in_both_ways() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let dir = tempfile::tempdir().unwrap();
    let server_sock = dir.path().join("raw.sock");
    let listener = UnixListener::bind(&server_sock).unwrap();
    let answer: Vec<u8> = (0..200_000u32).map(|i| (i * 7 % 253) as u8).collect();
    let sent: Vec<u8> = (0..300_000u32).map(|i| (i * 13 % 251) as u8).collect();
    let (received_tx, received_rx) = tokio::sync::oneshot::channel();
    let a = answer.clone();
    let want = sent.len();
    tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        for piece in a.chunks(7919) {
            s.write_all(piece).await.unwrap();
        }
        let mut got = Vec::new();
        let mut buf = [0u8; 8192];
        while got.len() < want {
            let n = s.read(&mut buf).await.unwrap();
            assert!(n > 0, "closed after {} bytes", got.len());
            got.extend_from_slice(&buf[..n]);
        }
        let _ = received_tx.send(got);
    });
    let agent = Agent::start_proxy_to(dir.path(), &server_sock, &["--log-level", "warn"]);
    let mut c = UnixStream::connect(&agent.proxy_sock).await.unwrap();
    let (mut r, mut w) = c.split();
    let writing = async {
        for piece in sent.chunks(4999) {
            w.write_all(piece).await.unwrap();
        }
    };
    let reading = async {
        let mut got = vec![0u8; answer.len()];
        r.read_exact(&mut got).await.unwrap();
        got
    };
    let ((), got) = tokio::join!(writing, reading);
    assert!(
        got == answer,
        "the caller got other bytes than the server sent"
    );
    let received = tokio::time::timeout(Duration::from_secs(10), received_rx)
        .await
        .unwrap()
        .unwrap();
    assert!(
        received == sent,
        "the server got other bytes than the caller sent"
    );
    // Not HTTP/2: relayed all the same, counted once as unobserved (as not_http2 when the
    // caller's bytes are read first, as protocol when the server's are).
    let m = agent.scrape_until("counted unobserved", |m| {
        crate::common::agent::sum(m, "pullwatch_interposer_unobserved_connections_total", &[])
            == 1.0
    });
    assert!(m.contains("pullwatch_interposer_connections_open 1"), "{m}");
}
