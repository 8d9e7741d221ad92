//! Calendar helpers for event times: date, year, month, day, day of week, hour, minute, truncation
//! to an interval, RFC 3339 and epoch-millisecond parsing, and the equivalents of Stream
//! Analytics' `DATEPART`, `DATENAME`, `DATEDIFF` and `DATEADD`.
//!
//! Everything is UTC and needs no clock: a [`Timestamp`] is a count of milliseconds since the Unix
//! epoch (the unit of [`Event::time`](crate::Event::time)), and the calendar is computed from it
//! with integer arithmetic (the proleptic Gregorian calendar, as Stream Analytics and `chrono` use).
//!
//! ```
//! use std::time::Duration;
//! use weir_sdk::time::{datediff, datepart, DatePart, Timestamp, Weekday};
//!
//! let t = Timestamp::parse_rfc3339("2026-11-22T20:31:07.250+02:00")?; // 18:31:07.250 UTC
//! assert_eq!((t.year(), t.month(), t.day()), (2026, 11, 22));
//! assert_eq!(t.weekday(), Weekday::Sunday);
//! assert_eq!(t.weekday_name(), "Sunday");
//! assert_eq!((t.hour(), t.minute(), t.second()), (18, 31, 7));
//! assert_eq!(t.date().to_string(), "2026-11-22");
//! assert_eq!(t.truncate(Duration::from_secs(5 * 60)).to_string(), "2026-11-22T18:30:00Z");
//! assert_eq!(datepart(DatePart::Weekday, t), 1); // Stream Analytics: 1 is Sunday
//! let next_day = Timestamp::parse_rfc3339("2026-11-23T00:01:00Z")?;
//! assert_eq!(datediff(DatePart::Day, t, next_day), 1); // one midnight crossed
//! # Ok::<(), weir_sdk::time::TimeError>(())
//! ```

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

const MS_PER_SECOND: i64 = 1_000;
const MS_PER_MINUTE: i64 = 60 * MS_PER_SECOND;
const MS_PER_HOUR: i64 = 60 * MS_PER_MINUTE;
const MS_PER_DAY: i64 = 24 * MS_PER_HOUR;

/// Why a text or value is not a timestamp.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TimeError {
    /// The text does not have the shape of the format it was read as.
    Malformed {
        /// The text (its first 64 characters).
        input: String,
        /// What was expected instead.
        expected: &'static str,
    },
    /// The text has the right shape but a part is out of range (month 13, February 30, hour 24).
    OutOfRange {
        /// The text (its first 64 characters).
        input: String,
        /// Which part is out of range: `month`, `day`, `hour`, ...
        part: &'static str,
    },
    /// The time is too far from 1970 to be counted in milliseconds in an `i64`.
    Overflow,
    /// A date part name that Stream Analytics does not know.
    UnknownDatePart(String),
}

impl fmt::Display for TimeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TimeError::Malformed { input, expected } => {
                write!(f, "invalid timestamp {input:?}: expected {expected}")
            }
            TimeError::OutOfRange { input, part } => {
                write!(f, "invalid timestamp {input:?}: {part} out of range")
            }
            TimeError::Overflow => f.write_str("timestamp out of range"),
            TimeError::UnknownDatePart(name) => write!(f, "unknown date part {name:?}"),
        }
    }
}

impl std::error::Error for TimeError {}

impl From<TimeError> for crate::Error {
    /// A malformed timestamp rejects the event with the error's text as the reason.
    fn from(error: TimeError) -> Self {
        crate::Error::reject(error.to_string())
    }
}

/// The input as quoted in an error: at most 64 characters, so a huge field does not flood a
/// dead-letter reason.
fn quoted(input: &str) -> String {
    input.chars().take(64).collect()
}

/// Days since 1970-01-01 of a civil date (Howard Hinnant's `days_from_civil`). Valid for every
/// `i32` year; `month` is 1 to 12 and `day` 1 to 31.
fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year - era * 400;
    let month = i64::from(month);
    let day_of_year =
        (153 * (if month > 2 { month - 3 } else { month + 9 }) + 2) / 5 + i64::from(day) - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

