//! Selector parse: any text is parsed as a label selector; an accepted
//! selector prints to a string that parses back to the same selector (that is
//! how selectors are stored), and it can be matched against labels.
#![no_main]
use libfuzzer_sys::fuzz_target;
use std::collections::BTreeMap;
use steward_shared::selector::Selector;

fuzz_target!(|data: &[u8]| {
    let Ok(src) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(selector) = Selector::parse(src) else {
        return;
    };
    let printed = selector.to_string();
    let again = Selector::parse(&printed).unwrap_or_else(|e| panic!("{printed:?} does not parse back: {e}"));
    assert_eq!(again, selector, "{printed:?} parses to another selector");
    let labels: BTreeMap<String, String> = [("env", "prod"), ("team", "web"), ("", "")]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let _ = selector.matches(&labels);
});
