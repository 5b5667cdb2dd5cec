//! Charts and `report.html` for every run: a self-contained page (spec, summary, per-round and
//! per-client tables, charts inline as SVG) that opens from the run folder with no server and no
//! network. Charts are also written as `accuracy.svg` and `loss.svg` beside it. (PNG would need
//! fonts bundled into the binary; SVG leaves text to the viewer.)

use std::fmt::Write as _;
use std::path::Path;

use shoal_shared::plot::{line_charts_svg, Panel, Series};

use crate::engine::round::RoundRecord;
use crate::error::{Error, Result};
use crate::report::{human_bytes, Summary};

/// Escapes text for HTML.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn series(
    label: &str,
    rounds: &[RoundRecord],
    f: impl Fn(&RoundRecord) -> Option<f64>,
) -> Option<Series> {
    let points: Vec<(f64, f64)> = rounds
        .iter()
        .filter_map(|r| {
            f(r).filter(|v| v.is_finite())
                .map(|v| (f64::from(r.round), v))
        })
        .collect();
    (!points.is_empty()).then(|| Series {
        label: label.into(),
        points,
    })
}

/// The accuracy and loss charts of a run, as SVG documents (`None` when there are no rounds; an
/// empty accuracy chart when no round has an accuracy, as with a diffusion denoiser).
pub fn charts(rounds: &[RoundRecord]) -> Result<Option<(String, String)>> {
    if rounds.is_empty() {
        return Ok(None);
    }
    let accuracy = Panel {
        title: "accuracy per round".into(),
        x_label: "round".into(),
        y_label: "accuracy".into(),
        series: [
            series("test (coordinator)", rounds, |r| r.test_accuracy),
            series("federated (clients)", rounds, |r| r.fed_accuracy),
        ]
        .into_iter()
        .flatten()
        .collect(),
    };
    let loss = Panel {
        title: "loss per round".into(),
        x_label: "round".into(),
        y_label: "loss".into(),
        series: [
            series("train (clients)", rounds, |r| Some(r.train_loss)),
            series("federated (clients)", rounds, |r| r.fed_loss),
            series("test (coordinator)", rounds, |r| r.test_loss),
        ]
        .into_iter()
        .flatten()
        .collect(),
    };
    let a = line_charts_svg(&[accuracy], 1, (720, 400))?;
    let l = line_charts_svg(&[loss], 1, (720, 400))?;
    Ok(Some((a, l)))
}

/// SVG figures some job kinds write into the run folder, inlined into `report.html` when present.
const EXTRA_FIGURES: [(&str, &str); 4] = [
    ("trials.svg", "AutoML: validation accuracy per trial"),
    ("fusion.svg", "Fusion variants: test accuracy"),
    ("forward.svg", "Forward process"),
    ("samples.svg", "Real and generated signals"),
];

/// What the report says about how the job ended.
#[derive(Debug, Clone)]
pub struct Outcome<'a> {
    pub job_id: &'a str,
    pub status: &'a str,
    pub error: Option<&'a str>,
}

fn opt(v: Option<f64>) -> String {
    v.map_or_else(|| "-".into(), |v| format!("{v:.4}"))
}

