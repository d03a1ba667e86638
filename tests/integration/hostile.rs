//! Hostile clients: floods of malformed and oversized packets, TCP streams that lie, stall or
//! hoard connections. The server must keep answering everyone else correctly, within its memory.

use std::io::{ErrorKind, Read, Write};
use std::net::{TcpStream, UdpSocket};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use domain::base::iana::Rtype;

use crate::support::{arbitrary, arbitrary_bytes, eventually, exchange, Etcd, Node, Query, Setup, Transport, WAIT};

fn node(etcd: &Etcd, zone: &str) -> Node {
    let mut node = Setup::new(etcd, zone).start();
    node.claimed();
    node
}

fn answers_correctly(node: &Node, name: &str) {
    for transport in [Transport::Udp, Transport::Tcp] {
        let a = node.ask(transport, &Query::new(name, Rtype::A));
        assert_eq!(a.data(), [node.ip.to_string()], "{transport:?}");
    }
}

fn rss_kb(node: &Node) -> u64 {
    let pid = node.pid();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[test]
fn floods_of_bad_packets_change_nothing() {
    let etcd = Etcd::start();
    let node = node(&etcd, "flood.test.");
    let before = rss_kb(&node);
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    let good = Query::new("worker1.flood.test.", Rtype::A).packet();
    for i in 0..20_000u64 {
        let bits = arbitrary(i);
        let packet: Vec<u8> = match i % 4 {
            // Arbitrary bytes of any length up to past the receive buffer.
            0 => arbitrary_bytes(i, (bits % 9000) as usize),
            // A real query cut short.
            1 => good[..bits as usize % good.len()].to_vec(),
            // A real query with three bytes overwritten: a place and a value from each pair of
            // the arbitrary bytes.
            2 => {
                let mut p = good.clone();
                for pair in bits.to_le_bytes().chunks(2).take(3) {
                    let at = pair[0] as usize % p.len();
                    p[at] = pair[1];
                }
                p
            }
            // A real query padded far beyond any sane size.
            _ => [good.as_slice(), &vec![0xAB; 6000]].concat(),
        };
        let _ = socket.send_to(&packet, node.address());
    }
    answers_correctly(&node, "worker1.flood.test.");
    let after = rss_kb(&node);
    assert!(after < before + 8 * 1024, "RSS grew from {before} kB to {after} kB");
}

#[test]
fn tcp_clients_that_lie_or_stall_do_not_hold_up_others() {
    let etcd = Etcd::start();
    let node = node(&etcd, "stall.test.");
    // Promises 1000 bytes, sends 10, then waits forever.
    let mut liar = TcpStream::connect(node.address()).unwrap();
    liar.write_all(&[0x03, 0xE8, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10]).unwrap();
    // Sends a message only partly.
    let query = Query::new("worker1.stall.test.", Rtype::A).packet();
    let mut slow = TcpStream::connect(node.address()).unwrap();
    slow.write_all(&(query.len() as u16).to_be_bytes()).unwrap();
    slow.write_all(&query[..5]).unwrap();
    answers_correctly(&node, "worker1.stall.test.");
    // The slow one finishes its message and gets its answer.
    slow.write_all(&query[5..]).unwrap();
    slow.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let mut len = [0u8; 2];
    slow.read_exact(&mut len).unwrap();
    assert!(u16::from_be_bytes(len) > 12);
}

#[test]
fn a_tcp_client_sending_frames_without_answers_is_cut_off() {
    let etcd = Etcd::start();
    let node = node(&etcd, "frames.test.");
    let mut flooder = TcpStream::connect(node.address()).unwrap();
    flooder.set_write_timeout(Some(Duration::from_secs(5))).unwrap();
    // Empty frames, as fast as the socket takes them, while others ask: they must not wait, and
    // the server closes the flooder's connection rather than read it forever.
    let written = Arc::new(AtomicU32::new(0));
    let counting = Arc::clone(&written);
    let flood = std::thread::spawn(move || {
        for _ in 0..100_000 {
            if flooder.write_all(&[0u8; 1024]).is_err() {
                return true;
            }
            counting.fetch_add(1, Ordering::Relaxed);
        }
        false
    });
    // Under way: a megabyte of frames sent, or already cut off.
    eventually("the flood to be under way", WAIT, || {
        (written.load(Ordering::Relaxed) >= 1000 || flood.is_finished()).then_some(())
    });
    answers_correctly(&node, "worker1.frames.test.");
    assert!(flood.join().unwrap(), "the flooder's connection was closed");
}

#[test]
fn hoarded_tcp_connections_do_not_lock_out_new_clients() {
    let etcd = Etcd::start();
    let node = node(&etcd, "hoard.test.");
    // Past the cap of 128: the longest idle ones make room for newcomers.
    let hoard: Vec<TcpStream> = (0..300).map(|_| TcpStream::connect(node.address()).unwrap()).collect();
    for stream in &hoard {
        stream.set_nonblocking(true).unwrap();
    }
    // Once the server has taken all 300, it has closed 300 - 128 of them to make room.
    eventually("the server to take the hoard and close the oldest", WAIT, || {
        (hoard.iter().filter(|stream| closed(stream)).count() >= 300 - 128).then_some(())
    });
    let answer = exchange(node.address(), Transport::Tcp, &Query::new("worker1.hoard.test.", Rtype::A).packet());
    assert!(answer.is_some(), "a new TCP client is answered");
    drop(hoard);
    answers_correctly(&node, "worker1.hoard.test.");
}

/// Whether the server closed this non-blocking connection: a read finds its end, not nothing yet.
fn closed(mut stream: &TcpStream) -> bool {
    match stream.read(&mut [0u8; 1]) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => e.kind() != ErrorKind::WouldBlock,
    }
}
