//! Scraping the admin endpoint's /metrics and reading samples, parsed with prometheus-parse.

use std::time::Duration;

/// GET /metrics from `admin`, parsed (the test fails on a bad exposition).
pub async fn scrape(admin: &str) -> prometheus_parse::Scrape {
    let response = rds_iam_sidecar::ops::admin_client::request(
        admin,
        "GET",
        "/metrics",
        Duration::from_secs(5),
    )
    .await
    .expect("GET /metrics");
    assert_eq!(response.status, 200, "{}", response.body);
    prometheus_parse::Scrape::parse(response.body.lines().map(|l| Ok(l.to_owned())))
        .expect("valid Prometheus exposition")
}

/// The value of the sample `name` whose labels include `labels`.
pub fn value(
    scrape: &prometheus_parse::Scrape,
    name: &str,
    labels: &[(&str, &str)],
) -> Option<f64> {
    scrape
        .samples
        .iter()
        .find(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(v)))
        .and_then(|s| match s.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => Some(v),
            _ => None,
        })
}
