//! Role-based access control: permissions, roles, and the evaluator.
//!
//! A permission is `resource:action` (`jobs:create`, `hosts:read`). A
//! pattern may replace a whole segment with `*` (`jobs:*`, `*:read`, `*:*`);
//! partial wildcards (`job*:read`) are refused. A role is a set of rules,
//! each `allow` or `deny` of one pattern, optionally limited to hosts whose
//! control-plane labels match a selector. A token has one role and an
//! optional scope (a selector) that narrows everything it may do to the
//! hosts it matches.
//!
//! Decision ([`Authority::allows`]), for a permission about one host (its
//! labels) or about no particular host (`None`):
//! - about a host: allowed iff the token's scope matches the host, some allow
//!   rule matches (pattern and host selector) and no deny rule matches;
//! - about no host (a route, a list): allowed iff some allow rule matches the
//!   pattern (a host-limited one too: the list is then filtered per host) and
//!   no deny rule without a host limit matches.
//!
//! Invariants: default deny; any matching deny wins; the decision depends on
//! the set of rules only (never their order); labels are the control
//! plane's (`hosts.labels`), never an agent's self-reported facts.
//!
//! No escalation: [`Authority::covers`] decides exactly whether every
//! (permission, host) a new token or role would be allowed is allowed to the
//! caller too. Selectors test only presence and equality, so one
//! representative value per literal (plus "any other" and "absent") for every
//! key mentioned decides all label sets, and one representative "other"
//! resource and action decides every name no rule spells out.
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::Arc;
use std::time::Instant;

use serde::{Deserialize, Serialize};
use steward_shared::selector::{Requirement, Selector};

/// Control-plane labels of a host.
pub type Labels = BTreeMap<String, String>;

/// The built-in roles (CONTRACT.md), name and allowed patterns.
pub const BUILTIN_ROLES: &[(&str, &str, &[&str])] = &[
    ("viewer", "read everything", &["*:read"]),
    (
        "operator",
        "read everything; run jobs, backups and alerts",
        &["*:read", "jobs:*", "backups:*", "alerts:*"],
    ),
    (
        "deployer",
        "read everything; run jobs and rollouts",
        &["*:read", "jobs:*", "rollouts:*"],
    ),
    ("admin", "everything", &["*:*"]),
];

/// Most label sets [`Authority::covers`] enumerates for one class of
/// permissions before refusing a policy as too complex to verify.
const MAX_LABEL_SETS: usize = 20_000;
/// Default most rule evaluations of one [`Authority::covers`] (rules × label
/// sets, summed over the classes of permissions): a few tens of milliseconds.
pub const MAX_COVERS_WORK: u64 = 4_000_000;

/// Limits of one [`Authority::covers_within`].
#[derive(Debug, Clone, Copy)]
pub struct Budget {
    /// Most rule evaluations; more is refused before any is made.
    pub max_work: u64,
    /// When to give up (checked between label sets).
    pub deadline: Option<Instant>,
}

impl Default for Budget {
    fn default() -> Self {
        Budget {
            max_work: MAX_COVERS_WORK,
            deadline: None,
        }
    }
}

/// What [`Authority::covers_within`] decided and how many evaluations it made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CoversReport {
    pub result: Result<(), EscalationError>,
    pub evaluations: u64,
}
/// Stands for "any name/value not spelled out" in [`Authority::covers`]
/// (NUL never passes validation, so no rule or label can name it).
const OTHER: &str = "\u{0}other";

/// One segment of a permission pattern.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Seg {
    Any,
    Name(String),
}

impl Seg {
    fn matches(&self, name: &str) -> bool {
        match self {
            Seg::Any => true,
            Seg::Name(n) => n == name,
        }
    }
}

/// A permission pattern `resource:action`, segments possibly `*`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Pattern {
    resource: Seg,
    action: Seg,
}

/// Why a permission or rule is malformed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct PermissionError {
    pub message: String,
}

fn valid_name(s: &str) -> bool {
    let mut chars = s.chars();
    (1..=64).contains(&s.len())
        && chars.next().is_some_and(|c| c.is_ascii_lowercase())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_')
}

impl Pattern {
    /// Parses `resource:action`; each segment is `*` or a name
    /// (`[a-z][a-z0-9_-]*`, at most 64 characters).
    pub fn parse(s: &str) -> Result<Pattern, PermissionError> {
        let err = |m: String| PermissionError { message: m };
        let Some((r, a)) = s.split_once(':') else {
            return Err(err(format!(
                "permission {:?} must be resource:action, e.g. jobs:create, jobs:* or *:read",
                truncate(s)
            )));
        };
        let seg = |x: &str, what: &str| -> Result<Seg, PermissionError> {
            if x == "*" {
                Ok(Seg::Any)
            } else if valid_name(x) {
                Ok(Seg::Name(x.to_string()))
            } else if x.contains('*') {
                Err(err(format!(
                    "permission {:?}: a wildcard must be a whole segment (`*`), not part of the {what}",
                    truncate(s)
                )))
            } else {
                Err(err(format!(
                    "permission {:?}: the {what} must be `*` or lowercase letters, digits, `-` and `_`, starting with a letter",
                    truncate(s)
                )))
            }
        };
        Ok(Pattern {
            resource: seg(r, "resource")?,
            action: seg(a, "action")?,
        })
    }

