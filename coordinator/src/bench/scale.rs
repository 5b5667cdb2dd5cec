//! `bench scale`: seconds per round and peak memory against the number of clients. Each size runs
//! `simulate` (seed-fl, logreg, every client training and evaluating every round) in a child
//! process of this binary, whose peak resident memory (`VmHWM`) is read from `/proc` while it
//! runs; the figures of the smallest size are the baseline the others are compared with.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::Context;

/// One size's figures.
#[derive(Debug, Clone)]
pub struct ScaleRow {
    pub clients: usize,
    /// Mean seconds per round (`metrics.csv`).
    pub round_secs: f64,
    /// Peak resident memory of the whole simulation (coordinator and clients), when `/proc`
    /// says it.
    pub peak_bytes: Option<u64>,
}

/// Measures each size in `clients` over `rounds` rounds, and prints the table.
pub fn scale(clients: &[usize], rounds: u32) -> anyhow::Result<Vec<ScaleRow>> {
    let exe = std::env::current_exe().context("finding this program to run simulate")?;
    let dir = tempfile::tempdir().context("creating a folder for the runs")?;
    println!(
        "bench scale  seed-fl (200 rows a client), logreg, {rounds} rounds, every client trains and evaluates every round; each size a `simulate` child process"
    );
    println!(
        "  {:>7}  {:>9}  {:>10}  {:>11}  vs {} clients: clients x, s/round x, RSS x",
        "clients",
        "s/round",
        "peak RSS",
        "per client",
        clients.first().copied().unwrap_or(0)
    );
    let mut rows: Vec<ScaleRow> = Vec::new();
    for &n in clients {
        let row = one(&exe, dir.path(), n, rounds)?;
        let mb = |b: u64| b as f64 / (1 << 20) as f64;
        let rss = row
            .peak_bytes
            .map_or("n/a".to_string(), |b| format!("{:.0} MiB", mb(b)));
        let per = row.peak_bytes.map_or("n/a".to_string(), |b| {
            format!("{:.1} KiB", b as f64 / 1024.0 / n as f64)
        });
        let vs = match rows.first() {
            Some(base) => format!(
                "{:.0}x, {:.1}x, {}",
                n as f64 / base.clients as f64,
                row.round_secs / base.round_secs,
                match (row.peak_bytes, base.peak_bytes) {
                    (Some(a), Some(b)) => format!("{:.1}x", a as f64 / b as f64),
                    _ => "n/a".into(),
                }
            ),
            None => "baseline".into(),
        };
        println!(
            "  {n:>7}  {:>9.3}  {rss:>10}  {per:>11}  {vs}",
            row.round_secs
        );
        rows.push(row);
    }
    Ok(rows)
}

fn one(exe: &Path, dir: &Path, n: usize, rounds: u32) -> anyhow::Result<ScaleRow> {
    let job = dir.join(format!("job-{n}.toml"));
    std::fs::write(
        &job,
        format!(
            "kind = \"train\"\ndataset = \"seed-fl\"\nrounds = {rounds}\n[model]\nkind = \"logreg\"\n\
             [clients]\nwait_for_clients_secs = 600\nround_timeout_secs = 600\n\
             [evaluation]\ncentralized_baseline = false\n"
        ),
    )?;
    let out = dir.join(format!("runs-{n}"));
    let log = dir.join(format!("simulate-{n}.log"));
    let mut child = Command::new(exe)
        .arg("simulate")
        .arg("--job")
        .arg(&job)
        .arg("--clients")
        .arg(n.to_string())
        .arg("--out")
        .arg(&out)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log)?)
        .spawn()
        .context("starting simulate")?;
    let status_file = format!("/proc/{}/status", child.id());
    let mut peak: Option<u64> = None;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        // VmHWM only grows: the last reading before the child exits is its peak, give or take
        // the last 20 ms.
        if let Some(kib) = std::fs::read_to_string(&status_file)
            .ok()
            .and_then(|s| vm_hwm_kib(&s))
        {
            peak = Some(peak.unwrap_or(0).max(kib * 1024));
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    if !status.success() {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        let tail: String = text.lines().rev().take(3).collect::<Vec<_>>().join(" / ");
        anyhow::bail!("simulate with {n} clients failed ({status}): {tail}");
    }
    let run = std::fs::read_dir(&out)?
        .next()
        .context("simulate left no run folder")??
        .path();
    let csv = std::fs::read_to_string(run.join("metrics.csv"))?;
    let secs: Vec<f64> = csv
        .lines()
        .skip(1)
        .filter_map(|l| l.rsplit(',').next()?.parse().ok())
        .collect();
    anyhow::ensure!(!secs.is_empty(), "metrics.csv of {n} clients has no rounds");
    Ok(ScaleRow {
        clients: n,
        round_secs: secs.iter().sum::<f64>() / secs.len() as f64,
        peak_bytes: peak,
    })
}

/// The `VmHWM` line of `/proc/PID/status`, in KiB.
fn vm_hwm_kib(status: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    #[test]
    fn reads_the_peak_from_proc_status() {
        let s = "Name:\tx\nVmPeak:\t  100 kB\nVmHWM:\t   5120 kB\nVmRSS:\t 4000 kB\n";
        assert_eq!(super::vm_hwm_kib(s), Some(5120));
        assert_eq!(super::vm_hwm_kib("Name: x\n"), None);
    }
}
