//! The lab: hosts as Linux network namespaces on one bridge, in 10.77.0.0/24. Three namespaces
//! run a three-member etcd, each node runs in a namespace of its own on port 53 with the one
//! Corefile that names neither `address` nor `bind` (as the README tells users to run it), and
//! one namespace is the client everything is asked from.
//!
//! Nothing leaves the machine: the bridge has no address in the machine's own namespace, and no
//! namespace has a route beyond 10.77.0.0/24, so a packet to any other address finds no route.
//! Every name the lab creates starts with `idl<pid><letter>-`: two runs never collide, and
//! `Lab::new` first removes what a run that died left behind.

use std::fs;
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

use crate::support::{within, Etcd, Node};

/// What every name the lab creates starts with, before the creating process's ID.
const PREFIX: &str = "idl";

/// The lab's zone: `node1.lab.test.` ...
pub const ZONE: &str = "lab.test.";

/// How long a node's lease lasts: short, so that a node cut off loses its name within a test.
pub const LEASE_SECONDS: u32 = 6;

pub fn etcd_ip(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 77, 0, 1 + i as u8)
}

pub fn node_ip(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 77, 0, 11 + i as u8)
}

pub const CLIENT_IP: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 250);

/// The machine's own network namespace, kept open before any thread joins one of the lab's.
static MACHINE: OnceLock<fs::File> = OnceLock::new();

/// Notes the calling thread's network namespace as the machine's: call before any `Lab::new`.
pub fn note_machine_netns() {
    MACHINE.get_or_init(|| fs::File::open("/proc/thread-self/ns/net").expect("this thread's network namespace"));
}

/// `ip ARGS…`, run in the machine's own namespace whatever namespace the calling thread is in:
/// there the bridge and the links' other ends are.
fn ip_command(args: &[&str]) -> Command {
    let machine = MACHINE.get().expect("note_machine_netns was called").as_raw_fd();
    let mut command = Command::new("ip");
    command.args(args);
    // SAFETY: setns is async-signal-safe; the descriptor stays open for the process's life.
    unsafe {
        command.pre_exec(move || match libc::setns(machine, libc::CLONE_NEWNET) {
            0 => Ok(()),
            _ => Err(std::io::Error::last_os_error()),
        });
    }
    command
}

/// Runs `ip ARGS…`; a failure fails the test, with what `ip` said.
pub fn ip(args: &[&str]) {
    let output = ip_command(args).output().expect("ip (iproute2) is installed");
    assert!(output.status.success(), "ip {}: {}", args.join(" "), String::from_utf8_lossy(&output.stderr));
}

/// As `ip`, for teardown: what is already gone is fine.
fn ip_quietly(args: &[&str]) {
    let _ = ip_command(args).output();
}

pub struct Lab {
    /// `idl<pid><letter>-`.
    prefix: String,
    pub etcd: Vec<Etcd>,
    /// Node `i` runs in namespace `<prefix>n<i>` at `node_ip(i)`; `None` while stopped.
    pub nodes: Vec<Option<Node>>,
    corefile: String,
    namespaces: Vec<String>,
}

