//! The command line: raw arguments into a `Command`, or a usage error.
//!
//! Flags follow CoreDNS (`-conf PATH`, `-version`) and also take the usual `--long` and `=` forms.

use std::ffi::OsString;
use std::fmt;
use std::path::PathBuf;

pub const USAGE: &str = "\
usage: idetcd [-conf PATH]
       idetcd members [-conf PATH] [--json]
       idetcd tf-config --job NAME [--port PORT] [--wait N] [-conf PATH]

Claims a unique name for this node in etcd and answers DNS for every member of the cluster.
The subcommands read the same Corefile; `idetcd COMMAND --help` tells more.

options:
  -conf, --conf PATH   the Corefile to read (default: ./Corefile)
  -h, --help           print this help
  -version, --version  print the version

environment:
  RUST_LOG             log level: error, warn, info (default), debug or trace

exit status: 0 after a clean stop (SIGTERM or SIGINT release the name first),
1 on an error (bad Corefile, port in use, every ID taken, etcd refused...), 2 on a usage error.";

pub const MEMBERS_USAGE: &str = "\
usage: idetcd members [-conf PATH] [--json]

Lists the cluster's members as etcd has them now: ID, name, addresses, port and how many
seconds their lease has left (- for a record without a lease).

options:
  -conf, --conf PATH   the Corefile to read (default: ./Corefile)
  --json               a JSON array instead of a table

exit status: 0 on success, 1 when the Corefile or etcd fails, 2 on a usage error.";

pub const TF_CONFIG_USAGE: &str = "\
usage: idetcd tf-config --job NAME [--port PORT] [--wait N] [-conf PATH]

Prints the TF_CONFIG JSON for this node: cluster.NAME lists the members in ID order as
name:PORT, and task.index is this node's place among them. This node is the member whose
record carries this host's address, as the Corefile's `address` (or its detection) gives it.
With --wait N the cluster is exactly the first N IDs, so that every node prints the same one
(TensorFlow needs that); without it, whoever is a member right now.

  export TF_CONFIG=$(idetcd tf-config --job worker --wait 4)

options:
  --job NAME           the job name, such as worker
  --port PORT          the port the training processes listen on (default: 2222)
  --wait N             wait until the first N IDs are all taken, this node holding one
                       of them (a progress line on a terminal; etcd trouble is waited out)
  -conf, --conf PATH   the Corefile to read (default: ./Corefile)

exit status: 0 on success, 1 when the Corefile or etcd fails or this host is no member,
2 on a usage error.";

pub const DEFAULT_TF_PORT: u16 = 2222;

