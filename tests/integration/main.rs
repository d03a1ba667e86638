//! Integration tests: a real etcd started per test, the real binary, real sockets.
//! Run them with `scripts/test`, which installs etcd and dig when they are missing.

mod cli;
mod corefile;
mod dns;
mod etcd_cluster;
mod faults;
mod following;
mod hostile;
mod launchers;
mod membership;
mod misconfigured;
mod operations;
mod reliability;
mod reload;
mod roles;
mod security;
mod support;