/// The civil date (year, month, day) of a count of days since 1970-01-01 (Howard Hinnant's
/// `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let days = days + 719_468;
    let era = days.div_euclid(146_097);
    let day_of_era = days - era * 146_097;
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let shifted_month = (5 * day_of_year + 2) / 153;
    // Both are small and positive by construction: day 1..=31, month 1..=12.
    let day = (day_of_year - (153 * shifted_month + 2) / 5 + 1) as u32;
    let month = if shifted_month < 10 {
        shifted_month + 3
    } else {
        shifted_month - 9
    } as u32;
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// Whether `year` is a leap year of the Gregorian calendar.
pub fn is_leap_year(year: i32) -> bool {
    year % 4 == 0 && (year % 100 != 0 || year % 400 == 0)
}

/// The number of days of `month` (1 to 12) in `year`; 0 for a month out of range.
pub fn days_in_month(year: i32, month: u32) -> u32 {
    match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if is_leap_year(year) => 29,
        2 => 28,
        _ => 0,
    }
}

/// A day of the week.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Weekday {
    /// Monday.
    Monday,
    /// Tuesday.
    Tuesday,
    /// Wednesday.
    Wednesday,
    /// Thursday.
    Thursday,
    /// Friday.
    Friday,
    /// Saturday.
    Saturday,
    /// Sunday.
    Sunday,
}

impl Weekday {
    const FROM_SUNDAY: [Weekday; 7] = [
        Weekday::Sunday,
        Weekday::Monday,
        Weekday::Tuesday,
        Weekday::Wednesday,
        Weekday::Thursday,
        Weekday::Friday,
        Weekday::Saturday,
    ];

    /// The day of a count of days since 1970-01-01 (a Thursday).
    fn of_days(days: i64) -> Weekday {
        Weekday::FROM_SUNDAY[(days + 4).rem_euclid(7) as usize]
    }

    /// The English name: `Monday` to `Sunday` (what `DATENAME(weekday, ...)` gives).
    pub fn name(self) -> &'static str {
        match self {
            Weekday::Monday => "Monday",
            Weekday::Tuesday => "Tuesday",
            Weekday::Wednesday => "Wednesday",
            Weekday::Thursday => "Thursday",
            Weekday::Friday => "Friday",
            Weekday::Saturday => "Saturday",
            Weekday::Sunday => "Sunday",
        }
    }

    /// The number Stream Analytics' `DATEPART(weekday, ...)` gives: 1 for Sunday to 7 for
    /// Saturday.
    pub fn number_from_sunday(self) -> u32 {
        self.days_since_sunday() + 1
    }

    /// The ISO 8601 number: 1 for Monday to 7 for Sunday.
    pub fn number_from_monday(self) -> u32 {
        self as u32 + 1
    }

    /// Days since the last Sunday: 0 for Sunday to 6 for Saturday.
    fn days_since_sunday(self) -> u32 {
        (self as u32 + 1) % 7
    }
}

impl fmt::Display for Weekday {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

const MONTH_NAMES: [&str; 12] = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
];

/// The English name of `month` (1 to 12): `January` to `December`; empty when out of range.
pub fn month_name(month: u32) -> &'static str {
    match month {
        1..=12 => MONTH_NAMES[month as usize - 1],
        _ => "",
    }
}

/// A calendar date (UTC), as [`Timestamp::date`] gives it. Displays as `YYYY-MM-DD`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Date {
    year: i32,
    month: u32,
    day: u32,
}

impl Date {
    /// The date `year-month-day`, or `None` when the month or the day does not exist.
    pub fn new(year: i32, month: u32, day: u32) -> Option<Date> {
        (day >= 1 && day <= days_in_month(year, month)).then_some(Date { year, month, day })
    }

    /// The year.
    pub fn year(self) -> i32 {
        self.year
    }

    /// The month, 1 to 12.
    pub fn month(self) -> u32 {
        self.month
    }

    /// The day of the month, 1 to 31.
    pub fn day(self) -> u32 {
        self.day
    }

    /// The day of the week.
    pub fn weekday(self) -> Weekday {
        Weekday::of_days(self.days_since_epoch())
    }

    /// The day of the year, 1 to 366.
    pub fn day_of_year(self) -> u32 {
        // At most 366: the difference of two days of the same year.
        (self.days_since_epoch() - days_from_civil(i64::from(self.year), 1, 1) + 1) as u32
    }

