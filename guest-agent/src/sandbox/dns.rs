//! The pod's DNS settings (CreateSandbox `dns`) as a resolv.conf in the sandbox's scratch
//! directory, bind-mounted at /etc/resolv.conf into every container whose spec does not mount
//! one itself (containerd's CRI plugin gives each container the sandbox's file the same way).

use std::path::Path;

use nutshell_protocol::agent::DnsConfig;
use oci_spec::runtime::{MountBuilder, Spec};

/// Where containers see the pod's resolver settings.
pub const RESOLV_CONF: &str = "/etc/resolv.conf";

/// resolv.conf text for `dns`; `None` when it sets nothing (the image's file stays).
pub fn resolv_conf(dns: &DnsConfig) -> Option<String> {
    if dns.servers.is_empty() && dns.searches.is_empty() && dns.options.is_empty() {
        return None;
    }
    let mut text = String::new();
    for server in &dns.servers {
        text.push_str(&format!("nameserver {server}\n"));
    }
    if !dns.searches.is_empty() {
        text.push_str(&format!("search {}\n", dns.searches.join(" ")));
    }
    if !dns.options.is_empty() {
        text.push_str(&format!("options {}\n", dns.options.join(" ")));
    }
    Some(text)
}

/// Checks that no entry can break out of its line.
pub fn validate(dns: &DnsConfig) -> Result<(), String> {
    let entries = dns.servers.iter().chain(&dns.searches).chain(&dns.options);
    for entry in entries {
        if entry.is_empty() || entry.contains(|c: char| c.is_whitespace() || c.is_control()) {
            return Err(format!("entry {entry:?} is empty or holds whitespace"));
        }
    }
    Ok(())
}

/// Adds a bind mount of `file` at /etc/resolv.conf unless the spec mounts something there.
pub fn add_mount(spec: &mut Spec, file: &Path) {
    let mut mounts = spec.mounts().clone().unwrap_or_default();
    if mounts
        .iter()
        .any(|m| m.destination().as_path() == Path::new(RESOLV_CONF))
    {
        return;
    }
    let mount = MountBuilder::default()
        .destination(RESOLV_CONF)
        .typ("bind")
        .source(file)
        .options(vec![
            "rbind".to_string(),
            "rprivate".to_string(),
            "ro".to_string(),
        ])
        .build()
        .expect("every field of the mount is set");
    mounts.push(mount);
    spec.set_mounts(Some(mounts));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dns(servers: &[&str], searches: &[&str], options: &[&str]) -> DnsConfig {
        let mut dns = DnsConfig::new();
        dns.servers = servers.iter().map(|s| s.to_string()).collect();
        dns.searches = searches.iter().map(|s| s.to_string()).collect();
        dns.options = options.iter().map(|s| s.to_string()).collect();
        dns
    }

    #[test]
    fn resolv_conf_has_one_line_per_kind() {
        let text = resolv_conf(&dns(
            &["10.96.0.10", "1.1.1.1"],
            &["default.svc.cluster.local", "svc.cluster.local"],
            &["ndots:5"],
        ))
        .unwrap();
        assert_eq!(
            text,
            "nameserver 10.96.0.10\nnameserver 1.1.1.1\n\
             search default.svc.cluster.local svc.cluster.local\noptions ndots:5\n"
        );
        assert_eq!(resolv_conf(&DnsConfig::new()), None);
    }

    #[test]
    fn entries_cannot_add_lines() {
        assert!(validate(&dns(&["1.1.1.1\nnameserver 6.6.6.6"], &[], &[])).is_err());
        assert!(validate(&dns(&[], &["a b"], &[])).is_err());
        assert!(validate(&dns(&["1.1.1.1"], &["cluster.local"], &["ndots:2"])).is_ok());
    }

    #[test]
    fn spec_mount_wins_over_the_pod_file() {
        let mut spec = Spec::default();
        add_mount(&mut spec, Path::new("/run/nutshell/pod/resolv.conf"));
        let count = |spec: &Spec| {
            spec.mounts()
                .iter()
                .flatten()
                .filter(|m| m.destination().as_path() == Path::new(RESOLV_CONF))
                .count()
        };
        assert_eq!(count(&spec), 1);
        add_mount(&mut spec, Path::new("/elsewhere"));
        assert_eq!(count(&spec), 1, "a second mount was added");
    }
}
