//! The command line: raw arguments into a `Command`, or a usage error.
//!
//! Flags follow CoreDNS (`-conf PATH`, `-version`) and also take the usual `--long` and `=` forms.

use std::ffi::OsString;
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

pub const USAGE: &str = "\
usage: idetcd [-conf PATH] [--role NAME]
       idetcd members [-conf PATH] [--json]
       idetcd tf-config [--job NAME] [--port PORT] [--wait N|all] [--timeout S] [-conf PATH]
       idetcd torch-env [--port PORT] [--wait N|all] [--timeout S] [-conf PATH]
       idetcd hostfile [--slots N] [--format openmpi|mpich|horovod] [--wait N|all] [--timeout S] [-conf PATH]
       idetcd exec [--wait N|all] [--timeout S] [--port P] [--master-port P] [-conf PATH] -- CMD [ARG...]
       idetcd help [COMMAND]
       idetcd version

Claims a unique name for this node in etcd and answers DNS for every member of the cluster.
The subcommands read the same Corefile; `idetcd COMMAND --help` tells more. The Corefile's
syntax, every directive and how idetcd uses etcd: see `man idetcd`.

options:
  -conf, --conf PATH   the Corefile to read (default: ./Corefile)
  -role, --role NAME   claim in this role of the Corefile (default: $IDETCD_ROLE, else the
                       first role, in Corefile order, with a free ID)
  -h, --help, help     print this help
  -version, --version, version
                       print the version

environment:
  IDETCD_ROLE          the role to claim in, when --role is not given
  RUST_LOG             log level: error, warn, info (default), debug or trace

exit status: 0 after a clean stop (SIGTERM or SIGINT release the name first),
1 on an error (bad Corefile, port in use, every ID taken, etcd refused...), 2 on a usage error.";

pub const MEMBERS_USAGE: &str = "\
usage: idetcd members [-conf PATH] [--json]

Lists the cluster's members as etcd has them now, role by role in Corefile order and by ID
within a role: role, ID, name, addresses, port and how many seconds their lease has left
(- for a record without a lease).

options:
  -conf, --conf PATH   the Corefile to read (default: ./Corefile)
  --json               a JSON array instead of a table

exit status: 0 on success, 1 when the Corefile or etcd fails, 2 on a usage error.";

/// What every launcher says about waiting; appended to their usage texts.
macro_rules! waiting {
    () => {
        "
  --wait N             first wait until the first N IDs of this node's role are held
  --wait all           first wait until every role holds every ID of its limit
  --timeout S          give up waiting after S seconds (90s, 2m also work): exit 1
  -conf, --conf PATH   the Corefile to read (default: ./Corefile)

This node is the member whose record carries this host's address, as the Corefile's `address`
(or its detection) gives it. Members are ordered by ID; every node prints the same for the same
members, which --wait makes sure of. While waiting, a progress line goes to stderr at most every
5 seconds; etcd trouble is waited out.

exit status: 0 on success, 1 when the Corefile or etcd fails, this host is no member or the wait
timed out, 2 on a usage error."
    };
}

pub const TF_CONFIG_USAGE: &str = concat!(
    "\
usage: idetcd tf-config [--job NAME] [--port PORT] [--wait N|all] [--timeout S] [-conf PATH]

Prints TensorFlow's TF_CONFIG for this node: `cluster` lists every role (an `evaluator` role
excepted, as TensorFlow wants) as name:PORT in ID order, and `task` is this node's role and its
0-based place in it.

  export TF_CONFIG=$(idetcd tf-config --wait all)

options:
  --job NAME           call the role this instead (only for a Corefile with one role)
  --port PORT          the port the training processes listen on (default: 2222)",
    waiting!()
);

