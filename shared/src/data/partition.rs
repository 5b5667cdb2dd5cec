//! Partitioners: how a training pool's rows are spread over federated clients.
//!
//! Real federations are rarely IID; these schemes reproduce the standard heterogeneity settings
//! of the FL literature (and of `flwr-datasets`) so a strategy can be tested against them:
//!
//! | scheme | spec string | what varies between clients |
//! |---|---|---|
//! | [`Partitioner::Iid`] | `iid` | nothing: random near-equal chunks |
//! | [`Partitioner::Dirichlet`] | `dirichlet:ALPHA` | label mix (small α: few classes each) |
//! | [`Partitioner::Shards`] | `shards:K` | label set: exactly K classes each |
//! | [`Partitioner::Quantity`] | `quantity:ALPHA` | size only (labels stay IID) |
//!
//! Every scheme is deterministic for a seed (a `ChaCha8Rng` from `seed_from_u64`), assigns every
//! row to exactly one client, and returns each client's row indices sorted ascending.

use std::fmt;
use std::str::FromStr;

use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Gamma};

use crate::error::{Error, Result};

/// The Dirichlet partitioners' minimum rows per client, as in `flwr-datasets`
/// (`min_partition_size=10`); capped at half the average client size (at least 1) when the pool
/// is too small for it, since requiring the average itself would demand a perfectly even draw.
pub const MIN_PARTITION_SIZE: usize = 10;

/// How many Dirichlet draws to try before giving up on the minimum size. `flwr-datasets` tries
/// 10; a few more make small α with many clients succeed more often, and each draw is cheap.
const MAX_SAMPLING_ATTEMPTS: usize = 50;

const EXPECTED: &str = "iid, dirichlet:ALPHA, shards:K, quantity:ALPHA";

/// A partitioning scheme, parsed from and displayed as its spec string (`"dirichlet:0.5"`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Partitioner {
    /// Shuffle, then cut into `n_clients` contiguous chunks whose sizes differ by at most one.
    Iid,
    /// Label skew as in `flwr-datasets`' `DirichletPartitioner`: each class is divided over the
    /// clients in proportions drawn from `Dirichlet(alpha · 1)`. Small `alpha` (0.1) gives each
    /// client a few dominant classes; large `alpha` (100) approaches IID.
    Dirichlet {
        /// Concentration, finite and `> 0`.
        alpha: f64,
    },
    /// Pathological label skew (McMahan et al. 2017): every client holds exactly
    /// `classes_per_client` distinct classes, and each class's rows are shared evenly by the
    /// clients holding it.
    Shards {
        /// Distinct classes per client, `>= 1` and at most the number of classes present.
        classes_per_client: usize,
    },
    /// Quantity skew: client sizes follow `Dirichlet(alpha · 1)` proportions while each client's
    /// rows are an IID sample.
    Quantity {
        /// Concentration, finite and `> 0`.
        alpha: f64,
    },
}

impl FromStr for Partitioner {
    type Err = Error;

    /// Parses `iid`, `dirichlet:ALPHA`, `shards:K` or `quantity:ALPHA` (scheme names are
    /// case-insensitive; surrounding spaces are ignored).
    fn from_str(s: &str) -> Result<Self> {
        let spec = s.trim();
        let (scheme, param) = match spec.split_once(':') {
            Some((scheme, param)) => (scheme.trim(), Some(param.trim())),
            None => (spec, None),
        };
        let what = || format!("partition scheme `{spec}`");
        let scheme = scheme.to_ascii_lowercase();
        let require = |form: &str| {
            param.filter(|p| !p.is_empty()).ok_or_else(|| {
                Error::invalid(what(), format!("missing parameter: expected `{form}`"))
            })
        };
        match scheme.as_str() {
            "iid" => match param {
                None => Ok(Partitioner::Iid),
                Some(_) => Err(Error::invalid(what(), "`iid` takes no parameter")),
            },
            "dirichlet" => Ok(Partitioner::Dirichlet {
                alpha: parse_alpha(require("dirichlet:ALPHA")?, &what)?,
            }),
            "quantity" => Ok(Partitioner::Quantity {
                alpha: parse_alpha(require("quantity:ALPHA")?, &what)?,
            }),
            "shards" => {
                let k = require("shards:K")?;
                let k: usize = k.parse().map_err(|_| {
                    Error::invalid(what(), format!("K = `{k}` is not a positive integer"))
                })?;
                if k == 0 {
                    return Err(Error::invalid(what(), "K must be at least 1"));
                }
                Ok(Partitioner::Shards {
                    classes_per_client: k,
                })
            }
            _ => Err(Error::Unknown {
                what: "partition scheme",
                name: spec.to_owned(),
                expected: EXPECTED.to_owned(),
            }),
        }
    }
}