    /// Days since 1970-01-01 (negative before).
    pub fn days_since_epoch(self) -> i64 {
        days_from_civil(i64::from(self.year), self.month, self.day)
    }

    /// Midnight (UTC) at the start of this date; the earliest or latest [`Timestamp`] for a date
    /// about 292 million years or more from 1970.
    pub fn start(self) -> Timestamp {
        Timestamp(self.days_since_epoch().saturating_mul(MS_PER_DAY))
    }
}

impl fmt::Display for Date {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if (0..=9999).contains(&self.year) {
            write!(f, "{:04}-{:02}-{:02}", self.year, self.month, self.day)
        } else {
            // RFC 3339 has four-digit years only; this is ISO 8601's expanded form.
            write!(f, "{:+05}-{:02}-{:02}", self.year, self.month, self.day)
        }
    }
}

/// An instant in UTC, counted in milliseconds since the Unix epoch (1970-01-01T00:00:00Z).
///
/// Made from an event's time ([`Event::timestamp`](crate::Event::timestamp)), a body field
/// ([`Event::field_time`](crate::Event::field_time), or a `Timestamp` field of a deserialized
/// struct), [`Timestamp::from_epoch_millis`] or [`Timestamp::parse_rfc3339`]. Displays (and
/// serializes) as RFC 3339 in UTC: `2026-11-22T18:30:00Z`, with `.250` when it has milliseconds.
///
/// As a field of a struct read with [`Event::json`](crate::Event::json), it accepts an RFC 3339
/// string or a number of epoch milliseconds (see [`Timestamp::parse`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Timestamp(i64);

impl Timestamp {
    /// The Unix epoch, 1970-01-01T00:00:00Z.
    pub const EPOCH: Timestamp = Timestamp(0);

    /// The instant `millis` milliseconds after the Unix epoch (before it when negative).
    pub const fn from_epoch_millis(millis: i64) -> Timestamp {
        Timestamp(millis)
    }

    /// Milliseconds since the Unix epoch.
    pub const fn epoch_millis(self) -> i64 {
        self.0
    }

    /// The instant of a UTC date and time of day, or `None` when a part is out of range (a month
    /// 13, a February 30, an hour 24, a millisecond 1000).
    pub fn from_utc(
        date: Date,
        hour: u32,
        minute: u32,
        second: u32,
        millisecond: u32,
    ) -> Option<Timestamp> {
        if hour > 23 || minute > 59 || second > 59 || millisecond > 999 {
            return None;
        }
        let time_of_day = i64::from(hour) * MS_PER_HOUR
            + i64::from(minute) * MS_PER_MINUTE
            + i64::from(second) * MS_PER_SECOND
            + i64::from(millisecond);
        date.days_since_epoch()
            .checked_mul(MS_PER_DAY)?
            .checked_add(time_of_day)
            .map(Timestamp)
    }

    /// Reads RFC 3339 text: `2026-11-22T18:30:00Z`, `2026-11-22T20:30:00.25+02:00`.
    ///
    /// The offset is applied, so the result is the same instant in UTC. `T` may also be `t` or a
    /// space, `Z` may be `z`; a fraction has any number of digits and is truncated to
    /// milliseconds; a leap second (`:60`) is read as the first millisecond of the next minute's
    /// second 0 plus its fraction, as `chrono` does. Anything else is a [`TimeError`].
    pub fn parse_rfc3339(text: &str) -> Result<Timestamp, TimeError> {
        Parser::new(text).rfc3339(true)
    }

