//! idetcd: every node of a cluster runs it with the same Corefile; each claims the lowest free name
//! in etcd and answers DNS for all of them. The binary in `main.rs` drives this library; the library
//! exists so that the fuzz targets in `fuzz/` can call the pure parts directly. ARCHITECTURE.md has
//! the map.

// Every `unsafe` is in `sys`, and each unsafe operation there says why it is sound.
#![deny(unsafe_code, unsafe_op_in_unsafe_fn)]

pub mod address;
pub mod claim;
pub mod cli;
pub mod clock;
pub mod config;
pub mod corefile;
pub mod daemon;
pub mod dns;
pub mod etcd;
pub mod exec;
pub mod forward;
pub mod job;
pub mod lease;
pub mod membership;
pub mod messages;
pub mod metrics;
pub mod monitor;
pub mod pattern;
pub mod querylog;
mod random;
pub mod record;
pub mod reload;
pub mod roster;
pub mod server;
#[allow(unsafe_code)]
mod sys;
pub mod view;
pub mod wire;
pub mod zone;
