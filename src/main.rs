//! The `idetcd` binary: parses the command line, then hands over to the library. It only wires
//! things up and maps errors to exit codes.

use std::process::ExitCode;

use idetcd::{cli, corefile, daemon};

fn main() -> ExitCode {
    let command = match cli::parse(std::env::args_os().skip(1)) {
        Ok(command) => command,
        Err(e) => {
            eprintln!("idetcd: {e}\n\n{}", cli::USAGE);
            return ExitCode::from(2);
        }
    };
    match command {
        cli::Command::Help => {
            println!("{}", cli::USAGE);
            ExitCode::SUCCESS
        }
        cli::Command::Version => {
            println!("idetcd {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
        cli::Command::Run { conf } => {
            init_logging();
            let result = corefile::load(&conf)
                .map_err(|e| e.to_string())
                .and_then(|config| daemon::run(&config).map_err(|e| e.to_string()));
            match result {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("idetcd: error: {e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

fn init_logging() {
    // The HTTP client's debug lines would drown ours; `RUST_LOG=ureq=debug` still shows them.
    env_logger::Builder::new()
        .filter_level(log::LevelFilter::Info)
        .filter_module("ureq", log::LevelFilter::Warn)
        .filter_module("ureq_proto", log::LevelFilter::Warn)
        .parse_env("RUST_LOG")
        .format_timestamp_millis()
        .format_target(false)
        .init();
}