    /// Reads a timestamp as events usually carry one: RFC 3339 text; the same without an offset
    /// (`2026-11-22T18:30:00`, taken as UTC, as Stream Analytics does); a date alone
    /// (`2026-11-22`, its midnight UTC); or an integer of milliseconds since the Unix epoch
    /// (`1795372200000`, `-1`).
    pub fn parse(text: &str) -> Result<Timestamp, TimeError> {
        let trimmed = text.trim();
        let digits = trimmed.strip_prefix('-').unwrap_or(trimmed);
        if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) {
            return trimmed
                .parse::<i64>()
                .map(Timestamp)
                .map_err(|_| TimeError::Overflow);
        }
        Parser::new(trimmed).rfc3339(false)
    }

    /// The instant a JSON value names: an RFC 3339 string (or any text [`Timestamp::parse`]
    /// reads), or a number of milliseconds since the Unix epoch.
    pub fn from_json(value: &serde_json::Value) -> Result<Timestamp, TimeError> {
        match value {
            serde_json::Value::String(text) => Timestamp::parse(text),
            serde_json::Value::Number(number) => millis_of_number(number),
            other => Err(TimeError::Malformed {
                input: quoted(&other.to_string()),
                expected: "an RFC 3339 string or a number of epoch milliseconds",
            }),
        }
    }

    /// The date (UTC).
    pub fn date(self) -> Date {
        let (year, month, day) = civil_from_days(self.days_since_epoch());
        // An i64 of milliseconds spans about 292 million years either way: the year fits an i32.
        Date {
            year: year as i32,
            month,
            day,
        }
    }

    /// Whole days since 1970-01-01 (negative before), counting from midnight UTC.
    fn days_since_epoch(self) -> i64 {
        self.0.div_euclid(MS_PER_DAY)
    }

    /// Milliseconds since midnight UTC.
    fn millis_of_day(self) -> i64 {
        self.0.rem_euclid(MS_PER_DAY)
    }

    /// The year.
    pub fn year(self) -> i32 {
        self.date().year
    }

    /// The quarter, 1 to 4.
    pub fn quarter(self) -> u32 {
        (self.month() - 1) / 3 + 1
    }

    /// The month, 1 to 12.
    pub fn month(self) -> u32 {
        self.date().month
    }

    /// The English name of the month: `January` to `December`.
    pub fn month_name(self) -> &'static str {
        month_name(self.month())
    }

    /// The day of the month, 1 to 31.
    pub fn day(self) -> u32 {
        self.date().day
    }

    /// The day of the year, 1 to 366.
    pub fn day_of_year(self) -> u32 {
        self.date().day_of_year()
    }

    /// The day of the week.
    pub fn weekday(self) -> Weekday {
        Weekday::of_days(self.days_since_epoch())
    }

    /// The English name of the day of the week: `Monday` to `Sunday`.
    pub fn weekday_name(self) -> &'static str {
        self.weekday().name()
    }

    /// The week of the year as Stream Analytics' `DATEPART(week, ...)` counts it: weeks start on
    /// Sunday and week 1 is the one that contains January 1 (so it may be short), 1 to 54.
    pub fn week(self) -> u32 {
        let date = self.date();
        let jan1 = Date {
            year: date.year,
            month: 1,
            day: 1,
        };
        (date.day_of_year() - 1 + jan1.weekday().days_since_sunday()) / 7 + 1
    }

    /// The hour, 0 to 23.
    pub fn hour(self) -> u32 {
        (self.millis_of_day() / MS_PER_HOUR) as u32
    }

    /// The minute, 0 to 59.
    pub fn minute(self) -> u32 {
        (self.millis_of_day() % MS_PER_HOUR / MS_PER_MINUTE) as u32
    }

    /// The second, 0 to 59.
    pub fn second(self) -> u32 {
        (self.millis_of_day() % MS_PER_MINUTE / MS_PER_SECOND) as u32
    }

    /// The millisecond, 0 to 999.
    pub fn millisecond(self) -> u32 {
        (self.millis_of_day() % MS_PER_SECOND) as u32
    }

    /// The start of the `interval`-long window that contains this instant, with windows aligned
    /// to the Unix epoch, as Stream Analytics aligns tumbling windows: 5 minutes gives `18:30`
    /// for `18:34:59`, a day gives midnight UTC. Instants before 1970 round down too. Only whole
    /// milliseconds of `interval` count; an interval under one millisecond leaves the instant as
    /// it is. A window that would start before the earliest `Timestamp` starts at it.
    pub fn truncate(self, interval: Duration) -> Timestamp {
        match i64::try_from(interval.as_millis()) {
            Ok(0) => self,
            Ok(size) => Timestamp(self.0.saturating_sub(self.0.rem_euclid(size))),
            // Longer than the whole i64 range: every instant is in the window that starts at
            // the earliest one on its side of the epoch.
            Err(_) if self.0 >= 0 => Timestamp::EPOCH,
            Err(_) => Timestamp(i64::MIN),
        }
    }

    /// The start of the calendar `part` that contains this instant: the first of its year,
    /// quarter or month, midnight of its day, the Sunday that starts its week (as
    /// [`Timestamp::week`] counts weeks), the start of its hour, minute or second.
    /// [`DatePart::DayOfYear`] and [`DatePart::Weekday`] are days; [`DatePart::Millisecond`] and
    /// [`DatePart::Microsecond`] leave the instant as it is.
    pub fn truncate_to(self, part: DatePart) -> Timestamp {
        let date = self.date();
        let first_of = |month| Date {
            year: date.year,
            month,
            day: 1,
        };
        match part {
            DatePart::Year => first_of(1).start(),
            DatePart::Quarter => first_of((date.month - 1) / 3 * 3 + 1).start(),
            DatePart::Month => first_of(date.month).start(),
            DatePart::Week => {
                let days = self.days_since_epoch();
                let sunday = days - i64::from(self.weekday().days_since_sunday());
                Timestamp(sunday.saturating_mul(MS_PER_DAY))
            }
            DatePart::DayOfYear | DatePart::Day | DatePart::Weekday => date.start(),
            DatePart::Hour => self.truncate(Duration::from_secs(3600)),
            DatePart::Minute => self.truncate(Duration::from_secs(60)),
            DatePart::Second => self.truncate(Duration::from_secs(1)),
            DatePart::Millisecond | DatePart::Microsecond => self,
        }
    }

    /// This instant moved by `millis` milliseconds, or `None` past the `i64` range.
    pub fn checked_add_millis(self, millis: i64) -> Option<Timestamp> {
        self.0.checked_add(millis).map(Timestamp)
    }
}

