//! Any text as a Corefile: parsing must never panic, and an error always names the file.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|text: &str| {
    let env = |name: &str| (name == "SET").then(|| "value".to_string());
    if let Err(e) = idetcd::corefile::parse(text, Path::new("Corefile"), &env) {
        assert!(e.to_string().starts_with("Corefile"));
    }
});
