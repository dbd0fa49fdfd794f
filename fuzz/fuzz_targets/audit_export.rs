//! Audit export parse: any file given to `stewardctl audit verify` is parsed
//! and, if it is an export, verified against its own key, with an error
//! (unusable or tampered), never a panic.
#![no_main]
use libfuzzer_sys::fuzz_target;
use steward_controlplane::audit::export;

fuzz_target!(|data: &[u8]| {
    if let Ok(doc) = export::parse(data) {
        let _ = export::verify(&doc, &[], &[]);
    }
});