impl fmt::Display for Timestamp {
    /// RFC 3339 in UTC: `2026-11-22T18:30:00Z`, or `2026-11-22T18:30:00.250Z` with milliseconds.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}T{:02}:{:02}:{:02}",
            self.date(),
            self.hour(),
            self.minute(),
            self.second()
        )?;
        match self.millisecond() {
            0 => f.write_str("Z"),
            millis => write!(f, ".{millis:03}Z"),
        }
    }
}

impl FromStr for Timestamp {
    type Err = TimeError;

    /// As [`Timestamp::parse`].
    fn from_str(text: &str) -> Result<Timestamp, TimeError> {
        Timestamp::parse(text)
    }
}

impl From<Timestamp> for i64 {
    fn from(timestamp: Timestamp) -> i64 {
        timestamp.0
    }
}

impl serde::Serialize for Timestamp {
    /// As its RFC 3339 text (see [`Display`](fmt::Display)).
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Timestamp {
    /// From a string [`Timestamp::parse`] reads or a number of epoch milliseconds.
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(TimestampVisitor)
    }
}

/// Reads a timestamp from a JSON string or number.
struct TimestampVisitor;

impl serde::de::Visitor<'_> for TimestampVisitor {
    type Value = Timestamp;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an RFC 3339 string or a number of epoch milliseconds")
    }

    fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<Timestamp, E> {
        Timestamp::parse(text).map_err(E::custom)
    }

    fn visit_i64<E: serde::de::Error>(self, millis: i64) -> Result<Timestamp, E> {
        Ok(Timestamp(millis))
    }

    fn visit_u64<E: serde::de::Error>(self, millis: u64) -> Result<Timestamp, E> {
        i64::try_from(millis)
            .map(Timestamp)
            .map_err(|_| E::custom(TimeError::Overflow))
    }

    fn visit_f64<E: serde::de::Error>(self, millis: f64) -> Result<Timestamp, E> {
        millis_of_float(millis).map_err(E::custom)
    }
}

/// Epoch milliseconds from a JSON number: an integer, or a float with no fraction (`1.7e12`).
fn millis_of_number(number: &serde_json::Number) -> Result<Timestamp, TimeError> {
    if let Some(millis) = number.as_i64() {
        return Ok(Timestamp(millis));
    }
    match number.as_f64() {
        Some(millis) if number.as_u64().is_none() => millis_of_float(millis),
        _ => Err(TimeError::Overflow),
    }
}

fn millis_of_float(millis: f64) -> Result<Timestamp, TimeError> {
    // -2^63 and 2^63 are exact as f64; the range check keeps the cast exact.
    if millis.fract() == 0.0
        && (-9.223_372_036_854_776e18..9.223_372_036_854_776e18).contains(&millis)
    {
        Ok(Timestamp(millis as i64))
    } else if millis.is_finite() && millis.fract() == 0.0 {
        Err(TimeError::Overflow)
    } else {
        Err(TimeError::Malformed {
            input: millis.to_string(),
            expected: "a whole number of epoch milliseconds",
        })
    }
}

