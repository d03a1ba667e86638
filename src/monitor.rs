//! The monitoring endpoints, `GET /health`, `GET /ready` and `GET /metrics`, on a deliberately small HTTP/1.1
//! server: one request per connection, each connection on a short-lived thread of its own with one
//! second for the whole exchange, at most a few at a time. These are scraped every few seconds
//! from a handful of places; a server crate would add more code than it saves, and a slow or
//! silent client must not make a healthy node look dead.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::metrics::Metrics;

/// A client gets this long for the whole exchange, from accept to the last byte of the answer.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(1);
const MAX_REQUEST: usize = 8 * 1024;
/// Connections served at once; more are closed at once.
const MAX_CLIENTS: usize = 16;

/// Which endpoints a listener serves (several when `health`, `ready` and `prometheus` share an
/// address).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Endpoints {
    pub health: bool,
    pub ready: bool,
    pub metrics: bool,
}

/// Serves until `stop` is set (a reload moved or dropped this listener); whoever sets it then
/// connects once, so that the waiting accept returns.
pub fn serve(listener: TcpListener, endpoints: Endpoints, metrics: Arc<Metrics>, stop: Arc<AtomicBool>) {
    let busy = Arc::new(AtomicUsize::new(0));
    for stream in listener.incoming() {
        if stop.load(Ordering::Relaxed) {
            return;
        }
        let stream = match stream {
            Ok(stream) => stream,
            Err(e) => {
                log::warn!("monitoring endpoint: {e}");
                std::thread::sleep(Duration::from_millis(100));
                continue;
            }
        };
        if busy.fetch_add(1, Ordering::Relaxed) >= MAX_CLIENTS {
            busy.fetch_sub(1, Ordering::Relaxed);
            continue;
        }
        let (metrics, busy) = (Arc::clone(&metrics), Arc::clone(&busy));
        let spawned = std::thread::Builder::new().name("http".into()).spawn(move || {
            if let Err(e) = answer(stream, endpoints, &metrics) {
                log::debug!("monitoring request: {e}");
            }
            busy.fetch_sub(1, Ordering::Relaxed);
        });
        if let Err(e) = spawned {
            log::warn!("monitoring endpoint: cannot start a thread: {e}");
        }
    }
}

fn answer(mut stream: TcpStream, endpoints: Endpoints, metrics: &Metrics) -> std::io::Result<()> {
    let deadline = Instant::now() + CLIENT_TIMEOUT;
    let left = || {
        let left = deadline.saturating_duration_since(Instant::now());
        match left.is_zero() {
            true => Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "client too slow")),
            false => Ok(Some(left)),
        }
    };
    let mut request = Vec::new();
    let mut chunk = [0u8; 1024];
    while !request.windows(4).any(|w| w == b"\r\n\r\n") && !request.windows(2).any(|w| w == b"\n\n") {
        stream.set_read_timeout(left()?)?;
        let n = stream.read(&mut chunk)?;
        if n == 0 || request.len() + n > MAX_REQUEST {
            break;
        }
        request.extend_from_slice(&chunk[..n]);
    }
    let head = String::from_utf8_lossy(&request);
    let mut words = head.split_whitespace();
    let (method, path) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
    let path = path.split('?').next().unwrap_or("");
    let (status, body) = match (method, path) {
        ("GET" | "HEAD", "/health") if endpoints.health => match metrics.health() {
            Ok(body) => ("200 OK", body),
            Err(body) => ("503 Service Unavailable", body),
        },
        ("GET" | "HEAD", "/ready") if endpoints.ready => match metrics.ready(crate::clock::boottime()) {
            Ok(body) => ("200 OK", body),
            Err(body) => ("503 Service Unavailable", body),
        },
        ("GET" | "HEAD", "/metrics") if endpoints.metrics => ("200 OK", metrics.render()),
        ("GET" | "HEAD", _) => ("404 Not Found", "not found\n".to_string()),
        _ => ("405 Method Not Allowed", "only GET\n".to_string()),
    };
    let content_type =
        if path == "/metrics" { "text/plain; version=0.0.4; charset=utf-8" } else { "text/plain; charset=utf-8" };
    let mut response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    if method != "HEAD" {
        response.push_str(&body);
    }
    stream.set_write_timeout(left()?)?;
    stream.write_all(response.as_bytes())
}
