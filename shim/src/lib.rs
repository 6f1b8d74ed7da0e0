//! `containerd-shim-nutshell-v2`: nutshell as a containerd runtime (`io.containerd.nutshell.v2`,
//! task API v2 as containerd 1.6 speaks it, through `containerd-shim` 0.11).
//!
//! One shim process and one VM per pod: the pod's first container (a CRI sandbox, or a
//! container started without CRI, e.g. by `ctr run`) boots the VM through `nutshell-runtime`
//! and creates the agent's sandbox; app containers of a CRI pod reach the same shim and become
//! containers in the same VM. Their rootfs (containerd's snapshot) and the host files their
//! specs bind reach the guest through the pod's virtio-fs share.
//!
//! * [`shim`]: `start` (pod grouping), the daemon, `delete`;
//! * [`task`], [`service`]: the task API and the container lifecycle;
//! * [`pod`]: the VM; [`spec`]: roles and the spec rewrite for the guest;
//! * [`mounts`], [`stdio`], [`events`], [`stats`]: host mounts, FIFO proxies, ordered events,
//!   cgroup metrics; [`config`]: settings; [`error`]: errors and their ttrpc codes.

pub mod config;
pub mod error;
pub mod events;
pub mod mounts;
pub mod pod;
pub mod process;
pub mod service;
pub mod shim;
pub mod spec;
pub mod stats;
pub mod stdio;
pub mod task;

pub use shim::{shim_config, NutshellShim, RUNTIME_ID};