/// A cursor over timestamp text.
struct Parser<'a> {
    text: &'a str,
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Parser<'a> {
    fn new(text: &'a str) -> Self {
        Parser {
            text,
            bytes: text.as_bytes(),
            at: 0,
        }
    }

    fn malformed(&self, expected: &'static str) -> TimeError {
        TimeError::Malformed {
            input: quoted(self.text),
            expected,
        }
    }

    fn out_of_range(&self, part: &'static str) -> TimeError {
        TimeError::OutOfRange {
            input: quoted(self.text),
            part,
        }
    }

    /// Exactly `count` ASCII digits, as a number.
    fn digits(&mut self, count: usize, expected: &'static str) -> Result<u32, TimeError> {
        let end = self.at + count;
        match self.bytes.get(self.at..end) {
            Some(digits) if digits.iter().all(u8::is_ascii_digit) => {
                self.at = end;
                Ok(digits.iter().fold(0, |n, d| n * 10 + u32::from(d - b'0')))
            }
            _ => Err(self.malformed(expected)),
        }
    }

    /// The byte `one_of` holds, consumed; `None` (and nothing consumed) otherwise.
    fn byte(&mut self, one_of: &[u8]) -> Option<u8> {
        let byte = *self.bytes.get(self.at)?;
        if one_of.contains(&byte) {
            self.at += 1;
            Some(byte)
        } else {
            None
        }
    }

    fn expect(&mut self, byte: u8, expected: &'static str) -> Result<(), TimeError> {
        self.byte(&[byte])
            .map(|_| ())
            .ok_or_else(|| self.malformed(expected))
    }

    /// `YYYY-MM-DDTHH:MM:SS[.fff]` and an offset; with `strict`, the offset is required and a
    /// date alone is refused.
    fn rfc3339(mut self, strict: bool) -> Result<Timestamp, TimeError> {
        const SHAPE: &str = "RFC 3339, such as 2026-11-22T18:30:00Z";
        let year = self.digits(4, SHAPE)?;
        self.expect(b'-', SHAPE)?;
        let month = self.digits(2, SHAPE)?;
        self.expect(b'-', SHAPE)?;
        let day = self.digits(2, SHAPE)?;
        // Four digits: the year fits an i32.
        let year = year as i32;
        if !(1..=12).contains(&month) {
            return Err(self.out_of_range("month"));
        }
        let date = Date::new(year, month, day).ok_or_else(|| self.out_of_range("day"))?;
        if !strict && self.at == self.bytes.len() {
            return Ok(date.start());
        }
        if self.byte(b"Tt ").is_none() {
            return Err(self.malformed(SHAPE));
        }
        let hour = self.digits(2, SHAPE)?;
        self.expect(b':', SHAPE)?;
        let minute = self.digits(2, SHAPE)?;
        self.expect(b':', SHAPE)?;
        let second = self.digits(2, SHAPE)?;
        if hour > 23 {
            return Err(self.out_of_range("hour"));
        }
        if minute > 59 {
            return Err(self.out_of_range("minute"));
        }
        if second > 60 {
            return Err(self.out_of_range("second"));
        }
        let mut millis = 0;
        if self.byte(b".").is_some() {
            let start = self.at;
            let mut scale = 100;
            while let Some(digit) = self.byte(b"0123456789") {
                millis += u32::from(digit - b'0') * scale;
                scale /= 10;
            }
            if self.at == start {
                return Err(self.malformed("digits after the decimal point"));
            }
        }
        let offset_minutes = match self.byte(b"Zz+-") {
            Some(b'Z' | b'z') => 0,
            Some(sign) => {
                const OFFSET: &str = "an offset such as +02:00";
                let hours = self.digits(2, OFFSET)?;
                self.expect(b':', OFFSET)?;
                let minutes = self.digits(2, OFFSET)?;
                if hours > 23 || minutes > 59 {
                    return Err(self.out_of_range("offset"));
                }
                let minutes = i64::from(hours * 60 + minutes);
                if sign == b'-' { -minutes } else { minutes }
            }
            None if strict => return Err(self.malformed("an offset: Z or one such as +02:00")),
            None => 0,
        };
        if self.at != self.bytes.len() {
            return Err(self.malformed("nothing after the offset"));
        }
        // A leap second (:60) is second 59 plus one second, like chrono's reading of it.
        let leap = i64::from(second == 60) * MS_PER_SECOND;
        let local = Timestamp::from_utc(date, hour, minute, second.min(59), millis)
            .ok_or(TimeError::Overflow)?;
        // Four-digit years and offsets under a day are far from the i64 range.
        Ok(Timestamp(local.0 + leap - offset_minutes * MS_PER_MINUTE))
    }
}