#[derive(Debug, PartialEq, Eq)]
pub enum Command {
    Run {
        conf: PathBuf,
    },
    Members {
        conf: PathBuf,
        json: bool,
    },
    TfConfig {
        conf: PathBuf,
        job: String,
        port: u16,
        wait: Option<usize>,
    },
    /// Print this usage text.
    Help(&'static str),
    Version,
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

pub fn parse(args: impl IntoIterator<Item = OsString>) -> Result<Command, UsageError> {
    let mut args = args.into_iter().map(|a| a.into_string()).peekable();
    let command = match args.peek() {
        Some(Ok(word)) if word == "members" => "members",
        Some(Ok(word)) if word == "tf-config" => "tf-config",
        _ => "",
    };
    if !command.is_empty() {
        args.next();
    }
    let usage = match command {
        "members" => MEMBERS_USAGE,
        "tf-config" => TF_CONFIG_USAGE,
        _ => USAGE,
    };
    let fail = |message: String| UsageError { message, usage };
    let (mut conf, mut json, mut job, mut port, mut wait) = (None, false, None, None, None);
    while let Some(arg) = args.next() {
        let arg = arg.map_err(|a| fail(format!("argument {a:?} is not valid UTF-8")))?;
        let (flag, inline) = match arg.split_once('=') {
            Some((flag, value)) if flag.starts_with('-') => (flag.to_string(), Some(value.to_string())),
            _ => (arg.clone(), None),
        };
        let mut value = |what: &str| -> Result<String, UsageError> {
            let value = match inline.clone() {
                Some(v) => v,
                None => args.next().and_then(Result::ok).unwrap_or_default(),
            };
            match value.is_empty() {
                true => Err(fail(format!("{flag} needs {what}"))),
                false => Ok(value),
            }
        };
        match (command, flag.as_str()) {
            (_, "-h" | "-help" | "--help") => return Ok(Command::Help(usage)),
            ("", "-version" | "--version") => return Ok(Command::Version),
            (_, "-conf" | "--conf") => set(&mut conf, PathBuf::from(value("a path")?), &flag, usage)?,
            ("members", "--json") if inline.is_none() => json = true,
            ("tf-config", "--job") => set(&mut job, value("a job name")?, &flag, usage)?,
            ("tf-config", "--port") => {
                let text = value("a port")?;
                let p = positive(&text).ok_or_else(|| fail(format!("--port: {text:?} is not a port")))?;
                set(&mut port, p, &flag, usage)?;
            }
            ("tf-config", "--wait") => {
                let text = value("a number")?;
                let n = positive(&text).ok_or_else(|| fail(format!("--wait: {text:?} is not a number of members")))?;
                set(&mut wait, n, &flag, usage)?;
            }
            (_, f) if f.starts_with('-') => return Err(fail(format!("unknown option {flag}"))),
            _ => return Err(fail(format!("unexpected argument {arg:?}"))),
        }
    }
    let conf = conf.unwrap_or_else(|| PathBuf::from("Corefile"));
    Ok(match command {
        "members" => Command::Members { conf, json },
        "tf-config" => {
            let job = job.ok_or_else(|| fail("tf-config needs --job NAME, such as --job worker".into()))?;
            // TensorFlow's own rule for job names (a letter, then letters, digits and _).
            let valid = job.starts_with(|c: char| c.is_ascii_alphabetic())
                && job.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
            if !valid {
                return Err(fail(format!(
                    "--job: {job:?} is not a TensorFlow job name (a letter, then letters, digits or _)"
                )));
            }
            Command::TfConfig { conf, job, port: port.unwrap_or(DEFAULT_TF_PORT), wait }
        }
        _ => Command::Run { conf },
    })
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
        let run = |p: &str| Ok(Command::Run { conf: PathBuf::from(p) });
        assert_eq!(parse_strs(&[]), run("Corefile"));
        assert_eq!(parse_strs(&["-conf", "/etc/idetcd/Corefile"]), run("/etc/idetcd/Corefile"));
        assert_eq!(parse_strs(&["--conf", "c"]), run("c"));
        assert_eq!(parse_strs(&["--conf=c"]), run("c"));
        assert_eq!(parse_strs(&["-conf=c=d"]), run("c=d"));
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
        assert_eq!(
            parse_strs(&["tf-config", "--job", "worker"]),
            Ok(Command::TfConfig { conf: "Corefile".into(), job: "worker".into(), port: 2222, wait: None })
        );
        assert_eq!(
            parse_strs(&["tf-config", "--job=ps", "--port", "5000", "--wait=3", "--conf", "c"]),
            Ok(Command::TfConfig { conf: "c".into(), job: "ps".into(), port: 5000, wait: Some(3) })
        );
        assert_eq!(parse_strs(&["tf-config", "-h"]), Ok(Command::Help(TF_CONFIG_USAGE)));
    }

    #[test]
    fn usage_errors() {
        for (args, want, usage) in [
            (&["--bogus"][..], "unknown option --bogus", USAGE),
            (&["-conf"], "-conf needs a path", USAGE),
            (&["--conf="], "--conf needs a path", USAGE),
            (&["-conf", "a", "-conf", "b"], "-conf is given twice", USAGE),
            (&["Corefile"], "unexpected argument \"Corefile\"", USAGE),
            (&["--json"], "unknown option --json", USAGE),
            (&["members", "--job", "x"], "unknown option --job", MEMBERS_USAGE),
            (&["members", "--version"], "unknown option --version", MEMBERS_USAGE),
            (&["tf-config"], "tf-config needs --job NAME, such as --job worker", TF_CONFIG_USAGE),
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
            (&["tf-config", "--job", "w", "--port", "0"], "--port: \"0\" is not a port", TF_CONFIG_USAGE),
            (
                &["tf-config", "--job", "w", "--wait", "none"],
                "--wait: \"none\" is not a number of members",
                TF_CONFIG_USAGE,
            ),
            (&["tf-config", "--job"], "--job needs a job name", TF_CONFIG_USAGE),
        ] {
            assert_eq!(parse_strs(args), Err(UsageError { message: want.into(), usage }), "{args:?}");
        }
    }
}