    /// Whether this pattern covers the concrete permission `resource:action`.
    pub fn matches(&self, resource: &str, action: &str) -> bool {
        self.resource.matches(resource) && self.action.matches(action)
    }
}

impl fmt::Display for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = |seg: &Seg| match seg {
            Seg::Any => "*".to_string(),
            Seg::Name(n) => n.clone(),
        };
        write!(f, "{}:{}", s(&self.resource), s(&self.action))
    }
}

fn truncate(s: &str) -> String {
    s.chars().take(80).collect()
}

/// Splits a concrete permission (no wildcard) into (resource, action).
fn concrete(permission: &str) -> Option<(&str, &str)> {
    let (r, a) = permission.split_once(':')?;
    (valid_name(r) && valid_name(a)).then_some((r, a))
}

/// `allow` or `deny`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Effect {
    Allow,
    Deny,
}

/// A rule as written (API body, config file, database).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RuleSpec {
    pub effect: Effect,
    /// `resource:action`, with whole-segment wildcards: `jobs:*`, `*:read`, `*:*`.
    pub permission: String,
    /// Only hosts whose labels match this selector (default: every host).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hosts: Option<String>,
}

/// A validated rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub effect: Effect,
    pub pattern: Pattern,
    pub hosts: Option<Selector>,
}

impl Rule {
    /// Validates a written rule; the error names `permission` or `hosts`.
    pub fn from_spec(spec: &RuleSpec) -> Result<Rule, (&'static str, String)> {
        let pattern = Pattern::parse(spec.permission.trim()).map_err(|e| ("permission", e.message))?;
        let hosts = match spec.hosts.as_deref().map(str::trim) {
            None | Some("") => None,
            Some(s) => Some(Selector::parse(s).map_err(|e| ("hosts", e.to_string()))?),
        };
        Ok(Rule {
            effect: spec.effect,
            pattern,
            hosts,
        })
    }

    pub fn to_spec(&self) -> RuleSpec {
        RuleSpec {
            effect: self.effect,
            permission: self.pattern.to_string(),
            hosts: self.hosts.as_ref().map(ToString::to_string),
        }
    }

    fn applies(&self, resource: &str, action: &str, host: Option<&Labels>) -> bool {
        if !self.pattern.matches(resource, action) {
            return false;
        }
        match (host, &self.hosts) {
            (_, None) => true,
            (Some(labels), Some(sel)) => sel.matches(labels),
            // About no particular host: a host-limited allow still opens the
            // route (its lists are filtered); a host-limited deny does not close it.
            (None, Some(_)) => self.effect == Effect::Allow,
        }
    }
}

/// Validates written rules; the error is (field path such as `rules[2].permission`, message).
pub fn parse_rules(specs: &[RuleSpec]) -> Result<Vec<Rule>, (String, String)> {
    specs
        .iter()
        .enumerate()
        .map(|(i, s)| Rule::from_spec(s).map_err(|(field, m)| (format!("rules[{i}].{field}"), m)))
        .collect()
}

/// Where a role is defined.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum RoleSource {
    Builtin,
    Config,
    Api,
}

/// A named role.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoleDef {
    pub name: String,
    pub description: String,
    pub rules: Vec<Rule>,
    pub source: RoleSource,
}

/// Whether `name` is a valid role name (`[a-z][a-z0-9_-]*`, ≤ 64).
pub fn valid_role_name(name: &str) -> bool {
    valid_name(name)
}

/// The built-in role `name`.
pub fn builtin(name: &str) -> Option<RoleDef> {
    BUILTIN_ROLES
        .iter()
        .find(|(n, _, _)| *n == name)
        .map(|(n, d, perms)| RoleDef {
            name: n.to_string(),
            description: d.to_string(),
            rules: perms
                .iter()
                .map(|p| Rule {
                    effect: Effect::Allow,
                    pattern: Pattern::parse(p).expect("built-in patterns are valid"),
                    hosts: None,
                })
                .collect(),
            source: RoleSource::Builtin,
        })
}

/// Every built-in role.
pub fn builtins() -> Vec<RoleDef> {
    BUILTIN_ROLES.iter().filter_map(|(n, _, _)| builtin(n)).collect()
}

/// What one token may do: its role's rules, narrowed by its scope.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Authority {
    pub rules: Vec<Rule>,
    /// The empty selector: unscoped.
    pub scope: Selector,
}

/// The refusal of [`Authority::covers`]: the first permission (and host
/// labels) the new grant has and the caller lacks.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EscalationError {
    #[error("it would grant {permission}{on} which you do not hold")]
    NotHeld { permission: String, on: String },
    #[error("the rules and scopes are too complex to verify against yours; simplify them")]
    TooComplex,
}