/// A part of a date or time, as Stream Analytics' `DATEPART`, `DATENAME` and `DATEDIFF` name
/// them. Parsed (case-insensitively) from the names and abbreviations Stream Analytics accepts:
/// `year`/`yy`/`yyyy`, `quarter`/`qq`/`q`, `month`/`mm`/`m`, `dayofyear`/`dy`/`y`, `day`/`dd`/`d`,
/// `week`/`wk`/`ww`, `weekday`/`dw`/`w`, `hour`/`hh`, `minute`/`mi`/`n`, `second`/`ss`/`s`,
/// `millisecond`/`ms`, `microsecond`/`mcs`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DatePart {
    /// The year.
    Year,
    /// The quarter, 1 to 4.
    Quarter,
    /// The month, 1 to 12.
    Month,
    /// The day of the year, 1 to 366.
    DayOfYear,
    /// The day of the month, 1 to 31.
    Day,
    /// The week of the year, 1 to 54: weeks start on Sunday, week 1 contains January 1.
    Week,
    /// The day of the week, 1 (Sunday) to 7 (Saturday).
    Weekday,
    /// The hour, 0 to 23.
    Hour,
    /// The minute, 0 to 59.
    Minute,
    /// The second, 0 to 59.
    Second,
    /// The millisecond, 0 to 999.
    Millisecond,
    /// The microsecond, 0 to 999,999: always a whole number of milliseconds, the precision of a
    /// [`Timestamp`].
    Microsecond,
}

impl FromStr for DatePart {
    type Err = TimeError;

    fn from_str(name: &str) -> Result<DatePart, TimeError> {
        Ok(match name.to_ascii_lowercase().as_str() {
            "year" | "yy" | "yyyy" => DatePart::Year,
            "quarter" | "qq" | "q" => DatePart::Quarter,
            "month" | "mm" | "m" => DatePart::Month,
            "dayofyear" | "dy" | "y" => DatePart::DayOfYear,
            "day" | "dd" | "d" => DatePart::Day,
            "week" | "wk" | "ww" => DatePart::Week,
            "weekday" | "dw" | "w" => DatePart::Weekday,
            "hour" | "hh" => DatePart::Hour,
            "minute" | "mi" | "n" => DatePart::Minute,
            "second" | "ss" | "s" => DatePart::Second,
            "millisecond" | "ms" => DatePart::Millisecond,
            "microsecond" | "mcs" => DatePart::Microsecond,
            _ => return Err(TimeError::UnknownDatePart(quoted(name))),
        })
    }
}

/// `DATEPART(part, t)`: the number of `part` in `t` (see [`DatePart`] for each part's range).
pub fn datepart(part: DatePart, t: Timestamp) -> i64 {
    match part {
        DatePart::Year => i64::from(t.year()),
        DatePart::Quarter => i64::from(t.quarter()),
        DatePart::Month => i64::from(t.month()),
        DatePart::DayOfYear => i64::from(t.day_of_year()),
        DatePart::Day => i64::from(t.day()),
        DatePart::Week => i64::from(t.week()),
        DatePart::Weekday => i64::from(t.weekday().number_from_sunday()),
        DatePart::Hour => i64::from(t.hour()),
        DatePart::Minute => i64::from(t.minute()),
        DatePart::Second => i64::from(t.second()),
        DatePart::Millisecond => i64::from(t.millisecond()),
        DatePart::Microsecond => i64::from(t.millisecond()) * 1000,
    }
}

