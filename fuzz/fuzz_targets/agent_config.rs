//! Agent config parse: any text given as `/etc/steward/agent.toml` is parsed
//! and validated (checks, apps, server, spool) with an error, never a panic.
#![no_main]
use libfuzzer_sys::fuzz_target;
use steward_agent::config::AgentConfig;

fuzz_target!(|data: &[u8]| {
    if let Ok(src) = std::str::from_utf8(data) {
        let _ = AgentConfig::parse("agent.toml", src);
    }
});
