//! Controller-list files (`cgroup.controllers`, `cgroup.subtree_control`)
//! shared by init (enabling controllers), the guest details probe (reporting
//! them) and the pod cgroup tree (enabling them for pods and containers).

use std::fs;
use std::io;
use std::path::Path;

/// Where the agent mounts the cgroup2 hierarchy in the guest.
pub const CGROUP2_MOUNT_POINT: &str = "/sys/fs/cgroup";
/// Controllers available in a cgroup (space-separated).
pub const CONTROLLERS_FILE: &str = "cgroup.controllers";
/// Controllers enabled for the children of a cgroup (space-separated).
pub const SUBTREE_CONTROL_FILE: &str = "cgroup.subtree_control";

/// Splits the content of `cgroup.controllers` / `cgroup.subtree_control`.
pub fn parse_controller_list(content: &str) -> Vec<String> {
    content.split_whitespace().map(str::to_owned).collect()
}

/// What to write to `cgroup.subtree_control` to enable `controllers`:
/// `"+cpu +memory ..."`.
pub fn subtree_control_request<S: AsRef<str>>(controllers: &[S]) -> String {
    controllers
        .iter()
        .map(|name| format!("+{}", name.as_ref()))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Reads a controller list file of the cgroup directory `cgroup_dir`.
pub fn read_controller_list(cgroup_dir: &Path, file: &str) -> io::Result<Vec<String>> {
    fs::read_to_string(cgroup_dir.join(file)).map(|content| parse_controller_list(&content))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn controller_list_is_split_on_any_whitespace() {
        assert_eq!(
            parse_controller_list("cpuset cpu io memory hugetlb pids rdma misc\n"),
            ["cpuset", "cpu", "io", "memory", "hugetlb", "pids", "rdma", "misc"]
        );
        assert!(parse_controller_list("\n").is_empty());
        assert!(parse_controller_list("").is_empty());
    }

    #[test]
    fn subtree_control_request_prefixes_every_controller() {
        assert_eq!(
            subtree_control_request(&["cpu", "memory", "pids"]),
            "+cpu +memory +pids"
        );
        assert_eq!(subtree_control_request::<&str>(&[]), "");
    }

    #[test]
    fn controller_list_file_is_read_from_the_given_cgroup() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join(CONTROLLERS_FILE), "cpu io\n").unwrap();
        assert_eq!(
            read_controller_list(dir.path(), CONTROLLERS_FILE).unwrap(),
            ["cpu", "io"]
        );
        assert!(read_controller_list(dir.path(), SUBTREE_CONTROL_FILE).is_err());
    }
}