fn parse_alpha(text: &str, what: &dyn Fn() -> String) -> Result<f64> {
    let alpha: f64 = text
        .parse()
        .map_err(|_| Error::invalid(what(), format!("ALPHA = `{text}` is not a number")))?;
    check_alpha(alpha).map_err(|message| Error::invalid(what(), message))?;
    Ok(alpha)
}

fn check_alpha(alpha: f64) -> std::result::Result<(), String> {
    if alpha.is_finite() && alpha > 0.0 {
        Ok(())
    } else {
        Err(format!("ALPHA must be a finite number > 0, got {alpha}"))
    }
}

impl fmt::Display for Partitioner {
    /// The spec string; parsing it gives back the same value (`f64`'s `Display` round-trips).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Partitioner::Iid => f.write_str("iid"),
            Partitioner::Dirichlet { alpha } => write!(f, "dirichlet:{alpha}"),
            Partitioner::Shards { classes_per_client } => write!(f, "shards:{classes_per_client}"),
            Partitioner::Quantity { alpha } => write!(f, "quantity:{alpha}"),
        }
    }
}

impl Partitioner {
    /// Splits row indices `0..labels.len()` over `n_clients` clients.
    ///
    /// Returns one list per client, sorted ascending; together they hold every row exactly once,
    /// and every client gets at least one row. The result depends only on the arguments.
    ///
    /// # Errors
    /// [`Error::InvalidValue`] for `n_clients == 0` or a bad parameter (a value built directly
    /// rather than parsed); [`Error::Data`] if there are fewer rows than clients, a label is
    /// `>= n_classes`, `shards:K` cannot give every client K classes while covering every class,
    /// or no Dirichlet draw meets the minimum size.
    pub fn partition(
        &self,
        labels: &[usize],
        n_classes: usize,
        n_clients: usize,
        seed: u64,
    ) -> Result<Vec<Vec<usize>>> {
        if n_clients == 0 {
            return Err(Error::invalid("number of clients", "must be at least 1"));
        }
        if n_clients > labels.len() {
            return Err(Error::Data(format!(
                "cannot partition {} rows over {n_clients} clients: every client needs at least one row",
                labels.len()
            )));
        }
        if let Some((row, &label)) = labels.iter().enumerate().find(|(_, &l)| l >= n_classes) {
            return Err(Error::Data(format!(
                "row {row} has label {label}, but there are only {n_classes} classes"
            )));
        }
        match *self {
            Partitioner::Dirichlet { alpha } | Partitioner::Quantity { alpha } => {
                check_alpha(alpha)
                    .map_err(|m| Error::invalid(format!("partition scheme `{self}`"), m))?;
            }
            Partitioner::Shards {
                classes_per_client: 0,
            } => {
                return Err(Error::invalid(
                    format!("partition scheme `{self}`"),
                    "K must be at least 1",
                ))
            }
            _ => {}
        }

        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut parts = match *self {
            Partitioner::Iid => iid(labels.len(), n_clients, &mut rng),
            Partitioner::Dirichlet { alpha } => {
                dirichlet(labels, n_classes, n_clients, alpha, &mut rng)?
            }
            Partitioner::Shards { classes_per_client } => {
                shards(labels, n_classes, n_clients, classes_per_client, &mut rng)?
            }
            Partitioner::Quantity { alpha } => quantity(labels.len(), n_clients, alpha, &mut rng)?,
        };
        for part in &mut parts {
            part.sort_unstable();
        }
        Ok(parts)
    }
}

