//! idetcd: every node of a cluster runs it with the same Corefile; each claims the lowest free name
//! in etcd and answers DNS for all of them. The binary in `main.rs` drives this library; the library
//! exists so that the fuzz targets in `fuzz/` can call the pure parts directly. Only what those two
//! use is public. ARCHITECTURE.md has the map.

// Every `unsafe` is in `sys`, and each unsafe operation there says why it is sound.
#![deny(unsafe_code, unsafe_op_in_unsafe_fn)]

mod address;
mod claim;
pub mod cli;
mod clock;
pub mod config;
pub mod corefile;
pub mod daemon;
pub mod dns;
mod etcd;
mod exec;
mod forward;
mod job;
mod lease;
mod membership;
mod messages;
mod metrics;
mod monitor;
pub mod pattern;
mod querylog;
mod random;
pub mod record;
mod reload;
pub mod roster;
mod server;
#[allow(unsafe_code)]
mod sys;
mod view;
mod wire;
pub mod zone;