pub const TORCH_ENV_USAGE: &str = concat!(
    "\
usage: idetcd torch-env [--port PORT] [--wait N|all] [--timeout S] [-conf PATH]

Prints the settings of torchrun's static rendezvous and of torch.distributed with one process
per node, as KEY=VALUE lines, for this node's role: MASTER_ADDR (the role's lowest-ID member),
MASTER_PORT, NNODES, NODE_RANK (this node's 0-based place by ID), WORLD_SIZE (= NNODES) and
RANK (= NODE_RANK).

  export $(idetcd torch-env --wait 4)
  torchrun --nnodes=$NNODES --node-rank=$NODE_RANK --master-addr=$MASTER_ADDR \\
           --master-port=$MASTER_PORT train.py

options:
  --port PORT          MASTER_PORT (default: 29500)",
    waiting!()
);

pub const HOSTFILE_USAGE: &str = concat!(
    "\
usage: idetcd hostfile [--slots N] [--format openmpi|mpich|horovod] [--wait N|all] [--timeout S]
                       [-conf PATH]

Prints an MPI hostfile: one member per line, role by role in Corefile order and by ID within a
role: `name slots=N` for Open MPI, `name:N` for MPICH and Horovod. Without --wait, it lists
whoever is a member now, so that with --format horovod it serves as Horovod elastic's
--host-discovery-script; it never prints an empty line.

  idetcd hostfile --wait 8 > hosts && mpirun --hostfile hosts ./app

options:
  --slots N            processes per host (default: 1)
  --format F           openmpi (default), mpich or horovod",
    waiting!()
);