/// `DATENAME(part, t)`: the name of the month (`November`) or of the day of the week (`Sunday`),
/// and for every other part its number as text.
pub fn datename(part: DatePart, t: Timestamp) -> String {
    match part {
        DatePart::Month => t.month_name().to_owned(),
        DatePart::Weekday => t.weekday_name().to_owned(),
        _ => datepart(part, t).to_string(),
    }
}

/// `DATEDIFF(part, start, end)`: how many `part` boundaries lie between `start` and `end`
/// (negative when `end` is earlier), as Stream Analytics and T-SQL count them. It counts
/// boundaries crossed, not whole intervals elapsed: from 23:59 to 00:01 the next day is 1 day,
/// from December 31 to January 1 is 1 year, and from a Saturday to the next day is 1 week (weeks
/// start on Sunday). [`DatePart::DayOfYear`] and [`DatePart::Weekday`] count days. A difference
/// too large for an `i64` (microseconds over ±292,000 years) is the largest or smallest `i64`.
pub fn datediff(part: DatePart, start: Timestamp, end: Timestamp) -> i64 {
    let months = |t: Timestamp| {
        let date = t.date();
        i64::from(date.year) * 12 + i64::from(date.month) - 1
    };
    // Sundays since the Sunday before the epoch (1970-01-04 is the first after it).
    let weeks = |t: Timestamp| (t.days_since_epoch() + 4).div_euclid(7);
    let units = |t: Timestamp, size: i64| t.0.div_euclid(size);
    match part {
        DatePart::Year => i64::from(end.year()) - i64::from(start.year()),
        DatePart::Quarter => months(end).div_euclid(3) - months(start).div_euclid(3),
        DatePart::Month => months(end) - months(start),
        DatePart::DayOfYear | DatePart::Day | DatePart::Weekday => {
            end.days_since_epoch() - start.days_since_epoch()
        }
        DatePart::Week => weeks(end) - weeks(start),
        DatePart::Hour => units(end, MS_PER_HOUR) - units(start, MS_PER_HOUR),
        DatePart::Minute => units(end, MS_PER_MINUTE) - units(start, MS_PER_MINUTE),
        DatePart::Second => units(end, MS_PER_SECOND) - units(start, MS_PER_SECOND),
        // Differences of two i64 may not fit: saturate rather than wrap.
        DatePart::Millisecond => end.0.saturating_sub(start.0),
        DatePart::Microsecond => end.0.saturating_sub(start.0).saturating_mul(1000),
    }
}

/// `DATEADD(part, number, t)`: `t` moved by `number` of `part`, or `None` past the range of a
/// [`Timestamp`]. Years, quarters and months move the calendar date and keep the time of day; a
/// day that the target month lacks becomes its last day (January 31 plus one month is February
/// 28 or 29), as Stream Analytics and T-SQL do. Weeks are 7 days; [`DatePart::DayOfYear`] and
/// [`DatePart::Weekday`] are days; a microsecond counts only in whole milliseconds (rounded
/// toward zero).
pub fn dateadd(part: DatePart, number: i64, t: Timestamp) -> Option<Timestamp> {
    let add_months = |months: i64| {
        let date = t.date();
        let index = (i64::from(date.year) * 12 + i64::from(date.month) - 1).checked_add(months)?;
        let year = i32::try_from(index.div_euclid(12)).ok()?;
        // 1 to 12 by construction.
        let month = index.rem_euclid(12) as u32 + 1;
        let day = date.day.min(days_in_month(year, month));
        let days = Date { year, month, day }.days_since_epoch();
        days.checked_mul(MS_PER_DAY)?
            .checked_add(t.millis_of_day())
            .map(Timestamp)
    };
    let add = |unit: i64| {
        number
            .checked_mul(unit)
            .and_then(|millis| t.checked_add_millis(millis))
    };
    match part {
        DatePart::Year => add_months(number.checked_mul(12)?),
        DatePart::Quarter => add_months(number.checked_mul(3)?),
        DatePart::Month => add_months(number),
        DatePart::Week => add(7 * MS_PER_DAY),
        DatePart::DayOfYear | DatePart::Day | DatePart::Weekday => add(MS_PER_DAY),
        DatePart::Hour => add(MS_PER_HOUR),
        DatePart::Minute => add(MS_PER_MINUTE),
        DatePart::Second => add(MS_PER_SECOND),
        DatePart::Millisecond => add(1),
        DatePart::Microsecond => t.checked_add_millis(number / 1000),
    }
}