/// Cuts `rows` into `n` contiguous chunks, the first `len % n` one longer than the rest.
fn even_chunks(rows: &[usize], n: usize) -> Vec<Vec<usize>> {
    let (base, extra) = (rows.len() / n, rows.len() % n);
    let mut start = 0;
    (0..n)
        .map(|i| {
            let len = base + usize::from(i < extra);
            let chunk = rows[start..start + len].to_vec();
            start += len;
            chunk
        })
        .collect()
}

fn iid(n_rows: usize, n_clients: usize, rng: &mut ChaCha8Rng) -> Vec<Vec<usize>> {
    let mut rows: Vec<usize> = (0..n_rows).collect();
    rows.shuffle(rng);
    even_chunks(&rows, n_clients)
}

/// Row indices of each class.
fn rows_by_class(labels: &[usize], n_classes: usize) -> Vec<Vec<usize>> {
    let mut by_class = vec![Vec::new(); n_classes];
    for (row, &l) in labels.iter().enumerate() {
        by_class[l].push(row);
    }
    by_class
}

/// The minimum client size both Dirichlet-based schemes guarantee: [`MIN_PARTITION_SIZE`], or
/// half the average size for a small pool. At least 1, as `n_rows >= n_clients`.
fn min_size(n_rows: usize, n_clients: usize) -> usize {
    MIN_PARTITION_SIZE.min(n_rows / (2 * n_clients)).max(1)
}

/// One draw from `Dirichlet(alpha · 1)` over `k` components.
///
/// Drawn in log space (`Gamma(α) = Gamma(α + 1) · U^(1/α)`, then a softmax) because for small α
/// plain Gamma draws underflow to zero and the normalised vector would be NaN.
fn dirichlet_draw(alpha: f64, k: usize, rng: &mut ChaCha8Rng) -> Result<Vec<f64>> {
    let gamma = Gamma::new(alpha + 1.0, 1.0)
        .map_err(|e| Error::invalid("Dirichlet concentration", format!("alpha = {alpha}: {e}")))?;
    let logs: Vec<f64> = (0..k)
        .map(|_| {
            let g: f64 = gamma.sample(rng);
            // `1 - U` is in (0, 1], so the logarithm is finite.
            let u: f64 = 1.0 - rng.gen::<f64>();
            g.ln() + u.ln() / alpha
        })
        .collect();
    let max = logs.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let weights: Vec<f64> = logs.iter().map(|&l| (l - max).exp()).collect();
    // The largest weight is exactly 1, so the sum is at least 1.
    let sum: f64 = weights.iter().sum();
    Ok(weights.into_iter().map(|w| w / sum).collect())
}

fn dirichlet(
    labels: &[usize],
    n_classes: usize,
    n_clients: usize,
    alpha: f64,
    rng: &mut ChaCha8Rng,
) -> Result<Vec<Vec<usize>>> {
    let by_class = rows_by_class(labels, n_classes);
    let min = min_size(labels.len(), n_clients);
    let mut sizes = Vec::new();
    for _ in 0..MAX_SAMPLING_ATTEMPTS {
        let mut parts = vec![Vec::new(); n_clients];
        for class_rows in &by_class {
            let mut rows = class_rows.clone();
            rows.shuffle(rng);
            let proportions = dirichlet_draw(alpha, n_clients, rng)?;
            // Split points are floor(cumulative proportion · n), as numpy's `astype(int)` in flwr.
            let n = rows.len();
            let (mut start, mut cumulative) = (0, 0.0);
            for (client, p) in proportions.iter().enumerate() {
                cumulative += p;
                let end = if client + 1 == n_clients {
                    n
                } else {
                    ((cumulative * n as f64) as usize).clamp(start, n)
                };
                parts[client].extend_from_slice(&rows[start..end]);
                start = end;
            }
        }
        sizes = parts.iter().map(Vec::len).collect();
        if sizes.iter().all(|&s| s >= min) {
            return Ok(parts);
        }
    }
    let short = sizes.iter().filter(|&&s| s < min).count();
    let smallest = sizes.iter().min().copied().unwrap_or(0);
    let n = labels.len();
    Err(Error::Data(format!(
        "dirichlet:{alpha} could not give each of {n_clients} clients at least {min} rows in \
         {MAX_SAMPLING_ATTEMPTS} draws ({n} rows in all; in the last draw {short} clients had \
         fewer, the smallest {smallest}); use a larger alpha or fewer clients"
    )))
}

