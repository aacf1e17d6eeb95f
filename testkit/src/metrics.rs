//! Reading values out of the Prometheus/OpenMetrics text that Ferry's `/metrics` serves.
//!
//! Deliberately tiny: enough for `name{label="value",...} number` samples whose label values hold
//! no quotes or commas (Ferry labels by policy, registry, kind and outcome — never free text).

/// The text a `/metrics` page at `url` serves; `None` when it cannot be read (the process is
/// down or restarting: a sampler skips that sample).
pub async fn scrape(http: &reqwest::Client, url: &str) -> Option<String> {
    http.get(url).send().await.ok()?.text().await.ok()
}

/// Sum of every sample of `name` whose labels include all of `labels`; `None` when none matches.
/// `name` is the full sample name, e.g. `ferry_blobs_total`.
pub fn sum(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let samples: Vec<f64> = text
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let (sample, label_text) = match series.split_once('{') {
                Some((n, rest)) => (n, rest.strip_suffix('}')?),
                None => (series, ""),
            };
            if sample != name {
                return None;
            }
            let present: Vec<(&str, &str)> = label_text
                .split(',')
                .filter_map(|kv| {
                    let (k, v) = kv.split_once('=')?;
                    Some((k.trim(), v.trim().trim_matches('"')))
                })
                .collect();
            labels
                .iter()
                .all(|want| present.contains(want))
                .then(|| value.trim().parse::<f64>().ok())
                .flatten()
        })
        .collect();
    (!samples.is_empty()).then(|| samples.iter().sum())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_matching_samples_and_tells_an_absent_series_from_zero() {
        let text = "# HELP ferry_blobs Blobs handled\n\
                    # TYPE ferry_blobs counter\n\
                    ferry_blobs_total{policy=\"a-to-b\",outcome=\"copied\"} 4\n\
                    ferry_blobs_total{policy=\"a-to-b\",outcome=\"skipped\"} 2\n\
                    ferry_blobs_total{policy=\"other\",outcome=\"copied\"} 7\n\
                    ferry_queue_depth 3\n\
                    # EOF\n";
        assert_eq!(
            sum(
                text,
                "ferry_blobs_total",
                &[("policy", "a-to-b"), ("outcome", "copied")]
            ),
            Some(4.0)
        );
        assert_eq!(
            sum(text, "ferry_blobs_total", &[("outcome", "copied")]),
            Some(11.0)
        );
        assert_eq!(sum(text, "ferry_blobs_total", &[]), Some(13.0));
        assert_eq!(sum(text, "ferry_queue_depth", &[]), Some(3.0));
        // A missing series is absent, not zero: a renamed metric must not read as 0.
        assert_eq!(sum(text, "ferry_blobs", &[]), None);
        assert_eq!(
            sum(text, "ferry_blobs_total", &[("outcome", "mounted")]),
            None
        );
    }
}
