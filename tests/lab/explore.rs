//! A lab to explore by hand (`scripts/lab [NODES]`): the same lab the tests build, with every
//! node started, until Enter or Ctrl-C; then it is removed.

use std::io::BufRead;

use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

use crate::lab::{self, Lab, ZONE};

pub fn run(args: &[String]) {
    let nodes: usize = match args.first().map(|n| n.parse()) {
        None => 3,
        Some(Ok(n)) if (1..=200).contains(&n) => n,
        Some(_) => {
            eprintln!("usage: scripts/lab [NODES]   (1 to 200, default 3)");
            std::process::exit(2);
        }
    };
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("error: the lab makes network namespaces, which needs root: run scripts/lab as root");
        std::process::exit(1);
    }
    // Ctrl-C and SIGTERM end the wait below instead of the process, so that the lab is removed.
    let mut signals = Signals::new([SIGINT, SIGTERM]).expect("signal handlers");
    lab::note_machine_netns();
    let mut lab = Lab::new(nodes);
    let names: Vec<String> = (0..nodes).map(|i| lab.start(i).claimed()).collect();
    let (client, first) = (lab.netns("c"), lab.netns("n1"));
    println!(
        "\nthe lab is up: etcd at {}, {}, {} (ports 2379, 2380)",
        lab::etcd_ip(0),
        lab::etcd_ip(1),
        lab::etcd_ip(2)
    );
    for (i, name) in names.iter().enumerate() {
        println!("  {} (namespace {}) holds {name}", lab::node_ip(i), lab.netns(&format!("n{}", i + 1)));
    }
    println!(
        "\nthe Corefile every node runs:\n{}\ntry, in another terminal:
  ip netns exec {client} dig +short @{} node{nodes}.{ZONE}
  ip netns exec {client} dig @{} id.server CH TXT
  ip netns exec {first} bash                          a shell on node 1's host
  ip -n {first} route add blackhole {}/32     cut node 1 off from one etcd member
  ip -n {first} link set eth0 down                    or from everything
\nEnter or Ctrl-C removes the lab.",
        lab.corefile(),
        lab::node_ip(0),
        lab::node_ip(0),
        lab::etcd_ip(0)
    );
    let (done, wait) = crossbeam_channel::bounded::<()>(2);
    let enter = done.clone();
    std::thread::spawn(move || {
        let _ = std::io::stdin().lock().lines().next();
        let _ = enter.send(());
    });
    std::thread::spawn(move || {
        if signals.forever().next().is_some() {
            let _ = done.send(());
        }
    });
    let _ = wait.recv();
    println!("removing the lab");
    drop(lab);
}
