//! nutshell guest agent: PID 1 of the pod microVM.
//!
//! * [`init`]: boot-time mounts, console, cgroup v2 controllers (PID 1 only);
//! * [`root_switch`]: moving the root off the initramfs so containers can pivot_root;
//! * [`reaper`]: zombie reaping that keeps exit statuses of tracked children;
//! * [`probe`]: guest details gathered at request time;
//! * [`sandbox`]: pod sandboxes: the pod cgroup and pause with the shared namespaces, and the
//!   container and process calls;
//! * [`container`]: OCI spec to namespaces, mounts and process setup; the children's side;
//! * [`stdio`]: pipes and ptys of container processes, and the vsock stream server;
//! * [`api`]: the `Agent` ttrpc service implementation;
//! * [`server`]: the ttrpc server on vsock and its orderly stop;
//! * [`loopback`]: `lo` up in new network namespaces (pause) and the guest's own;
//! * [`power`]: powering the VM off;
//! * [`config`]: command line and the run-mode decisions derived from it.

pub mod api;
pub mod cgroups;
pub mod child_report;
pub mod config;
pub mod container;
pub mod init;
pub mod logger;
pub mod loopback;
pub mod power;
pub mod probe;
pub mod reaper;
pub mod root_switch;
pub mod sandbox;
pub mod server;
pub mod stdio;

/// Version reported by `Version` and printed on the console.
pub const AGENT_VERSION: &str = env!("CARGO_PKG_VERSION");
