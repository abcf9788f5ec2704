//! `dynsig backtest DATA_DIR OUT_DIR`: streams labelled benchmark series (the Numenta
//! Anomaly Benchmark layout) through the service's anomaly detector and writes its scores.
//!
//! Every `*.csv` under DATA_DIR (header with `timestamp` and `value` columns, timestamps
//! like `2014-04-01 00:00:00` or epoch milliseconds) becomes `OUT_DIR/<same path>` with
//! `timestamp,value,anomaly_score`: one row per input row, in the same order, the
//! timestamp and value copied as written. Each file is one series, scored by exactly the
//! per-series detector the engine runs (`dynsig_core::anomaly::SeriesDetector`) with the
//! `[anomaly]` settings of the config. A row whose timestamp or value cannot be read is
//! reported on stderr with its file and line, scored 0 and not learned.

use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use clap::Args;
use dynsig_core::anomaly::{DetectorParams, SeriesDetector};
use dynsig_core::config::AnomalyConfig;
use dynsig_core::model::EpochMs;

use crate::config::Config;

#[derive(Args)]
pub struct BacktestArgs {
    /// Directory of CSV series, e.g. NAB's data/ (`<category>/<file>.csv`).
    pub data_dir: PathBuf,
    /// Where to write the scored copies (created if missing).
    pub out_dir: PathBuf,
    /// TOML config file; its [anomaly] section tunes the detector.
    #[arg(long, short)]
    pub config: Option<PathBuf>,
}

/// The command: loads the config, scores every file, prints a summary on stderr.
pub fn run(args: BacktestArgs) -> anyhow::Result<()> {
    let config = Config::load(args.config.as_deref(), std::env::vars())?;
    let started = Instant::now();
    let summary = backtest(&config.anomaly, &args.data_dir, &args.out_dir)?;
    eprintln!(
        "backtest: {} files, {} rows ({} unreadable) in {:.2}s; detector {:.0} ns/row, \
         at most {} bytes per series -> {}",
        summary.files,
        summary.rows,
        summary.bad_rows,
        started.elapsed().as_secs_f64(),
        summary.detector_time.as_nanos() as f64 / summary.rows.max(1) as f64,
        summary.max_series_bytes,
        args.out_dir.display()
    );
    Ok(())
}

/// What a backtest did.
#[derive(Debug, Default)]
pub struct Summary {
    pub files: usize,
    pub rows: u64,
    /// Rows reported and scored 0 because their timestamp or value was unreadable.
    pub bad_rows: u64,
    /// Time spent in the detector only (not reading or writing files).
    pub detector_time: Duration,
    /// Largest per-series detector state seen, in bytes.
    pub max_series_bytes: usize,
}

/// Scores every CSV under `data` into the same relative path under `out`.
pub fn backtest(config: &AnomalyConfig, data: &Path, out: &Path) -> anyhow::Result<Summary> {
    config
        .validate()
        .map_err(|e| anyhow::anyhow!("invalid config: {e}"))?;
    let params = DetectorParams::from(config);
    let mut files = Vec::new();
    collect_csv_files(data, &mut files)?;
    if files.is_empty() {
        bail!("no .csv files under {}", data.display());
    }
    files.sort();
    let mut summary = Summary::default();
    for input in &files {
        let relative = input.strip_prefix(data).unwrap_or(input);
        let output = out.join(relative);
        if let Some(dir) = output.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        score_file(&params, input, &output, &mut summary)
            .with_context(|| format!("scoring {}", input.display()))?;
        summary.files += 1;
    }
    Ok(summary)
}

fn collect_csv_files(dir: &Path, files: &mut Vec<PathBuf>) -> anyhow::Result<()> {
    let entries =
        std::fs::read_dir(dir).with_context(|| format!("reading directory {}", dir.display()))?;
    for entry in entries {
        let path = entry
            .with_context(|| format!("reading directory {}", dir.display()))?
            .path();
        if path.is_dir() {
            collect_csv_files(&path, files)?;
        } else if path.extension().is_some_and(|e| e == "csv") {
            files.push(path);
        }
    }
    Ok(())
}

fn score_file(
    params: &DetectorParams,
    input: &Path,
    output: &Path,
    summary: &mut Summary,
) -> anyhow::Result<()> {
    let reader = BufReader::new(File::open(input).context("opening")?);
    let mut writer = BufWriter::new(
        File::create(output).with_context(|| format!("creating {}", output.display()))?,
    );
    let mut lines = reader.lines();
    let header = lines
        .next()
        .context("empty file: no header")?
        .context("reading")?;
    let columns = Columns::from_header(&header)?;
    writeln!(writer, "timestamp,value,anomaly_score")?;
    let mut detector = SeriesDetector::default();
    for (index, line) in lines.enumerate() {
        let line = line.context("reading")?;
        if line.trim().is_empty() {
            continue;
        }
        let line_number = index + 2;
        let (ts_text, value_text) = columns.pick(&line);
        let score = match (parse_timestamp(ts_text), parse_value(value_text)) {
            (Ok(ts), Ok(value)) => {
                let started = Instant::now();
                let observation = detector.observe(params, ts, value);
                summary.detector_time += started.elapsed();
                observation.score
            }
            (Err(reason), _) | (_, Err(reason)) => {
                eprintln!(
                    "{}:{line_number}: {reason}; scored 0, not learned",
                    input.display()
                );
                summary.bad_rows += 1;
                0.0
            }
        };
        writeln!(writer, "{ts_text},{value_text},{score}")?;
        summary.rows += 1;
    }
    writer.flush()?;
    summary.max_series_bytes = summary.max_series_bytes.max(detector.memory_bytes());
    Ok(())
}