impl Lab {
    /// A lab with `nodes` node hosts (none started yet) and the etcd cluster running. The calling
    /// thread joins the client namespace, so that whatever it sends reaches the lab, and only
    /// the lab.
    pub fn new(nodes: usize) -> Lab {
        remove_leftovers();
        // A letter per lab of this process: a lab whose teardown failed is not in the next's way.
        static LABS: AtomicU8 = AtomicU8::new(0);
        let letter = char::from(b'a' + LABS.fetch_add(1, Ordering::Relaxed) % 26);
        let prefix = format!("{PREFIX}{}{letter}-", std::process::id());
        let bridge = format!("{prefix}br");
        ip(&["link", "add", &bridge, "type", "bridge"]);
        ip(&["link", "set", &bridge, "up"]);
        let mut lab =
            Lab { prefix, etcd: Vec::new(), nodes: Vec::new(), corefile: String::new(), namespaces: Vec::new() };
        let hosts: Vec<(String, Ipv4Addr)> = (0..3).map(|i| (format!("e{}", i + 1), etcd_ip(i))).collect();
        for (name, address) in &hosts {
            lab.add_host(name, *address);
        }
        for i in 0..nodes {
            lab.add_host(&format!("n{}", i + 1), node_ip(i));
        }
        lab.add_host("c", CLIENT_IP);
        join_netns(&lab.netns("c"));
        let hosts: Vec<(String, Ipv4Addr)> = hosts.into_iter().map(|(name, ip)| (lab.netns(&name), ip)).collect();
        lab.etcd = Etcd::cluster_in(&hosts);
        let endpoints: Vec<String> = lab.etcd.iter().map(|m| m.url.clone()).collect();
        lab.corefile = format!(
            ".:53 {{
    health :8080
    idetcd {{
        endpoint {}
        limit {nodes}
        pattern node{{{{.ID}}}}.{ZONE}
        lease {LEASE_SECONDS}
    }}
}}
",
            endpoints.join(" ")
        );
        lab.nodes = (0..nodes).map(|_| None).collect();
        lab
    }

    pub fn netns(&self, host: &str) -> String {
        format!("{}{host}", self.prefix)
    }

    /// A namespace with loopback up and `eth0` at `address`, linked to the bridge.
    fn add_host(&mut self, host: &str, address: Ipv4Addr) {
        let netns = self.netns(host);
        ip(&["netns", "add", &netns]);
        self.namespaces.push(netns.clone());
        // The link's end on the bridge is named like the namespace; inside, every host has eth0.
        ip(&["link", "add", &netns, "type", "veth", "peer", "name", "eth0", "netns", &netns]);
        ip(&["link", "set", &netns, "master", &format!("{}br", self.prefix), "up"]);
        ip(&["-n", &netns, "link", "set", "lo", "up"]);
        ip(&["-n", &netns, "addr", "add", &format!("{address}/24"), "dev", "eth0"]);
        ip(&["-n", &netns, "link", "set", "eth0", "up"]);
    }

    /// The Corefile every node runs.
    pub fn corefile(&self) -> &str {
        &self.corefile
    }

    /// Starts node `i` (again) in its namespace.
    pub fn start(&mut self, i: usize) -> &mut Node {
        let netns = self.netns(&format!("n{}", i + 1));
        let node = Node::start_in(Some(&netns), self.corefile.clone(), node_ip(i), &[], &[]);
        self.nodes[i].insert(node)
    }

    pub fn node(&mut self, i: usize) -> &mut Node {
        self.nodes[i].as_mut().unwrap_or_else(|| panic!("node {} is not running", i + 1))
    }

    /// The running nodes, with their index.
    pub fn running(&self) -> impl Iterator<Item = (usize, &Node)> {
        self.nodes.iter().enumerate().filter_map(|(i, n)| Some((i, n.as_ref()?)))
    }

    /// Makes `to` unreachable from host `from`: a blackhole route, so that packets vanish as on
    /// a broken network, without an error to tell the sender.
    pub fn cut(&self, from: &str, to: Ipv4Addr) {
        ip(&["-n", &self.netns(from), "route", "add", "blackhole", &format!("{to}/32")]);
    }

    pub fn uncut(&self, from: &str, to: Ipv4Addr) {
        ip(&["-n", &self.netns(from), "route", "del", "blackhole", &format!("{to}/32")]);
    }

    /// Host `host`'s link up or down: down, it is cut off from everything.
    pub fn link(&self, host: &str, up: bool) {
        ip(&["-n", &self.netns(host), "link", "set", "eth0", if up { "up" } else { "down" }]);
    }

    /// The member that leads, once one does.
    pub fn leader(&self) -> usize {
        let leader = within(Duration::from_secs(20), || self.etcd.iter().position(Etcd::is_leader));
        leader.expect("the etcd cluster elects a leader")
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        // Processes first: a namespace removed under a running process lives on with it.
        for node in &mut self.nodes {
            node.take();
        }
        self.etcd.clear();
        for netns in &self.namespaces {
            remove_netns(netns);
        }
        ip_quietly(&["link", "del", &format!("{}br", self.prefix)]);
    }
}

/// Moves the calling thread into namespace `netns`: its sockets from then on are the host's.
pub fn join_netns(netns: &str) {
    let file = fs::File::open(Path::new("/run/netns").join(netns)).expect("the namespace exists");
    // SAFETY: setns on a descriptor we own; it changes only this thread's network namespace.
    let done = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
    assert_eq!(done, 0, "setns {netns}: {}", std::io::Error::last_os_error());
}

/// Kills what still runs in `netns` and removes it (with its end of the link).
fn remove_netns(netns: &str) {
    if let Ok(output) = ip_command(&["netns", "pids", netns]).output() {
        // Not this process, whose thread may be in the namespace.
        let me = std::process::id().to_string();
        for pid in String::from_utf8_lossy(&output.stdout).split_whitespace().filter(|p| *p != me) {
            if let Ok(pid) = pid.parse::<i32>() {
                // SAFETY: a plain kill of a process left in the lab's own namespace.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
    }
    ip_quietly(&["netns", "del", netns]);
    ip_quietly(&["link", "del", netns]);
}

/// Removes the namespaces and links of lab runs whose process is gone (killed before its
/// teardown ran).
pub fn remove_leftovers() {
    let dead = |name: &str| {
        let digits =
            name.strip_prefix(PREFIX).map(|rest| rest.split(|c: char| !c.is_ascii_digit()).next().unwrap_or(""));
        let pid = digits.and_then(|p| p.parse::<u32>().ok());
        pid.is_some_and(|pid| pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists())
    };
    let listed = |args: &[&str]| {
        let output = ip_command(args).output().map(|o| o.stdout).unwrap_or_default();
        String::from_utf8_lossy(&output).into_owned()
    };
    // "idl123-n1 (id: 4)"
    for netns in listed(&["netns", "list"]).lines().filter_map(|l| l.split_whitespace().next()).filter(|n| dead(n)) {
        eprintln!("lab: removing {netns}, left by a run that died");
        remove_netns(netns);
    }
    // "7: idl123-br: <…", and a link's end on the bridge "8: idl123-n1@if2: <…"
    let links = listed(&["-o", "link", "show"]);
    for link in links.lines().filter_map(|l| l.split(": ").nth(1)) {
        let link = link.split('@').next().unwrap_or(link);
        if dead(link) {
            ip_quietly(&["link", "del", link]);
        }
    }
}