pub const EXEC_USAGE: &str = concat!(
    "\
usage: idetcd exec [--wait N|all] [--timeout S] [--port P] [--master-port P] [-conf PATH]
                   -- CMD [ARG...]

Runs CMD once the job is there, with what it needs to know in its environment: TF_CONFIG;
MASTER_ADDR, MASTER_PORT, NNODES, NODE_RANK, WORLD_SIZE and RANK; IDETCD_NAME, IDETCD_ID,
IDETCD_ROLE, and IDETCD_MEMBERS (every member's name, comma-separated, in order). SIGTERM,
SIGINT, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2 and SIGALRM are passed on to CMD's process group.
While CMD runs, exec follows etcd, so that no command runs on under a name another node may
hold: when this host's key is gone or holds another node's record, CMD gets SIGTERM, SIGKILL
10 s later; when the lease could end unrenewed (the daemon gone, etcd out of reach), SIGTERM
with a quarter of the lease left and SIGKILL by its end. Either way exec exits 75.

  idetcd exec --wait all -- python train.py

options:
  --port P             the TensorFlow port in TF_CONFIG (default: 2222)
  --master-port P      MASTER_PORT (default: 29500)",
    waiting!(),
    "
exec exits with CMD's status instead, 128 + the signal's number when a signal ended CMD, 75
when this host lost its name, 126 or 127 when CMD cannot be run."
);

pub const DEFAULT_TF_PORT: u16 = 2222;
pub const DEFAULT_TORCH_PORT: u16 = 29500;

#[derive(Debug, PartialEq, Eq)]
pub enum Command {
    Run {
        conf: PathBuf,
        /// `--role NAME`: the role to claim in.
        role: Option<String>,
    },
    Members {
        conf: PathBuf,
        json: bool,
    },
    /// `tf-config`, `torch-env`, `hostfile` and `exec`: they wait for the job, then say it.
    Launch {
        conf: PathBuf,
        wait: Wait,
        /// Give up waiting after this long.
        timeout: Option<Duration>,
        launcher: Launcher,
    },
    /// Print this usage text.
    Help(&'static str),
    Version,
}

/// Which members make the job, and what to wait for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Wait {
    /// Whoever is a member now; no waiting.
    Now,
    /// The first N IDs of this node's role, all held.
    First(u32),
    /// Every ID of every role, all held.
    All,
}

#[derive(Debug, PartialEq, Eq)]
pub enum Launcher {
    TfConfig { job: Option<String>, port: u16 },
    TorchEnv { port: u16 },
    Hostfile { slots: u32, format: HostFormat },
    Exec { port: u16, master_port: u16, command: Vec<OsString> },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HostFormat {
    OpenMpi,
    Mpich,
    Horovod,
}

#[derive(Debug, PartialEq, Eq)]
pub struct UsageError {
    pub message: String,
    /// The usage text of the command it concerns.
    pub usage: &'static str,
}

impl fmt::Display for UsageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

/// Every flag a command may be given, as parsed; `parse` then says which command gets which.
#[derive(Default)]
struct Flags {
    conf: Option<PathBuf>,
    role: Option<String>,
    json: bool,
    job: Option<String>,
    port: Option<u16>,
    master_port: Option<u16>,
    wait: Option<Wait>,
    timeout: Option<Duration>,
    slots: Option<u32>,
    format: Option<HostFormat>,
    command: Vec<OsString>,
}

impl UsageError {
    /// Where to read more, the line that goes after the message: the help of the command it
    /// concerns, not the whole of it, which would push the message off the screen.
    pub fn hint(&self) -> String {
        let command = self
            .usage
            .lines()
            .next()
            .and_then(|line| line.split_whitespace().nth(2))
            .filter(|w| w.starts_with(char::is_alphabetic));
        let help = command.map_or("idetcd --help".to_string(), |c| format!("idetcd {c} --help"));
        format!("see `{help}`")
    }
}

/// Subcommands; everything else is the daemon's.
const COMMANDS: [&str; 7] = ["members", "tf-config", "torch-env", "hostfile", "exec", "help", "version"];

/// The usage text of a command.
fn usage_of(command: &str) -> Option<&'static str> {
    match command {
        "members" => Some(MEMBERS_USAGE),
        "tf-config" => Some(TF_CONFIG_USAGE),
        "torch-env" => Some(TORCH_ENV_USAGE),
        "hostfile" => Some(HOSTFILE_USAGE),
        "exec" => Some(EXEC_USAGE),
        "help" | "version" => Some(USAGE),
        _ => None,
    }
}

/// A first word that is no command: the command it was likely meant to be, when one is a typo
/// away; a hint at `-conf` when it looks like a file.
fn unknown_command(word: &str) -> UsageError {
    let lower = word.to_ascii_lowercase();
    let closest = COMMANDS.iter().map(|c| (edit_distance(&lower, c), *c)).min();
    let message = match closest {
        // The command itself, after the daemon's own flags (`--role ps tf-config`).
        Some((0, command)) if word == command => {
            format!("{command:?} must come first: write `idetcd {command} [OPTIONS]` (a command takes its own options after its name)")
        }
        Some((distance, command)) if distance <= 2 && distance * 3 <= lower.len().max(command.len()) => {
            format!("unknown command {word:?}; did you mean `{command}`?")
        }
        _ if word.contains(['/', '.']) || lower.contains("corefile") => {
            format!("unexpected argument {word:?}; name the Corefile with `-conf {word}`")
        }
        _ => format!("unknown command {word:?} (the commands: {})", COMMANDS.join(", ")),
    };
    UsageError { message, usage: USAGE }
}

/// Edits (insert, delete, replace, swap two neighbours) that turn `a` into `b`: `membres` is one
/// from `members`.
fn edit_distance(a: &str, b: &str) -> usize {
    let (a, b): (Vec<char>, Vec<char>) = (a.chars().collect(), b.chars().collect());
    // rows[i][j]: the distance between a[..i] and b[..j].
    let mut rows = vec![vec![0; b.len() + 1]; a.len() + 1];
    for (i, row) in rows.iter_mut().enumerate() {
        row[0] = i;
    }
    for (j, cell) in rows[0].iter_mut().enumerate() {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let replace = rows[i - 1][j - 1] + usize::from(a[i - 1] != b[j - 1]);
            let mut best = replace.min(rows[i - 1][j] + 1).min(rows[i][j - 1] + 1);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                best = best.min(rows[i - 2][j - 2] + 1);
            }
            rows[i][j] = best;
        }
    }
    rows[a.len()][b.len()]
}

