//! The `idetcd` binary: parses the command line, then hands over to the library. It only wires
//! things up and maps errors to exit codes.

use std::process::ExitCode;

use idetcd::{cli, corefile, daemon, roster};

fn main() -> ExitCode {
    let command = match cli::parse(std::env::args_os().skip(1)) {
        Ok(command) => command,
        Err(e) => {
            eprintln!("idetcd: {e}\n\n{}", e.usage);
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
        cli::Command::Run { conf } => {
            init_logging();
            corefile::load(&conf).map_err(|e| e.to_string()).and_then(|c| daemon::run(&c).map_err(|e| e.to_string()))
        }
        cli::Command::Members { conf, json } => corefile::load(&conf)
            .map_err(|e| e.to_string())
            .and_then(|c| roster::members(&c, json, &mut std::io::stdout()).map_err(|e| e.to_string())),
        cli::Command::TfConfig { conf, job, port, wait } => corefile::load(&conf)
            .map_err(|e| e.to_string())
            .and_then(|c| roster::tf_config(&c, &job, port, wait, &mut std::io::stdout()).map_err(|e| e.to_string())),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("idetcd: error: {e}");
            ExitCode::FAILURE
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
