//! The start filter of an Event Hubs receiver: an SQL-like selector such as
//! `amqp.annotation.x-opt-offset > '-1'` or `amqp.annotation.x-opt-sequence-number >= '42'`.

/// Which event property the filter compares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SelectorField {
    /// `x-opt-offset`; the values `-1` (before the first event) and `@latest` are special.
    Offset,
    /// `x-opt-sequence-number`.
    SequenceNumber,
    /// `x-opt-enqueued-time`, milliseconds since the Unix epoch.
    EnqueuedTime,
}

/// Where a receiver starts, as its selector filter says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartFilter {
    /// Before the first event the partition still holds (`offset > '-1'`).
    Earliest,
    /// After the last event enqueued when the link attached (`offset > '@latest'`).
    Latest,
    /// After (or at, when `inclusive`) the given value of `field`.
    From {
        /// The compared property.
        field: SelectorField,
        /// The value it is compared with.
        value: i64,
        /// `>=` rather than `>`.
        inclusive: bool,
    },
}

/// Parses a selector of the form `amqp.annotation.<name> <op> '<value>'`.
pub(crate) fn parse(selector: &str) -> Result<StartFilter, String> {
    let text = selector.trim();
    let (name, rest) = text
        .split_once(char::is_whitespace)
        .ok_or_else(|| format!("selector `{selector}` has no comparison"))?;
    let rest = rest.trim_start();
    let (inclusive, rest) = if let Some(rest) = rest.strip_prefix(">=") {
        (true, rest)
    } else if let Some(rest) = rest.strip_prefix('>') {
        (false, rest)
    } else if let Some(rest) = rest.strip_prefix('=') {
        (true, rest)
    } else {
        return Err(format!(
            "selector `{selector}`: expected `>`, `>=` or `=` after `{name}`"
        ));
    };
    let value = rest
        .trim()
        .strip_prefix('\'')
        .and_then(|v| v.strip_suffix('\''))
        .ok_or_else(|| format!("selector `{selector}`: the value must be in single quotes"))?;
    let field = match name
        .strip_prefix("amqp.annotation.")
        .unwrap_or(name)
        .to_ascii_lowercase()
        .as_str()
    {
        "x-opt-offset" => SelectorField::Offset,
        "x-opt-sequence-number" => SelectorField::SequenceNumber,
        "x-opt-enqueued-time" => SelectorField::EnqueuedTime,
        other => return Err(format!("selector `{selector}`: unknown property `{other}`")),
    };
    if field == SelectorField::Offset {
        match value {
            "-1" if !inclusive => return Ok(StartFilter::Earliest),
            "@latest" => return Ok(StartFilter::Latest),
            _ => {}
        }
    }
    let value = value
        .parse::<i64>()
        .map_err(|_| format!("selector `{selector}`: `{value}` is not a number"))?;
    Ok(StartFilter::From {
        field,
        value,
        inclusive,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_clients_selectors_parse() {
        assert_eq!(
            parse("amqp.annotation.x-opt-offset > '-1'"),
            Ok(StartFilter::Earliest)
        );
        assert_eq!(
            parse("amqp.annotation.x-opt-offset > '@latest'"),
            Ok(StartFilter::Latest)
        );
        assert_eq!(
            parse("amqp.annotation.x-opt-sequence-number >='17'"),
            Ok(StartFilter::From {
                field: SelectorField::SequenceNumber,
                value: 17,
                inclusive: true
            })
        );
        assert_eq!(
            parse("amqp.annotation.x-opt-offset > '4096'"),
            Ok(StartFilter::From {
                field: SelectorField::Offset,
                value: 4096,
                inclusive: false
            })
        );
        assert_eq!(
            parse("amqp.annotation.x-opt-enqueued-time > '1793491200000'"),
            Ok(StartFilter::From {
                field: SelectorField::EnqueuedTime,
                value: 1_793_491_200_000,
                inclusive: false
            })
        );
    }

    #[test]
    fn malformed_selectors_are_refused_with_a_reason() {
        for (bad, why) in [
            ("amqp.annotation.x-opt-offset", "no comparison"),
            ("amqp.annotation.x-opt-offset < '3'", "expected `>`"),
            ("amqp.annotation.x-opt-offset > 3", "single quotes"),
            ("amqp.annotation.x-opt-owner > '3'", "unknown property"),
            (
                "amqp.annotation.x-opt-sequence-number > 'x'",
                "not a number",
            ),
        ] {
            let err = parse(bad).expect_err(bad);
            assert!(err.contains(why), "{bad}: {err}");
        }
    }
}
