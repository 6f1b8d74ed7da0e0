//! `linux.seccomp` of a spec to a classic BPF program for seccomp(2).

use oci_spec::runtime::LinuxSeccomp;

use super::ContainerError;

/// Compiles a seccomp profile to BPF.
pub fn compile(profile: &LinuxSeccomp) -> Result<Vec<libc::sock_filter>, ContainerError> {
    Err(ContainerError::Unsupported(format!(
        "linux.seccomp (default action {:?}): seccomp profiles are not supported by this agent yet",
        profile.default_action()
    )))
}
