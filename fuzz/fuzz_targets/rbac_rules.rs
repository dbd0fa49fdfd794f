//! RBAC rule parse: any JSON body is read as a list of rules (the form of
//! `PUT /api/v1/roles/{name}` and of `[[rbac.roles]] rules`) and validated.
//! Accepted rules print back to specs that validate to the same rules, and
//! are evaluated (allows, covers) without a panic. The raw text is also
//! parsed as a single permission pattern.
#![no_main]
use libfuzzer_sys::fuzz_target;
use std::collections::BTreeMap;
use steward_controlplane::rbac::{Authority, Pattern, Rule, RuleSpec, parse_rules};
use steward_shared::selector::Selector;

fuzz_target!(|data: &[u8]| {
    if let Ok(s) = std::str::from_utf8(data) {
        if let Ok(p) = Pattern::parse(s) {
            let printed = p.to_string();
            assert_eq!(
                Pattern::parse(&printed).ok(),
                Some(p),
                "{printed:?} parses to another pattern"
            );
        }
    }
    let Ok(specs) = serde_json::from_slice::<Vec<RuleSpec>>(data) else {
        return;
    };
    // Bounded: the escalation check's cost grows with rules x label sets.
    if specs.len() > 16 {
        return;
    }
    let Ok(rules) = parse_rules(&specs) else {
        return;
    };
    for rule in &rules {
        let again = Rule::from_spec(&rule.to_spec()).expect("a printed rule validates");
        assert_eq!(&again, rule, "a printed rule validates to another rule");
    }
    let labels: BTreeMap<String, String> = [("env", "prod"), ("team", "web")]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let authority = Authority::new(rules, Selector::everything());
    for permission in ["jobs:create", "hosts:read", "audit:read", "roles:write"] {
        let _ = authority.allows(permission, Some(&labels));
        let _ = authority.allows(permission, None);
    }
    let _ = authority.covers(&authority);
    let _ = Authority::new(Vec::new(), Selector::everything()).covers(&authority);
});
