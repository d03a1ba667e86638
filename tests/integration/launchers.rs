//! The launchers: `tf-config`, `torch-env`, `hostfile` and `exec`, run as each node with its own
//! Corefile (which names the node's address), against the members in etcd.

use std::collections::BTreeSet;
use std::fs;
use std::path::PathBuf;
use std::time::Duration;

use serde_json::{json, Value};

use crate::support::{eventually, Background, Etcd, Node, Setup, TempDir};

/// `name:port` for each label, without the final dot, as TF_CONFIG lists them.
fn hosts(labels: &[&str], zone: &str, port: u16) -> Vec<String> {
    labels.iter().map(|label| format!("{label}.{}:{port}", zone.trim_end_matches('.'))).collect()
}

/// Asserts that `needles` occur in `text` in this order (first occurrences).
fn in_order(text: &str, needles: &[&str]) {
    let places: Vec<usize> =
        needles.iter().map(|n| text.find(n).unwrap_or_else(|| panic!("{n} missing in {text}"))).collect();
    assert!(places.windows(2).all(|w| w[0] < w[1]), "{needles:?} out of order in {text}");
}

fn parse(out: &str) -> Value {
    assert_eq!(out.lines().count(), 1, "one line of JSON: {out}");
    serde_json::from_str(out).unwrap_or_else(|e| panic!("{e}: {out}"))
}

#[test]
fn tf_config_torch_env_and_hostfile_agree_on_every_node_of_six() {
    let etcd = Etcd::start();
    let zone = "tf6.test.";
    let nodes = Setup::three_roles(&etcd, zone).start_together(6);
    let bare = |label: &str| format!("{label}.tf6.test");
    let cluster = |port| {
        json!({
            "chief": hosts(&["chief0"], zone, port),
            "ps": hosts(&["ps0", "ps1"], zone, port),
            "worker": hosts(&["worker0", "worker1", "worker2"], zone, port),
        })
    };
    let tasks = [("chief", 0), ("ps", 0), ("ps", 1), ("worker", 0), ("worker", 1), ("worker", 2)];
    let mut hostfiles = BTreeSet::new();
    for (node, (role, index)) in nodes.iter().zip(tasks) {
        let (status, out, err) = node.run("tf-config", &[]);
        assert!(status.success(), "{role}{index}: {err}");
        assert_eq!(parse(&out), json!({ "cluster": cluster(2222), "task": { "type": role, "index": index } }));
        in_order(&out, &["\"cluster\"", "\"chief\"", "\"ps\"", "\"worker\"", "\"task\""]);

        let (master, n) = match role {
            "chief" => ("chief0", 1),
            "ps" => ("ps0", 2),
            _ => ("worker0", 3),
        };
        let (status, out, err) = node.run("torch-env", &[]);
        assert!(status.success(), "{role}{index}: {err}");
        let want = [
            format!("MASTER_ADDR={}", bare(master)),
            "MASTER_PORT=29500".to_string(),
            format!("NNODES={n}"),
            format!("NODE_RANK={index}"),
            format!("WORLD_SIZE={n}"),
            format!("RANK={index}"),
        ];
        assert_eq!(out.lines().collect::<Vec<_>>(), want, "torch-env as {role}{index}");

        let (status, out, err) = node.run("hostfile", &[]);
        assert!(status.success(), "{role}{index}: {err}");
        hostfiles.insert(out);
    }
    assert_eq!(hostfiles.len(), 1, "one hostfile on every node: {hostfiles:?}");
    let hostfile = hostfiles.pop_first().unwrap();
    let want: Vec<String> = ["chief0", "ps0", "ps1", "worker0", "worker1", "worker2"]
        .iter()
        .map(|label| format!("{} slots=1", bare(label)))
        .collect();
    assert_eq!(hostfile.lines().collect::<Vec<_>>(), want);

    // --wait N counts this node's role; the other roles are whoever is there.
    let (status, out, err) = nodes[5].run("tf-config", &["--wait", "3", "--port", "5000"]);
    assert!(status.success(), "{err}");
    assert_eq!(parse(&out), json!({ "cluster": cluster(5000), "task": { "type": "worker", "index": 2 } }));
    let (status, out, err) = nodes[2].run("tf-config", &["--wait", "2"]);
    assert!(status.success(), "{err}");
    assert_eq!(parse(&out), json!({ "cluster": cluster(2222), "task": { "type": "ps", "index": 1 } }));
}

