//! Measuring a command from outside, as benchmarks do: wall time, peak RSS (`VmHWM`, sampled from
//! `/proc` every 20 ms while it runs) and CPU seconds. Figures are printed by the benchmarks, never
//! asserted.
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// What one measured run of a command cost.
pub struct Measured {
    pub secs: f64,
    pub peak_rss: u64,
    /// User + system CPU seconds of the process (last sample before it exited).
    pub cpu_secs: f64,
}

/// utime + stime of a live process, in seconds (USER_HZ is 100 on Linux).
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some(ticks as f64 / 100.0)
}

/// Peak RSS (`VmHWM`) of a live process, in bytes.
pub fn peak_rss(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kb * 1024)
}

/// Runs a command to completion, sampling its peak RSS (VmHWM) and CPU time.
pub async fn run_measured(cmd: &mut tokio::process::Command) -> Result<Measured> {
    let start = Instant::now();
    let mut child = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("spawn")?;
    let pid = child.id().context("pid")?;
    let mut stderr = child.stderr.take().context("stderr")?;
    let err_reader = tokio::spawn(async move {
        let mut s = String::new();
        let _ = tokio::io::AsyncReadExt::read_to_string(&mut stderr, &mut s).await;
        s
    });
    let mut peak = 0u64;
    let mut cpu = 0f64;
    let status = loop {
        cpu = cpu_seconds(pid).unwrap_or(cpu);
        peak = peak.max(peak_rss(pid).unwrap_or(0));
        tokio::select! {
            s = child.wait() => break s?,
            _ = tokio::time::sleep(Duration::from_millis(20)) => {}
        }
    };
    let secs = start.elapsed().as_secs_f64();
    let err = err_reader.await.unwrap_or_default();
    if !status.success() {
        bail!(
            "command failed ({status}): {}",
            err.lines()
                .rev()
                .take(15)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
    Ok(Measured {
        secs,
        peak_rss: peak,
        cpu_secs: cpu,
    })
}
