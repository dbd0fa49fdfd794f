//! Points in time as Steward prints and reads them, on the `time` crate (no
//! calendar arithmetic of our own): epoch milliseconds ⇄ RFC 3339 in UTC
//! with exactly three fraction digits (`2023-11-14T22:13:20.123Z`), and the
//! calendar fields of an instant for the few places that group by day,
//! month or ISO week.
//!
//! Invariant: printing never fails; instants outside the years 0000–9999
//! are clamped to them, so every printed time parses back.
use time::format_description::well_known::Rfc3339;
use time::{Date, Month, OffsetDateTime};

/// 0000-01-01T00:00:00Z and 9999-12-31T23:59:59.999Z in epoch milliseconds.
const MIN_MS: i64 = -62_167_219_200_000;
const MAX_MS: i64 = 253_402_300_799_999;

/// The UTC instant `ms` milliseconds after the epoch (clamped to 0000–9999).
pub fn utc_ms(ms: i64) -> OffsetDateTime {
    let ms = ms.clamp(MIN_MS, MAX_MS);
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000).unwrap_or(OffsetDateTime::UNIX_EPOCH)
}

/// The UTC instant `secs` seconds after the epoch (clamped to 0000–9999).
pub fn utc_secs(secs: i64) -> OffsetDateTime {
    utc_ms(secs.saturating_mul(1000))
}

/// `2023-11-14T22:13:20.123Z`.
pub fn rfc3339(ms: i64) -> String {
    let t = utc_ms(ms);
    format!(
        "{}T{:02}:{:02}:{:02}.{:03}Z",
        date(t.date()),
        t.hour(),
        t.minute(),
        t.second(),
        t.millisecond()
    )
}

/// `2023-11-14`.
pub fn date(d: Date) -> String {
    format!("{:04}-{:02}-{:02}", d.year(), u8::from(d.month()), d.day())
}

/// `20231114T221320Z` (compact, sortable, safe in file names).
pub fn compact_secs(secs: i64) -> String {
    let t = utc_secs(secs);
    format!(
        "{:04}{:02}{:02}T{:02}{:02}{:02}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    )
}

/// Days since 1970-01-01 of the date `year-month-day`; `None` if there is no such date.
pub fn epoch_days(year: i32, month: u8, day: u8) -> Option<i64> {
    let month = Month::try_from(month).ok()?;
    let d = Date::from_calendar_date(year, month, day).ok()?;
    Some(d.midnight().assume_utc().unix_timestamp().div_euclid(86_400))
}

/// Epoch milliseconds of an RFC 3339 date-time (`2024-05-01T12:00:00Z`,
/// `2024-05-01T14:00:00.5+02:00`; fraction digits beyond milliseconds are
/// cut); `None` for anything else.
pub fn parse_rfc3339(s: &str) -> Option<i64> {
    let t = OffsetDateTime::parse(s, &Rfc3339).ok()?;
    i64::try_from(t.unix_timestamp_nanos().div_euclid(1_000_000)).ok()
}

/// Epoch milliseconds of the first instant of the UTC month holding `ms`,
/// and of the next month.
pub fn month_bounds_ms(ms: i64) -> (i64, i64) {
    let d = utc_ms(ms).date();
    let first = Date::from_calendar_date(d.year(), d.month(), 1).unwrap_or(d);
    let next = match d.month() {
        Month::December => Date::from_calendar_date(d.year() + 1, Month::January, 1),
        m => Date::from_calendar_date(d.year(), m.next(), 1),
    }
    .unwrap_or(first);
    let ms_of = |d: Date| d.midnight().assume_utc().unix_timestamp() * 1000;
    (ms_of(first), ms_of(next))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prints_milliseconds_in_utc_and_clamps() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(1_700_000_000_123), "2023-11-14T22:13:20.123Z");
        assert_eq!(rfc3339(951_782_400_000), "2000-02-29T00:00:00.000Z");
        assert_eq!(rfc3339(-1), "1969-12-31T23:59:59.999Z");
        assert_eq!(rfc3339(i64::MAX), "9999-12-31T23:59:59.999Z");
        assert_eq!(rfc3339(i64::MIN), "0000-01-01T00:00:00.000Z");
        assert_eq!(compact_secs(1_700_000_000), "20231114T221320Z");
        assert_eq!(date(utc_secs(1_772_323_200).date()), "2026-03-01");
    }

    #[test]
    fn parses_what_it_prints_and_rfc3339_offsets() {
        for ms in [0, 1_700_000_000_123, 951_782_400_000, -1, MIN_MS, MAX_MS] {
            assert_eq!(parse_rfc3339(&rfc3339(ms)), Some(ms), "{}", rfc3339(ms));
        }
        assert_eq!(parse_rfc3339("2023-11-14T23:13:20.5+01:00"), Some(1_700_000_000_500));
        assert_eq!(parse_rfc3339("2023-11-14t22:13:20z"), Some(1_700_000_000_000));
        assert_eq!(parse_rfc3339("2023-11-14T22:13:20.123456789Z"), Some(1_700_000_000_123));
        for bad in [
            "yesterday",
            "",
            "2023-02-29T00:00:00Z",
            "2023-11-14 22:13:20",
            "2023-11-14T22:13:20",
            "2023-11-14T24:00:00Z",
            "2023-11-14T22:13:20.Z",
            "2023-11-14T22:13:20+0100",
        ] {
            assert_eq!(parse_rfc3339(bad), None, "{bad}");
        }
    }

    #[test]
    fn epoch_days_count_from_1970() {
        assert_eq!(epoch_days(1970, 1, 1), Some(0));
        assert_eq!(epoch_days(1969, 12, 31), Some(-1));
        assert_eq!(epoch_days(2024, 2, 29), Some(19_782));
        assert_eq!(epoch_days(2023, 2, 29), None);
        assert_eq!(epoch_days(2023, 13, 1), None);
    }

    #[test]
    fn month_bounds_cover_the_month() {
        // 2024-02-29T12:00:00Z: February of a leap year.
        let (from, to) = month_bounds_ms(1_709_208_000_000);
        assert_eq!(
            (rfc3339(from), rfc3339(to)),
            ("2024-02-01T00:00:00.000Z".into(), "2024-03-01T00:00:00.000Z".into())
        );
        let (from, to) = month_bounds_ms(1_703_980_800_000); // 2023-12-31
        assert_eq!(
            (rfc3339(from), rfc3339(to)),
            ("2023-12-01T00:00:00.000Z".into(), "2024-01-01T00:00:00.000Z".into())
        );
        assert_eq!(month_bounds_ms(from).0, from, "the first instant is in its own month");
    }
}