fn shards(
    labels: &[usize],
    n_classes: usize,
    n_clients: usize,
    k: usize,
    rng: &mut ChaCha8Rng,
) -> Result<Vec<Vec<usize>>> {
    let by_class = rows_by_class(labels, n_classes);
    // Only classes with rows count: a client holding an absent class would have fewer than K.
    let mut classes: Vec<usize> = (0..n_classes)
        .filter(|&c| !by_class[c].is_empty())
        .collect();
    let n_present = classes.len();
    if k > n_present {
        return Err(Error::Data(format!(
            "shards:{k} needs {k} distinct classes per client, but the data has only {n_present} \
             classes with rows"
        )));
    }
    if n_clients * k < n_present {
        return Err(Error::Data(format!(
            "shards:{k} with {n_clients} clients holds {} class slots, fewer than the {n_present} \
             classes present, so some rows would belong to no client; use at least {} clients or \
             a larger K",
            n_clients * k,
            n_present.div_ceil(k)
        )));
    }
    classes.shuffle(rng);
    // Client i takes the K consecutive slots i·K .. i·K+K-1 of the shuffled list, taken
    // cyclically: K <= n_present makes them distinct, and consecutive slots spread the
    // n_clients·K holdings over the classes as evenly as possible (counts differ by at most one).
    let mut holders: Vec<Vec<usize>> = vec![Vec::new(); n_classes];
    for client in 0..n_clients {
        for j in 0..k {
            holders[classes[(client * k + j) % n_present]].push(client);
        }
    }
    let mut parts = vec![Vec::new(); n_clients];
    for &class in &classes {
        let (rows, clients) = (&by_class[class], &holders[class]);
        if rows.len() < clients.len() {
            return Err(Error::Data(format!(
                "shards:{k}: class {class} has {} rows but is held by {} clients, so some would \
                 get none of it; use fewer clients or a smaller K",
                rows.len(),
                clients.len()
            )));
        }
        let mut rows = rows.clone();
        rows.shuffle(rng);
        for (chunk, &client) in even_chunks(&rows, clients.len()).into_iter().zip(clients) {
            parts[client].extend(chunk);
        }
    }
    Ok(parts)
}

