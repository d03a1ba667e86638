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
    let spawn = |exchange: Exchange| std::thread::Builder::new().name("http".into()).spawn(exchange).map(drop);
    serve_with(listener, endpoints, metrics, stop, spawn);
}

/// One connection's exchange, to be run on a thread of its own.
type Exchange = Box<dyn FnOnce() + Send>;

/// `serve`, with the threads started by `spawn`.
fn serve_with(
    listener: TcpListener,
    endpoints: Endpoints,
    metrics: Arc<Metrics>,
    stop: Arc<AtomicBool>,
    mut spawn: impl FnMut(Exchange) -> std::io::Result<()>,
) {
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
        let Some(place) = Place::take(&busy) else { continue };
        let metrics = Arc::clone(&metrics);
        let spawned = spawn(Box::new(move || {
            // The thread's guard: its end gives the place back, a panic's too.
            let _place = place;
            if let Err(e) = answer(stream, endpoints, &metrics) {
                log::debug!("monitoring request: {e}");
            }
        }));
        if let Err(e) = spawned {
            // The exchange was dropped unrun, and its place with it.
            log::warn!("monitoring endpoint: cannot start a thread: {e}");
        }
    }
}

/// A place among the `MAX_CLIENTS` connections served at once, given back when dropped, however
/// the exchange ends, or when its thread could not start.
struct Place(Arc<AtomicUsize>);

impl Place {
    fn take(busy: &Arc<AtomicUsize>) -> Option<Place> {
        if busy.fetch_add(1, Ordering::Relaxed) >= MAX_CLIENTS {
            busy.fetch_sub(1, Ordering::Relaxed);
            return None;
        }
        Some(Place(Arc::clone(busy)))
    }
}

impl Drop for Place {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
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
        ("GET" | "HEAD", "/health") if endpoints.health => match metrics.health(crate::clock::boottime()) {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_place_comes_back_however_its_thread_ends() {
        let busy = Arc::new(AtomicUsize::new(0));
        let mut places: Vec<Place> = (0..MAX_CLIENTS).map(|_| Place::take(&busy).unwrap()).collect();
        assert!(Place::take(&busy).is_none(), "all taken");
        type End = fn(Place);
        let ends: [(&str, End); 3] = [
            ("never started", drop),
            ("ended", |place| std::thread::spawn(move || drop(place)).join().unwrap()),
            ("panicked", |place| {
                let thread = std::thread::spawn(move || {
                    let _place = place;
                    panic!("an http thread's bug (a test)");
                });
                assert!(thread.join().is_err());
            }),
        ];
        for (how, end) in ends {
            end(places.pop().unwrap());
            assert_eq!(busy.load(Ordering::Relaxed), MAX_CLIENTS - 1, "{how}");
            places.push(Place::take(&busy).expect(how));
        }
    }

    #[test]
    fn threads_that_cannot_start_give_their_place_back() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let failures = MAX_CLIENTS + 4;
        let server = {
            let stop = Arc::clone(&stop);
            let mut tries = 0;
            let spawn = move |exchange: Exchange| {
                tries += 1;
                match tries <= failures {
                    true => Err(std::io::Error::other("no more threads")),
                    false => std::thread::Builder::new().spawn(exchange).map(drop),
                }
            };
            let endpoints = Endpoints { health: true, ..Default::default() };
            std::thread::spawn(move || serve_with(listener, endpoints, Arc::default(), stop, spawn))
        };
        for _ in 0..failures {
            // Closed unanswered, once the server gave up on it.
            let mut refused = TcpStream::connect(address).unwrap();
            assert_eq!(refused.read(&mut [0; 1]).unwrap_or(0), 0);
        }
        let mut client = TcpStream::connect(address).unwrap();
        client.write_all(b"GET /health HTTP/1.0\r\n\r\n").unwrap();
        let mut response = String::new();
        let _ = client.read_to_string(&mut response);
        assert!(response.starts_with("HTTP/1.1 "), "{response:?}");
        stop.store(true, Ordering::Relaxed);
        TcpStream::connect(address).unwrap();
        server.join().unwrap();
    }
}
