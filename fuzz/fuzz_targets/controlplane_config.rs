//! Control-plane config parse: any text given as `controlplane.toml` is
//! parsed and validated (including `[rbac]` roles) with an error, never a panic.
#![no_main]
use libfuzzer_sys::fuzz_target;
use steward_controlplane::config::ControlPlaneConfig;

fuzz_target!(|data: &[u8]| {
    if let Ok(src) = std::str::from_utf8(data) {
        if let Ok(cfg) = ControlPlaneConfig::parse("controlplane.toml", src) {
            let _ = cfg.rbac.role_defs();
        }
    }
});