fn quantity(
    n_rows: usize,
    n_clients: usize,
    alpha: f64,
    rng: &mut ChaCha8Rng,
) -> Result<Vec<Vec<usize>>> {
    // Every client first gets the minimum, and only the rest follows the Dirichlet proportions:
    // the guarantee then holds on the first draw, where redrawing would often fail for small α.
    let min = min_size(n_rows, n_clients);
    let rest = n_rows - min * n_clients;
    let proportions = dirichlet_draw(alpha, n_clients, rng)?;
    // Largest-remainder rounding, so the sizes sum to exactly `n_rows`.
    let exact: Vec<f64> = proportions.iter().map(|p| p * rest as f64).collect();
    let mut sizes: Vec<usize> = exact.iter().map(|&x| min + x.floor() as usize).collect();
    let short = n_rows.saturating_sub(sizes.iter().sum());
    let mut by_remainder: Vec<usize> = (0..n_clients).collect();
    by_remainder.sort_by(|&a, &b| {
        let (ra, rb) = (exact[a] - exact[a].floor(), exact[b] - exact[b].floor());
        rb.total_cmp(&ra).then(a.cmp(&b))
    });
    for &client in by_remainder.iter().cycle().take(short) {
        sizes[client] += 1;
    }
    let mut rows: Vec<usize> = (0..n_rows).collect();
    rows.shuffle(rng);
    let mut start = 0;
    Ok(sizes
        .iter()
        .map(|&len| {
            // Sizes sum to n_rows, but clamp anyway so slicing cannot go out of range.
            let end = (start + len).min(n_rows);
            let chunk = rows[start..end].to_vec();
            start = end;
            chunk
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    const N_CLASSES: usize = 10;

    /// 2000 rows over 10 classes with unequal frequencies, in shuffled order.
    fn labels() -> Vec<usize> {
        let mut labels: Vec<usize> = (0..2000).map(|i| (i * i + i / 7) % N_CLASSES).collect();
        labels.shuffle(&mut ChaCha8Rng::seed_from_u64(123));
        labels
    }

    /// Too many clients for Dirichlet sampling: one short line that says how many and what to
    /// do, not every shard's size.
    #[test]
    fn an_impossible_dirichlet_split_is_told_in_one_short_line() {
        let e = Partitioner::Dirichlet { alpha: 0.5 }
            .partition(&labels(), N_CLASSES, 1000, 1)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("1000 clients")
                && e.contains("2000 rows in all")
                && e.contains("fewer clients"),
            "{e}"
        );
        assert!(e.len() < 300 && !e.contains('\n'), "{} bytes: {e}", e.len());
    }

    fn schemes() -> Vec<Partitioner> {
        ["iid", "dirichlet:0.5", "shards:2", "quantity:1"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect()
    }

    fn histogram(labels: &[usize], rows: &[usize]) -> Vec<f64> {
        let mut h = [0.0; N_CLASSES];
        for &r in rows {
            h[labels[r]] += 1.0;
        }
        let n = rows.len().max(1) as f64;
        h.iter().map(|c| c / n).collect()
    }

    /// Total-variation distance between two distributions.
    fn tv(a: &[f64], b: &[f64]) -> f64 {
        a.iter().zip(b).map(|(x, y)| (x - y).abs()).sum::<f64>() / 2.0
    }

    /// Mean over clients of the largest class's share of that client's rows.
    fn mean_max_share(labels: &[usize], parts: &[Vec<usize>]) -> f64 {
        parts
            .iter()
            .map(|p| histogram(labels, p).into_iter().fold(0.0, f64::max))
            .sum::<f64>()
            / parts.len() as f64
    }

    #[test]
    fn every_scheme_covers_each_row_once_and_is_deterministic() {
        let labels = labels();
        for scheme in schemes() {
            let parts = scheme.partition(&labels, N_CLASSES, 7, 42).unwrap();
            assert_eq!(parts.len(), 7, "{scheme}");
            let mut all: Vec<usize> = parts.iter().flatten().copied().collect();
            all.sort_unstable();
            assert_eq!(all, (0..labels.len()).collect::<Vec<_>>(), "{scheme}");
            for p in &parts {
                assert!(!p.is_empty(), "{scheme}");
                assert!(p.windows(2).all(|w| w[0] < w[1]), "{scheme}: not sorted");
            }
            assert_eq!(
                scheme.partition(&labels, N_CLASSES, 7, 42).unwrap(),
                parts,
                "{scheme}"
            );
            assert_ne!(
                scheme.partition(&labels, N_CLASSES, 7, 43).unwrap(),
                parts,
                "{scheme}"
            );
        }
    }

    #[test]
    fn iid_sizes_even_and_label_mix_global() {
        let labels = labels();
        let parts = Partitioner::Iid
            .partition(&labels, N_CLASSES, 6, 1)
            .unwrap();
        let sizes: Vec<usize> = parts.iter().map(Vec::len).collect();
        assert!(
            sizes.iter().max().unwrap() - sizes.iter().min().unwrap() <= 1,
            "{sizes:?}"
        );
        let global = histogram(&labels, &(0..labels.len()).collect::<Vec<_>>());
        for p in &parts {
            let d = tv(&histogram(&labels, p), &global);
            assert!(d < 0.1, "TV distance {d} from the global label mix");
        }
        assert!(mean_max_share(&labels, &parts) < 0.3);
    }

    #[test]
    fn dirichlet_small_alpha_is_far_more_skewed() {
        let labels = labels();
        let skewed = Partitioner::Dirichlet { alpha: 0.1 }
            .partition(&labels, N_CLASSES, 10, 5)
            .unwrap();
        let flat = Partitioner::Dirichlet { alpha: 100.0 }
            .partition(&labels, N_CLASSES, 10, 5)
            .unwrap();
        let (s, f) = (
            mean_max_share(&labels, &skewed),
            mean_max_share(&labels, &flat),
        );
        assert!(
            s > 0.5 && f < 0.25 && s > f + 0.3,
            "alpha 0.1: {s}, alpha 100: {f}"
        );
        for parts in [&skewed, &flat] {
            assert!(parts.iter().all(|p| p.len() >= MIN_PARTITION_SIZE));
        }
    }

    #[test]
    fn dirichlet_minimum_is_capped_by_pool_size_and_can_fail() {
        // 60 rows over 5 clients: the minimum is half the average, 6.
        assert_eq!(min_size(60, 5), 6);
        assert_eq!(min_size(1000, 5), MIN_PARTITION_SIZE);
        assert_eq!(min_size(3, 3), 1);
        let labels: Vec<usize> = (0..60).map(|i| i % 3).collect();
        let parts = Partitioner::Dirichlet { alpha: 5.0 }
            .partition(&labels, 3, 5, 0)
            .unwrap();
        assert!(parts.iter().all(|p| p.len() >= 6));
        // 10 rows per client needed, but each class goes almost whole to one client: never met.
        let labels: Vec<usize> = (0..80).map(|i| i % 2).collect();
        let err = Partitioner::Dirichlet { alpha: 0.01 }
            .partition(&labels, 2, 4, 0)
            .unwrap_err()
            .to_string();
        assert!(err.contains("at least 10 rows"), "{err}");
    }

    #[test]
    fn shards_gives_each_client_exactly_k_classes() {
        let labels = labels();
        for (k, n_clients) in [(2, 10), (2, 7), (3, 13), (1, 10)] {
            let parts = Partitioner::Shards {
                classes_per_client: k,
            }
            .partition(&labels, N_CLASSES, n_clients, 3)
            .unwrap();
            let mut holders = vec![0; N_CLASSES];
            for p in &parts {
                let h = histogram(&labels, p);
                let held: Vec<usize> = (0..N_CLASSES).filter(|&c| h[c] > 0.0).collect();
                assert_eq!(held.len(), k, "k={k}, clients={n_clients}");
                for c in held {
                    holders[c] += 1;
                }
            }
            let (lo, hi) = (holders.iter().min().unwrap(), holders.iter().max().unwrap());
            assert!(*lo >= 1 && hi - lo <= 1, "holders per class {holders:?}");
        }
    }

    #[test]
    fn shards_rejects_impossible_requests() {
        let labels = labels();
        let err = |k, n| {
            Partitioner::Shards {
                classes_per_client: k,
            }
            .partition(&labels, N_CLASSES, n, 0)
            .unwrap_err()
            .to_string()
        };
        assert!(err(11, 20).contains("only 10 classes"));
        assert!(err(0, 20).contains("at least 1"));
        assert!(err(2, 3).contains("at least 5 clients"));
        // A class present with 2 rows cannot be shared by 3 holders.
        let few = vec![0, 0, 1, 1, 1, 1, 1, 1];
        let e = Partitioner::Shards {
            classes_per_client: 2,
        }
        .partition(&few, 2, 3, 0)
        .unwrap_err()
        .to_string();
        assert!(e.contains("class 0 has 2 rows"), "{e}");
    }

    #[test]
    fn quantity_sizes_vary_but_labels_stay_iid() {
        let labels = labels();
        let parts = Partitioner::Quantity { alpha: 1.0 }
            .partition(&labels, N_CLASSES, 5, 11)
            .unwrap();
        let sizes: Vec<usize> = parts.iter().map(Vec::len).collect();
        let (lo, hi) = (*sizes.iter().min().unwrap(), *sizes.iter().max().unwrap());
        assert!(hi >= 2 * lo && hi - lo > 100, "sizes {sizes:?}");
        assert!(lo >= MIN_PARTITION_SIZE);
        let global = histogram(&labels, &(0..labels.len()).collect::<Vec<_>>());
        for p in parts.iter().filter(|p| p.len() >= 200) {
            let d = tv(&histogram(&labels, p), &global);
            assert!(d < 0.12, "TV distance {d} for a client of {}", p.len());
        }
        // Tiny alpha still meets the minimum, without redrawing.
        let tiny = Partitioner::Quantity { alpha: 0.01 }
            .partition(&labels, N_CLASSES, 50, 0)
            .unwrap();
        assert!(tiny.iter().all(|p| p.len() >= MIN_PARTITION_SIZE));
    }

    #[test]
    fn single_client_gets_everything() {
        let labels = labels();
        for scheme in schemes() {
            let parts = scheme.partition(&labels, N_CLASSES, 1, 0);
            // shards:2 cannot give one client every class; the others must take all rows.
            if matches!(scheme, Partitioner::Shards { .. }) {
                assert!(parts.is_err());
                continue;
            }
            assert_eq!(parts.unwrap(), vec![(0..labels.len()).collect::<Vec<_>>()]);
        }
    }

    #[test]
    fn partition_rejects_bad_arguments() {
        let labels = vec![0, 1, 2, 1];
        let iid = Partitioner::Iid;
        assert!(matches!(
            iid.partition(&labels, 3, 0, 0),
            Err(Error::InvalidValue { .. })
        ));
        assert!(iid
            .partition(&labels, 3, 5, 0)
            .unwrap_err()
            .to_string()
            .contains("4 rows"));
        assert!(iid
            .partition(&labels, 2, 2, 0)
            .unwrap_err()
            .to_string()
            .contains("label 2"));
        let bad = Partitioner::Dirichlet { alpha: -1.0 };
        assert!(matches!(
            bad.partition(&labels, 3, 2, 0),
            Err(Error::InvalidValue { .. })
        ));
    }

    #[test]
    fn parse_and_display_round_trip() {
        for s in [
            "iid",
            "dirichlet:0.5",
            "shards:2",
            "quantity:1",
            "dirichlet:100",
            "quantity:0.01",
        ] {
            let p: Partitioner = s.parse().unwrap();
            assert_eq!(p.to_string(), s);
            assert_eq!(p.to_string().parse::<Partitioner>().unwrap(), p);
        }
        assert_eq!(
            " Dirichlet : 0.25 ".parse::<Partitioner>().unwrap(),
            Partitioner::Dirichlet { alpha: 0.25 }
        );
        assert_eq!(
            "quantity:1.0".parse::<Partitioner>().unwrap(),
            Partitioner::Quantity { alpha: 1.0 }
        );
    }

    #[test]
    fn parse_errors_say_what_is_wrong() {
        let err = |s: &str| s.parse::<Partitioner>().unwrap_err();
        let unknown = err("zipf:2");
        assert!(matches!(
            unknown,
            Error::Unknown {
                what: "partition scheme",
                ..
            }
        ));
        assert!(unknown.to_string().contains(EXPECTED), "{unknown}");
        for (s, needle) in [
            ("dirichlet", "missing parameter"),
            ("dirichlet:", "missing parameter"),
            ("quantity:abc", "`abc` is not a number"),
            ("dirichlet:0", "> 0"),
            ("dirichlet:-1", "> 0"),
            ("quantity:inf", "finite"),
            ("dirichlet:NaN", "finite"),
            ("shards:0", "at least 1"),
            ("shards:2.5", "not a positive integer"),
            ("shards:-1", "not a positive integer"),
            ("shards", "missing parameter"),
            ("iid:3", "no parameter"),
        ] {
            let e = err(s);
            assert!(matches!(e, Error::InvalidValue { .. }), "{s}: {e:?}");
            let msg = e.to_string();
            assert!(msg.contains(needle) && msg.contains(s.trim()), "{s}: {msg}");
        }
    }
}
