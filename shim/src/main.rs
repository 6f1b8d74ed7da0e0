//! `containerd-shim-nutshell-v2`: containerd starts it as `start`, `delete` or the daemon.

fn main() {
    containerd_shim::run::<nutshell_shim::NutshellShim>(
        nutshell_shim::RUNTIME_ID,
        Some(nutshell_shim::shim_config()),
    );
}
