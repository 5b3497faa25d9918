//! Reads Sluice's own counters from its Prometheus `/metrics` endpoints (plain HTTP GET over a
//! TCP stream: twenty lines, no HTTP client crate needed), summing a metric over its labels.

use anyhow::{anyhow, Context, Result};
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::time::Duration;

/// Metric name to value (summed over label sets, e.g. shards).
pub type Sample = BTreeMap<String, f64>;

/// Scrapes every URL and merges the samples.
pub fn scrape_all(urls: &[String]) -> Result<Sample> {
    let mut out = Sample::new();
    for url in urls {
        for (k, v) in scrape(url)? {
            *out.entry(k).or_default() += v;
        }
    }
    Ok(out)
}

/// Differences of every metric between two samples.
pub fn delta(before: &Sample, after: &Sample) -> Sample {
    after.iter().map(|(k, v)| (k.clone(), v - before.get(k).copied().unwrap_or(0.0))).collect()
}

fn scrape(url: &str) -> Result<Sample> {
    let rest = url.strip_prefix("http://").ok_or_else(|| anyhow!("metrics URL must start with http://: {url}"))?;
    let (host, path) = rest.split_once('/').map(|(h, p)| (h, format!("/{p}"))).unwrap_or((rest, "/metrics".into()));
    let mut sock = std::net::TcpStream::connect(host).with_context(|| format!("connecting to {url}"))?;
    sock.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(sock, "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n")?;
    let mut body = String::new();
    sock.read_to_string(&mut body).with_context(|| format!("reading {url}"))?;
    let (head, text) = body.split_once("\r\n\r\n").ok_or_else(|| anyhow!("bad HTTP response from {url}"))?;
    if !head.starts_with("HTTP/1.1 200") {
        return Err(anyhow!("{url}: {}", head.lines().next().unwrap_or("")));
    }
    Ok(parse(text))
}

/// Parses the Prometheus text format, summing samples of one name. A histogram bucket keeps its
/// bound: `name_bucket{le="0.004"}`.
pub fn parse(text: &str) -> Sample {
    let mut out = Sample::new();
    for line in text.lines().filter(|l| !l.starts_with('#') && !l.trim().is_empty()) {
        let Some((name_labels, value)) = line.rsplit_once(' ') else { continue };
        let (name, labels) = name_labels.split_once('{').unwrap_or((name_labels, ""));
        let key = match labels.split(',').find_map(|l| l.trim_end_matches('}').strip_prefix("le=")) {
            Some(le) if name.ends_with("_bucket") => format!("{name}{{le={le}}}"),
            _ => name.to_string(),
        };
        if let Ok(v) = value.parse::<f64>() {
            *out.entry(key).or_default() += v;
        }
    }
    out
}

/// The upper bound (in ms) of the bucket holding quantile `q` of histogram `name` (in seconds),
/// or `None` when it has no samples. Bucket bounds are coarse, so this reads as "at most".
pub fn bucket_quantile_ms(sample: &Sample, name: &str, q: f64) -> Option<f64> {
    let prefix = format!("{name}_bucket{{le=\"");
    let mut buckets: Vec<(f64, f64)> = sample
        .iter()
        .filter_map(|(k, v)| {
            let le = k.strip_prefix(&prefix)?.strip_suffix("\"}")?;
            let bound = if le == "+Inf" { f64::INFINITY } else { le.parse().ok()? };
            Some((bound, *v))
        })
        .collect();
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    let total = buckets.last()?.1;
    if total <= 0.0 {
        return None;
    }
    buckets.iter().find(|(_, cumulative)| *cumulative >= q * total).map(|(bound, _)| (bound * 1e6).round() / 1e3)
}

#[cfg(test)]
mod tests {
    #[test]
    fn parse_sums_labelled_samples() {
        let s = super::parse("# HELP x y\n# TYPE x counter\nx{shard=\"0\"} 2\nx{shard=\"1\"} 3\ny 1.5\n");
        assert_eq!(s["x"], 5.0);
        assert_eq!(s["y"], 1.5);
    }

    #[test]
    fn bucket_quantiles_read_the_cumulative_counts() {
        let text = "h_bucket{le=\"0.001\"} 90\nh_bucket{le=\"0.004\"} 99\nh_bucket{le=\"0.032\"} 100\n\
                    h_bucket{le=\"+Inf\"} 100\nh_sum 0.2\nh_count 100\n";
        let s = super::parse(text);
        assert_eq!(s["h_count"], 100.0);
        assert_eq!(super::bucket_quantile_ms(&s, "h", 0.5), Some(1.0));
        assert_eq!(super::bucket_quantile_ms(&s, "h", 0.99), Some(4.0));
        assert_eq!(super::bucket_quantile_ms(&s, "h", 0.999), Some(32.0));
        assert_eq!(super::bucket_quantile_ms(&s, "missing", 0.99), None);
        // A delta with no samples in the window.
        let empty = super::parse("h_bucket{le=\"0.001\"} 0\nh_bucket{le=\"+Inf\"} 0\n");
        assert_eq!(super::bucket_quantile_ms(&empty, "h", 0.99), None);
    }
}
