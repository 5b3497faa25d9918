//! The report: a summary table, the histograms as `.hgrm` files (HdrHistogram's percentile
//! distribution format, values in milliseconds), a latency-by-percentile plot (SVG), and the
//! summary as JSON lines for BENCHMARKS.md.

use crate::metrics::Sample;
use crate::workload::RunResult;
use crate::Workload;
use anyhow::{Context, Result};
use hdrhistogram::Histogram;
use plotters::prelude::*;
use std::fmt::Write as _;
use std::path::Path;

/// The numbers of one run.
pub struct Summary {
    pub label: String,
    pub workload: String,
    pub records_per_sec: f64,
    pub mb_per_sec: f64,
    pub consumed_per_sec: f64,
    pub produce: Option<[f64; 5]>,
    pub e2e: Option<[f64; 5]>,
    pub acked: u64,
    pub failed: u64,
    pub consumed: u64,
    pub missing: u64,
    pub puts_per_gb: Option<f64>,
    pub txns_per_gb: Option<f64>,
    /// Sluice's WAL stages in the run, p99 and p99.9 as bucket bounds (ms): the object's durable
    /// write and its commit. They tell a disk stall from a slow broker.
    pub put_ms: Option<[f64; 2]>,
    pub commit_ms: Option<[f64; 2]>,
}

const QUANTILES: [f64; 4] = [0.5, 0.9, 0.99, 0.999];

fn percentiles(h: &Histogram<u64>) -> Option<[f64; 5]> {
    if h.is_empty() {
        return None;
    }
    let ms = |v: u64| v as f64 / 1000.0;
    Some([
        ms(h.value_at_quantile(QUANTILES[0])),
        ms(h.value_at_quantile(QUANTILES[1])),
        ms(h.value_at_quantile(QUANTILES[2])),
        ms(h.value_at_quantile(QUANTILES[3])),
        ms(h.max()),
    ])
}

/// A WAL stage's p99 and p99.9 (bucket bounds, ms) in the run, when Sluice's metrics were read.
fn stage(metrics: &Sample, name: &str) -> Option<[f64; 2]> {
    Some([crate::metrics::bucket_quantile_ms(metrics, name, 0.99)?, crate::metrics::bucket_quantile_ms(metrics, name, 0.999)?])
}

impl Summary {
    pub fn new(w: &Workload, r: &RunResult, metrics: Sample) -> Self {
        let workload = if w.fetch_only {
            format!("fetch-only backlog={} size={}B partitions={} consumers={}", w.backlog, w.record_size, w.partitions, w.consumers)
        } else {
            format!(
                "size={}B rate={} producers={} acks={} linger={}ms batch={} compression={} partitions={} consumers={} duration={}s",
                w.record_size,
                if w.rate == 0 { "max".to_string() } else { format!("{}/s", w.rate) },
                w.producers,
                w.acks,
                w.linger_ms,
                w.batch_size,
                w.compression,
                w.partitions,
                w.consumers,
                w.duration.as_secs_f64()
            )
        };
        let secs = r.measured_secs.max(1e-9);
        let gb = metrics.get("sluice_produce_bytes_total").copied().unwrap_or(0.0) / 1e9;
        let per_gb = |name: &str| metrics.get(name).filter(|_| gb > 0.0).map(|v| v / gb);
        Summary {
            label: w.label.clone(),
            workload,
            records_per_sec: if w.fetch_only { r.consumed_measured_records as f64 / secs } else { r.measured_records as f64 / secs },
            mb_per_sec: r.measured_bytes as f64 / secs / 1e6,
            consumed_per_sec: r.consumed_measured_records as f64 / r.consume_secs.max(1e-9),
            produce: percentiles(&r.produce),
            e2e: percentiles(&r.e2e),
            acked: r.acked,
            failed: r.failed,
            consumed: r.consumed,
            missing: r.missing,
            puts_per_gb: per_gb("sluice_wal_objects_total"),
            txns_per_gb: per_gb("sluice_metadata_transactions_total"),
            put_ms: stage(&metrics, "sluice_wal_put_seconds"),
            commit_ms: stage(&metrics, "sluice_wal_commit_seconds"),
        }
    }