/// Writes `accuracy.svg`, `loss.svg` and `report.html` into `dir`.
pub fn write_report(
    dir: &Path,
    outcome: &Outcome<'_>,
    spec_toml: &str,
    rounds: &[RoundRecord],
    summary: Option<&Summary>,
) -> Result<()> {
    let charts = charts(rounds)?;
    let io = |name: &str, e| Error::io(format!("cannot write {}", dir.join(name).display()), e);
    let has_accuracy = rounds
        .iter()
        .any(|r| r.test_accuracy.is_some() || r.fed_accuracy.is_some());
    if let Some((a, l)) = &charts {
        if has_accuracy {
            std::fs::write(dir.join("accuracy.svg"), a).map_err(|e| io("accuracy.svg", e))?;
        }
        std::fs::write(dir.join("loss.svg"), l).map_err(|e| io("loss.svg", e))?;
    }
    let mut h = String::new();
    let _ = write!(
        h,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>Shoal run {id}</title>\n<style>\
         body{{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}}\
         table{{border-collapse:collapse;margin:1em 0}}td,th{{border:1px solid #ccc;padding:3px 8px;text-align:right}}\
         th{{background:#f3f3f3}}td:first-child,th:first-child{{text-align:left}}pre{{background:#f7f7f7;padding:1em;overflow:auto}}\
         .failed{{color:#b00020}}</style></head><body>\n<h1>Shoal run {id}</h1>\n<p>Status: <b class=\"{cls}\">{status}</b></p>\n",
        id = escape(outcome.job_id),
        status = escape(outcome.status),
        cls = if outcome.error.is_some() { "failed" } else { "ok" },
    );
    if let Some(e) = outcome.error {
        let _ = writeln!(h, "<p class=\"failed\">{}</p>", escape(e));
    }
    if let Some(s) = summary {
        let _ = writeln!(h, "<h2>Summary</h2>\n<table id=\"summary\">");
        for (k, v) in [
            ("model", s.model.clone()),
            ("dataset", s.dataset.clone()),
            ("aggregation", s.strategy.clone()),
            ("rounds", s.rounds.to_string()),
            (
                "best round",
                s.best_round.map_or("-".into(), |r| r.to_string()),
            ),
            ("best accuracy", opt(s.best_accuracy)),
            ("final test accuracy", opt(s.final_test_accuracy)),
            ("final federated accuracy", opt(s.final_fed_accuracy)),
            ("centralized baseline", opt(s.centralized_test_accuracy)),
            (
                "bytes up / down",
                format!(
                    "{} / {}",
                    human_bytes(s.bytes_up),
                    human_bytes(s.bytes_down)
                ),
            ),
            (
                "seconds (in rounds)",
                format!("{:.2} ({:.2})", s.seconds, s.round_seconds),
            ),
        ] {
            let _ = writeln!(h, "<tr><th>{}</th><td>{}</td></tr>", escape(k), escape(&v));
        }
        h.push_str("</table>\n");
    }
    if let Some((a, l)) = &charts {
        h.push_str("<h2>Charts</h2>\n");
        if has_accuracy {
            let _ = writeln!(h, "<figure id=\"accuracy-chart\">{a}</figure>");
        }
        let _ = writeln!(h, "<figure id=\"loss-chart\">{l}</figure>");
    }
    if let Some(s) = summary.filter(|s| !s.variants.is_empty()) {
        let _ = writeln!(h, "<h2>Fusion variants</h2>\n<table id=\"variants\"><tr><th>variant</th><th>features</th><th>rounds</th><th>test accuracy</th></tr>");
        for v in &s.variants {
            let _ = writeln!(
                h,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{:.4}</td></tr>",
                escape(&v.variant),
                v.features,
                v.rounds,
                v.test_accuracy
            );
        }
        h.push_str("</table>\n");
    }
    if let Some(a) = summary.and_then(|s| s.automl.as_ref()) {
        let _ = writeln!(
            h,
            "<h2>AutoML</h2>\n<p>{} search. Best: trial {} ({}), validation accuracy {:.4}, test accuracy {}. Default: validation accuracy {}, test accuracy {}.</p>\n<table id=\"trials\"><tr><th>trial</th><th>configuration</th><th>rounds</th><th>validation accuracy</th><th>seconds</th><th>status</th></tr>",
            escape(&a.search),
            a.best_trial,
            escape(&a.best_config),
            a.best_validation_accuracy,
            opt(a.best_test_accuracy),
            opt(a.default_validation_accuracy),
            opt(a.default_test_accuracy)
        );
        let mut trials = a.trials.clone();
        trials.sort_by_key(|t| t.trial);
        for t in &trials {
            let _ = writeln!(
                h,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{:.2}</td><td>{}</td></tr>",
                t.trial,
                escape(&t.config),
                t.budget,
                opt(t.score),
                t.seconds,
                escape(&t.status)
            );
        }
        h.push_str("</table>\n");
    }
    if let Some(d) = summary.and_then(|s| s.diffusion.as_ref()) {
        let _ = writeln!(h, "<h2>Diffusion</h2>\n<table id=\"diffusion\">");
        let ratio = match (d.nearest_distance, d.untrained_nearest_distance) {
            (Some(t), Some(u)) if u > 0.0 => format!("{:.3}", t / u),
            _ => "-".into(),
        };
        for (k, v) in [
            ("alpha_bar_T", format!("{:.3e}", d.final_alpha_bar)),
            ("noise MSE, round 1", opt(d.first_noise_mse)),
            ("noise MSE, last round", opt(d.last_noise_mse)),
            ("generated signals", d.samples.to_string()),
            ("distance to nearest real signal", opt(d.nearest_distance)),
            ("same, untrained network", opt(d.untrained_nearest_distance)),
            (
                "real signal to nearest other real",
                opt(d.real_nearest_distance),
            ),
            ("ratio", ratio),
        ] {
            let _ = writeln!(h, "<tr><th>{}</th><td>{}</td></tr>", escape(k), escape(&v));
        }
        h.push_str("</table>\n<table id=\"coverage\"><tr><th>band</th><th>generated nearest to it</th><th>share</th></tr>\n");
        for c in &d.coverage {
            let _ = writeln!(
                h,
                "<tr><td>{}</td><td>{}</td><td>{:.1}%</td></tr>",
                escape(&c.band),
                c.nearest,
                100.0 * c.share
            );
        }
        h.push_str("</table>\n");
    }
    // Figures a job kind writes beside the standard charts.
    for (file, caption) in EXTRA_FIGURES {
        if let Ok(svg) = std::fs::read_to_string(dir.join(file)) {
            let _ = writeln!(
                h,
                "<h2>{}</h2>\n<figure id=\"{}\">{svg}</figure>",
                escape(caption),
                escape(file)
            );
        }
    }
    let _ = writeln!(
        h,
        "<h2>Rounds</h2>\n<table id=\"rounds\"><tr><th>round</th><th>clients</th><th>train loss</th><th>fed loss</th><th>fed accuracy</th><th>test accuracy</th><th>up</th><th>down</th><th>seconds</th><th>rejected</th></tr>"
    );
    for r in rounds {
        let _ = writeln!(
            h,
            "<tr><td>{}</td><td>{}/{}</td><td>{:.4}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{:.3}</td><td>{}</td></tr>",
            r.round,
            r.clients,
            r.clients_selected,
            r.train_loss,
            opt(r.fed_loss),
            opt(r.fed_accuracy),
            opt(r.test_accuracy),
            human_bytes(r.bytes_up),
            human_bytes(r.bytes_down),
            r.seconds,
            r.rejected
        );
    }
    h.push_str("</table>\n");
    if let Some(s) = summary.filter(|s| !s.clients.is_empty()) {
        let _ = writeln!(h, "<h2>Clients</h2>\n<p>The final global model on each client's local test split.</p>\n<table id=\"clients\"><tr><th>client</th><th>examples</th><th>classes</th><th>accuracy</th><th>personalized</th></tr>");
        for c in &s.clients {
            let _ = writeln!(
                h,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{:.4}</td><td>{}</td></tr>",
                escape(&c.client),
                c.examples,
                c.classes_present,
                c.accuracy,
                opt(c.personalized_accuracy)
            );
        }
        h.push_str("</table>\n");
    }
    let _ = writeln!(
        h,
        "<h2>Job spec</h2>\n<pre id=\"spec\">{}</pre>\n</body></html>",
        escape(spec_toml)
    );
    std::fs::write(dir.join("report.html"), h).map_err(|e| io("report.html", e))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(round: u32) -> RoundRecord {
        RoundRecord {
            staleness: None,
            round,
            rounds_total: 3,
            clients: 2,
            clients_selected: 2,
            train_loss: 1.0 / f64::from(round),
            fed_loss: Some(0.5),
            fed_accuracy: Some(0.8),
            test_accuracy: Some(0.7 + 0.05 * f64::from(round)),
            test_loss: None,
            bytes_up: 1000,
            bytes_down: 2000,
            seconds: 0.01,
            rejected: 0,
            rejected_by: Default::default(),
            late_by: Default::default(),
            quarantined: Vec::new(),
            silenced: Vec::new(),
        }
    }

    #[test]
    fn the_report_holds_charts_tables_and_the_escaped_spec() {
        let dir = tempfile::tempdir().unwrap();
        let outcome = Outcome {
            job_id: "j<1>",
            status: "failed",
            error: Some("quorum <lost>"),
        };
        write_report(
            dir.path(),
            &outcome,
            "kind = \"train\" # <x>",
            &[rec(1), rec(2), rec(3)],
            None,
        )
        .unwrap();
        let html = std::fs::read_to_string(dir.path().join("report.html")).unwrap();
        assert!(
            html.contains("id=\"accuracy-chart\"><svg") && html.contains("id=\"loss-chart\"><svg")
        );
        assert_eq!(html.matches("<tr><td>").count(), 3, "one row per round");
        assert!(
            html.contains("quorum &lt;lost&gt;")
                && html.contains("j&lt;1&gt;")
                && html.contains("# &lt;x&gt;")
        );
        assert!(!html.contains("<x>"));
        assert!(dir.path().join("accuracy.svg").exists() && dir.path().join("loss.svg").exists());
    }

    #[test]
    fn a_run_without_rounds_still_gets_a_report() {
        let dir = tempfile::tempdir().unwrap();
        let outcome = Outcome {
            job_id: "j",
            status: "cancelled",
            error: None,
        };
        write_report(dir.path(), &outcome, "", &[], None).unwrap();
        let html = std::fs::read_to_string(dir.path().join("report.html")).unwrap();
        assert!(html.contains("cancelled") && !html.contains("<svg"));
    }
}
