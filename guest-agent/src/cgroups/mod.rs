//! cgroup v2 in the guest: the controller-list files shared by init, the
//! details probe and the pod cgroup tree.

mod controllers;

pub use controllers::*;
