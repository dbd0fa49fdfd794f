//! Human-readable durations (`500ms`, `30s`, `5m`, `1h30m`, `7d`) and sizes
//! (`512KiB`, `64MiB`, `1GB`, `4096`), with serde support for config files.
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;
use std::str::FromStr;
use std::time::Duration as StdDuration;

/// Error for a malformed duration or size.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct UnitError(pub String);

/// A duration written with units, e.g. `30s`, `5m`, `1h30m`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Duration(pub StdDuration);

impl Duration {
    pub fn from_secs(s: u64) -> Self {
        Self(StdDuration::from_secs(s))
    }
    pub fn as_std(self) -> StdDuration {
        self.0
    }
}

impl From<Duration> for StdDuration {
    fn from(d: Duration) -> Self {
        d.0
    }
}

impl FromStr for Duration {
    type Err = UnitError;
    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let s = input.trim();
        if s.is_empty() {
            return Err(UnitError(
                "empty duration: expected a number with a unit, e.g. 30s, 5m, 1h".into(),
            ));
        }
        let mut total: u128 = 0;
        let mut rest = s;
        while !rest.is_empty() {
            let digits = rest.find(|c: char| !c.is_ascii_digit()).unwrap_or(rest.len());
            if digits == 0 {
                return Err(UnitError(format!(
                    "invalid duration {input:?}: expected a number at {rest:?}"
                )));
            }
            let n: u128 = rest[..digits]
                .parse()
                .map_err(|_| UnitError(format!("invalid duration {input:?}: number too large")))?;
            rest = &rest[digits..];
            let unit_len = rest.find(|c: char| c.is_ascii_digit()).unwrap_or(rest.len());
            let unit = &rest[..unit_len];
            let nanos: u128 = match unit {
                "ms" => 1_000_000,
                "s" => 1_000_000_000,
                "m" => 60 * 1_000_000_000,
                "h" => 3600 * 1_000_000_000,
                "d" => 86_400 * 1_000_000_000,
                "w" => 7 * 86_400 * 1_000_000_000,
                "" => {
                    return Err(UnitError(format!(
                        "invalid duration {input:?}: missing unit (use ms, s, m, h, d or w)"
                    )));
                }
                other => {
                    return Err(UnitError(format!(
                        "invalid duration {input:?}: unknown unit {other:?} (use ms, s, m, h, d or w)"
                    )));
                }
            };
            total = total
                .checked_add(
                    n.checked_mul(nanos)
                        .ok_or_else(|| UnitError(format!("duration {input:?} is too large")))?,
                )
                .ok_or_else(|| UnitError(format!("duration {input:?} is too large")))?;
            rest = &rest[unit_len..];
        }
        let secs =
            u64::try_from(total / 1_000_000_000).map_err(|_| UnitError(format!("duration {input:?} is too large")))?;
        Ok(Duration(StdDuration::new(secs, (total % 1_000_000_000) as u32)))
    }
}

impl fmt::Display for Duration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self.0.as_millis();
        if ms == 0 {
            return f.write_str("0s");
        }
        if !ms.is_multiple_of(1000) {
            return write!(f, "{ms}ms");
        }
        let mut secs = self.0.as_secs();
        let mut out = String::new();
        for (unit, size) in [("d", 86_400), ("h", 3600), ("m", 60), ("s", 1)] {
            if secs >= size {
                out.push_str(&format!("{}{unit}", secs / size));
                secs %= size;
            }
        }
        f.write_str(&out)
    }
}

impl Serialize for Duration {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Duration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// A size in bytes, written as `4096`, `512KiB`, `64MiB`, `1GiB`, `10MB`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct ByteSize(pub u64);

impl FromStr for ByteSize {
    type Err = UnitError;
    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let s = input.trim();
        let digits = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
        if digits == 0 {
            return Err(UnitError(format!(
                "invalid size {input:?}: expected a number with a unit, e.g. 64MiB"
            )));
        }
        let n: u64 = s[..digits]
            .parse()
            .map_err(|_| UnitError(format!("invalid size {input:?}: number too large")))?;
        let mult: u64 = match s[digits..].trim() {
            "" | "B" => 1,
            "KB" | "kB" => 1000,
            "MB" => 1000u64.pow(2),
            "GB" => 1000u64.pow(3),
            "TB" => 1000u64.pow(4),
            "KiB" => 1 << 10,
            "MiB" => 1 << 20,
            "GiB" => 1 << 30,
            "TiB" => 1 << 40,
            other => {
                return Err(UnitError(format!(
                    "invalid size {input:?}: unknown unit {other:?} (use B, KiB, MiB, GiB, TiB, KB, MB, GB or TB)"
                )));
            }
        };
        n.checked_mul(mult)
            .map(ByteSize)
            .ok_or_else(|| UnitError(format!("size {input:?} is too large")))
    }
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.0;
        for (unit, size) in [
            ("TiB", 1u64 << 40),
            ("GiB", 1 << 30),
            ("MiB", 1 << 20),
            ("KiB", 1 << 10),
        ] {
            if n >= size && n.is_multiple_of(size) {
                return write!(f, "{}{unit}", n / size);
            }
        }
        write!(f, "{n}B")
    }
}

impl Serialize for ByteSize {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = ByteSize;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a size such as \"64MiB\" or a number of bytes")
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<ByteSize, E> {
                Ok(ByteSize(v))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<ByteSize, E> {
                u64::try_from(v)
                    .map(ByteSize)
                    .map_err(|_| E::custom("size must not be negative"))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<ByteSize, E> {
                v.parse().map_err(E::custom)
            }
        }
        d.deserialize_any(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse() {
        assert_eq!("30s".parse::<Duration>().unwrap().0, StdDuration::from_secs(30));
        assert_eq!("5m".parse::<Duration>().unwrap().0, StdDuration::from_secs(300));
        assert_eq!("1h30m".parse::<Duration>().unwrap().0, StdDuration::from_secs(5400));
        assert_eq!("250ms".parse::<Duration>().unwrap().0, StdDuration::from_millis(250));
        assert_eq!("2d".parse::<Duration>().unwrap().0, StdDuration::from_secs(172_800));
        for bad in ["", "30", "s", "5x", "1h 30m", "-5s", "99999999999999999999999s"] {
            assert!(bad.parse::<Duration>().is_err(), "{bad:?} should be refused");
        }
    }

    #[test]
    fn durations_display_round_trip() {
        for s in ["30s", "5m", "1h30m", "250ms", "2d", "1d1h1m1s"] {
            let d: Duration = s.parse().unwrap();
            assert_eq!(d.to_string(), s);
        }
    }

    #[test]
    fn sizes_parse() {
        assert_eq!("64MiB".parse::<ByteSize>().unwrap().0, 64 << 20);
        assert_eq!("10MB".parse::<ByteSize>().unwrap().0, 10_000_000);
        assert_eq!("4096".parse::<ByteSize>().unwrap().0, 4096);
        assert_eq!("1 GiB".parse::<ByteSize>().unwrap().0, 1 << 30);
        for bad in ["", "MiB", "5 parsecs", "99999999999TiB"] {
            assert!(bad.parse::<ByteSize>().is_err(), "{bad:?} should be refused");
        }
        assert_eq!(ByteSize(64 << 20).to_string(), "64MiB");
    }
}