impl Authority {
    pub fn new(rules: Vec<Rule>, scope: Selector) -> Self {
        Authority { rules, scope }
    }

    /// Nothing allowed (an unknown role).
    pub fn none() -> Self {
        Authority::default()
    }

    pub fn is_scoped(&self) -> bool {
        !self.scope.is_empty()
    }

    /// Whether `permission` (concrete `resource:action`) is allowed, about
    /// the host with these labels, or about no particular host (`None`).
    pub fn allows(&self, permission: &str, host: Option<&Labels>) -> bool {
        let Some((r, a)) = concrete(permission) else {
            return false;
        };
        self.decide(r, a, host)
    }

    fn decide(&self, r: &str, a: &str, host: Option<&Labels>) -> bool {
        decide_rules(&self.scope, &self.rules, r, a, host)
    }

    /// Whether the role's rules grant `permission` on every host whatever
    /// its labels (and about no particular host), ignoring the token's scope.
    /// Exact; a rule set too complex to decide counts as limited (fail closed).
    pub fn rules_unlimited(&self, permission: &str) -> bool {
        let Some((r, a)) = concrete(permission) else {
            return false;
        };
        let relevant: Vec<&Rule> = self.rules.iter().filter(|x| x.pattern.matches(r, a)).collect();
        if relevant.iter().any(|x| x.effect == Effect::Deny && x.hosts.is_none())
            || !relevant.iter().any(|x| x.effect == Effect::Allow)
        {
            return false;
        }
        if relevant.iter().all(|x| x.effect == Effect::Allow) && relevant.iter().any(|x| x.hosts.is_none()) {
            return true;
        }
        let selectors: Vec<&Selector> = relevant.iter().filter_map(|x| x.hosts.as_ref()).collect();
        let universe = Universe::new(&selectors);
        if universe.size() > MAX_LABEL_SETS as u64 {
            return false;
        }
        let everything = Selector::everything();
        decide_rules(&everything, relevant.iter().copied(), r, a, None)
            && universe.for_each(|labels| decide_rules(&everything, relevant.iter().copied(), r, a, Some(labels)))
    }

    /// Whether this token may use a fleet-wide route needing `permission`:
    /// unscoped, and its rules grant it on every host ([`Self::rules_unlimited`]).
    pub fn allows_fleet(&self, permission: &str) -> bool {
        !self.is_scoped() && self.rules_unlimited(permission)
    }

    /// Ok when every (permission, host) that `new` allows is allowed to
    /// `self` too, and `new`'s scope is no wider than `self`'s (for a role,
    /// pass it unscoped). Within the default [`Budget`] (no deadline).
    pub fn covers(&self, new: &Authority) -> Result<(), EscalationError> {
        self.covers_within(new, &Budget::default()).result
    }

    /// [`Self::covers`] within `budget`: [`EscalationError::TooComplex`]
    /// when the work it would take (rule evaluations over every label set
    /// that matters) is over `budget.max_work` (decided before any is
    /// done), or when `budget.deadline` passes. Returns the evaluations made.
    ///
    /// Work is bounded by deciding each class of permissions separately:
    /// the (resource, action) pairs matched by the same rules decide alike,
    /// and only the label keys those rules and the two scopes mention can
    /// change a decision, so only their values are enumerated.
    pub fn covers_within(&self, new: &Authority, budget: &Budget) -> CoversReport {
        let mut evaluations = 0u64;
        let result = self.covers_counting(new, budget, &mut evaluations);
        CoversReport { result, evaluations }
    }

