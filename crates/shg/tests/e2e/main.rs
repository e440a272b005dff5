//! Privileged end-to-end tests: a real `shg gateway run` per test, real hardened containers,
//! driven through the `shg` command line and checked by what a user can observe (output, exit
//! codes, `/proc`, cgroups, files in the state directory).
//!
//! They need root, cgroups, busybox-static and runc (see scripts/setup.sh). Each test has its
//! own agent, state directory and cgroup parent, so they run in parallel; each removes its
//! services and stops its agent when it ends, even when it fails.

mod admission;
mod bad_input;
mod catalog;
mod console;
mod crash;
mod demo;
mod fleet;
mod harness;
mod health;
mod isolation;
mod lab;
mod lifecycle;
mod logs;
mod monitor;
mod network;
mod realms;
mod registry;
mod resources;
mod restart;
mod runc;
mod standard;
mod storage;
mod tenants;
mod trust;
mod update;
mod usp;
mod vod;
