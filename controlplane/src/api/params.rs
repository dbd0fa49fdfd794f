//! Query parameters and cursors of the REST API, validated into typed values
//! with a 400 problem naming the parameter at fault.
//!
//! Rules: a route accepts a fixed set of parameters; an unknown or repeated
//! parameter is a 400 (a typo such as `?selecter=` must not silently list
//! everything). An empty free-text value (`selector=`, `cursor=`, `host=`)
//! is the same as leaving the parameter out; a typed value (a number, a
//! state, a time, a duration) must be valid when given, so `limit=` is a 400
//! like `limit=abc` (the OpenAPI document types it as an integer).
use std::collections::BTreeMap;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use steward_shared::selector::Selector;
use steward_shared::status::CheckStatus;

use super::problem::Problem;

/// Default and maximum page sizes.
pub const DEFAULT_LIMIT: usize = 100;
pub const MAX_LIMIT: usize = 1000;

/// Decoded query parameters of one request.
#[derive(Debug, Default)]
pub struct Params {
    map: BTreeMap<String, String>,
}

impl Params {
    /// Decodes `raw` (`application/x-www-form-urlencoded`) and checks every
    /// key is in `allowed` and appears once.
    pub fn parse(raw: &str, allowed: &[&str]) -> Result<Params, Problem> {
        let mut map = BTreeMap::new();
        for pair in raw.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let key = decode(k).ok_or_else(|| Problem::invalid("query", "the query string is not valid UTF-8 text"))?;
            let value = decode(v).ok_or_else(|| Problem::invalid(&key, format!("{key} is not valid UTF-8 text")))?;
            if !allowed.contains(&key.as_str()) {
                let expected = if allowed.is_empty() {
                    "none".to_string()
                } else {
                    allowed.join(", ")
                };
                return Err(Problem::invalid(
                    &truncate(&key, 64),
                    format!(
                        "unknown query parameter {:?}; this route accepts: {expected}",
                        truncate(&key, 64)
                    ),
                ));
            }
            if map.contains_key(&key) {
                return Err(Problem::invalid(&key, format!("{key} is given more than once")));
            }
            map.insert(key, value);
        }
        Ok(Params { map })
    }

    /// The non-empty value of the free-text parameter `key`.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.map.get(key).map(String::as_str).filter(|v| !v.is_empty())
    }

    /// The value of the typed parameter `key` as given, empty included (an
    /// empty value then fails the caller's parsing with a 400).
    pub fn typed(&self, key: &str) -> Option<&str> {
        self.map.get(key).map(String::as_str)
    }

    /// `limit`: 1..=1000, default 100.
    pub fn limit(&self) -> Result<usize, Problem> {
        let Some(raw) = self.typed("limit") else {
            return Ok(DEFAULT_LIMIT);
        };
        match raw.parse::<usize>() {
            Ok(n) if (1..=MAX_LIMIT).contains(&n) => Ok(n),
            _ => Err(Problem::invalid(
                "limit",
                format!(
                    "limit must be a whole number from 1 to {MAX_LIMIT}, got {:?}",
                    truncate(raw, 32)
                ),
            )),
        }
    }

    /// `selector`: a label selector; the empty selector matches every host.
    pub fn selector(&self) -> Result<Selector, Problem> {
        let Some(raw) = self.get("selector") else {
            return Ok(Selector::everything());
        };
        Selector::parse(raw).map_err(|e| Problem::invalid("selector", e.to_string()))
    }

    /// `status`: ok, warning, critical or unknown.
    pub fn status(&self) -> Result<Option<CheckStatus>, Problem> {
        self.typed("status")
            .map(|raw| {
                raw.parse::<CheckStatus>().map_err(|_| {
                    Problem::invalid(
                        "status",
                        format!(
                            "status must be one of ok, warning, critical, unknown, got {:?}",
                            truncate(raw, 32)
                        ),
                    )
                })
            })
            .transpose()
    }
}

/// Which list a cursor belongs to (a cursor of one list is refused by another).
const HOSTS_CURSOR: &str = "h1";
const CHECKS_CURSOR: &str = "c1";
const AUDIT_CURSOR: &str = "a1";

/// Opaque cursor after the host `id`.
pub fn host_cursor(id: &str) -> String {
    encode_cursor(&[HOSTS_CURSOR, id])
}

