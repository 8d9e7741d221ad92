//! RFC 3339 timestamps in their common form, read without chrono's general parser.
//!
//! Events carry their time as text such as `2026-11-01T00:00:20.100Z`, read for the event time
//! and again for each timestamp or date column of a Delta table. [`rfc3339_micros`] reads exactly
//! `YYYY-MM-DDTHH:MM:SS[.f{1,9}](Z|±HH:MM)` with every part in range, and answers `None` for
//! anything else (lower-case letters, a leap second, more digits...), leaving that to chrono:
//! what it accepts, chrono accepts with the same instant.

/// Microseconds since the Unix epoch (fractions below a microsecond dropped, as chrono's
/// `timestamp_micros` does), or `None` when `text` is not in the common form.
pub fn rfc3339_micros(text: &str) -> Option<i64> {
    let b = text.as_bytes();
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || b[10] != b'T' || b[13] != b':' {
        return None;
    }
    if b[16] != b':' {
        return None;
    }
    let year = digits(b, 0, 4)?;
    let month = digits(b, 5, 2)?;
    let day = digits(b, 8, 2)?;
    let hour = digits(b, 11, 2)?;
    let minute = digits(b, 14, 2)?;
    let second = digits(b, 17, 2)?;
    if !(1..=12).contains(&month) || day == 0 || day > days_in_month(year, month) {
        return None;
    }
    if hour > 23 || minute > 59 || second > 59 {
        return None;
    }
    let mut at = 19;
    let mut micros = 0;
    if b[at] == b'.' {
        let start = at + 1;
        let count = b[start..].iter().take_while(|c| c.is_ascii_digit()).count();
        if count == 0 || count > 9 {
            return None;
        }
        for index in 0..6 {
            let digit = match index < count {
                true => i64::from(b[start + index] - b'0'),
                false => 0,
            };
            micros = micros * 10 + digit;
        }
        at = start + count;
    }
    let offset_seconds = match b.get(at..)? {
        [b'Z'] => 0,
        [sign @ (b'+' | b'-'), _, _, b':', _, _] => {
            let hours = digits(b, at + 1, 2)?;
            let minutes = digits(b, at + 4, 2)?;
            if hours > 23 || minutes > 59 {
                return None;
            }
            let seconds = hours * 3600 + minutes * 60;
            if *sign == b'-' { -seconds } else { seconds }
        }
        _ => return None,
    };
    let seconds = days_from_civil(year, month, day) * 86_400 + hour * 3600 + minute * 60 + second
        - offset_seconds;
    Some(seconds * 1_000_000 + micros)
}

/// The value of `count` ASCII digits at `at`.
fn digits(b: &[u8], at: usize, count: usize) -> Option<i64> {
    b.get(at..at + count)?.iter().try_fold(0, |value, c| {
        c.is_ascii_digit().then(|| value * 10 + i64::from(c - b'0'))
    })
}

fn days_in_month(year: i64, month: i64) -> i64 {
    match month {
        2 if year % 4 == 0 && (year % 100 != 0 || year % 400 == 0) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days from 1970-01-01 to the proleptic Gregorian date (H. Hinnant's `days_from_civil`).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year - era * 400;
    let month_from_march = (month + 9) % 12;
    let day_of_year = (153 * month_from_march + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chrono_micros(text: &str) -> Option<i64> {
        chrono::DateTime::parse_from_rfc3339(text)
            .ok()
            .map(|t| t.timestamp_micros())
    }

    #[test]
    fn agrees_with_chrono_on_the_common_form() {
        for text in [
            "2026-11-01T00:00:20.100Z",
            "2026-11-01T00:00:20Z",
            "1970-01-01T00:00:00Z",
            "1969-12-31T23:59:59.999999Z",
            "1900-02-28T12:00:00.5+01:30",
            "2000-02-29T23:59:59.123456789-05:45",
            "2024-02-29T00:00:00.000001+23:59",
            "0001-01-01T00:00:00Z",
            "9999-12-31T23:59:59.9Z",
            "1600-03-01T00:00:00-00:00",
        ] {
            assert_eq!(rfc3339_micros(text), chrono_micros(text), "{text}");
            assert!(rfc3339_micros(text).is_some(), "{text}");
        }
    }

    #[test]
    fn leaves_every_other_form_to_chrono() {
        for text in [
            "2026-11-01t00:00:20Z",
            "2026-11-01 00:00:20Z",
            "2026-11-01T00:00:20z",
            "2026-11-01T00:00:60Z",
            "2026-11-01T24:00:00Z",
            "2026-02-29T00:00:00Z",
            "1900-02-29T00:00:00Z",
            "2026-13-01T00:00:00Z",
            "2026-00-01T00:00:00Z",
            "2026-04-31T00:00:00Z",
            "2026-11-01T00:00:20.Z",
            "2026-11-01T00:00:20.1234567891Z",
            "2026-11-01T00:00:20+2400",
            "2026-11-01T00:00:20+24:00",
            "2026-11-01T00:00:20",
            "2026-11-01T00:00:20Z ",
            "2026-11-01",
            "+2026-11-01T00:00:20Z",
            "2026-1-01T00:00:20Z",
            "yesterday",
            "2026-11-01T00:00:20.5ZZ",
        ] {
            assert_eq!(rfc3339_micros(text), None, "{text}");
        }
    }

    #[test]
    fn every_day_of_four_centuries_matches_chrono() {
        let mut date = chrono::NaiveDate::from_ymd_opt(1800, 1, 1).expect("date");
        let end = chrono::NaiveDate::from_ymd_opt(2200, 1, 1).expect("date");
        while date < end {
            let text = format!("{}T13:14:15.016Z", date.format("%Y-%m-%d"));
            assert_eq!(rfc3339_micros(&text), chrono_micros(&text), "{text}");
            date = date.succ_opt().expect("next day");
        }
    }
}