    /// The human-readable table printed at the end of a run.
    pub fn table(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "\n== {} : {}", self.label, self.workload);
        let _ = writeln!(s, "throughput        {:>12.0} records/s {:>10.1} MB/s", self.records_per_sec, self.mb_per_sec);
        let _ = writeln!(s, "consumed          {:>12.0} records/s", self.consumed_per_sec);
        let _ = writeln!(s, "{:<17} {:>9} {:>9} {:>9} {:>9} {:>9}  (ms)", "latency", "p50", "p90", "p99", "p99.9", "max");
        for (name, p) in [("produce (ack)", self.produce), ("end-to-end", self.e2e)] {
            match p {
                Some(p) => {
                    let _ = writeln!(s, "{:<17} {:>9.2} {:>9.2} {:>9.2} {:>9.2} {:>9.2}", name, p[0], p[1], p[2], p[3], p[4]);
                }
                None => {
                    let _ = writeln!(s, "{name:<17} {:>9}", "-");
                }
            }
        }
        let _ = writeln!(
            s,
            "records           acked {}  failed {}  consumed {}  missing {}",
            self.acked, self.failed, self.consumed, self.missing
        );
        if let (Some(p), Some(t)) = (self.puts_per_gb, self.txns_per_gb) {
            let _ = writeln!(s, "per GB produced   {p:.0} object PUTs, {t:.0} metadata transactions");
        }
        if let (Some(p), Some(c)) = (self.put_ms, self.commit_ms) {
            let _ = writeln!(s, "WAL stages (ms)   object put p99 <= {} p99.9 <= {}, commit p99 <= {} p99.9 <= {}", p[0], p[1], c[0], c[1]);
        }
        s
    }

    fn json(&self) -> String {
        let opt = |p: Option<[f64; 5]>| {
            p.map(|p| format!("[{:.3},{:.3},{:.3},{:.3},{:.3}]", p[0], p[1], p[2], p[3], p[4])).unwrap_or("null".into())
        };
        let num = |v: Option<f64>| v.map(|v| format!("{v:.1}")).unwrap_or("null".into());
        // A histogram bucket bound; past the largest one Prometheus says +Inf, which JSON has no
        // number for.
        let bound = |v: f64| if v.is_finite() { v.to_string() } else { "\"+Inf\"".into() };
        let pair = |p: Option<[f64; 2]>| p.map(|p| format!("[{},{}]", bound(p[0]), bound(p[1]))).unwrap_or("null".into());
        format!(
            "{{\"label\":\"{}\",\"workload\":\"{}\",\"records_per_sec\":{:.1},\"mb_per_sec\":{:.2},\"consumed_per_sec\":{:.1},\"produce_ms_p50_p90_p99_p999_max\":{},\"e2e_ms_p50_p90_p99_p999_max\":{},\"acked\":{},\"failed\":{},\"consumed\":{},\"missing\":{},\"puts_per_gb\":{},\"txns_per_gb\":{},\"put_ms_le_p99_p999\":{},\"commit_ms_le_p99_p999\":{}}}\n",
            self.label, self.workload, self.records_per_sec, self.mb_per_sec, self.consumed_per_sec, opt(self.produce), opt(self.e2e),
            self.acked, self.failed, self.consumed, self.missing, num(self.puts_per_gb), num(self.txns_per_gb),
            pair(self.put_ms), pair(self.commit_ms)
        )
    }
}

