//! Corefiles as CoreDNS users write them: several server blocks, `bind` by interface, the
//! directives they type first, and variables only the daemon needs.

use std::fs;
use std::net::{Ipv4Addr, Ipv6Addr, TcpListener, UdpSocket};
use std::time::Duration;

use domain::base::iana::{OptRcode, Rtype};

use crate::support::{free_port, next_loopback, Etcd, Node, Query, Setup, Transport};

#[test]
fn a_second_server_block_forwards_its_zone() {
    let etcd = Etcd::start();
    // The upstream: another DNS server, here an idetcd serving its own zone.
    let mut upstream = Setup::new(&etcd, "up.test.").start();
    assert_eq!(upstream.claimed(), "worker1.up.test.");
    let ip = next_loopback();
    let port = free_port(ip);
    let corefile = Setup::new(&etcd, "split.test.").corefile(ip, port);
    let corefile = corefile.replacen(&format!(".:{port} {{"), &format!("split.test:{port} {{"), 1);
    let corefile = format!(
        "{corefile}up.test:{port} {{\n    forward . {}:{}\n    log\n    errors\n    cache 30\n}}\n",
        upstream.ip, upstream.port
    );
    let mut node = Node::start_with(corefile, ip);
    assert_eq!(node.claimed(), "worker1.split.test.");
    for transport in [Transport::Udp, Transport::Tcp] {
        let own = node.ask(transport, &Query::new("worker1.split.test.", Rtype::A));
        assert_eq!((own.data(), own.aa), (vec![ip.to_string()], true), "{transport:?}");
        let forwarded = node.ask(transport, &Query::new("worker1.up.test.", Rtype::A));
        assert_eq!(forwarded.data(), [upstream.ip.to_string()], "{transport:?}");
        // Only what the second block's key covers goes upstream.
        let other = node.ask(transport, &Query::new("worker1.other.test.", Rtype::A));
        assert_eq!(other.rcode, OptRcode::REFUSED, "{transport:?}");
    }
    assert!(node.log().contains("cache: answers already come from memory"), "{}", node.log());
}

#[test]
fn bind_takes_an_interface_name() {
    let etcd = Etcd::start();
    let ip = Ipv4Addr::LOCALHOST;
    // `lo` is 127.0.0.1 and, where the machine has IPv6, ::1: the port must be free on both.
    let port = (0..)
        .map(|_| free_port(ip))
        .find(|&p| {
            UdpSocket::bind((Ipv6Addr::LOCALHOST, 0)).is_err()
                || (UdpSocket::bind((Ipv6Addr::LOCALHOST, p)).is_ok()
                    && TcpListener::bind((Ipv6Addr::LOCALHOST, p)).is_ok())
        })
        .unwrap();
    let corefile = Setup::new(&etcd, "lo.test.").corefile(ip, port).replacen("bind 127.0.0.1", "bind lo", 1);
    assert!(corefile.contains("    bind lo\n"), "{corefile}");
    let mut node = Node::start_with(corefile.clone(), ip);
    assert_eq!(node.claimed(), "worker1.lo.test.");
    assert_eq!(node.query("worker1.lo.test.", Rtype::A).data(), ["127.0.0.1"]);
    drop(node);

    let mut unknown = Node::start_with(corefile.replacen("bind lo", "bind nosuch9", 1), ip);
    assert_eq!(unknown.wait_exit(Duration::from_secs(5)).code(), Some(1));
    let log = unknown.log();
    assert!(log.contains("bind nosuch9: this machine has no interface of that name"), "{log}");
    assert_eq!(etcd.names("lo.test."), ["worker1.lo.test."], "the first node's name, killed, and no other");
}

#[test]
fn clients_run_without_the_variables_only_the_daemon_needs() {
    let etcd = Etcd::start();
    let mut node = Setup::new(&etcd, "vars.test.").start();
    assert_eq!(node.claimed(), "worker1.vars.test.");
    // The daemon has read its Corefile; the commands now read one whose server block needs
    // variables this shell does not have.
    let corefile = fs::read_to_string(node.corefile_path()).unwrap();
    let with_variables = corefile.replacen(
        &format!("    bind {}\n", node.ip),
        "    bind {$IDETCD_TEST_NODE_IP}\n    forward . {$IDETCD_TEST_UPSTREAM}\n",
        1,
    );
    assert_ne!(with_variables, corefile);
    fs::write(node.corefile_path(), &with_variables).unwrap();
    let (status, out, err) = node.run("members", &[]);
    assert!(status.success(), "{err}");
    assert!(out.contains("worker1.vars.test."), "{out}");
    let (status, out, err) = node.run("hostfile", &[]);
    assert!(status.success(), "{err}");
    assert_eq!(out, "worker1.vars.test slots=1\n");

    // The daemon needs them all, and says which and where.
    let mut daemon = Node::start_with(with_variables, next_loopback());
    assert_eq!(daemon.wait_exit(Duration::from_secs(5)).code(), Some(1));
    assert!(
        daemon.log().contains("Corefile:2: environment variable IDETCD_TEST_NODE_IP is not set"),
        "{}",
        daemon.log()
    );
}