/// `idetcd help [COMMAND]`, as git and cargo take it.
fn help(mut args: impl Iterator<Item = OsString>) -> Result<Command, UsageError> {
    let topic = args.next().map(|a| a.to_string_lossy().into_owned());
    if let Some(extra) = args.next() {
        let message = format!("help takes one command: unexpected {:?}", extra.to_string_lossy());
        return Err(UsageError { message, usage: USAGE });
    }
    match topic.as_deref() {
        None | Some("-h" | "-help" | "--help") => Ok(Command::Help(USAGE)),
        Some(flag) if flag.starts_with('-') => {
            Err(UsageError { message: format!("help takes a command, not {flag}"), usage: USAGE })
        }
        Some(word) => usage_of(word).map(Command::Help).ok_or_else(|| unknown_command(word)),
    }
}

pub fn parse(args: impl IntoIterator<Item = OsString>) -> Result<Command, UsageError> {
    let mut args: Vec<OsString> = args.into_iter().collect();
    // `idetcd -conf PATH members`, CoreDNS's habit of putting -conf first, means the same as
    // `idetcd members -conf PATH`.
    let conf_words = match args.first().and_then(|a| a.to_str()) {
        Some("-conf" | "--conf") => 2,
        Some(a) if a.starts_with("-conf=") || a.starts_with("--conf=") => 1,
        _ => 0,
    };
    if conf_words > 0 && args.get(conf_words).and_then(|a| a.to_str()).is_some_and(|a| COMMANDS.contains(&a)) {
        args[..=conf_words].rotate_left(conf_words);
    }
    let mut args = args.into_iter().peekable();
    let command = match args.peek().and_then(|a| a.to_str()) {
        Some(word) if COMMANDS.contains(&word) => word.to_string(),
        _ => String::new(),
    };
    if !command.is_empty() {
        args.next();
    }
    match command.as_str() {
        "help" => return help(args),
        "version" => {
            return match args.next() {
                None => Ok(Command::Version),
                Some(extra) => Err(UsageError {
                    message: format!("version takes no arguments: unexpected {:?}", extra.to_string_lossy()),
                    usage: USAGE,
                }),
            }
        }
        _ => {}
    }
    let usage = usage_of(&command).unwrap_or(USAGE);
    let fail = |message: String| UsageError { message, usage };
    let launcher = matches!(command.as_str(), "tf-config" | "torch-env" | "hostfile" | "exec");
    let mut f = Flags::default();
    while let Some(raw) = args.next() {
        let Some(arg) = raw.to_str().map(str::to_string) else {
            if command == "exec" {
                // The command itself may be any bytes.
                f.command.push(raw);
                f.command.extend(args.by_ref());
                break;
            }
            return Err(fail(format!("argument {raw:?} is not valid UTF-8")));
        };
        if command == "exec" && (arg == "--" || !arg.starts_with('-')) {
            if arg != "--" {
                f.command.push(raw);
            }
            f.command.extend(args.by_ref());
            break;
        }
        let (flag, inline) = match arg.split_once('=') {
            Some((flag, value)) if flag.starts_with('-') => (flag.to_string(), Some(value.to_string())),
            _ => (arg.clone(), None),
        };
        let mut value = |what: &str| -> Result<String, UsageError> {
            let value = match inline.clone() {
                Some(v) => v,
                None => args.next().and_then(|a| a.into_string().ok()).unwrap_or_default(),
            };
            match value.is_empty() {
                true => Err(fail(format!("{flag} needs {what}"))),
                false => Ok(value),
            }
        };
        let port = |text: String| positive(&text).ok_or_else(|| fail(format!("{flag}: {text:?} is not a port")));
        match (command.as_str(), flag.as_str()) {
            (_, "-h" | "-help" | "--help") => return Ok(Command::Help(usage)),
            ("", "-version" | "--version") => return Ok(Command::Version),
            (_, "-conf" | "--conf") => set(&mut f.conf, PathBuf::from(value("a path")?), &flag, usage)?,
            ("", "-role" | "--role") => set(&mut f.role, value("a role name")?, &flag, usage)?,
            ("members", "--json") if inline.is_none() => f.json = true,
            ("tf-config", "--job") => set(&mut f.job, value("a job name")?, &flag, usage)?,
            ("tf-config" | "torch-env" | "exec", "--port") => set(&mut f.port, port(value("a port")?)?, &flag, usage)?,
            ("exec", "--master-port") => set(&mut f.master_port, port(value("a port")?)?, &flag, usage)?,
            ("hostfile", "--slots") => {
                let text = value("a number")?;
                let n = positive(&text).ok_or_else(|| fail(format!("--slots: {text:?} is not a number of slots")))?;
                set(&mut f.slots, n, &flag, usage)?;
            }
            ("hostfile", "--format") => {
                let format = match value("a format")?.as_str() {
                    "openmpi" => HostFormat::OpenMpi,
                    "mpich" => HostFormat::Mpich,
                    "horovod" => HostFormat::Horovod,
                    other => return Err(fail(format!("--format: {other:?} is not openmpi, mpich or horovod"))),
                };
                set(&mut f.format, format, &flag, usage)?;
            }
            (_, "--wait") if launcher => {
                let text = value("a number of members or all")?;
                let wait = match text.as_str() {
                    "all" => Wait::All,
                    n => Wait::First(
                        positive(n)
                            .ok_or_else(|| fail(format!("--wait: {text:?} is neither a number of members nor all")))?,
                    ),
                };
                set(&mut f.wait, wait, &flag, usage)?;
            }
            (_, "--timeout") if launcher => {
                let text = value("a number of seconds")?;
                let timeout = crate::config::parse_duration(&text)
                    .ok()
                    .filter(|t| !t.is_zero())
                    .ok_or_else(|| fail(format!("--timeout: {text:?} is not a number of seconds")))?;
                set(&mut f.timeout, timeout, &flag, usage)?;
            }
            (_, f) if f.starts_with('-') => return Err(fail(format!("unknown option {flag}"))),
            ("", _) => return Err(unknown_command(&arg)),
            _ => return Err(fail(format!("unexpected argument {arg:?}"))),
        }
    }
    let conf = f.conf.unwrap_or_else(|| PathBuf::from("Corefile"));
    let launcher = match command.as_str() {
        "" => return Ok(Command::Run { conf, role: f.role }),
        "members" => return Ok(Command::Members { conf, json: f.json }),
        "tf-config" => {
            if let Some(job) = f.job.as_deref().filter(|job| !crate::config::is_role_name(job)) {
                return Err(fail(format!(
                    "--job: {job:?} is not a TensorFlow job name (a letter, then letters, digits or _)"
                )));
            }
            Launcher::TfConfig { job: f.job, port: f.port.unwrap_or(DEFAULT_TF_PORT) }
        }
        "torch-env" => Launcher::TorchEnv { port: f.port.unwrap_or(DEFAULT_TORCH_PORT) },
        "hostfile" => {
            Launcher::Hostfile { slots: f.slots.unwrap_or(1), format: f.format.unwrap_or(HostFormat::OpenMpi) }
        }
        _ => {
            if f.command.is_empty() {
                return Err(fail("exec needs a command to run, after --".into()));
            }
            Launcher::Exec {
                port: f.port.unwrap_or(DEFAULT_TF_PORT),
                master_port: f.master_port.unwrap_or(DEFAULT_TORCH_PORT),
                command: f.command,
            }
        }
    };
    if f.timeout.is_some() && f.wait.is_none() {
        return Err(fail("--timeout goes with --wait: without waiting there is nothing to give up on".into()));
    }
    Ok(Command::Launch { conf, wait: f.wait.unwrap_or(Wait::Now), timeout: f.timeout, launcher })
}

