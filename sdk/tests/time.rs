//! `weir_sdk::time` against `chrono` over many instants from 1900 to 2200 (before and after the
//! epoch, around leap days), and Stream Analytics' semantics of DATEPART, DATENAME and DATEDIFF
//! in tables.

use std::time::Duration;

use chrono::{
    DateTime, Datelike, DurationRound, FixedOffset, Months, NaiveDate, SecondsFormat, TimeDelta,
    Timelike, Utc,
};
use weir_sdk::time::{
    Date, DatePart, TimeError, Timestamp, Weekday, dateadd, datediff, datename, datepart,
    days_in_month, is_leap_year,
};

/// The README's example of the time helpers in a plugin.
mod readme {
    include!("readme/time.rs");

    #[test]
    fn the_readme_example_gives_day_hour_bucket_and_days() {
        use weir_sdk::testing::{Harness, TestEvent};
        let mut harness = Harness::new(booking_time);
        // Sunday 2026-11-22 18:34:59.999 UTC; the show at 20:00 on the Monday, in Paris.
        let booked = 1_795_372_499_999;
        let event = TestEvent::new(r#"{"ShowTime": "2026-11-23T20:00:00+01:00"}"#).at(booked);
        let rows = harness.run_event(event).json("rows");
        assert_eq!(
            rows[0],
            serde_json::json!({
                "DayOfWeek": "Sunday",
                "Weekday": 1,
                "Hour": 18,
                "Bucket": "2026-11-22T18:30:00Z",
                "DaysToShow": 1,
            })
        );
        let event = TestEvent::new(r#"{"ShowTime": 1795392000000}"#).at(booked);
        assert_eq!(harness.run_event(event).json("rows")[0]["DaysToShow"], 1);
        let outcome = harness.run_event(TestEvent::new(r#"{"ShowTime": "soon"}"#).at(booked));
        assert_eq!(
            outcome.rejection(),
            Some(
                r#"ShowTime: invalid timestamp "soon": expected RFC 3339, such as 2026-11-22T18:30:00Z"#
            )
        );
        let outcome = harness.run_event(TestEvent::new(r#"{"Show": 1}"#).at(booked));
        assert_eq!(outcome.rejection(), Some("missing field `ShowTime`"));
        let outcome = harness.run_event(TestEvent::new(r#"[1, 2]"#).at(booked));
        assert!(outcome.rejection().is_some());
        let outcome = harness.run_event(TestEvent::new(r#"{"ShowTime": 0} x"#).at(booked));
        assert!(
            outcome
                .rejection()
                .is_some_and(|reason| reason.starts_with("malformed JSON"))
        );
    }

    #[test]
    fn field_time_skips_other_fields_and_reads_escaped_names() {
        use weir_sdk::testing::{Harness, TestEvent};
        fn read(event: &Event, ctx: &mut Context) -> Result<()> {
            let at = event.field_time("At")?;
            ctx.emit("rows", &serde_json::json!({ "at": at }))?;
            Ok(())
        }
        let mut harness = Harness::new(read);
        let body = r#"{"Other": {"At": 5, "x": [1, {"y": null}]}, "At": -1, "At2": 3}"#;
        let rows = harness.run_event(TestEvent::new(body)).json("rows");
        assert_eq!(rows[0]["at"], "1969-12-31T23:59:59.999Z");
    }
}

const ALL_PARTS: [DatePart; 12] = [
    DatePart::Year,
    DatePart::Quarter,
    DatePart::Month,
    DatePart::DayOfYear,
    DatePart::Day,
    DatePart::Week,
    DatePart::Weekday,
    DatePart::Hour,
    DatePart::Minute,
    DatePart::Second,
    DatePart::Millisecond,
    DatePart::Microsecond,
];

/// A deterministic generator (SplitMix64), so a failure is reproducible.
struct Numbers(u64);

impl Numbers {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `low..high`.
    fn between(&mut self, low: i64, high: i64) -> i64 {
        low + (self.next() % (high - low) as u64) as i64
    }
}

fn millis(date: &str) -> i64 {
    DateTime::parse_from_rfc3339(date)
        .expect("a valid test date")
        .timestamp_millis()
}

/// ~100,000 instants: spread uniformly over 1900..2200, plus every millisecond-neighbourhood of
/// interesting days (epoch, leap days, century years, year ends).
fn instants() -> Vec<i64> {
    let low = millis("1900-01-01T00:00:00Z");
    let high = millis("2200-01-01T00:00:00Z");
    let mut numbers = Numbers(14);
    let mut all: Vec<i64> = (0..90_000).map(|_| numbers.between(low, high)).collect();
    let days = [
        "1900-01-01T00:00:00Z",
        "1900-02-28T00:00:00Z",
        "1900-03-01T00:00:00Z",
        "1969-12-31T00:00:00Z",
        "1970-01-01T00:00:00Z",
        "1996-02-29T00:00:00Z",
        "1999-12-31T00:00:00Z",
        "2000-01-01T00:00:00Z",
        "2000-02-29T00:00:00Z",
        "2000-03-01T00:00:00Z",
        "2000-12-31T00:00:00Z",
        "2024-02-29T00:00:00Z",
        "2026-11-22T00:00:00Z",
        "2100-02-28T00:00:00Z",
        "2100-03-01T00:00:00Z",
        "2199-12-31T00:00:00Z",
    ];
    for day in days {
        let start = millis(day);
        for offset in [
            -1, 0, 1, 999, 1000, 59_999, 3_599_999, 86_399_999, 86_400_000,
        ] {
            all.push(start + offset);
        }
        for _ in 0..500 {
            all.push(start + numbers.between(-2 * 86_400_000, 2 * 86_400_000));
        }
    }
    all.extend([0, -1, 1, i64::from(i32::MIN), i64::from(i32::MAX)]);
    all
}

/// chrono's `duration_trunc`, which refuses an instant closer to the epoch than `span`: such an
/// instant is shifted by a multiple of every span the tests use (1,000 weeks) and back.
fn chrono_trunc(t: DateTime<Utc>, span: TimeDelta) -> DateTime<Utc> {
    let shift = TimeDelta::weeks(1_000);
    if t.timestamp_millis().abs() <= span.num_milliseconds() {
        (t + shift).duration_trunc(span).expect("truncates") - shift
    } else {
        t.duration_trunc(span).expect("truncates")
    }
}

fn chrono_of(millis: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(millis).expect("in chrono's range")
}

/// Stream Analytics' week of the year from chrono's `%U` (weeks start on Sunday, days before the
/// first Sunday are week 0): week 1 contains January 1, so add one unless January 1 is a Sunday.
fn asa_week(t: DateTime<Utc>) -> i64 {
    let sunday_week: i64 = t.format("%U").to_string().parse().expect("a number");
    let jan1 = NaiveDate::from_ymd_opt(t.year(), 1, 1).expect("January 1");
    sunday_week + i64::from(jan1.weekday() != chrono::Weekday::Sun)
}

#[test]
fn calendar_parts_match_chrono() {
    for millis in instants() {
        let t = Timestamp::from_epoch_millis(millis);
        let c = chrono_of(millis);
        let at = c.to_rfc3339();
        assert_eq!(t.year(), c.year(), "{at}");
        assert_eq!(t.month(), c.month(), "{at}");
        assert_eq!(t.day(), c.day(), "{at}");
        assert_eq!(t.day_of_year(), c.ordinal(), "{at}");
        assert_eq!(t.quarter(), c.month0() / 3 + 1, "{at}");
        assert_eq!(t.hour(), c.hour(), "{at}");
        assert_eq!(t.minute(), c.minute(), "{at}");
        assert_eq!(t.second(), c.second(), "{at}");
        assert_eq!(t.millisecond(), c.nanosecond() / 1_000_000, "{at}");
        assert_eq!(t.weekday_name(), c.format("%A").to_string(), "{at}");
        assert_eq!(t.month_name(), c.format("%B").to_string(), "{at}");
        assert_eq!(
            t.weekday().number_from_monday(),
            c.weekday().number_from_monday(),
            "{at}"
        );
        assert_eq!(
            t.weekday().number_from_sunday(),
            c.weekday().number_from_sunday(),
            "{at}"
        );
        assert_eq!(i64::from(t.week()), asa_week(c), "{at}");
        assert_eq!(t.date().to_string(), c.date_naive().to_string(), "{at}");
        assert_eq!(
            t.date().days_since_epoch(),
            (c.date_naive() - NaiveDate::default()).num_days(),
            "{at}"
        );
        assert_eq!(
            t.to_string(),
            c.to_rfc3339_opts(SecondsFormat::AutoSi, true),
            "{at}"
        );
        assert_eq!(t.date().start().epoch_millis(), {
            let midnight = c.date_naive().and_hms_opt(0, 0, 0).expect("midnight");
            midnight.and_utc().timestamp_millis()
        });
        let date = Date::new(c.year(), c.month(), c.day()).expect("a real date");
        assert_eq!(date, t.date());
        let rebuilt = Timestamp::from_utc(
            date,
            c.hour(),
            c.minute(),
            c.second(),
            c.nanosecond() / 1_000_000,
        );
        assert_eq!(rebuilt, Some(t), "{at}");
    }
}

#[test]
fn datepart_and_datename_match_chrono() {
    for millis in instants().into_iter().step_by(7) {
        let t = Timestamp::from_epoch_millis(millis);
        let c = chrono_of(millis);
        let expected = [
            i64::from(c.year()),
            i64::from(c.month0() / 3 + 1),
            i64::from(c.month()),
            i64::from(c.ordinal()),
            i64::from(c.day()),
            asa_week(c),
            i64::from(c.weekday().number_from_sunday()),
            i64::from(c.hour()),
            i64::from(c.minute()),
            i64::from(c.second()),
            i64::from(c.nanosecond() / 1_000_000),
            i64::from(c.nanosecond() / 1_000),
        ];
        for (part, expected) in ALL_PARTS.into_iter().zip(expected) {
            assert_eq!(datepart(part, t), expected, "{part:?} of {c}");
            let name = match part {
                DatePart::Month => c.format("%B").to_string(),
                DatePart::Weekday => c.format("%A").to_string(),
                _ => expected.to_string(),
            };
            assert_eq!(datename(part, t), name, "{part:?} of {c}");
        }
    }
}

/// DATEDIFF as boundaries crossed, computed with chrono: the difference of each instant's
/// position counted in whole units from a fixed origin.
fn chrono_datediff(part: DatePart, a: DateTime<Utc>, b: DateTime<Utc>) -> i64 {
    let months = |t: DateTime<Utc>| i64::from(t.year()) * 12 + i64::from(t.month0());
    let sunday = |t: DateTime<Utc>| {
        let date = t.date_naive();
        date - TimeDelta::days(i64::from(date.weekday().num_days_from_sunday()))
    };
    let truncated = chrono_trunc;
    match part {
        DatePart::Year => i64::from(b.year() - a.year()),
        DatePart::Quarter => months(b).div_euclid(3) - months(a).div_euclid(3),
        DatePart::Month => months(b) - months(a),
        DatePart::DayOfYear | DatePart::Day | DatePart::Weekday => {
            (b.date_naive() - a.date_naive()).num_days()
        }
        DatePart::Week => (sunday(b) - sunday(a)).num_days() / 7,
        DatePart::Hour => {
            (truncated(b, TimeDelta::hours(1)) - truncated(a, TimeDelta::hours(1))).num_hours()
        }
        DatePart::Minute => (truncated(b, TimeDelta::minutes(1))
            - truncated(a, TimeDelta::minutes(1)))
        .num_minutes(),
        DatePart::Second => (truncated(b, TimeDelta::seconds(1))
            - truncated(a, TimeDelta::seconds(1)))
        .num_seconds(),
        DatePart::Millisecond => (b - a).num_milliseconds(),
        DatePart::Microsecond => (b - a).num_microseconds().expect("in range"),
    }
}

#[test]
fn datediff_matches_chrono() {
    let mut numbers = Numbers(41);
    let spans = [
        2_000,
        90_000,
        7_200_000,
        3 * 86_400_000,
        400 * 86_400_000,
        30 * 365 * 86_400_000,
    ];
    for (i, millis) in instants().into_iter().step_by(3).enumerate() {
        let span = spans[i % spans.len()];
        let other = millis + numbers.between(-span, span);
        let (a, b) = (
            Timestamp::from_epoch_millis(millis),
            Timestamp::from_epoch_millis(other),
        );
        let (ca, cb) = (chrono_of(millis), chrono_of(other));
        for part in ALL_PARTS {
            assert_eq!(
                datediff(part, a, b),
                chrono_datediff(part, ca, cb),
                "DATEDIFF({part:?}, {ca}, {cb})"
            );
        }
    }
}

#[test]
fn truncate_matches_chrono() {
    let intervals = [
        Duration::from_millis(1),
        Duration::from_millis(250),
        Duration::from_secs(1),
        Duration::from_secs(10),
        Duration::from_secs(60),
        Duration::from_secs(5 * 60),
        Duration::from_secs(15 * 60),
        Duration::from_secs(90 * 60),
        Duration::from_secs(3600),
        Duration::from_secs(86_400),
        Duration::from_secs(7 * 86_400),
    ];
    for (i, millis) in instants().into_iter().enumerate() {
        let interval = intervals[i % intervals.len()];
        let t = Timestamp::from_epoch_millis(millis).truncate(interval);
        let c = chrono_trunc(
            chrono_of(millis),
            TimeDelta::from_std(interval).expect("small"),
        );
        assert_eq!(
            t.epoch_millis(),
            c.timestamp_millis(),
            "{interval:?} of {millis}"
        );
    }
}

#[test]
fn truncate_to_a_calendar_part() {
    let t = Timestamp::parse_rfc3339("2026-11-26T18:34:59.999Z").expect("valid");
    let cases = [
        (DatePart::Year, "2026-01-01T00:00:00Z"),
        (DatePart::Quarter, "2026-10-01T00:00:00Z"),
        (DatePart::Month, "2026-11-01T00:00:00Z"),
        (DatePart::Week, "2026-11-22T00:00:00Z"), // the Sunday before that Thursday
        (DatePart::Day, "2026-11-26T00:00:00Z"),
        (DatePart::Hour, "2026-11-26T18:00:00Z"),
        (DatePart::Minute, "2026-11-26T18:34:00Z"),
        (DatePart::Second, "2026-11-26T18:34:59Z"),
        (DatePart::Millisecond, "2026-11-26T18:34:59.999Z"),
    ];
    for (part, expected) in cases {
        assert_eq!(t.truncate_to(part).to_string(), expected, "{part:?}");
    }
    // Before the epoch, a Sunday-started week still starts on a Sunday.
    let old = Timestamp::parse_rfc3339("1969-12-31T23:00:00Z").expect("valid");
    assert_eq!(
        old.truncate_to(DatePart::Week).to_string(),
        "1969-12-28T00:00:00Z"
    );
    assert_eq!(
        old.truncate(Duration::from_secs(300)).to_string(),
        "1969-12-31T23:00:00Z"
    );
    assert_eq!(
        Timestamp::from_epoch_millis(-1)
            .truncate(Duration::ZERO)
            .epoch_millis(),
        -1
    );
    assert_eq!(
        Timestamp::from_epoch_millis(-1)
            .truncate(Duration::from_secs(300))
            .epoch_millis(),
        -300_000
    );
}

#[test]
fn rfc3339_parses_as_chrono_does() {
    let mut numbers = Numbers(3339);
    let formats = [
        SecondsFormat::Secs,
        SecondsFormat::Millis,
        SecondsFormat::Micros,
        SecondsFormat::Nanos,
    ];
    for (i, millis) in instants().into_iter().step_by(2).enumerate() {
        // An offset of up to ±23:59, in whole minutes.
        let offset = FixedOffset::east_opt(numbers.between(-1439, 1440) as i32 * 60)
            .expect("a valid offset");
        let nanos = numbers.between(0, 1_000_000) as u32;
        let c = chrono_of(millis)
            .with_nanosecond(chrono_of(millis).nanosecond() + nanos)
            .expect("under a second")
            .with_timezone(&offset);
        let text = c.to_rfc3339_opts(formats[i % formats.len()], i % 2 == 0);
        let expected = DateTime::parse_from_rfc3339(&text)
            .expect("chrono reads its own output")
            .timestamp_millis();
        let parsed = Timestamp::parse_rfc3339(&text).expect("valid RFC 3339");
        assert_eq!(parsed.epoch_millis(), expected, "{text}");
        assert_eq!(Timestamp::parse(&text), Ok(parsed), "{text}");
        let utc = Timestamp::from_epoch_millis(expected).to_string();
        assert_eq!(Timestamp::parse_rfc3339(&utc), Ok(parsed), "{utc}");
    }
}

#[test]
fn rfc3339_variants_and_leap_seconds() {
    let cases = [
        "2000-02-29T12:00:00Z",
        "2000-02-29t12:00:00z",
        "2000-02-29 12:00:00Z",
        "2000-02-29T14:30:00+02:30",
        "2000-02-29T00:00:00-12:00",
        "2000-02-29T12:00:00.123456789Z",
        "1969-12-31T23:59:59.999Z",
        "1900-01-01T00:00:00Z",
        "2016-12-31T23:59:60Z",
        "2016-12-31T23:59:60.5Z",
        "2100-03-01T00:00:00+00:00",
        "0001-01-01T00:00:00Z",
        "9999-12-31T23:59:59.999Z",
    ];
    for text in cases {
        let expected = DateTime::parse_from_rfc3339(text).expect("chrono reads it");
        assert_eq!(
            Timestamp::parse_rfc3339(text).map(Timestamp::epoch_millis),
            Ok(expected.timestamp_millis()),
            "{text}"
        );
    }
}

#[test]
fn malformed_text_is_a_typed_error_not_a_panic() {
    let malformed = [
        "",
        "2026",
        "2026-11-22",
        "2026-11-22T18:30",
        "2026-11-22T18:30:00",
        "2026-11-22T18:30:00.Z",
        "2026-11-22T18:30:00+0200",
        "2026-11-22T18:30:00+02",
        "2026-11-22T18:30:00Zjunk",
        "2026-11-22X18:30:00Z",
        "26-11-22T18:30:00Z",
        "2026/11/22T18:30:00Z",
        "２０２６-11-22T18:30:00Z",
        "-2026-11-22T18:30:00Z",
        "yesterday",
    ];
    for text in malformed {
        let error = Timestamp::parse_rfc3339(text).expect_err(text);
        assert!(
            matches!(error, TimeError::Malformed { .. }),
            "{text}: {error:?}"
        );
        assert!(
            DateTime::parse_from_rfc3339(text).is_err(),
            "chrono reads {text}"
        );
    }
    let out_of_range = [
        ("2026-13-01T00:00:00Z", "month"),
        ("2026-00-01T00:00:00Z", "month"),
        ("2026-02-29T00:00:00Z", "day"),
        ("2100-02-29T00:00:00Z", "day"),
        ("2026-04-31T00:00:00Z", "day"),
        ("2026-04-00T00:00:00Z", "day"),
        ("2026-04-30T24:00:00Z", "hour"),
        ("2026-04-30T23:60:00Z", "minute"),
        ("2026-04-30T23:59:61Z", "second"),
        ("2026-04-30T23:59:59+24:00", "offset"),
        ("2026-04-30T23:59:59+02:60", "offset"),
    ];
    for (text, expected) in out_of_range {
        match Timestamp::parse_rfc3339(text) {
            Err(TimeError::OutOfRange { part, .. }) => assert_eq!(part, expected, "{text}"),
            other => panic!("{text}: {other:?}"),
        }
        assert!(
            DateTime::parse_from_rfc3339(text).is_err(),
            "chrono reads {text}"
        );
    }
    let error = Timestamp::parse_rfc3339("2026-02-30T00:00:00Z").expect_err("no such day");
    assert_eq!(
        error.to_string(),
        r#"invalid timestamp "2026-02-30T00:00:00Z": day out of range"#
    );
    let error = Timestamp::parse_rfc3339("yesterday").expect_err("not a time");
    assert_eq!(
        error.to_string(),
        r#"invalid timestamp "yesterday": expected RFC 3339, such as 2026-11-22T18:30:00Z"#
    );
    // A huge input is quoted only in part.
    let long = "x".repeat(10_000);
    assert!(
        Timestamp::parse(&long)
            .expect_err("not a time")
            .to_string()
            .len()
            < 200
    );
    // Non-ASCII at any byte boundary does not split a character.
    for cut in 0..12 {
        let text = format!(
            "{}é{}",
            &"2026-11-22T18:30:00Z"[..cut],
            &"2026-11-22T18:30:00Z"[cut..]
        );
        assert!(Timestamp::parse(&text).is_err(), "{text}");
    }
    assert_eq!(
        Timestamp::parse("99999999999999999999"),
        Err(TimeError::Overflow)
    );
}

#[test]
fn lenient_parse_reads_what_events_carry() {
    let at = |text| Timestamp::parse(text).map(Timestamp::epoch_millis);
    assert_eq!(at("2026-11-22T18:30:00Z"), Ok(1_795_372_200_000));
    assert_eq!(at("2026-11-22T18:30:00"), Ok(1_795_372_200_000));
    assert_eq!(at("2026-11-22T18:30:00.5"), Ok(1_795_372_200_500));
    assert_eq!(at("2026-11-22"), Ok(1_795_305_600_000));
    assert_eq!(at("1795372200000"), Ok(1_795_372_200_000));
    assert_eq!(at(" 1795372200000 "), Ok(1_795_372_200_000));
    assert_eq!(at("-1"), Ok(-1));
    assert!(at("2026-11-22T").is_err());
    assert!(at("1.5").is_err());
    assert_eq!(
        "2026-11-22".parse::<Timestamp>(),
        Timestamp::parse("2026-11-22")
    );
}

#[test]
fn json_fields_are_rfc3339_text_or_epoch_millis() {
    #[derive(serde::Deserialize)]
    struct Row {
        at: Timestamp,
    }
    let read = |json: &str| serde_json::from_str::<Row>(json).map(|row| row.at.epoch_millis());
    assert_eq!(
        read(r#"{"at": "2026-11-22T18:30:00Z"}"#).ok(),
        Some(1_795_372_200_000)
    );
    assert_eq!(
        read(r#"{"at": 1795372200000}"#).ok(),
        Some(1_795_372_200_000)
    );
    assert_eq!(read(r#"{"at": -86400000}"#).ok(), Some(-86_400_000));
    assert_eq!(
        read(r#"{"at": 1.7953722e12}"#).ok(),
        Some(1_795_372_200_000)
    );
    assert!(read(r#"{"at": 1.5}"#).is_err());
    assert!(read(r#"{"at": 18446744073709551615}"#).is_err());
    assert!(read(r#"{"at": true}"#).is_err());
    let error = read(r#"{"at": "2026-02-30T00:00:00Z"}"#).expect_err("no such day");
    assert!(
        error
            .to_string()
            .starts_with(r#"invalid timestamp "2026-02-30T00:00:00Z": day out of range"#),
        "{error}"
    );
    use serde_json::json;
    assert_eq!(
        Timestamp::from_json(&json!("2026-11-22T18:30:00Z")).map(Timestamp::epoch_millis),
        Ok(1_795_372_200_000)
    );
    assert_eq!(
        Timestamp::from_json(&json!(1_795_372_200_000_i64)).map(Timestamp::epoch_millis),
        Ok(1_795_372_200_000)
    );
    assert!(Timestamp::from_json(&json!(null)).is_err());
    assert!(Timestamp::from_json(&json!(u64::MAX)).is_err());
    let t = Timestamp::from_epoch_millis(1_795_372_200_250);
    assert_eq!(
        serde_json::to_string(&t).ok(),
        Some(r#""2026-11-22T18:30:00.250Z""#.to_owned())
    );
}

#[test]
fn asa_weekday_numbers_and_names() {
    // 2026-11-22 is a Sunday: DATEPART(weekday) is 1 for Sunday up to 7 for Saturday.
    let sunday = Timestamp::parse_rfc3339("2026-11-22T12:00:00Z").expect("valid");
    let names = [
        "Sunday",
        "Monday",
        "Tuesday",
        "Wednesday",
        "Thursday",
        "Friday",
        "Saturday",
    ];
    for (i, name) in names.into_iter().enumerate() {
        let t = sunday
            .checked_add_millis(i as i64 * 86_400_000)
            .expect("in range");
        assert_eq!(datepart(DatePart::Weekday, t), i as i64 + 1, "{name}");
        assert_eq!(datename(DatePart::Weekday, t), name);
        assert_eq!(t.weekday().to_string(), name);
    }
    assert_eq!(Weekday::Sunday.number_from_monday(), 7);
    assert_eq!(Weekday::Monday.number_from_sunday(), 2);
    assert_eq!(datename(DatePart::Month, sunday), "November");
    assert_eq!(datename(DatePart::Year, sunday), "2026");
    assert_eq!(datename(DatePart::Day, sunday), "22");
    assert_eq!(Timestamp::EPOCH.weekday(), Weekday::Thursday);
    assert_eq!(
        Timestamp::from_epoch_millis(-1).weekday(),
        Weekday::Wednesday
    );
    assert_eq!(Timestamp::from_epoch_millis(-1).hour(), 23);
}

#[test]
fn asa_week_numbers() {
    let week = |text: &str| Timestamp::parse(text).expect("valid").week();
    // 2026-01-01 is a Thursday: January 1 to 3 are week 1, Sunday January 4 starts week 2.
    assert_eq!(week("2026-01-01"), 1);
    assert_eq!(week("2026-01-03"), 1);
    assert_eq!(week("2026-01-04"), 2);
    assert_eq!(week("2026-12-31"), 53);
    // 2023-01-01 is a Sunday: it starts week 1, Saturday January 7 ends it.
    assert_eq!(week("2023-01-01"), 1);
    assert_eq!(week("2023-01-07"), 1);
    assert_eq!(week("2023-01-08"), 2);
    // A leap year that starts on a Saturday has 54 weeks: 2000-12-31 is a Sunday.
    assert_eq!(week("2000-01-01"), 1);
    assert_eq!(week("2000-01-02"), 2);
    assert_eq!(week("2000-12-30"), 53);
    assert_eq!(week("2000-12-31"), 54);
}

#[test]
fn asa_datediff_counts_boundaries_crossed() {
    let t = |text: &str| Timestamp::parse(text).expect("valid");
    let cases = [
        (
            DatePart::Day,
            "2026-11-22T23:59:00Z",
            "2026-11-23T00:01:00Z",
            1,
        ),
        (
            DatePart::Day,
            "2026-11-22T00:00:00Z",
            "2026-11-22T23:59:59.999Z",
            0,
        ),
        (
            DatePart::Day,
            "2026-11-23T00:01:00Z",
            "2026-11-22T23:59:00Z",
            -1,
        ),
        (
            DatePart::DayOfYear,
            "2026-11-22T23:59:00Z",
            "2026-11-23T00:01:00Z",
            1,
        ),
        (
            DatePart::Weekday,
            "2026-11-22T23:59:00Z",
            "2026-11-23T00:01:00Z",
            1,
        ),
        (
            DatePart::Year,
            "2026-12-31T23:59:59Z",
            "2027-01-01T00:00:00Z",
            1,
        ),
        (
            DatePart::Year,
            "2026-01-01T00:00:00Z",
            "2026-12-31T23:59:59Z",
            0,
        ),
        (
            DatePart::Quarter,
            "2026-03-31T23:59:59Z",
            "2026-04-01T00:00:00Z",
            1,
        ),
        (
            DatePart::Quarter,
            "2025-12-31T00:00:00Z",
            "2027-01-01T00:00:00Z",
            5,
        ),
        (
            DatePart::Month,
            "2026-01-31T00:00:00Z",
            "2026-02-01T00:00:00Z",
            1,
        ),
        (
            DatePart::Month,
            "2026-01-01T00:00:00Z",
            "2026-01-31T23:59:59Z",
            0,
        ),
        (
            DatePart::Month,
            "1999-12-15T00:00:00Z",
            "2000-02-29T00:00:00Z",
            2,
        ),
        // 2026-11-28 is a Saturday: Sunday is a new week, Saturday to Saturday one.
        (
            DatePart::Week,
            "2026-11-28T23:00:00Z",
            "2026-11-29T01:00:00Z",
            1,
        ),
        (
            DatePart::Week,
            "2026-11-22T00:00:00Z",
            "2026-11-28T23:59:59Z",
            0,
        ),
        (
            DatePart::Week,
            "2026-11-28T00:00:00Z",
            "2026-12-05T00:00:00Z",
            1,
        ),
        (
            DatePart::Week,
            "1970-01-03T00:00:00Z",
            "1970-01-04T00:00:00Z",
            1,
        ),
        (
            DatePart::Hour,
            "2026-11-22T18:59:59Z",
            "2026-11-22T19:00:00Z",
            1,
        ),
        (
            DatePart::Hour,
            "2026-11-22T18:00:00Z",
            "2026-11-22T18:59:59Z",
            0,
        ),
        (
            DatePart::Hour,
            "1969-12-31T23:59:59Z",
            "1970-01-01T00:00:00Z",
            1,
        ),
        (
            DatePart::Minute,
            "2026-11-22T18:30:59.999Z",
            "2026-11-22T18:31:00Z",
            1,
        ),
        (
            DatePart::Second,
            "2026-11-22T18:30:00.999Z",
            "2026-11-22T18:30:01Z",
            1,
        ),
        (
            DatePart::Second,
            "2026-11-22T18:30:00.001Z",
            "2026-11-22T18:30:00.999Z",
            0,
        ),
        (
            DatePart::Millisecond,
            "2026-11-22T18:30:00.001Z",
            "2026-11-22T18:30:00.999Z",
            998,
        ),
    ];
    for (part, start, end, expected) in cases {
        assert_eq!(
            datediff(part, t(start), t(end)),
            expected,
            "DATEDIFF({part:?}, {start}, {end})"
        );
    }
    let far = Timestamp::from_epoch_millis(i64::MAX);
    let near = Timestamp::from_epoch_millis(i64::MIN);
    assert_eq!(datediff(DatePart::Millisecond, near, far), i64::MAX);
}

#[test]
fn date_part_names_as_stream_analytics_spells_them() {
    let names = [
        ("year", DatePart::Year),
        ("YYYY", DatePart::Year),
        ("yy", DatePart::Year),
        ("quarter", DatePart::Quarter),
        ("qq", DatePart::Quarter),
        ("q", DatePart::Quarter),
        ("month", DatePart::Month),
        ("mm", DatePart::Month),
        ("m", DatePart::Month),
        ("dayofyear", DatePart::DayOfYear),
        ("dy", DatePart::DayOfYear),
        ("y", DatePart::DayOfYear),
        ("day", DatePart::Day),
        ("dd", DatePart::Day),
        ("d", DatePart::Day),
        ("week", DatePart::Week),
        ("wk", DatePart::Week),
        ("ww", DatePart::Week),
        ("weekday", DatePart::Weekday),
        ("dw", DatePart::Weekday),
        ("w", DatePart::Weekday),
        ("Hour", DatePart::Hour),
        ("hh", DatePart::Hour),
        ("minute", DatePart::Minute),
        ("mi", DatePart::Minute),
        ("n", DatePart::Minute),
        ("second", DatePart::Second),
        ("ss", DatePart::Second),
        ("s", DatePart::Second),
        ("millisecond", DatePart::Millisecond),
        ("ms", DatePart::Millisecond),
        ("microsecond", DatePart::Microsecond),
        ("MCS", DatePart::Microsecond),
    ];
    for (name, part) in names {
        assert_eq!(name.parse::<DatePart>(), Ok(part), "{name}");
    }
    assert_eq!(
        "fortnight".parse::<DatePart>(),
        Err(TimeError::UnknownDatePart("fortnight".to_owned()))
    );
}

#[test]
fn leap_years_and_month_lengths_match_chrono() {
    for year in 1600..2500 {
        let leap = NaiveDate::from_ymd_opt(year, 2, 29).is_some();
        assert_eq!(is_leap_year(year), leap, "{year}");
        for month in 1..=12 {
            let days = (28..=31)
                .filter(|&day| NaiveDate::from_ymd_opt(year, month, day).is_some())
                .max();
            assert_eq!(Some(days_in_month(year, month)), days, "{year}-{month}");
        }
    }
    assert_eq!(days_in_month(2026, 13), 0);
    assert_eq!(Date::new(2026, 2, 29), None);
    assert!(Date::new(2000, 2, 29).is_some());
}

#[test]
fn far_instants_do_not_panic() {
    for millis in [i64::MIN, i64::MIN + 1, i64::MAX, i64::MAX - 1] {
        let t = Timestamp::from_epoch_millis(millis);
        for part in ALL_PARTS {
            let _ = dateadd(part, 1, t);
            let _ = dateadd(part, -1, t);
            let _ = datepart(part, t);
            let _ = datename(part, t);
            let _ = datediff(part, t, Timestamp::EPOCH);
            let _ = t.truncate_to(part);
        }
        let _ = t.to_string();
        let _ = t.truncate(Duration::MAX);
        let _ = t.truncate(Duration::from_secs(86_400));
    }
}

/// DATEADD with chrono: months through `checked_add_months` (which also clamps to the month's
/// last day), everything else as a duration.
fn chrono_dateadd(part: DatePart, number: i64, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
    let months = |n: i64| {
        let count = Months::new(u32::try_from(n.unsigned_abs()).ok()?);
        if n < 0 {
            t.checked_sub_months(count)
        } else {
            t.checked_add_months(count)
        }
    };
    match part {
        DatePart::Year => months(number * 12),
        DatePart::Quarter => months(number * 3),
        DatePart::Month => months(number),
        DatePart::Week => t.checked_add_signed(TimeDelta::weeks(number)),
        DatePart::DayOfYear | DatePart::Day | DatePart::Weekday => {
            t.checked_add_signed(TimeDelta::days(number))
        }
        DatePart::Hour => t.checked_add_signed(TimeDelta::hours(number)),
        DatePart::Minute => t.checked_add_signed(TimeDelta::minutes(number)),
        DatePart::Second => t.checked_add_signed(TimeDelta::seconds(number)),
        DatePart::Millisecond => t.checked_add_signed(TimeDelta::milliseconds(number)),
        DatePart::Microsecond => t.checked_add_signed(TimeDelta::milliseconds(number / 1000)),
    }
}

#[test]
fn dateadd_matches_chrono() {
    let mut numbers = Numbers(7);
    for (i, millis) in instants().into_iter().step_by(3).enumerate() {
        let part = ALL_PARTS[i % ALL_PARTS.len()];
        let number = match i % 3 {
            0 => numbers.between(-3, 4),
            1 => numbers.between(-200, 200),
            _ => numbers.between(-100_000, 100_000),
        };
        let number = if matches!(part, DatePart::Year | DatePart::Quarter) {
            number % 500
        } else {
            number
        };
        let t = Timestamp::from_epoch_millis(millis);
        let c = chrono_of(millis);
        assert_eq!(
            dateadd(part, number, t).map(Timestamp::epoch_millis),
            chrono_dateadd(part, number, c).map(|c| c.timestamp_millis()),
            "DATEADD({part:?}, {number}, {c})"
        );
    }
}

#[test]
fn dateadd_keeps_the_last_day_of_a_shorter_month() {
    let t = |text: &str| Timestamp::parse(text).expect("valid");
    let add = |part, number, text| dateadd(part, number, t(text)).map(|t| t.to_string());
    let cases = [
        (
            DatePart::Month,
            1,
            "2026-01-31T10:00:00Z",
            "2026-02-28T10:00:00Z",
        ),
        (
            DatePart::Month,
            1,
            "2024-01-31T10:00:00Z",
            "2024-02-29T10:00:00Z",
        ),
        (
            DatePart::Year,
            1,
            "2000-02-29T00:00:00Z",
            "2001-02-28T00:00:00Z",
        ),
        (
            DatePart::Year,
            -100,
            "2000-02-29T00:00:00Z",
            "1900-02-28T00:00:00Z",
        ),
        (
            DatePart::Quarter,
            -1,
            "2026-05-31T00:00:00Z",
            "2026-02-28T00:00:00Z",
        ),
        (
            DatePart::Week,
            1,
            "2026-11-22T18:30:00Z",
            "2026-11-29T18:30:00Z",
        ),
        (
            DatePart::Hour,
            2,
            "2026-11-22T23:30:00Z",
            "2026-11-23T01:30:00Z",
        ),
        (
            DatePart::Microsecond,
            2500,
            "2026-11-22T23:30:00Z",
            "2026-11-22T23:30:00.002Z",
        ),
    ];
    for (part, number, start, expected) in cases {
        assert_eq!(
            add(part, number, start).as_deref(),
            Some(expected),
            "{part:?} {number} {start}"
        );
    }
    let last = Timestamp::from_epoch_millis(i64::MAX);
    assert_eq!(dateadd(DatePart::Millisecond, 1, last), None);
    assert_eq!(dateadd(DatePart::Year, 1, last), None);
    assert_eq!(dateadd(DatePart::Year, i64::MAX, Timestamp::EPOCH), None);
    assert_eq!(dateadd(DatePart::Day, i64::MIN, Timestamp::EPOCH), None);
}
