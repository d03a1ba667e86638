//! The lab's tests: nodes as real hosts in network namespaces, faults made with routes and links,
//! and the fencing invariant checked all through (see lab.rs and fencing.rs).
//!
//! Its own harness, not libtest's: the tests run one at a time (each builds a whole lab), each in
//! a thread of its own (a test's thread joins the lab's client namespace), and they need root.
//!
//!   cargo test --test lab [-- NAME...]      the tests whose name contains a NAME (default: all)
//!   scripts/lab                             a lab to explore by hand (see explore.rs)
//!   cargo test --test lab -- soak MINUTES [SEED]
//!                                           the soak, as scripts/soak runs it (see soak.rs)

#[allow(dead_code)]
#[path = "../integration/support.rs"]
mod support;

mod explore;
mod faults;
mod fencing;
mod lab;
mod soak;

use std::time::Instant;

type Test = (&'static str, fn());

const TESTS: &[Test] = &[
    ("fencing_checker_sees_two_hosts_claiming_one_name", faults::fencing_checker_sees_two_hosts_claiming_one_name),
    ("node_cut_off_from_etcd_keeps_answering_then_gives_up_its_name", faults::node_cut_off_from_etcd),
    ("node_cut_off_from_everything_claims_its_name_again", faults::node_cut_off_from_everything),
    ("etcd_leader_cut_off_from_the_other_members", faults::etcd_leader_cut_off_from_the_other_members),
    ("etcd_without_quorum_then_healed", faults::etcd_without_quorum),
    ("node_link_flapping_for_a_minute", faults::node_link_flapping),
    ("soak_answer_checker_rules", soak::answer_checker_rules),
];

fn main() {
    // libtest's flags (`--quiet`, `--test-threads 1`, ...) mean nothing here; words filter.
    let words: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with('-')).collect();
    if words.first().map(String::as_str) == Some("explore") {
        explore::run(&words[1..]);
        return;
    }
    if words.first().map(String::as_str) == Some("soak") {
        soak::run(&words[1..]);
        return;
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        println!("lab: skipped: network namespaces need root (CI runs as root)");
        return;
    }
    lab::note_machine_netns();
    let chosen: Vec<&Test> =
        TESTS.iter().filter(|(name, _)| words.is_empty() || words.iter().any(|w| name.contains(w.as_str()))).collect();
    println!("\nrunning {} lab tests", chosen.len());
    let mut failed = Vec::new();
    for (name, test) in chosen {
        let started = Instant::now();
        let outcome = std::thread::Builder::new().name(name.to_string()).spawn(*test).expect("a test thread").join();
        let verdict = if outcome.is_ok() { "ok" } else { "FAILED" };
        println!("test {name} ... {verdict} ({:.1}s)", started.elapsed().as_secs_f64());
        if outcome.is_err() {
            failed.push(*name);
        }
    }
    if !failed.is_empty() {
        println!("\nlab tests failed: {}", failed.join(", "));
        std::process::exit(1);
    }
    println!("\nlab test result: ok");
}