#[test]
fn an_evaluator_gets_its_task_but_is_not_in_the_cluster() {
    let etcd = Etcd::start();
    let zone = "eval.test.";
    // Corefile order, not alphabetical: worker, chief, evaluator.
    let setup = Setup::with_roles(&etcd, zone, &[("worker", 2), ("chief", 1), ("evaluator", 1)]);
    let nodes = setup.start_together(4);
    let held: Vec<String> = nodes.iter().map(|n| n.identity().unwrap()).collect();
    let want: Vec<String> =
        ["worker0", "worker1", "chief0", "evaluator0"].iter().map(|l| format!("{l}.{zone}")).collect();
    assert_eq!(held, want);

    let cluster =
        json!({ "worker": hosts(&["worker0", "worker1"], zone, 2222), "chief": hosts(&["chief0"], zone, 2222) });
    for (node, (role, index)) in nodes.iter().zip([("worker", 0), ("worker", 1), ("chief", 0), ("evaluator", 0)]) {
        let (status, out, err) = node.run("tf-config", &[]);
        assert!(status.success(), "{role}{index}: {err}");
        assert_eq!(parse(&out), json!({ "cluster": cluster, "task": { "type": role, "index": index } }));
        in_order(&out, &["\"worker\"", "\"chief\""]);
        assert!(!out.contains("evaluator0"), "{out}");
    }
}

#[test]
fn torch_env_on_four_nodes_has_one_master_and_ranks_0_to_3() {
    let etcd = Etcd::start();
    let zone = "torch.test.";
    let nodes = Setup::new(&etcd, zone).start_together(4);
    let (mut masters, mut ranks) = (BTreeSet::new(), BTreeSet::new());
    for (rank, node) in nodes.iter().enumerate() {
        let (status, out, err) = node.run("torch-env", &["--wait", "4"]);
        assert!(status.success(), "{err}");
        let lines: Vec<&str> = out.lines().collect();
        let keys: Vec<&str> = lines.iter().map(|l| l.split('=').next().unwrap()).collect();
        assert_eq!(keys, ["MASTER_ADDR", "MASTER_PORT", "NNODES", "NODE_RANK", "WORLD_SIZE", "RANK"], "{out}");
        let value = |key: &str| lines.iter().find_map(|l| l.strip_prefix(&format!("{key}="))).unwrap().to_string();
        masters.insert(value("MASTER_ADDR"));
        ranks.insert(value("NODE_RANK"));
        assert_eq!(value("NODE_RANK"), rank.to_string(), "ranks in ID order");
        assert_eq!(value("RANK"), value("NODE_RANK"));
        assert_eq!((value("NNODES"), value("WORLD_SIZE")), ("4".into(), "4".into()));
        assert_eq!(value("MASTER_PORT"), "29500");
    }
    assert_eq!(masters, BTreeSet::from(["worker1.torch.test".to_string()]), "the lowest ID, without its dot");
    assert_eq!(ranks, ["0", "1", "2", "3"].map(String::from).into());

    let (status, out, _) = nodes[2].run("torch-env", &["--port", "1234"]);
    assert!(status.success());
    assert!(out.lines().any(|l| l == "MASTER_PORT=1234"), "{out}");
    // A single-role Corefile's role is named after its pattern, without --job too.
    let (status, out, err) = nodes[2].run("tf-config", &[]);
    assert!(status.success(), "{err}");
    let cluster = json!({ "worker": hosts(&["worker1", "worker2", "worker3", "worker4"], zone, 2222) });
    assert_eq!(parse(&out), json!({ "cluster": cluster, "task": { "type": "worker", "index": 2 } }));
}