    fn covers_counting(&self, new: &Authority, budget: &Budget, evaluations: &mut u64) -> Result<(), EscalationError> {
        let all: Vec<&Rule> = self.rules.iter().chain(&new.rules).collect();
        let mine = self.rules.len();
        let mut resources: BTreeSet<&str> = BTreeSet::from([OTHER]);
        let mut actions: BTreeSet<&str> = BTreeSet::from([OTHER]);
        for rule in &all {
            if let Seg::Name(n) = &rule.pattern.resource {
                resources.insert(n);
            }
            if let Seg::Name(n) = &rule.pattern.action {
                actions.insert(n);
            }
        }
        let words = all.len().div_ceil(64).max(1);
        let bits = |pred: &dyn Fn(&Rule) -> bool| -> Vec<u64> {
            let mut v = vec![0u64; words];
            for (i, rule) in all.iter().enumerate() {
                if pred(rule) {
                    v[i / 64] |= 1 << (i % 64);
                }
            }
            v
        };
        let by_resource: Vec<(&str, Vec<u64>)> = resources
            .iter()
            .map(|r| (*r, bits(&|x: &Rule| x.pattern.resource.matches(r))))
            .collect();
        let by_action: Vec<(&str, Vec<u64>)> = actions
            .iter()
            .map(|a| (*a, bits(&|x: &Rule| x.pattern.action.matches(a))))
            .collect();
        // Classes of (resource, action) matched by the same rules, with one representative.
        let mut classes: BTreeMap<Vec<u64>, (&str, &str)> = BTreeMap::new();
        for (r, rb) in &by_resource {
            for (a, ab) in &by_action {
                *evaluations += 1;
                let key: Vec<u64> = rb.iter().zip(ab).map(|(x, y)| x & y).collect();
                classes.entry(key).or_insert((r, a));
            }
        }
        // The work of every class, refused as a whole before any is done.
        let mut plans = Vec::with_capacity(classes.len());
        let mut work: u64 = *evaluations;
        for (key, (r, a)) in &classes {
            let pick = |range: std::ops::Range<usize>| -> Vec<&Rule> {
                range
                    .filter(|&i| key[i / 64] & (1 << (i % 64)) != 0)
                    .map(|i| all[i])
                    .collect()
            };
            let (old_rules, new_rules) = (pick(0..mine), pick(mine..all.len()));
            if new_rules.iter().all(|x| x.effect == Effect::Deny) {
                continue; // `new` allows nothing here
            }
            let mut selectors: Vec<&Selector> = vec![&self.scope, &new.scope];
            selectors.extend(old_rules.iter().chain(&new_rules).filter_map(|x| x.hosts.as_ref()));
            let universe = Universe::new(&selectors);
            let per_set = (old_rules.len() + new_rules.len() + 2) as u64;
            let sets = universe.size();
            if sets > MAX_LABEL_SETS as u64 {
                return Err(EscalationError::TooComplex);
            }
            work = work.saturating_add(sets.saturating_add(1).saturating_mul(per_set));
            if work > budget.max_work {
                return Err(EscalationError::TooComplex);
            }
            plans.push((*r, *a, old_rules, new_rules, universe, per_set));
        }
        let show = |s: &str| if s == OTHER { "*".to_string() } else { s.to_string() };
        for (r, a, old_rules, new_rules, universe, per_set) in plans {
            if budget.deadline.is_some_and(|d| Instant::now() >= d) {
                return Err(EscalationError::TooComplex);
            }
            *evaluations += per_set;
            if decide_rules(&new.scope, new_rules.iter().copied(), r, a, None)
                && !decide_rules(&self.scope, old_rules.iter().copied(), r, a, None)
            {
                return Err(EscalationError::NotHeld {
                    permission: format!("{}:{}", show(r), show(a)),
                    on: String::new(),
                });
            }
            let mut found: Option<Labels> = None;
            let mut timed_out = false;
            let mut n = 0u32;
            universe.for_each(|labels| {
                *evaluations += per_set;
                n = n.wrapping_add(1);
                if n.is_multiple_of(1024) && budget.deadline.is_some_and(|d| Instant::now() >= d) {
                    timed_out = true;
                    return false;
                }
                if decide_rules(&new.scope, new_rules.iter().copied(), r, a, Some(labels))
                    && !decide_rules(&self.scope, old_rules.iter().copied(), r, a, Some(labels))
                {
                    found = Some(labels.clone());
                    return false;
                }
                true
            });
            if timed_out {
                return Err(EscalationError::TooComplex);
            }
            if let Some(labels) = found {
                let shown: Vec<String> = labels
                    .iter()
                    .map(|(k, v)| format!("{k}={}", if v == OTHER { "<other>" } else { v }))
                    .collect();
                return Err(EscalationError::NotHeld {
                    permission: format!("{}:{}", show(r), show(a)),
                    on: format!(" on hosts labelled {{{}}}", shown.join(",")),
                });
            }
        }
        Ok(())
    }

    /// The filter of hosts on which `permission` is allowed (for lists).
    pub fn host_filter(self: &Arc<Self>, permission: &str) -> HostFilter {
        HostFilter {
            inner: Some((self.clone(), permission.to_string())),
        }
    }
}

/// The decision of [`Authority::decide`] over a subset of the rules (those
/// matching the permission: the others cannot change it).
fn decide_rules<'r>(
    scope: &Selector,
    rules: impl IntoIterator<Item = &'r Rule>,
    r: &str,
    a: &str,
    host: Option<&Labels>,
) -> bool {
    if let Some(labels) = host
        && !scope.matches(labels)
    {
        return false;
    }
    let mut allowed = false;
    for rule in rules {
        if rule.applies(r, a, host) {
            match rule.effect {
                Effect::Deny => return false,
                Effect::Allow => allowed = true,
            }
        }
    }
    allowed
}

/// Every label set that distinguishes the given selectors: per key
/// mentioned, absent, each literal value, or another value. Enumerated
/// lazily (one set at a time), so only its size is ever held in memory.
struct Universe<'a> {
    keys: Vec<(&'a str, Vec<Option<&'a str>>)>,
}