/// Opaque cursor after the check `(host_id, name)`.
pub fn check_cursor(host_id: &str, name: &str) -> String {
    encode_cursor(&[CHECKS_CURSOR, host_id, name])
}

/// Decodes a hosts-list cursor.
pub fn parse_host_cursor(raw: Option<&str>) -> Result<Option<String>, Problem> {
    let Some(raw) = raw else { return Ok(None) };
    match decode_cursor(raw).as_deref() {
        Some([tag, id]) if tag == HOSTS_CURSOR => Ok(Some(id.clone())),
        _ => Err(bad_cursor()),
    }
}

/// Decodes a checks-list cursor.
pub fn parse_check_cursor(raw: Option<&str>) -> Result<Option<(String, String)>, Problem> {
    let Some(raw) = raw else { return Ok(None) };
    match decode_cursor(raw).as_deref() {
        Some([tag, host, name]) if tag == CHECKS_CURSOR => Ok(Some((host.clone(), name.clone()))),
        _ => Err(bad_cursor()),
    }
}

/// Opaque cursor of another list (`tag` tells lists apart), after `value`.
pub fn opaque_cursor(tag: &str, value: &str) -> String {
    encode_cursor(&[tag, value])
}

/// Decodes a cursor made by [`opaque_cursor`] with the same `tag`.
pub fn parse_opaque_cursor(raw: &str, tag: &str) -> Result<String, Problem> {
    match decode_cursor(raw).as_deref() {
        Some([t, value]) if t == tag => Ok(value.clone()),
        _ => Err(bad_cursor()),
    }
}

/// Opaque cursor after the audit entry `seq`.
pub fn audit_cursor(seq: u64) -> String {
    encode_cursor(&[AUDIT_CURSOR, &seq.to_string()])
}

/// Decodes an audit-list cursor.
pub fn parse_audit_cursor(raw: Option<&str>) -> Result<Option<u64>, Problem> {
    let Some(raw) = raw else { return Ok(None) };
    match decode_cursor(raw).as_deref() {
        Some([tag, seq]) if tag == AUDIT_CURSOR => seq.parse().map(Some).map_err(|_| bad_cursor()),
        _ => Err(bad_cursor()),
    }
}

/// A point in time given as epoch milliseconds (`1700000000000`) or RFC 3339
/// (`2024-05-01T12:00:00Z`, `2024-05-01T14:00:00.5+02:00`); a 400 naming `field` otherwise.
pub fn parse_time(field: &str, raw: &str) -> Result<i64, Problem> {
    let raw = raw.trim();
    if let Ok(ms) = raw.parse::<i64>() {
        return Ok(ms);
    }
    steward_shared::timestamp::parse_rfc3339(raw).ok_or_else(|| {
        Problem::invalid(
            field,
            format!(
                "{field} must be epoch milliseconds or an RFC 3339 time such as 2024-05-01T12:00:00Z, got {:?}",
                truncate(raw, 40)
            ),
        )
    })
}

fn bad_cursor() -> Problem {
    Problem::invalid(
        "cursor",
        "invalid cursor: pass the next_cursor value of a previous page of the same list",
    )
}

fn encode_cursor(parts: &[&str]) -> String {
    URL_SAFE_NO_PAD.encode(serde_json::to_vec(parts).unwrap_or_default())
}

fn decode_cursor(raw: &str) -> Option<Vec<String>> {
    if raw.len() > 4096 {
        return None;
    }
    let bytes = URL_SAFE_NO_PAD.decode(raw).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// Decodes one form-urlencoded component (`+` is a space; a malformed `%`
/// escape is kept literally, as browsers do). None if not UTF-8 or if it
/// contains NUL.
pub fn decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => match (
                bytes.get(i + 1).and_then(|b| hex(*b)),
                bytes.get(i + 2).and_then(|b| hex(*b)),
            ) {
                (Some(high), Some(low)) => {
                    out.push(high * 16 + low);
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            b => out.push(b),
        }
        i += 1;
    }
    // NUL is never meaningful here and PostgreSQL refuses it in text.
    String::from_utf8(out).ok().filter(|s| !s.contains('\0'))
}