#[test]
fn hostfile_in_each_format_with_ids_in_numeric_order() {
    let etcd = Etcd::start();
    let zone = "hosts.test.";
    let setup = Setup::with_roles(&etcd, zone, &[("chief", 1), ("worker", 16)]);
    let nodes = setup.start_together(2);
    assert_eq!(nodes[1].identity().unwrap(), format!("worker0.{zone}"));
    for id in [10, 9, 2] {
        etcd.put(&format!("worker{id}.{zone}"), &format!(r#"{{"ipv4":"10.9.0.{id}","port":"2222"}}"#));
    }
    let order = ["chief0", "worker0", "worker2", "worker9", "worker10"];
    let cases: [(&[&str], &str); 5] = [
        (&[], " slots=1"),
        (&["--slots", "4"], " slots=4"),
        (&["--format", "openmpi", "--slots", "2"], " slots=2"),
        (&["--format", "mpich", "--slots", "2"], ":2"),
        (&["--format", "horovod"], ":1"),
    ];
    for (args, suffix) in cases {
        let want: Vec<String> = order.iter().map(|label| format!("{label}.hosts.test{suffix}")).collect();
        for node in &nodes {
            let (status, out, err) = node.run("hostfile", args);
            assert!(status.success(), "{args:?}: {err}");
            assert_eq!(out.lines().collect::<Vec<_>>(), want, "{args:?} at {}", node.ip);
            assert!(out.ends_with('\n') && !out.contains("\n\n") && !out.starts_with('\n'), "an empty line: {out:?}");
        }
    }

    let (status, out, err) = nodes[1].run("tf-config", &[]);
    assert!(status.success(), "{err}");
    let workers = hosts(&["worker0", "worker2", "worker9", "worker10"], zone, 2222);
    assert_eq!(parse(&out)["cluster"]["worker"], json!(workers), "worker10 after worker9");
}

/// A command that notes its start in `$2` and, when a signal comes, notes which in `$1` and exits
/// (0 for SIGTERM, 4 for SIGINT, 5 for SIGHUP); left alone, it gives up by itself after a minute.
/// Whether a process runs: not gone, and not a zombie nobody has reaped yet.
fn running(pid: i32) -> bool {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    stat.rsplit(") ").next().is_some_and(|rest| !rest.is_empty() && !rest.starts_with('Z'))
}

/// Starts `idetcd exec` on `node` with the TRAPPING command and waits until the command runs;
/// returns exec and the file where the command notes the signal it got.
fn exec_trapping(node: &Node, dir: &TempDir, tag: &str) -> (Background, PathBuf) {
    let (note, running) = (dir.path().join(format!("{tag}.note")), dir.path().join(format!("{tag}.running")));
    let exec =
        node.launch("exec", &["--", "sh", "-c", TRAPPING, "sh", note.to_str().unwrap(), running.to_str().unwrap()]);
    eventually("the command to start", Duration::from_secs(10), || running.exists().then_some(()));
    (exec, note)
}

const TRAPPING: &str = r#"trap 'echo got-term > "$1"; exit 0' TERM
trap 'echo got-int > "$1"; exit 4' INT
trap 'echo got-hup > "$1"; exit 5' HUP
trap 'echo got-usr1 > "$1"; exit 6' USR1
echo running > "$2"
i=0
while [ $i -lt 600 ]; do sleep 0.1; i=$((i + 1)); done
exit 9"#;

#[test]
fn exec_runs_the_command_with_the_cluster_in_its_environment() {
    let etcd = Etcd::start();
    let zone = "exec.test.";
    let nodes = Setup::new(&etcd, zone).start_together(3);
    let node = &nodes[1];
    assert_eq!(node.identity().unwrap(), format!("worker2.{zone}"));

    let (status, _, err) = node.run("exec", &["--", "sh", "-c", "exit 3"]);
    assert_eq!(status.code(), Some(3), "{err}");
    let (status, _, err) = node.run("exec", &["--", "sh", "-c", "kill -KILL $$"]);
    assert_eq!(status.code(), Some(128 + libc::SIGKILL), "{err}");
    // Started by a parent that ignores SIGCHLD, which children inherit: exec still sees the end.
    let mut ignoring = node.command("exec", &["--", "sh", "-c", "exit 3"]);
    // SAFETY: signal() is async-signal-safe; it only sets what the exec'd binary inherits.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut ignoring, || {
            libc::signal(libc::SIGCHLD, libc::SIG_IGN);
            Ok(())
        });
    }
    let output = ignoring.output().unwrap();
    assert_eq!(output.status.code(), Some(3), "{}", String::from_utf8_lossy(&output.stderr));

    let dir = TempDir::new("exec-env");
    let file = dir.path().join("env");
    let script = r#"printf '%s\n' "$IDETCD_NAME" "$IDETCD_ID" "$IDETCD_ROLE" "$IDETCD_MEMBERS" "$MASTER_ADDR" "$MASTER_PORT" "$NNODES" "$NODE_RANK" "$WORLD_SIZE" "$RANK" "$TF_CONFIG" > "$1""#;
    let args = ["--wait", "3", "--port", "3000", "--master-port", "4000", "--", "sh", "-c", script, "sh"];
    let (status, _, err) = node.run("exec", &[&args[..], &[file.to_str().unwrap()]].concat());
    assert!(status.success(), "{err}");
    let text = fs::read_to_string(&file).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 11, "{text}");
    assert_eq!(
        lines[..10],
        [
            "worker2.exec.test",
            "2",
            "worker",
            "worker1.exec.test,worker2.exec.test,worker3.exec.test",
            "worker1.exec.test",
            "4000",
            "3",
            "1",
            "3",
            "1",
        ],
        "IDETCD_NAME, IDETCD_ID, IDETCD_ROLE, IDETCD_MEMBERS, then torch-env's:\n{text}"
    );
    let cluster = json!({ "worker": hosts(&["worker1", "worker2", "worker3"], zone, 3000) });
    assert_eq!(parse(lines[10]), json!({ "cluster": cluster, "task": { "type": "worker", "index": 1 } }));
}

