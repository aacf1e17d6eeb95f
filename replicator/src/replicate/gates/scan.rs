//! Harbor's vulnerability scan of an artifact, judged against a policy's `max_severity`.
//!
//! Harbor's artifact API (`…/artifacts/<ref>?with_scan_overview=true`) answers `scan_overview`:
//! an object keyed by report MIME type (`application/vnd.security.vulnerability.report;
//! version=1.1`, `application/vnd.scanner.adapter.vuln.report.harbor+json; version=1.0`), each a
//! `NativeReportSummary` (Harbor's swagger): `scan_status` (`Pending`, `Running`, `Scheduled`,
//! `Success`, `Error`, `Stopped`), `severity` (`None`, `Unknown`, `Negligible`, `Low`, `Medium`,
//! `High`, `Critical`), `summary` (`{"total", "fixable", "summary": {"High": 2, …}}`),
//! `report_id`, `start_time`, `end_time`, `scanner`, `complete_percent`. The same summaries come in
//! a `SCANNING_COMPLETED` webhook.
//!
//! Invariants: pure; fails closed — a severity Harbor's levels do not know, or an overview that is
//! not the documented shape, holds the image back like a severity above the limit; an image is
//! "scanned" only when every report it has says `Success`.
use std::str::FromStr;

use serde_json::Value;

/// Harbor's severity levels, in Harbor's order (`pkg/scan/vuln` severity codes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    None,
    Unknown,
    Negligible,
    Low,
    Medium,
    High,
    Critical,
}

/// The levels as `max_severity` accepts them (any case), for messages.
pub const SEVERITY_LEVELS: &str = "none, unknown, negligible, low, medium, high, critical";

impl FromStr for Severity {
    type Err = String;
    fn from_str(s: &str) -> Result<Severity, String> {
        Ok(match s.to_ascii_lowercase().as_str() {
            "none" => Severity::None,
            "unknown" => Severity::Unknown,
            "negligible" => Severity::Negligible,
            "low" => Severity::Low,
            "medium" => Severity::Medium,
            "high" => Severity::High,
            "critical" => Severity::Critical,
            _ => {
                return Err(format!(
                    "unknown severity {s:?}; one of {SEVERITY_LEVELS} (Harbor's levels, any case)"
                ))
            }
        })
    }
}

impl std::fmt::Display for Severity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Severity::None => "none",
            Severity::Unknown => "unknown",
            Severity::Negligible => "negligible",
            Severity::Low => "low",
            Severity::Medium => "medium",
            Severity::High => "high",
            Severity::Critical => "critical",
        })
    }
}