/// Decodes one percent-encoded path segment (`+` stays a plus).
pub fn decode_path_segment(s: &str) -> Option<String> {
    decode(&s.replace('+', "%2B"))
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// At most `max` characters of `s`, for echoing input back safely.
pub fn truncate(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        s.to_string()
    } else {
        s.chars().take(max).chain(std::iter::once('…')).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_form_components() {
        assert_eq!(
            decode("env%3Dprod%2Crole+in+(a)").as_deref(),
            Some("env=prod,role in (a)")
        );
        assert_eq!(decode("100%").as_deref(), Some("100%"));
        assert_eq!(decode("%zz%4").as_deref(), Some("%zz%4"));
        assert_eq!(decode("%ff"), None);
        assert_eq!(decode("a%00b"), None);
        assert_eq!(decode_path_segment("a+b%2Fc").as_deref(), Some("a+b/c"));
    }

    #[test]
    fn refuses_unknown_repeated_and_bad_values() {
        let p = Params::parse("limit=5&selector=env%3Dprod", &["limit", "selector"]).unwrap();
        assert_eq!(p.limit().unwrap(), 5);
        assert_eq!(p.selector().unwrap().to_string(), "env=prod");
        let e = Params::parse("selecter=x", &["selector"]).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("selecter"));
        let e = Params::parse("limit=1&limit=2", &["limit"]).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("limit"));
        for bad in ["limit=0", "limit=abc", "limit=1001", "limit=-1", "limit="] {
            let e = Params::parse(bad, &["limit"]).unwrap().limit().unwrap_err();
            assert_eq!((e.status, e.field.as_deref()), (400, Some("limit")), "{bad}");
        }
        assert_eq!(Params::parse("", &["limit"]).unwrap().limit().unwrap(), DEFAULT_LIMIT);
        assert!(
            Params::parse("selector=", &["selector"])
                .unwrap()
                .get("selector")
                .is_none()
        );
        let e = Params::parse("status=", &["status"]).unwrap().status().unwrap_err();
        assert_eq!(e.field.as_deref(), Some("status"));
        let e = Params::parse("selector=env%3D%3Dx%2C", &["selector"])
            .unwrap()
            .selector()
            .unwrap_err();
        assert!(e.detail.contains("position"), "{}", e.detail);
        let e = Params::parse("status=bad", &["status"]).unwrap().status().unwrap_err();
        assert_eq!(e.field.as_deref(), Some("status"));
    }

    #[test]
    fn times_are_epoch_ms_or_rfc3339() {
        use steward_shared::timestamp::{parse_rfc3339, rfc3339};
        for ms in [0, 1_700_000_000_123, 951_782_400_000, -1, 253_402_300_799_999] {
            assert_eq!(parse_rfc3339(&rfc3339(ms)), Some(ms), "{}", rfc3339(ms));
        }
        assert_eq!(parse_time("since", "1700000000000").unwrap(), 1_700_000_000_000);
        assert_eq!(
            parse_time("since", "2023-11-14T23:13:20.5+01:00").unwrap(),
            1_700_000_000_500
        );
        assert_eq!(parse_rfc3339("2023-11-14T22:13:20.123456789Z"), Some(1_700_000_000_123));
        for bad in [
            "yesterday",
            "2023-02-29T00:00:00Z",
            "2023-11-14 22:13:20",
            "2023-11-14T22:13:20",
            "2023-11-14T24:00:00Z",
            "2023-11-14T22:13:20.Z",
            "2023-11-14T22:13:20+0100",
        ] {
            let e = parse_time("since", bad).unwrap_err();
            assert_eq!((e.status, e.field.as_deref()), (400, Some("since")), "{bad}");
        }
        let c = audit_cursor(42);
        assert_eq!(parse_audit_cursor(Some(&c)).unwrap(), Some(42));
        assert!(parse_host_cursor(Some(&c)).is_err());
        assert!(parse_audit_cursor(Some(&host_cursor("x"))).is_err());
    }

    #[test]
    fn cursors_round_trip_and_are_list_specific() {
        let c = host_cursor("web-1");
        assert_eq!(parse_host_cursor(Some(&c)).unwrap().as_deref(), Some("web-1"));
        assert!(parse_check_cursor(Some(&c)).is_err());
        let c = check_cursor("web-1", "disk:/");
        assert_eq!(
            parse_check_cursor(Some(&c)).unwrap(),
            Some(("web-1".into(), "disk:/".into()))
        );
        for bad in ["!!!", "bm90IGpzb24", ""] {
            assert!(parse_host_cursor(Some(bad)).is_err(), "{bad:?}");
        }
    }
}