/// HdrHistogram's percentile distribution text (what HdrHistogram's plotter reads), in ms.
pub fn hgrm(h: &Histogram<u64>) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "{:>12} {:>14} {:>10} {:>14}\n", "Value", "Percentile", "TotalCount", "1/(1-Percentile)");
    for v in h.iter_quantiles(5) {
        let q = v.quantile_iterated_to();
        let inv = if q < 1.0 { format!("{:>14.2}", 1.0 / (1.0 - q)) } else { format!("{:>14}", "") };
        let _ = writeln!(s, "{:>12.3} {:>14.12} {:>10} {}", v.value_iterated_to() as f64 / 1000.0, q, v.count_since_last_iteration(), inv);
    }
    let _ = writeln!(s, "#[Mean    = {:>12.3}, StdDeviation   = {:>12.3}]", h.mean() / 1000.0, h.stdev() / 1000.0);
    let _ = writeln!(s, "#[Max     = {:>12.3}, Total count    = {:>12}]", h.max() as f64 / 1000.0, h.len());
    let _ = writeln!(s, "#[Buckets = {:>12}, SubBuckets     = {:>12}]", h.buckets(), h.distinct_values());
    s
}

/// Writes `<label>-produce.hgrm`, `<label>-e2e.hgrm`, `<label>-latency.svg` and appends the
/// summary to `summary.jsonl`.
pub fn write(dir: &Path, s: &Summary, r: &RunResult) -> Result<()> {
    let file = |name: &str| dir.join(format!("{}-{name}", s.label));
    for (name, h) in [("produce.hgrm", &r.produce), ("e2e.hgrm", &r.e2e)] {
        if !h.is_empty() {
            std::fs::write(file(name), hgrm(h)).with_context(|| format!("writing {name}"))?;
        }
    }
    if !r.produce.is_empty() || !r.e2e.is_empty() {
        plot(&file("latency.svg"), &s.label, &[("produce", &r.produce), ("end-to-end", &r.e2e)])?;
    }
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new().create(true).append(true).open(dir.join("summary.jsonl")).context("summary.jsonl")?;
    f.write_all(s.json().as_bytes())?;
    Ok(())
}

/// Latency by percentile, the x axis in "nines" (log10 of 1/(1-p)): 1 = p90, 2 = p99, 3 = p99.9.
fn plot(path: &Path, label: &str, series: &[(&str, &Histogram<u64>)]) -> Result<()> {
    let points: Vec<(&str, Vec<(f64, f64)>)> = series
        .iter()
        .filter(|(_, h)| !h.is_empty())
        .map(|(name, h)| {
            let pts = h
                .iter_quantiles(5)
                .map(|v| (v.quantile_iterated_to(), v.value_iterated_to() as f64 / 1000.0))
                .filter(|(q, _)| *q < 0.99999)
                .map(|(q, ms)| ((1.0 / (1.0 - q)).log10(), ms))
                .collect();
            (*name, pts)
        })
        .collect();
    let max_y = points.iter().flat_map(|(_, p)| p.iter().map(|(_, y)| *y)).fold(1.0f64, f64::max) * 1.1;
    let root = SVGBackend::new(path, (900, 500)).into_drawing_area();
    root.fill(&WHITE).context("plot")?;
    let mut chart = ChartBuilder::on(&root)
        .caption(format!("{label}: latency by percentile"), ("sans-serif", 20))
        .margin(15)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0f64..5f64, 0f64..max_y)
        .context("plot axes")?;
    chart
        .configure_mesh()
        .x_desc("percentile")
        .y_desc("latency (ms)")
        .x_label_formatter(&|x| match x.round() as i64 {
            0 => "0".into(),
            1 => "90".into(),
            2 => "99".into(),
            3 => "99.9".into(),
            4 => "99.99".into(),
            _ => "99.999".into(),
        })
        .x_labels(6)
        .draw()
        .context("plot mesh")?;
    for (i, (name, pts)) in points.into_iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        chart
            .draw_series(LineSeries::new(pts, color.stroke_width(2)))
            .context("plot series")?
            .label(name)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
    }
    chart.configure_series_labels().border_style(BLACK).background_style(WHITE).draw().context("plot legend")?;
    root.present().context("plot write")?;
    Ok(())
}
