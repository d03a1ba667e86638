//! The `idetcd` binary: parses the command line, then hands over to the library. It only wires
//! things up and maps errors to exit codes.

use std::process::ExitCode;

use idetcd::corefile::{self, Reader};
use idetcd::{cli, daemon, roster};

fn main() -> ExitCode {
    let command = match cli::parse(std::env::args_os().skip(1)) {
        Ok(command) => command,
        Err(e) => {
            eprintln!("idetcd: {e}\n{}", e.hint());
            return ExitCode::from(2);
        }
    };
    let result = match command {
        cli::Command::Help(usage) => {
            println!("{usage}");
            Ok(())
        }
        cli::Command::Version => {
            println!("idetcd {}", env!("CARGO_PKG_VERSION"));
            Ok(())
        }
        cli::Command::Run { conf, role } => {
            init_logging();
            corefile::load(&conf, Reader::Daemon)
                .map_err(|e| e.to_string())
                .and_then(|c| daemon::run(&c, role.as_deref()).map_err(|e| e.to_string()))
        }
        cli::Command::Members { conf, json } => corefile::load(&conf, Reader::Client)
            .map_err(|e| e.to_string())
            .and_then(|c| roster::members(&c, json, &mut std::io::stdout()).map_err(|e| e.to_string())),
        cli::Command::Launch { conf, wait, timeout, launcher } => {
            let config = match corefile::load(&conf, Reader::Client) {
                Ok(config) => config,
                Err(e) => return fail(e.to_string(), 1),
            };
            return match roster::launch(&config, wait, timeout, &launcher, &mut std::io::stdout()) {
                Ok(code) => ExitCode::from(code),
                Err(e) => fail(e.to_string(), e.exit_code()),
            };
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(e, 1),
    }
}

fn fail(message: String, code: u8) -> ExitCode {
    eprintln!("idetcd: error: {message}");
    ExitCode::from(code)
}

fn init_logging() {
    // The HTTP and TLS clients' debug lines would drown ours; `RUST_LOG=ureq=debug` (or
    // `rustls=debug`) still shows them.
    env_logger::Builder::new()
        .filter_level(log::LevelFilter::Info)
        .filter_module("ureq", log::LevelFilter::Warn)
        .filter_module("ureq_proto", log::LevelFilter::Warn)
        .filter_module("rustls", log::LevelFilter::Warn)
        .parse_env("RUST_LOG")
        .format_timestamp_millis()
        .format_target(false)
        .init();
}