impl<'a> Universe<'a> {
    fn new(selectors: &[&'a Selector]) -> Self {
        let mut keys: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
        for sel in selectors {
            for req in &sel.requirements {
                let values = keys.entry(req.key()).or_default();
                match req {
                    Requirement::Equals(_, v) | Requirement::NotEquals(_, v) => {
                        values.insert(v);
                    }
                    Requirement::In(_, vs) | Requirement::NotIn(_, vs) => values.extend(vs.iter().map(String::as_str)),
                    Requirement::Exists(_) | Requirement::NotExists(_) => {}
                }
            }
        }
        Universe {
            keys: keys
                .into_iter()
                .map(|(k, values)| {
                    let options = std::iter::once(None)
                        .chain(values.into_iter().map(Some))
                        .chain(std::iter::once(Some(OTHER)))
                        .collect();
                    (k, options)
                })
                .collect(),
        }
    }

    /// How many label sets there are (saturating).
    fn size(&self) -> u64 {
        self.keys
            .iter()
            .fold(1u64, |n, (_, options)| n.saturating_mul(options.len() as u64))
    }

    /// Calls `f` on every label set until it returns false; true when it never did.
    fn for_each(&self, mut f: impl FnMut(&Labels) -> bool) -> bool {
        let mut labels = Labels::new();
        let mut idx = vec![0usize; self.keys.len()];
        loop {
            if !f(&labels) {
                return false;
            }
            let mut i = self.keys.len();
            loop {
                if i == 0 {
                    return true;
                }
                i -= 1;
                let (key, options) = &self.keys[i];
                idx[i] = (idx[i] + 1) % options.len();
                match options[idx[i]] {
                    None => {
                        labels.remove(*key);
                    }
                    Some(v) => {
                        labels.insert(key.to_string(), v.to_string());
                    }
                }
                if idx[i] != 0 {
                    break;
                }
            }
        }
    }
}

/// Which hosts a list may show: those on which a permission is allowed.
/// The default shows every host (no principal: internal callers).
#[derive(Clone, Default)]
pub struct HostFilter {
    inner: Option<(Arc<Authority>, String)>,
}

impl fmt::Debug for HostFilter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.inner {
            None => f.write_str("HostFilter(all)"),
            Some((a, p)) => write!(f, "HostFilter({p}, scope {:?})", a.scope.to_string()),
        }
    }
}

impl HostFilter {
    /// Every host.
    pub fn all() -> Self {
        HostFilter::default()
    }

    /// Whether the host with these labels may be shown.
    pub fn matches(&self, labels: &Labels) -> bool {
        match &self.inner {
            None => true,
            Some((authority, permission)) => authority.allows(permission, Some(labels)),
        }
    }

