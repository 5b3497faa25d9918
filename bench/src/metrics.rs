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

/// Parses the Prometheus text format, summing samples of one name.
pub fn parse(text: &str) -> Sample {
    let mut out = Sample::new();
    for line in text.lines().filter(|l| !l.starts_with('#') && !l.trim().is_empty()) {
        let Some((name_labels, value)) = line.rsplit_once(' ') else { continue };
        let name = name_labels.split('{').next().unwrap_or(name_labels);
        if let Ok(v) = value.parse::<f64>() {
            *out.entry(name.to_string()).or_default() += v;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn parse_sums_labelled_samples() {
        let s = super::parse("# HELP x y\n# TYPE x counter\nx{shard=\"0\"} 2\nx{shard=\"1\"} 3\ny 1.5\n");
        assert_eq!(s["x"], 5.0);
        assert_eq!(s["y"], 1.5);
    }
}