/// Positions of the `timestamp` and `value` columns.
struct Columns {
    timestamp: usize,
    value: usize,
}

impl Columns {
    fn from_header(header: &str) -> anyhow::Result<Columns> {
        let names: Vec<&str> = header.split(',').map(str::trim).collect();
        let find = |name: &str| {
            names
                .iter()
                .position(|n| n.eq_ignore_ascii_case(name))
                .with_context(|| format!("header {header:?} has no {name:?} column"))
        };
        Ok(Columns {
            timestamp: find("timestamp")?,
            value: find("value")?,
        })
    }

    /// The raw timestamp and value fields of a row ("" when missing).
    fn pick<'a>(&self, line: &'a str) -> (&'a str, &'a str) {
        let mut ts = "";
        let mut value = "";
        for (i, field) in line.split(',').enumerate() {
            if i == self.timestamp {
                ts = field.trim();
            }
            if i == self.value {
                value = field.trim();
            }
        }
        (ts, value)
    }
}

fn parse_value(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(v) if v.is_finite() => Ok(v),
        _ => Err(format!("value {text:?} is not a finite number")),
    }
}

/// `YYYY-MM-DD[ T]HH:MM[:SS[.fff]][Z]` (UTC) or integer epoch milliseconds.
fn parse_timestamp(text: &str) -> Result<EpochMs, String> {
    let bad = || format!("timestamp {text:?} is neither YYYY-MM-DD HH:MM:SS nor epoch ms");
    if let Ok(ms) = text.parse::<i64>() {
        return Ok(ms);
    }
    let text = text.strip_suffix('Z').unwrap_or(text);
    let (date, time) = text.split_once([' ', 'T']).ok_or_else(bad)?;
    let mut date_parts = date.splitn(3, '-').map(|p| p.parse::<i64>());
    let (Some(Ok(year)), Some(Ok(month)), Some(Ok(day))) =
        (date_parts.next(), date_parts.next(), date_parts.next())
    else {
        return Err(bad());
    };
    let mut time_parts = time.splitn(3, ':');
    let hour = time_parts.next().and_then(|p| p.parse::<i64>().ok());
    let minute = time_parts.next().and_then(|p| p.parse::<i64>().ok());
    let seconds = time_parts
        .next()
        .map_or(Some(0.0), |p| p.parse::<f64>().ok());
    let (Some(hour), Some(minute), Some(seconds)) = (hour, minute, seconds) else {
        return Err(bad());
    };
    let valid = (1..=12).contains(&month)
        && (1..=31).contains(&day)
        && (0..24).contains(&hour)
        && (0..60).contains(&minute)
        && (0.0..61.0).contains(&seconds);
    if !valid {
        return Err(bad());
    }
    let days = days_from_civil(year, month, day);
    Ok(((days * 24 + hour) * 60 + minute) * 60_000 + (seconds * 1000.0).round() as i64)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let year_of_era = y - era * 400;
    let month_from_march = (month + 9) % 12;
    let day_of_year = (153 * month_from_march + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_parse_as_utc() {
        assert_eq!(parse_timestamp("1970-01-01 00:00:00"), Ok(0));
        assert_eq!(
            parse_timestamp("2014-04-01 00:05:00"),
            Ok(1_396_310_700_000)
        );
        assert_eq!(
            parse_timestamp("2014-04-01T00:05:00.5Z"),
            Ok(1_396_310_700_500)
        );
        assert_eq!(parse_timestamp("2000-02-29 12:00"), Ok(951_825_600_000));
        assert_eq!(parse_timestamp("1396310700000"), Ok(1_396_310_700_000));
        for bad in [
            "",
            "yesterday",
            "2014-13-01 00:00:00",
            "2014-04-01",
            "2014-04-01 25:00",
        ] {
            assert!(parse_timestamp(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn values_must_be_finite() {
        assert_eq!(parse_value("-2.5e3"), Ok(-2500.0));
        assert!(parse_value("NaN").is_err());
        assert!(parse_value("").is_err());
    }

    #[test]
    fn every_row_is_written_back_in_order_and_bad_rows_are_scored_zero() {
        let dir = std::env::temp_dir().join(format!("dynsig-backtest-{}", std::process::id()));
        let (data, out) = (dir.join("data"), dir.join("out"));
        std::fs::create_dir_all(data.join("cat")).unwrap();
        let mut csv = String::from("timestamp,value\n");
        for i in 0..300 {
            let value = if i == 250 {
                500.0
            } else {
                10.0 + (i % 3) as f64
            };
            csv += &format!("2014-04-01 {:02}:{:02}:00,{value}\n", i / 60, i % 60);
        }
        csv += "2014-04-01 05:00:00,oops\nnot a time,1\n";
        std::fs::write(data.join("cat/series.csv"), csv).unwrap();

        let summary = backtest(&AnomalyConfig::default(), &data, &out).unwrap();
        assert_eq!((summary.files, summary.rows, summary.bad_rows), (1, 302, 2));
        let written = std::fs::read_to_string(out.join("cat/series.csv")).unwrap();
        let rows: Vec<&str> = written.lines().collect();
        assert_eq!(rows[0], "timestamp,value,anomaly_score");
        assert_eq!(rows.len(), 303);
        assert!(rows[1].starts_with("2014-04-01 00:00:00,10,"));
        let score = |row: &str| row.rsplit(',').next().unwrap().parse::<f64>().unwrap();
        assert!(score(rows[251]) > 0.999, "the spike: {}", rows[251]);
        assert_eq!(rows[301], "2014-04-01 05:00:00,oops,0");
        assert_eq!(rows[302], "not a time,1,0");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