fn positive<T: std::str::FromStr + Default + PartialOrd>(text: &str) -> Option<T> {
    text.parse::<T>().ok().filter(|n| *n > T::default())
}

fn set<T>(slot: &mut Option<T>, value: T, flag: &str, usage: &'static str) -> Result<(), UsageError> {
    match slot.replace(value) {
        None => Ok(()),
        Some(_) => Err(UsageError { message: format!("{flag} is given twice"), usage }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_strs(args: &[&str]) -> Result<Command, UsageError> {
        parse(args.iter().map(OsString::from))
    }

    #[test]
    fn commands() {
        let run = |p: &str| Ok(Command::Run { conf: PathBuf::from(p), role: None });
        assert_eq!(parse_strs(&[]), run("Corefile"));
        assert_eq!(parse_strs(&["-conf", "/etc/idetcd/Corefile"]), run("/etc/idetcd/Corefile"));
        assert_eq!(parse_strs(&["--conf", "c"]), run("c"));
        assert_eq!(parse_strs(&["--conf=c"]), run("c"));
        assert_eq!(parse_strs(&["-conf=c=d"]), run("c=d"));
        for args in [&["--role", "ps"][..], &["-role", "ps"], &["--role=ps"]] {
            assert_eq!(parse_strs(args), Ok(Command::Run { conf: "Corefile".into(), role: Some("ps".into()) }));
        }
        assert_eq!(parse_strs(&["--help"]), Ok(Command::Help(USAGE)));
        assert_eq!(parse_strs(&["-h"]), Ok(Command::Help(USAGE)));
        assert_eq!(parse_strs(&["--version"]), Ok(Command::Version));
        assert_eq!(parse_strs(&["-version"]), Ok(Command::Version));
        assert_eq!(parse_strs(&["members"]), Ok(Command::Members { conf: "Corefile".into(), json: false }));
        assert_eq!(
            parse_strs(&["members", "--json", "-conf", "c"]),
            Ok(Command::Members { conf: "c".into(), json: true })
        );
        assert_eq!(parse_strs(&["members", "--help"]), Ok(Command::Help(MEMBERS_USAGE)));
        assert_eq!(parse_strs(&["tf-config", "-h"]), Ok(Command::Help(TF_CONFIG_USAGE)));
        assert_eq!(parse_strs(&["exec", "--help"]), Ok(Command::Help(EXEC_USAGE)));
        // -conf before the subcommand, as CoreDNS users write it.
        let members = Ok(Command::Members { conf: "c".into(), json: true });
        assert_eq!(parse_strs(&["-conf", "c", "members", "--json"]), members);
        assert_eq!(parse_strs(&["--conf=c", "members", "--json"]), members);
        assert_eq!(
            parse_strs(&["-conf", "c", "--role", "ps"]),
            Ok(Command::Run { conf: "c".into(), role: Some("ps".into()) })
        );
    }

    #[test]
    fn usage_errors_say_where_to_read_more() {
        let err = parse_strs(&["tf-config", "--wait", "0"]).unwrap_err();
        assert_eq!(err.hint(), "see `idetcd tf-config --help`");
        let err = parse_strs(&["--bogus"]).unwrap_err();
        assert_eq!(err.hint(), "see `idetcd --help`");
    }

    #[test]
    fn help_and_version_are_commands_too() {
        for (args, want) in [
            (&["help"][..], Command::Help(USAGE)),
            (&["help", "--help"], Command::Help(USAGE)),
            (&["help", "help"], Command::Help(USAGE)),
            (&["help", "members"], Command::Help(MEMBERS_USAGE)),
            (&["help", "exec"], Command::Help(EXEC_USAGE)),
            (&["version"], Command::Version),
        ] {
            assert_eq!(parse_strs(args), Ok(want), "{args:?}");
        }
        assert!(USAGE.contains("see `man idetcd`"), "the help names the man page");
        for (args, want) in [
            (&["help", "members", "x"][..], "help takes one command: unexpected \"x\""),
            (&["help", "--json"], "help takes a command, not --json"),
            (&["help", "membres"], "unknown command \"membres\"; did you mean `members`?"),
            (&["version", "--json"], "version takes no arguments: unexpected \"--json\""),
        ] {
            assert_eq!(parse_strs(args), Err(UsageError { message: want.into(), usage: USAGE }), "{args:?}");
        }
    }

    #[test]
    fn a_command_after_the_daemons_flags_is_told_to_come_first() {
        let error = parse_strs(&["--role", "ps", "tf-config"]).unwrap_err();
        assert!(error.message.starts_with("\"tf-config\" must come first"), "{}", error.message);
    }

    #[test]
    fn a_mistyped_command_gets_the_likely_one() {
        for (word, want) in [
            ("membres", "unknown command \"membres\"; did you mean `members`?"),
            ("member", "unknown command \"member\"; did you mean `members`?"),
            ("Members", "unknown command \"Members\"; did you mean `members`?"),
            ("tfconfig", "unknown command \"tfconfig\"; did you mean `tf-config`?"),
            ("tf_config", "unknown command \"tf_config\"; did you mean `tf-config`?"),
            ("torch_env", "unknown command \"torch_env\"; did you mean `torch-env`?"),
            ("hostfiles", "unknown command \"hostfiles\"; did you mean `hostfile`?"),
            ("exce", "unknown command \"exce\"; did you mean `exec`?"),
            ("hlep", "unknown command \"hlep\"; did you mean `help`?"),
            ("versoin", "unknown command \"versoin\"; did you mean `version`?"),
            (
                "ex",
                "unknown command \"ex\" (the commands: members, tf-config, torch-env, hostfile, exec, help, version)",
            ),
            (
                "start",
                "unknown command \"start\" (the commands: members, tf-config, torch-env, hostfile, exec, help, version)",
            ),
            ("Corefile", "unexpected argument \"Corefile\"; name the Corefile with `-conf Corefile`"),
            ("/etc/idetcd/conf", "unexpected argument \"/etc/idetcd/conf\"; name the Corefile with `-conf /etc/idetcd/conf`"),
        ] {
            assert_eq!(parse_strs(&[word]), Err(UsageError { message: want.into(), usage: USAGE }), "{word}");
            assert_eq!(
                parse_strs(&["--role", "ps", word]),
                Err(UsageError { message: want.into(), usage: USAGE }),
                "after a flag: {word}"
            );
        }
        for (a, b, want) in [
            ("", "", 0),
            ("members", "members", 0),
            ("membres", "members", 1),
            ("ab", "ba", 1),
            ("", "abc", 3),
            ("kitten", "sitting", 3),
        ] {
            assert_eq!(edit_distance(a, b), want, "{a} {b}");
        }
    }

    #[test]
    fn launchers() {
        let launch = |wait, timeout, launcher| Ok(Command::Launch { conf: "Corefile".into(), wait, timeout, launcher });
        let secs = |s| Some(Duration::from_secs(s));
        let cases = [
            (&["tf-config"][..], launch(Wait::Now, None, Launcher::TfConfig { job: None, port: 2222 })),
            (
                &["tf-config", "--job=ps", "--port", "5000", "--wait=3", "--timeout", "90"],
                launch(Wait::First(3), secs(90), Launcher::TfConfig { job: Some("ps".into()), port: 5000 }),
            ),
            (&["torch-env", "--wait", "all"], launch(Wait::All, None, Launcher::TorchEnv { port: 29500 })),
            (
                &["torch-env", "--port", "1234", "--wait", "2", "--timeout=2m"],
                launch(Wait::First(2), secs(120), Launcher::TorchEnv { port: 1234 }),
            ),
            (&["hostfile"], launch(Wait::Now, None, Launcher::Hostfile { slots: 1, format: HostFormat::OpenMpi })),
            (
                &["hostfile", "--slots", "8", "--format", "horovod"],
                launch(Wait::Now, None, Launcher::Hostfile { slots: 8, format: HostFormat::Horovod }),
            ),
            (
                &["exec", "--wait", "4", "--", "sh", "-c", "exit 3"],
                launch(
                    Wait::First(4),
                    None,
                    Launcher::Exec {
                        port: 2222,
                        master_port: 29500,
                        command: ["sh", "-c", "exit 3"].map(OsString::from).into(),
                    },
                ),
            ),
            (
                &["exec", "--master-port", "1", "python", "-u", "--wait", "x"],
                launch(
                    Wait::Now,
                    None,
                    Launcher::Exec {
                        port: 2222,
                        master_port: 1,
                        command: ["python", "-u", "--wait", "x"].map(OsString::from).into(),
                    },
                ),
            ),
        ];
        for (args, want) in cases {
            assert_eq!(parse_strs(args), want, "{args:?}");
        }
    }

    #[test]
    fn usage_errors() {
        for (args, want, usage) in [
            (&["--bogus"][..], "unknown option --bogus", USAGE),
            (&["-conf"], "-conf needs a path", USAGE),
            (&["--conf="], "--conf needs a path", USAGE),
            (&["-conf", "a", "-conf", "b"], "-conf is given twice", USAGE),
            (&["--role"], "--role needs a role name", USAGE),
            (&["members", "Corefile"], "unexpected argument \"Corefile\"", MEMBERS_USAGE),
            (&["--json"], "unknown option --json", USAGE),
            (&["--wait", "3"], "unknown option --wait", USAGE),
            (&["members", "--job", "x"], "unknown option --job", MEMBERS_USAGE),
            (&["members", "--version"], "unknown option --version", MEMBERS_USAGE),
            (&["members", "--role", "ps"], "unknown option --role", MEMBERS_USAGE),
            (
                &["tf-config", "--job", "my-worker"],
                "--job: \"my-worker\" is not a TensorFlow job name (a letter, then letters, digits or _)",
                TF_CONFIG_USAGE,
            ),
            (
                &["tf-config", "--job", "1st"],
                "--job: \"1st\" is not a TensorFlow job name (a letter, then letters, digits or _)",
                TF_CONFIG_USAGE,
            ),
            (&["tf-config", "--port", "0"], "--port: \"0\" is not a port", TF_CONFIG_USAGE),
            (
                &["tf-config", "--wait", "none"],
                "--wait: \"none\" is neither a number of members nor all",
                TF_CONFIG_USAGE,
            ),
            (&["tf-config", "--wait", "0"], "--wait: \"0\" is neither a number of members nor all", TF_CONFIG_USAGE),
            (&["tf-config", "--timeout", "soon"], "--timeout: \"soon\" is not a number of seconds", TF_CONFIG_USAGE),
            (
                &["tf-config", "--timeout", "5"],
                "--timeout goes with --wait: without waiting there is nothing to give up on",
                TF_CONFIG_USAGE,
            ),
            (&["tf-config", "--job"], "--job needs a job name", TF_CONFIG_USAGE),
            (&["torch-env", "--job", "w"], "unknown option --job", TORCH_ENV_USAGE),
            (
                &["hostfile", "--format", "slurm"],
                "--format: \"slurm\" is not openmpi, mpich or horovod",
                HOSTFILE_USAGE,
            ),
            (&["hostfile", "--slots", "0"], "--slots: \"0\" is not a number of slots", HOSTFILE_USAGE),
            (&["hostfile", "--port", "1"], "unknown option --port", HOSTFILE_USAGE),
            (&["exec"], "exec needs a command to run, after --", EXEC_USAGE),
            (&["exec", "--wait", "2", "--"], "exec needs a command to run, after --", EXEC_USAGE),
        ] {
            assert_eq!(parse_strs(args), Err(UsageError { message: want.into(), usage }), "{args:?}");
        }
    }
}
