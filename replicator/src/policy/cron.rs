//! The one cron grammar: what `trigger_settings.cron` accepts, for validation and the scheduler.
//!
//! Harbor's 6-field form with seconds first (`0 0 */6 * * *`) or the classic 5-field form
//! (minute hour day-of-month month day-of-week), evaluated in UTC; names like `MON` or `JAN`, `?`
//! in the day fields, and a start with a step (`5/15`, as Harbor's Go parser reads it). No year
//! field and no `@daily`-style nicknames (Harbor has neither).
//!
//! Invariant: [`crate::config::Config::validate`] and [`crate::control::schedule`] both call [`parse`], so
//! an expression that validates is one the scheduler runs, and the other way round.
use croner::parser::{CronParser, Seconds, Year};
use croner::Cron;

/// Parses a cron expression, or says what is wrong with it (in words meant for a config problem).
pub fn parse(expression: &str) -> Result<Cron, String> {
    let fields = expression.split_whitespace().count();
    if !matches!(fields, 5 | 6) {
        return Err(format!(
            "{fields} fields; expected 5, or 6 with seconds first"
        ));
    }
    // croner skips empty list items (`1,,2`); a typo is more likely than an intent.
    if let Some(field) = expression
        .split_whitespace()
        .find(|f| f.split(',').any(str::is_empty))
    {
        return Err(format!("field {field:?} has an empty list item"));
    }
    if expression.contains('@') {
        return Err("nicknames like `@daily` are not supported".to_string());
    }
    CronParser::builder()
        .seconds(Seconds::Optional)
        .year(Year::Disallowed)
        .sloppy_ranges(true)
        .build()
        .parse(expression)
        .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::parse;

    #[test]
    fn accepts_harbor_six_field_and_classic_five_field_forms() {
        for ok in [
            "* * * * *",
            "0 0 */6 * * *",
            "0 30 2 * * ?",
            "15,45 8-18/2 1-15 JAN-jun mon-FRI",
            "0 0 0 1 1 0",
            "59 23 31 12 7",
            "5/15 * * * *",
        ] {
            assert!(parse(ok).is_ok(), "{ok}: {:?}", parse(ok).err());
        }
    }

    #[test]
    fn refuses_bad_fields_counts_ranges_and_nicknames() {
        for bad in [
            "",
            "* * * *",
            "* * * * * * *",
            "60 * * * *",
            "* 24 * * *",
            "* * 0 * *",
            "* * * 13 *",
            "* * * * 8",
            "*/0 * * * *",
            "5-1 * * * *",
            "1,,2 * * * *",
            "? * * * *",
            "* * * FOO *",
            "@daily",
            "a b c d e",
        ] {
            assert!(parse(bad).is_err(), "{bad:?} should be refused");
        }
    }

    #[test]
    fn a_wrong_field_count_says_how_many_fields_are_expected() {
        assert_eq!(
            parse("* * *").unwrap_err(),
            "3 fields; expected 5, or 6 with seconds first"
        );
    }
}
