//! Bringing up `lo` in a network namespace: a new one starts with loopback down, and the pod's
//! containers talk over 127.0.0.1 (on a node, CNI's loopback plugin does this). Only system
//! calls on stack memory, so a forked child may call it.

/// Sets IFF_UP on `lo` of the calling thread's network namespace; the errno on failure.
pub fn bring_up() -> Result<(), i32> {
    // SAFETY: socket/ioctl/close with a zeroed ifreq holding a NUL-terminated name; every
    // call is async-signal-safe and touches only this stack frame.
    unsafe {
        let sock = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
        if sock < 0 {
            return Err(errno());
        }
        let mut req: libc::ifreq = std::mem::zeroed();
        for (dst, src) in req.ifr_name.iter_mut().zip(b"lo\0") {
            *dst = *src as libc::c_char;
        }
        let mut result = Ok(());
        if libc::ioctl(sock, libc::SIOCGIFFLAGS, &mut req) != 0 {
            result = Err(errno());
        } else {
            req.ifr_ifru.ifru_flags |= (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
            if libc::ioctl(sock, libc::SIOCSIFFLAGS, &req) != 0 {
                result = Err(errno());
            }
        }
        libc::close(sock);
        result
    }
}

fn errno() -> i32 {
    std::io::Error::last_os_error()
        .raw_os_error()
        .unwrap_or(libc::EIO)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_of_a_new_network_namespace_comes_up() {
        // In a child: unshare a network namespace (root here), bring lo up, check the flag.
        // SAFETY: fork in a test; the child only makes system calls and _exits.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0);
        if pid == 0 {
            // SAFETY: unshare/socket/ioctl/_exit in the forked child.
            unsafe {
                if libc::unshare(libc::CLONE_NEWNET) != 0 {
                    libc::_exit(2);
                }
                if bring_up().is_err() {
                    libc::_exit(3);
                }
                let sock = libc::socket(libc::AF_INET, libc::SOCK_DGRAM, 0);
                let mut req: libc::ifreq = std::mem::zeroed();
                req.ifr_name[0] = b'l' as libc::c_char;
                req.ifr_name[1] = b'o' as libc::c_char;
                if libc::ioctl(sock, libc::SIOCGIFFLAGS, &mut req) != 0 {
                    libc::_exit(4);
                }
                let up = req.ifr_ifru.ifru_flags & libc::IFF_UP as libc::c_short != 0;
                libc::_exit(if up { 0 } else { 5 });
            }
        }
        let mut status = 0;
        // SAFETY: waiting for our own child.
        unsafe { libc::waitpid(pid, &mut status, 0) };
        assert!(libc::WIFEXITED(status), "status {status}");
        assert_eq!(libc::WEXITSTATUS(status), 0);
    }
}