/// Why an image with this `scan_overview` is held back under `max`, or `None` when it may be
/// copied. `allow_unscanned` lets through images without a finished, successful scan.
pub fn judge(
    scan_overview: Option<&Value>,
    max: Severity,
    allow_unscanned: bool,
) -> Option<String> {
    let unscanned = |why: String| {
        (!allow_unscanned)
            .then(|| format!("{why} (set allow_unscanned to copy images without a finished scan)"))
    };
    let reports = match scan_overview {
        None => return unscanned("Harbor has not scanned it".into()),
        Some(Value::Object(m)) if m.is_empty() => {
            return unscanned("Harbor has not scanned it".into())
        }
        Some(Value::Object(m)) => m,
        Some(_) => return Some("Harbor's scan_overview is not an object".into()),
    };
    let mut worst: Option<(Severity, &str)> = None;
    for (mime, report) in reports {
        let Some(report) = report.as_object() else {
            return Some(format!("Harbor's scan report {mime:?} is not an object"));
        };
        let status = report
            .get("scan_status")
            .and_then(Value::as_str)
            .unwrap_or("");
        if status != "Success" {
            let why = match status {
                "Pending" | "Running" | "Scheduled" => {
                    format!("Harbor's scan has not finished (scan_status {status})")
                }
                "" => "Harbor's scan report has no scan_status".to_string(),
                other => format!("Harbor's scan did not succeed (scan_status {other})"),
            };
            return unscanned(why);
        }
        let severity = report.get("severity").and_then(Value::as_str).unwrap_or("");
        let Ok(level) = severity.parse::<Severity>() else {
            return Some(format!(
                "Harbor's scan reports severity {severity:?}, which is not one of Harbor's levels"
            ));
        };
        if worst.is_none_or(|(w, _)| level > w) {
            worst = Some((level, mime));
        }
    }
    let (level, mime) = worst?;
    if level <= max {
        return None;
    }
    let counts = reports
        .get(mime)
        .and_then(|r| r.get("summary"))
        .and_then(|s| s.get("summary"))
        .and_then(Value::as_object)
        .map(|m| {
            let mut c: Vec<String> = m
                .iter()
                .filter_map(|(k, v)| Some(format!("{k}: {}", v.as_u64()?)))
                .collect();
            c.sort();
            c.join(", ")
        })
        .filter(|c| !c.is_empty());
    Some(format!(
        "Harbor's scan reports severity {level}, above max_severity {max}{}",
        counts.map(|c| format!(" ({c})")).unwrap_or_default()
    ))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    const REPORT: &str = "application/vnd.security.vulnerability.report; version=1.1";

    fn overview(status: &str, severity: &str) -> Value {
        json!({REPORT: {
            "report_id": "af0546c1", "scan_status": status, "severity": severity, "duration": 8,
            "summary": {"total": 3, "fixable": 1, "summary": {"High": 2, "Low": 1}},
            "complete_percent": 100
        }})
    }

    #[test]
    fn severities_parse_in_any_case_and_order_as_harbor() {
        assert_eq!("HIGH".parse::<Severity>(), Ok(Severity::High));
        assert_eq!("Critical".parse::<Severity>(), Ok(Severity::Critical));
        assert!(Severity::None < Severity::Unknown);
        assert!(Severity::Negligible < Severity::Low);
        assert!(Severity::High < Severity::Critical);
        let e = "severe".parse::<Severity>().unwrap_err();
        assert!(
            e.contains("none, unknown, negligible, low, medium, high, critical"),
            "{e}"
        );
    }

    #[test]
    fn a_severity_above_the_limit_is_held_back_with_the_counts() {
        let why = judge(Some(&overview("Success", "High")), Severity::Medium, false).unwrap();
        assert_eq!(
            why,
            "Harbor's scan reports severity high, above max_severity medium (High: 2, Low: 1)"
        );
    }

    #[test]
    fn a_severity_at_or_below_the_limit_passes() {
        assert_eq!(
            judge(Some(&overview("Success", "High")), Severity::High, false),
            None
        );
        assert_eq!(
            judge(Some(&overview("Success", "None")), Severity::None, false),
            None
        );
        assert_eq!(
            judge(Some(&overview("Success", "Low")), Severity::High, false),
            None
        );
    }

    #[test]
    fn unscanned_and_unfinished_scans_are_held_back_unless_allowed() {
        for (o, expected) in [
            (None, "has not scanned"),
            (Some(json!({})), "has not scanned"),
            (
                Some(overview("Running", "")),
                "has not finished (scan_status Running)",
            ),
            (
                Some(overview("Error", "")),
                "did not succeed (scan_status Error)",
            ),
        ] {
            let why = judge(o.as_ref(), Severity::Critical, false).unwrap();
            assert!(why.contains(expected), "{why}");
            assert!(why.contains("allow_unscanned"), "{why}");
            assert_eq!(judge(o.as_ref(), Severity::Critical, true), None);
        }
    }

    #[test]
    fn the_worst_report_decides() {
        let o = json!({
            REPORT: {"scan_status": "Success", "severity": "Low"},
            "application/vnd.scanner.adapter.vuln.report.harbor+json; version=1.0":
                {"scan_status": "Success", "severity": "Critical"}
        });
        let why = judge(Some(&o), Severity::High, false).unwrap();
        assert!(why.contains("severity critical"), "{why}");
    }

    #[test]
    fn hostile_overviews_fail_closed_even_when_unscanned_images_are_allowed() {
        for o in [
            json!([1, 2]),
            json!({REPORT: "x"}),
            json!({REPORT: {"scan_status": "Success", "severity": "Apocalyptic"}}),
            json!({REPORT: {"scan_status": "Success"}}),
        ] {
            assert!(judge(Some(&o), Severity::Critical, true).is_some(), "{o}");
        }
    }

    #[test]
    fn the_documented_scanning_completed_overview_passes_a_none_limit() {
        let body: Value = serde_json::from_str(include_str!(
            "../../../tests/fixtures/harbor/default-scan-completed.json"
        ))
        .unwrap();
        let o = &body["event_data"]["resources"][0]["scan_overview"];
        assert_eq!(judge(Some(o), Severity::None, false), None);
    }
}