#[test]
fn exec_ends_the_command_and_exits_75_when_the_name_is_lost() {
    let etcd = Etcd::start();
    let zone = "fence.test.";
    let mut node = Setup::new(&etcd, zone).start();
    let name = format!("worker1.{zone}");
    assert_eq!(node.claimed(), name);
    let own_record = format!(r#""ipv4":"{}""#, node.ip);
    let dir = TempDir::new("fence");
    for how in ["lease revoked", "key deleted", "key overwritten"] {
        // The daemon claims its name again after each loss but the last.
        let held = eventually("the node to hold its name", Duration::from_secs(15), || {
            etcd.get(&name).filter(|kv| kv.lease != 0 && kv.value.contains(&own_record))
        });
        let (mut exec, note) = exec_trapping(&node, &dir, how);
        assert!(exec.exited().is_none(), "exec ended while the name was held: {}", exec.stderr());

        match how {
            "lease revoked" => etcd.revoke(held.lease),
            "key deleted" => etcd.delete(&name),
            _ => etcd.put(&name, r#"{"ipv4":"10.9.9.9","port":"53"}"#),
        }
        let status = exec.wait_exit(Duration::from_secs(20));
        assert_eq!(status.code(), Some(75), "{how}: {}", exec.stderr());
        assert!(exec.stderr().contains("worker1.fence.test"), "{how}: the lost name in {}", exec.stderr());
        assert_eq!(fs::read_to_string(&note).unwrap_or_default().trim(), "got-term", "{how}: the command got SIGTERM");
    }
}

#[test]
fn exec_stops_the_command_when_etcd_cannot_confirm_the_name_within_the_lease() {
    // etcd gone: the lease may end unrenewed and another node take the name, so the command
    // must not outlive the lease, although the key was never seen to go.
    let mut etcd = Etcd::start();
    let mut node = Setup { lease: 3, ..Setup::new(&etcd, "blind.test.") }.start();
    assert_eq!(node.claimed(), "worker1.blind.test.");
    let dir = TempDir::new("blind");
    let (mut exec, note) = exec_trapping(&node, &dir, "trap");
    etcd.stop();
    let status = exec.wait_exit(Duration::from_secs(20));
    assert_eq!(status.code(), Some(75), "{}", exec.stderr());
    assert!(exec.stderr().contains("etcd cannot confirm it"), "{}", exec.stderr());
    assert!(exec.stderr().contains("worker1.blind.test"), "{}", exec.stderr());
    assert_eq!(fs::read_to_string(&note).unwrap_or_default().trim(), "got-term");
}

#[test]
fn exec_stops_the_command_before_an_unrenewed_lease_ends() {
    // The daemon dies: nobody renews the lease, and once it ends another node may take the name.
    // The command must be gone by then, not merely told to go when the key vanishes.
    let etcd = Etcd::start();
    let mut node = Setup { lease: 8, ..Setup::new(&etcd, "orphan.test.") }.start();
    let name = node.claimed();
    let dir = TempDir::new("orphan");
    let (mut exec, note) = exec_trapping(&node, &dir, "trap");
    node.kill();
    let status = exec.wait_exit(Duration::from_secs(20));
    assert_eq!(status.code(), Some(75), "{}", exec.stderr());
    assert!(exec.stderr().contains("unrenewed"), "{}", exec.stderr());
    assert_eq!(fs::read_to_string(&note).unwrap_or_default().trim(), "got-term");
    assert!(etcd.get(&name).is_some(), "the command was gone while the name was still this node's");
}

#[test]
fn a_fenced_command_takes_what_it_started_with_it() {
    let etcd = Etcd::start();
    let mut node = Setup::new(&etcd, "family.test.").start();
    let name = node.claimed();
    let dir = TempDir::new("family");
    let pidfile = dir.path().join("grandchild");
    // A shell that starts a long child and waits, as a launcher script does.
    let script = r#"sleep 300 & echo $! > "$1"; wait"#;
    let mut exec = node.launch("exec", &["--", "sh", "-c", script, "sh", pidfile.to_str().unwrap()]);
    let pid: i32 = eventually("the grandchild to start", Duration::from_secs(10), || {
        fs::read_to_string(&pidfile).ok()?.trim().parse().ok()
    });
    etcd.delete(&name);
    assert_eq!(exec.wait_exit(Duration::from_secs(20)).code(), Some(75), "{}", exec.stderr());
    eventually("the grandchild to be gone", Duration::from_secs(5), || (!running(pid)).then_some(()));
}

#[test]
fn signals_to_exec_reach_the_command_and_exec_exits_with_its_status() {
    let etcd = Etcd::start();
    let mut node = Setup::new(&etcd, "sig.test.").start();
    node.claimed();
    let dir = TempDir::new("signals");
    for (signal, want, code) in [
        (libc::SIGTERM, "got-term", 0),
        (libc::SIGINT, "got-int", 4),
        (libc::SIGHUP, "got-hup", 5),
        (libc::SIGUSR1, "got-usr1", 6),
    ] {
        let (mut exec, note) = exec_trapping(&node, &dir, &signal.to_string());
        exec.signal(signal);
        let status = exec.wait_exit(Duration::from_secs(15));
        assert_eq!(status.code(), Some(code), "signal {signal}: {}", exec.stderr());
        assert_eq!(fs::read_to_string(&note).unwrap_or_default().trim(), want, "signal {signal}");
    }
    assert_eq!(node.identity().as_deref(), Some("worker1.sig.test."), "the daemon never saw the signals");
}

#[test]
fn a_command_does_not_outlive_exec_killed_outright() {
    let etcd = Etcd::start();
    let mut node = Setup::new(&etcd, "orphan2.test.").start();
    node.claimed();
    let dir = TempDir::new("exec-killed");
    let pidfile = dir.path().join("pid");
    let mut exec =
        node.launch("exec", &["--", "sh", "-c", r#"echo $$ > "$1"; exec sleep 300"#, "sh", pidfile.to_str().unwrap()]);
    let pid: i32 = eventually("the command to start", Duration::from_secs(10), || {
        fs::read_to_string(&pidfile).ok()?.trim().parse().ok()
    });
    exec.signal(libc::SIGKILL);
    exec.wait_exit(Duration::from_secs(5));
    eventually("the command to end with exec", Duration::from_secs(5), || (!running(pid)).then_some(()));
}

#[test]
fn timeout_gives_up_saying_how_many_it_saw() {
    let etcd = Etcd::start();
    let nodes = Setup::new(&etcd, "timeout.test.").start_together(2);
    let dir = TempDir::new("timeout");
    let ran = dir.path().join("ran");
    let wait = ["--wait", "4", "--timeout", "2"];
    let exec = [&wait[..], &["--", "sh", "-c", "touch \"$1\"", "sh", ran.to_str().unwrap()]].concat();
    for (subcommand, args) in [("tf-config", &wait[..]), ("torch-env", &wait), ("hostfile", &wait), ("exec", &exec)] {
        let (status, out, err) = gives_up(&nodes[0], subcommand, args);
        assert_eq!(status.code(), Some(1), "{subcommand}: {err}");
        assert!(err.contains("gave up after 2s") && err.contains("saw 2 of 4"), "{subcommand}: {err}");
        assert!(out.is_empty(), "{subcommand} printed {out}");
    }
    assert!(!ran.exists(), "exec ran the command without its cluster");

    // --wait all: every role holds every ID of its limit, here 1 + 3.
    let setup = Setup::with_roles(&etcd, "timeoutall.test.", &[("chief", 1), ("worker", 3)]);
    let nodes = setup.start_together(2);
    let (status, _, err) = gives_up(&nodes[1], "tf-config", &["--wait", "all", "--timeout", "2"]);
    assert_eq!(status.code(), Some(1), "{err}");
    assert!(err.contains("gave up after 2s") && err.contains("saw 2 of 4"), "{err}");
}

/// Runs a subcommand that waits with `--timeout` and must end by itself: its status, stdout and
/// stderr. It says itself after how long it gave up; the wait here only bounds a hang.
fn gives_up(node: &Node, subcommand: &str, args: &[&str]) -> (std::process::ExitStatus, String, String) {
    let mut waiting = node.launch(subcommand, args);
    let status = waiting.wait_exit(Duration::from_secs(30));
    (status, waiting.stdout(), waiting.stderr())
}

#[test]
fn wait_all_and_wait_n_block_until_the_cluster_is_there() {
    let etcd = Etcd::start();
    let zone = "waitall.test.";
    let setup = Setup::with_roles(&etcd, zone, &[("chief", 1), ("worker", 2)]);
    let nodes = setup.start_together(2);
    let mut all = nodes[0].launch("tf-config", &["--wait", "all"]);
    let mut two = nodes[1].launch("torch-env", &["--wait", "2"]);
    // Both say they are waiting before the third node comes.
    for waiting in [&all, &two] {
        eventually("a progress line", Duration::from_secs(10), || waiting.stderr().contains("waiting").then_some(()));
    }
    assert!(all.exited().is_none() && two.exited().is_none(), "{}\n{}", all.stdout(), two.stdout());

    let mut third = setup.start();
    assert_eq!(third.claimed(), format!("worker1.{zone}"));
    assert!(all.wait_exit(Duration::from_secs(10)).success(), "{}", all.stderr());
    let cluster =
        json!({ "chief": hosts(&["chief0"], zone, 2222), "worker": hosts(&["worker0", "worker1"], zone, 2222) });
    assert_eq!(parse(&all.stdout()), json!({ "cluster": cluster, "task": { "type": "chief", "index": 0 } }));
    assert!(two.wait_exit(Duration::from_secs(10)).success(), "{}", two.stderr());
    let want =
        ["MASTER_ADDR=worker0.waitall.test", "MASTER_PORT=29500", "NNODES=2", "NODE_RANK=0", "WORLD_SIZE=2", "RANK=0"];
    assert_eq!(two.stdout().lines().collect::<Vec<_>>(), want);
}

#[test]
fn progress_lines_go_to_stderr_when_it_is_no_terminal() {
    let etcd = Etcd::start();
    let mut node = Setup::new(&etcd, "progress.test.").start();
    node.claimed();
    // stderr is a pipe here.
    let (status, out, err) = node.run("tf-config", &["--wait", "3", "--timeout", "7"]);
    assert_eq!(status.code(), Some(1), "{err}");
    assert!(out.is_empty(), "{out}");
    let progress = err.lines().filter(|l| l.contains("waiting")).count();
    assert!(progress >= 1, "no progress line: {err}");
    // At most one every 5 s (with room for a last word that says "waiting" too).
    assert!(progress <= 3, "{progress} progress lines in 7 s: {err}");
    assert!(err.contains("saw 1 of 3"), "{err}");
}

#[test]
fn waiting_says_what_it_waits_for_every_5_s_and_ends_at_the_timeout() {
    let etcd = Etcd::start();
    let mut node = Setup::new(&etcd, "lonely.test.").start();
    node.claimed();
    let dir = TempDir::new("waiting");
    let ip = crate::support::next_loopback();
    // Nothing listens there: etcd refuses at once.
    let refused = format!("http://{ip}:{}", crate::support::free_port(ip));
    // Takes connections and never answers: every request runs into the client's timeout (3 s),
    // once for each of the three endpoints.
    let silent = std::net::TcpListener::bind((ip, 0)).unwrap();
    let silent = format!("http://{}", silent.local_addr().unwrap());
    let launch = |name: &str, endpoints: &str, address: &str, timeout: &str| {
        let conf = dir.path().join(name);
        let corefile = format!(
            ".:53 {{\n    idetcd {{\n        endpoint {endpoints}\n        limit 4\n        \
             pattern worker{{{{.ID}}}}.lonely.test.\n        address {address}\n    }}\n}}\n"
        );
        fs::write(&conf, corefile).unwrap();
        let mut command = std::process::Command::new(crate::support::BINARY);
        command.args(["tf-config", "-conf", conf.to_str().unwrap(), "--wait", "2", "--timeout", timeout]);
        // stderr is a file, not a terminal.
        Background::start(command)
    };
    let mut down = launch("down", &refused, "10.255.0.1", "8");
    let mut hung = launch("hung", &[silent.as_str(); 3].join(" "), "10.255.0.1", "2");
    let mut stranger = launch("stranger", &etcd.url, "10.255.0.1", "8");
    let progress = |err: &str| err.lines().filter(|l| l.starts_with("idetcd: waiting")).count();

    // An etcd that never answers holds up neither the timeout nor the last word.
    assert_eq!(hung.wait_exit(Duration::from_secs(6)).code(), Some(1), "{}", hung.stderr());
    let err = hung.stderr();
    assert!(err.contains("gave up after 2s waiting for 2 members of role worker"), "{err}");
    assert!(err.contains(&format!("etcd ({silent}, {silent}, {silent}) has not answered yet")), "{err}");

    // Said at once, then every 5 s: two lines in 8 s, whether etcd answers or not.
    assert_eq!(down.wait_exit(Duration::from_secs(15)).code(), Some(1), "{}", down.stderr());
    let err = down.stderr();
    assert_eq!(progress(&err), 2, "{err}");
    assert!(err.contains("waiting for 2 members of role worker; missing worker1.lonely.test"), "{err}");
    assert!(err.contains("etcd does not answer: no etcd endpoint reachable"), "{err}");
    assert!(err.contains("gave up after 8s waiting"), "{err}");

    assert_eq!(stranger.wait_exit(Duration::from_secs(15)).code(), Some(1), "{}", stranger.stderr());
    let err = stranger.stderr();
    assert_eq!(progress(&err), 2, "{err}");
    assert!(err.contains("saw 1 of 2 members of role worker; missing worker2.lonely.test"), "{err}");
    assert!(err.contains("this host (10.255.0.1) is no member of worker{{.ID}}.lonely.test. yet"), "{err}");
    assert!(down.stdout().is_empty() && stranger.stdout().is_empty() && hung.stdout().is_empty());
}