    /// Whether the decision cannot depend on a host's labels (no scope, no
    /// host-limited rule): list queries then page without over-scanning.
    /// Only an optimisation: [`HostFilter::matches`] is applied either way.
    pub fn is_all(&self) -> bool {
        match &self.inner {
            None => true,
            Some((a, _)) => !a.is_scoped() && a.rules.iter().all(|r| r.hosts.is_none()),
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::seq::SliceRandom;
    use rand::{Rng, SeedableRng};

    fn rule(effect: Effect, p: &str, hosts: Option<&str>) -> Rule {
        Rule::from_spec(&RuleSpec {
            effect,
            permission: p.into(),
            hosts: hosts.map(String::from),
        })
        .unwrap()
    }

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn patterns_parse_and_refuse_malformed() {
        for ok in [
            "jobs:create",
            "jobs:*",
            "*:read",
            "*:*",
            "enrollment-tokens:create",
            "a_b:c1",
        ] {
            assert!(Pattern::parse(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "jobs",
            "jobs:",
            ":read",
            "jobs:cre*",
            "j*:read",
            "Jobs:read",
            "jobs:read:x",
            "jobs :read",
            "1x:read",
            "**:read",
        ] {
            assert!(Pattern::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn builtin_roles_are_as_in_the_contract() {
        let auth = |role: &str| Authority::new(builtin(role).unwrap().rules, Selector::everything());
        let v = auth("viewer");
        assert!(v.allows("hosts:read", None) && v.allows("audit:read", None));
        assert!(!v.allows("jobs:create", None) && !v.allows("tokens:create", None));
        let o = auth("operator");
        assert!(o.allows("jobs:cancel", None) && o.allows("backups:run", None) && o.allows("alerts:ack", None));
        assert!(!o.allows("rollouts:create", None) && !o.allows("hosts:revoke", None));
        let d = auth("deployer");
        assert!(d.allows("rollouts:create", None) && d.allows("jobs:create", None));
        assert!(!d.allows("backups:run", None) && !d.allows("alerts:ack", None));
        let a = auth("admin");
        assert!(a.allows("anything:else", None));
        assert!(!a.allows("not a permission", None));
    }

    #[test]
    fn deny_wins_and_host_limits_apply() {
        let a = Authority::new(
            vec![
                rule(Effect::Allow, "jobs:*", None),
                rule(Effect::Deny, "jobs:cancel", Some("env=prod")),
            ],
            Selector::everything(),
        );
        assert!(a.allows("jobs:cancel", Some(&labels(&[("env", "dev")]))));
        assert!(!a.allows("jobs:cancel", Some(&labels(&[("env", "prod")]))));
        // A host-limited deny does not close the route; an unlimited one does.
        assert!(a.allows("jobs:cancel", None));
        let b = Authority::new(
            vec![rule(Effect::Allow, "*:*", None), rule(Effect::Deny, "jobs:*", None)],
            Selector::everything(),
        );
        assert!(!b.allows("jobs:read", None) && b.allows("hosts:read", None));
        let scoped = Authority::new(
            vec![rule(Effect::Allow, "*:*", None)],
            Selector::parse("team=a").unwrap(),
        );
        assert!(scoped.allows("hosts:read", Some(&labels(&[("team", "a")]))));
        assert!(!scoped.allows("hosts:read", Some(&labels(&[("team", "b")]))));
        assert!(!scoped.allows("hosts:read", Some(&labels(&[]))));
    }

    #[test]
    fn covers_refuses_escalation() {
        let admin = Authority::new(builtin("admin").unwrap().rules, Selector::everything());
        let viewer = Authority::new(builtin("viewer").unwrap().rules, Selector::everything());
        let operator = Authority::new(builtin("operator").unwrap().rules, Selector::everything());
        assert!(admin.covers(&operator).is_ok());
        assert!(operator.covers(&viewer).is_ok());
        assert!(viewer.covers(&operator).is_err());
        // A wildcard grants names nobody spelled out.
        let star = Authority::new(vec![rule(Effect::Allow, "jobs:*", None)], Selector::everything());
        let listed = Authority::new(
            vec![
                rule(Effect::Allow, "jobs:create", None),
                rule(Effect::Allow, "jobs:read", None),
            ],
            Selector::everything(),
        );
        assert!(star.covers(&listed).is_ok());
        assert!(listed.covers(&star).is_err());
        // Scope: no wider than one's own.
        let team_a = Authority::new(builtin("admin").unwrap().rules, Selector::parse("team=a").unwrap());
        let a_prod = Authority::new(
            builtin("viewer").unwrap().rules,
            Selector::parse("team=a,env=prod").unwrap(),
        );
        assert!(team_a.covers(&a_prod).is_ok());
        assert!(a_prod.covers(&team_a).is_err());
        assert!(team_a.covers(&viewer).is_err());
        let team_b = Authority::new(
            builtin("viewer").unwrap().rules,
            Selector::parse("team in (a,b)").unwrap(),
        );
        assert!(team_a.covers(&team_b).is_err());
        // Host-limited rules are compared host by host.
        let prod_jobs = Authority::new(
            vec![rule(Effect::Allow, "jobs:*", Some("env=prod"))],
            Selector::everything(),
        );
        let denied_prod = Authority::new(
            vec![
                rule(Effect::Allow, "*:*", None),
                rule(Effect::Deny, "jobs:*", Some("env=prod")),
            ],
            Selector::everything(),
        );
        assert!(denied_prod.covers(&prod_jobs).is_err());
        assert!(admin.covers(&denied_prod).is_ok());
        let e = operator.covers(&admin).unwrap_err().to_string();
        assert!(e.contains("which you do not hold"), "{e}");
    }

    // ------------------------------------------------ differential test

    const RESOURCES: &[&str] = &["hosts", "jobs", "audit", "tokens"];
    const ACTIONS: &[&str] = &["read", "create", "cancel"];
    const SELECTORS: &[&str] = &[
        "env=prod",
        "env!=prod",
        "team in (a,b)",
        "team",
        "!team",
        "env=dev,team=a",
    ];

    fn random_rule(rng: &mut StdRng) -> Rule {
        let pick = |rng: &mut StdRng, xs: &[&str]| -> String {
            if rng.random_bool(0.3) {
                "*".into()
            } else {
                xs[rng.random_range(0..xs.len())].to_string()
            }
        };
        let permission = format!("{}:{}", pick(rng, RESOURCES), pick(rng, ACTIONS));
        let hosts = rng
            .random_bool(0.4)
            .then(|| SELECTORS[rng.random_range(0..SELECTORS.len())].to_string());
        let effect = if rng.random_bool(0.3) {
            Effect::Deny
        } else {
            Effect::Allow
        };
        Rule::from_spec(&RuleSpec {
            effect,
            permission,
            hosts,
        })
        .unwrap()
    }

    fn random_labels(rng: &mut StdRng) -> Labels {
        let mut l = Labels::new();
        if rng.random_bool(0.6) {
            l.insert("env".into(), ["prod", "dev", "qa"][rng.random_range(0..3)].into());
        }
        if rng.random_bool(0.6) {
            l.insert("team".into(), ["a", "b", "c"][rng.random_range(0..3)].into());
        }
        l
    }

    /// The naive reference: expand every rule into the set of concrete
    /// permissions it grants or denies (by string comparison), then
    /// "some allow and no deny", host by host.
    fn reference(rules: &[Rule], scope: &str, perm: &str, host: Option<&Labels>) -> bool {
        let (r, a) = perm.split_once(':').unwrap();
        let covers = |pattern: &str| {
            let (pr, pa) = pattern.split_once(':').unwrap();
            let res: Vec<&str> = if pr == "*" { RESOURCES.to_vec() } else { vec![pr] };
            let act: Vec<&str> = if pa == "*" { ACTIONS.to_vec() } else { vec![pa] };
            res.contains(&r) && act.contains(&a)
        };
        let host_ok = |sel: &Option<Selector>, effect: Effect| match (host, sel) {
            (_, None) => true,
            (Some(l), Some(s)) => s.matches(l),
            (None, Some(_)) => effect == Effect::Allow,
        };
        if let Some(l) = host
            && !Selector::parse(scope).unwrap().matches(l)
        {
            return false;
        }
        let specs: Vec<RuleSpec> = rules.iter().map(Rule::to_spec).collect();
        let hit = |effect: Effect| {
            specs
                .iter()
                .zip(rules)
                .any(|(s, rule)| s.effect == effect && covers(&s.permission) && host_ok(&rule.hosts, effect))
        };
        hit(Effect::Allow) && !hit(Effect::Deny)
    }

    #[test]
    fn evaluator_matches_a_naive_reference_on_random_policies() {
        let mut rng = StdRng::seed_from_u64(0x5354_4557);
        let scopes = ["", "team=a", "env in (prod,dev)"];
        for _ in 0..2_000 {
            let n = rng.random_range(0..6);
            let mut rules: Vec<Rule> = (0..n).map(|_| random_rule(&mut rng)).collect();
            let scope = scopes[rng.random_range(0..scopes.len())];
            let a = Authority::new(rules.clone(), Selector::parse(scope).unwrap());
            rules.shuffle(&mut rng);
            let shuffled = Authority::new(rules.clone(), Selector::parse(scope).unwrap());
            for _ in 0..10 {
                let perm = format!(
                    "{}:{}",
                    RESOURCES[rng.random_range(0..RESOURCES.len())],
                    ACTIONS[rng.random_range(0..ACTIONS.len())]
                );
                let labels = random_labels(&mut rng);
                for host in [None, Some(&labels)] {
                    let want = reference(&rules, scope, &perm, host);
                    assert_eq!(a.allows(&perm, host), want, "{perm} {host:?} {rules:?} scope {scope}");
                    assert_eq!(shuffled.allows(&perm, host), want, "order changed the decision");
                }
            }
        }
    }

    /// Every label set over the keys and values the random policies use
    /// (`qa` and `c` stand for values no selector names), as an exhaustive
    /// set: 4 × 4 = 16.
    fn all_label_sets() -> Vec<Labels> {
        let mut out = Vec::new();
        for env in [None, Some("prod"), Some("dev"), Some("qa")] {
            for team in [None, Some("a"), Some("b"), Some("c")] {
                let mut l = Labels::new();
                if let Some(e) = env {
                    l.insert("env".into(), e.into());
                }
                if let Some(t) = team {
                    l.insert("team".into(), t.into());
                }
                out.push(l);
            }
        }
        out
    }

    #[test]
    fn covers_agrees_with_exhaustive_enumeration_on_random_policies() {
        let mut rng = StdRng::seed_from_u64(7);
        let scopes = ["", "team=a", "team in (a,b)", "env=prod"];
        let sets = all_label_sets();
        // A resource and an action no rule names: what a wildcard grants beyond the names spelled out.
        let resources: Vec<&str> = RESOURCES.iter().copied().chain(["zother"]).collect();
        let actions: Vec<&str> = ACTIONS.iter().copied().chain(["zother"]).collect();
        let (mut oks, mut errs) = (0, 0);
        for _ in 0..600 {
            let mk = |rng: &mut StdRng| {
                let n = rng.random_range(0..4);
                Authority::new(
                    (0..n).map(|_| random_rule(rng)).collect(),
                    Selector::parse(scopes[rng.random_range(0..scopes.len())]).unwrap(),
                )
            };
            let (me, new) = (mk(&mut rng), mk(&mut rng));
            let verdict = me.covers(&new);
            let mut counter = false;
            for r in &resources {
                for a in &actions {
                    let perm = format!("{r}:{a}");
                    for host in sets.iter().map(Some).chain([None]) {
                        counter |= new.allows(&perm, host) && !me.allows(&perm, host);
                    }
                }
            }
            assert_eq!(
                verdict.is_ok(),
                !counter,
                "covers disagrees: {verdict:?}, {me:?} vs {new:?}"
            );
            if verdict.is_ok() {
                oks += 1;
            } else {
                errs += 1;
            }
        }
        assert!(oks >= 50 && errs >= 50, "a one-sided sample: {oks} ok, {errs} refused");
    }

    #[test]
    fn rules_unlimited_is_exact_and_fleet_routes_need_it_unscoped() {
        let a = |rules: Vec<Rule>, scope: &str| Authority::new(rules, Selector::parse(scope).unwrap());
        let admin = builtin("admin").unwrap().rules;
        assert!(a(admin.clone(), "").allows_fleet("audit:read"));
        assert!(a(admin.clone(), "team=a").rules_unlimited("audit:read"));
        assert!(!a(admin.clone(), "team=a").allows_fleet("audit:read"));
        let web = vec![rule(Effect::Allow, "*:*", Some("team=web"))];
        assert!(a(web.clone(), "").allows("audit:read", None), "opens host routes");
        assert!(!a(web, "").allows_fleet("audit:read"));
        // Complementary host limits together cover every host.
        let split = vec![
            rule(Effect::Allow, "audit:read", Some("env=prod")),
            rule(Effect::Allow, "audit:read", Some("env!=prod")),
        ];
        assert!(a(split.clone(), "").allows_fleet("audit:read"));
        assert!(!a(split, "").allows_fleet("alerts:write"));
        // A host-limited deny limits it.
        let denied = vec![
            rule(Effect::Allow, "*:*", None),
            rule(Effect::Deny, "alerts:*", Some("env=prod")),
        ];
        assert!(!a(denied.clone(), "").allows_fleet("alerts:write"));
        assert!(a(denied, "").allows_fleet("audit:read"));
        assert!(!a(vec![], "").allows_fleet("audit:read"));
    }

    /// The heaviest `PUT /api/v1/roles` bodies the API takes (200 rules,
    /// under 64 KiB), against an admin and against themselves: decided or
    /// refused as too complex, with the work bounded. `spread` is the old
    /// worst case: 200 distinct permissions over 19,880 label sets, about
    /// 1.6 × 10^11 rule evaluations for the old enumeration; `dense` puts
    /// 200 selectors over distinct keys on one permission.
    pub(crate) fn worst_policies() -> Vec<Vec<Rule>> {
        let list = |p: &str, n: usize| (0..n).map(|v| format!("{p}{v}")).collect::<Vec<_>>().join(",");
        let spread: Vec<Rule> = (0..200)
            .map(|i| {
                let sel = match i {
                    0 => format!("k in ({})", list("v", 140)),
                    1 => format!("j in ({})", list("w", 138)),
                    _ => format!("k=v{}", i % 140),
                };
                rule(Effect::Allow, &format!("r{i}:a{i}"), Some(&sel))
            })
            .collect();
        let dense: Vec<Rule> = (0..200)
            .map(|i| {
                let effect = if i % 3 == 0 { Effect::Deny } else { Effect::Allow };
                rule(
                    effect,
                    "jobs:create",
                    Some(&format!("k{i} in (x,y),j{} notin (z)", i % 9)),
                )
            })
            .collect();
        vec![spread, dense]
    }

    #[test]
    fn covers_work_is_bounded_on_the_worst_policies() {
        let admin = Authority::new(builtin("admin").unwrap().rules, Selector::everything());
        for heavy in worst_policies() {
            let body: String = heavy
                .iter()
                .map(|r| serde_json::to_string(&r.to_spec()).unwrap())
                .collect::<Vec<_>>()
                .join(",");
            assert!(body.len() < 64 * 1024, "{}", body.len());
            for me in [admin.clone(), Authority::new(heavy.clone(), Selector::everything())] {
                let new = Authority::new(heavy.clone(), Selector::everything());
                let report = me.covers_within(&new, &Budget::default());
                assert!(
                    report.evaluations <= MAX_COVERS_WORK,
                    "{} evaluations",
                    report.evaluations
                );
                assert!(
                    matches!(report.result, Ok(()) | Err(EscalationError::TooComplex)),
                    "{:?}",
                    report.result
                );
            }
        }
        let [spread, dense] = <[Vec<Rule>; 2]>::try_from(worst_policies()).unwrap();
        // The spread policy is decided: the admin holds it.
        let report = admin.covers_within(
            &Authority::new(spread.clone(), Selector::everything()),
            &Budget::default(),
        );
        assert_eq!(report.result, Ok(()));
        // The dense one is refused as too complex, before any label set is tried.
        let report = admin.covers_within(&Authority::new(dense, Selector::everything()), &Budget::default());
        assert_eq!(report.result, Err(EscalationError::TooComplex));
        assert!(report.evaluations <= 200_000, "{}", report.evaluations);
        let heavy = spread;
        // The admin holds everything: decided (not refused as too complex) when it fits.
        let small: Vec<Rule> = heavy.iter().take(20).cloned().collect();
        let report = admin.covers_within(&Authority::new(small, Selector::everything()), &Budget::default());
        assert_eq!(report.result, Ok(()));
        // A tiny budget refuses before doing the work; a past deadline stops it.
        let report = admin.covers_within(
            &Authority::new(heavy.clone(), Selector::everything()),
            &Budget {
                max_work: 1_000,
                deadline: None,
            },
        );
        assert_eq!(report.result, Err(EscalationError::TooComplex));
        assert!(report.evaluations <= 1_000_000, "{}", report.evaluations);
        let report = admin.covers_within(
            &Authority::new(heavy, Selector::everything()),
            &Budget {
                max_work: u64::MAX,
                deadline: Some(Instant::now()),
            },
        );
        assert_eq!(report.result, Err(EscalationError::TooComplex));
    }
}
