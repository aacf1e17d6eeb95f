//! A syntax check of cron expressions (5 fields, or 6 with seconds first).
/// One cron field: name, range, and the names it accepts (value = first + index).
struct CronField {
    name: &'static str,
    min: u32,
    max: u32,
    names: &'static [&'static str],
    question_mark: bool,
}

const SECOND: CronField = CronField {
    name: "second",
    min: 0,
    max: 59,
    names: &[],
    question_mark: false,
};
const MINUTE: CronField = CronField {
    name: "minute",
    min: 0,
    max: 59,
    names: &[],
    question_mark: false,
};
const HOUR: CronField = CronField {
    name: "hour",
    min: 0,
    max: 23,
    names: &[],
    question_mark: false,
};
const DAY_OF_MONTH: CronField = CronField {
    name: "day-of-month",
    min: 1,
    max: 31,
    names: &[],
    question_mark: true,
};
const MONTH: CronField = CronField {
    name: "month",
    min: 1,
    max: 12,
    names: &[
        "JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC",
    ],
    question_mark: false,
};
const DAY_OF_WEEK: CronField = CronField {
    name: "day-of-week",
    min: 0,
    max: 7,
    names: &["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"],
    question_mark: true,
};

/// Basic syntax check of a 5-field or 6-field (seconds first, Harbor's form) cron expression.
pub(super) fn check_cron(expression: &str) -> Result<(), String> {
    let fields: Vec<&str> = expression.split_whitespace().collect();
    let layout: &[CronField] = match fields.len() {
        5 => &[MINUTE, HOUR, DAY_OF_MONTH, MONTH, DAY_OF_WEEK],
        6 => &[SECOND, MINUTE, HOUR, DAY_OF_MONTH, MONTH, DAY_OF_WEEK],
        n => return Err(format!("{n} fields; expected 5, or 6 with seconds first")),
    };
    for (text, field) in fields.iter().zip(layout) {
        check_cron_field(text, field).map_err(|m| format!("{} field {text:?}: {m}", field.name))?;
    }
    Ok(())
}

fn check_cron_field(text: &str, field: &CronField) -> Result<(), String> {
    let value = |s: &str| -> Result<u32, String> {
        let n = match s.parse::<u32>() {
            Ok(n) => n,
            Err(_) => field
                .names
                .iter()
                .position(|name| name.eq_ignore_ascii_case(s))
                .and_then(|i| u32::try_from(i).ok())
                .map(|i| i + field.min)
                .ok_or_else(|| format!("{s:?} is not a number or a known name"))?,
        };
        if n < field.min || n > field.max {
            return Err(format!("{n} is outside {}-{}", field.min, field.max));
        }
        Ok(n)
    };
    for item in text.split(',') {
        let (range, step) = match item.split_once('/') {
            Some((range, step)) => (range, Some(step)),
            None => (item, None),
        };
        if let Some(step) = step {
            match step.parse::<u32>() {
                Ok(s) if s >= 1 => {}
                _ => return Err(format!("step {step:?} is not a positive number")),
            }
        }
        match range {
            "" => return Err("empty list item".to_string()),
            "*" => {}
            "?" if field.question_mark && step.is_none() => {}
            _ => match range.split_once('-') {
                Some((low, high)) => {
                    let (low, high) = (value(low)?, value(high)?);
                    if low > high {
                        return Err(format!("range {range:?} is backwards"));
                    }
                }
                None => {
                    value(range)?;
                }
            },
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::check_cron;

    #[test]
    fn cron_syntax() {
        for ok in [
            "* * * * *",
            "0 0 */6 * * *",
            "0 30 2 * * ?",
            "15,45 8-18/2 1-15 JAN-jun mon-FRI",
            "0 0 0 1 1 0",
            "59 23 31 12 7",
            "5/15 * * * *",
        ] {
            assert!(check_cron(ok).is_ok(), "{ok}: {:?}", check_cron(ok));
        }
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
            assert!(check_cron(bad).is_err(), "{bad} should be rejected");
        }
    }
}
