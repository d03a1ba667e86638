//! The command line: raw arguments into a `Command`, or a usage error.
//!
//! Flags follow CoreDNS (`-conf PATH`, `-version`) and also take the usual `--long` and `=` forms.

use std::ffi::OsString;
use std::fmt;
use std::path::PathBuf;

pub const USAGE: &str = "\
usage: idetcd [-conf PATH]

Claims a unique name for this node in etcd and answers DNS for every member of the cluster.

options:
  -conf, --conf PATH   the Corefile to read (default: ./Corefile)
  -h, --help           print this help
  -version, --version  print the version

environment:
  RUST_LOG             log level: error, warn, info (default), debug or trace

exit status: 0 after a clean stop (SIGTERM or SIGINT release the name first),
1 on an error (bad Corefile, port in use, every ID taken...), 2 on a usage error.";

#[derive(Debug, PartialEq, Eq)]
pub enum Command {
    Run { conf: PathBuf },
    Help,
    Version,
}

#[derive(Debug, PartialEq, Eq)]
pub struct UsageError(String);

impl fmt::Display for UsageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

pub fn parse(args: impl IntoIterator<Item = OsString>) -> Result<Command, UsageError> {
    let mut conf = None;
    let mut args = args.into_iter();
    while let Some(arg) = args.next() {
        let arg = arg.into_string().map_err(|a| UsageError(format!("argument {a:?} is not valid UTF-8")))?;
        let (flag, inline) = match arg.split_once('=') {
            Some((flag, value)) if flag.starts_with('-') => (flag.to_string(), Some(value.to_string())),
            _ => (arg.clone(), None),
        };
        match flag.as_str() {
            "-h" | "-help" | "--help" => return Ok(Command::Help),
            "-version" | "--version" => return Ok(Command::Version),
            "-conf" | "--conf" => {
                let value = match inline {
                    Some(v) => v,
                    None => args
                        .next()
                        .ok_or_else(|| UsageError(format!("{flag} needs a path")))?
                        .to_string_lossy()
                        .into_owned(),
                };
                if value.is_empty() {
                    return Err(UsageError(format!("{flag} needs a path")));
                }
                if conf.replace(PathBuf::from(value)).is_some() {
                    return Err(UsageError(format!("{flag} is given twice")));
                }
            }
            _ if flag.starts_with('-') => return Err(UsageError(format!("unknown option {flag}"))),
            _ => return Err(UsageError(format!("unexpected argument {arg:?}"))),
        }
    }
    Ok(Command::Run { conf: conf.unwrap_or_else(|| PathBuf::from("Corefile")) })
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
        assert_eq!(parse_strs(&["--help"]), Ok(Command::Help));
        assert_eq!(parse_strs(&["-h"]), Ok(Command::Help));
        assert_eq!(parse_strs(&["--version"]), Ok(Command::Version));
        assert_eq!(parse_strs(&["-version"]), Ok(Command::Version));
    }

    #[test]
    fn usage_errors() {
        for (args, want) in [
            (&["--bogus"][..], "unknown option --bogus"),
            (&["-conf"], "-conf needs a path"),
            (&["--conf="], "--conf needs a path"),
            (&["-conf", "a", "-conf", "b"], "-conf is given twice"),
            (&["Corefile"], "unexpected argument \"Corefile\""),
        ] {
            assert_eq!(parse_strs(args), Err(UsageError(want.into())), "{args:?}");
        }
    }
}
