//! Sides of a connect benchmark, run interleaved: each a worker process in a
//! cgroup of its own, every round running every side once in an order that
//! rotates, so the machine's noise hits them alike. Reports medians of the
//! per-round means and ratios to the first side.

use std::net::SocketAddr;

use super::{progstats, stats, worker::Worker};
use crate::harness::cgroup::TestCgroup;

/// One side.
pub struct Side {
    pub name: &'static str,
    pub worker: Worker,
    /// ns per operation, one per round.
    pub samples: Vec<f64>,
    /// The kernel's run time of the programs, while this side ran.
    pub prog: progstats::Stats,
}

impl Side {
    /// A worker in `cgroup` connecting to `target`.
    pub fn new(name: &'static str, cgroup: &TestCgroup, target: SocketAddr) -> Side {
        Side {
            name,
            worker: Worker::start(cgroup, target),
            samples: Vec::new(),
            prog: Default::default(),
        }
    }
}

/// Runs one warm-up round, then `rounds` rounds of `per_round` operations per
/// side. With `programs_of` (a pid, or "self"), accounts the kernel's run
/// time of that process's programs per side (BPF stats on meanwhile).
pub fn interleave(sides: &mut [Side], rounds: usize, per_round: usize, programs_of: Option<&str>) {
    for s in sides.iter_mut() {
        s.worker.run(per_round);
    }
    let stats_fd = programs_of.and_then(|_| progstats::enable());
    for round in 0..rounds {
        for k in 0..sides.len() {
            let i = (round + k) % sides.len();
            let before = stats_fd
                .as_ref()
                .zip(programs_of)
                .map(|(_, p)| progstats::snapshot_of(p));
            let ns = sides[i].worker.run(per_round);
            if let (Some(before), Some(p)) = (before, programs_of) {
                progstats::accumulate(&mut sides[i].prog, &before, &progstats::snapshot_of(p));
            }
            sides[i].samples.push(ns as f64 / per_round as f64);
        }
    }
}

/// Prints each side's median and p90 ns per operation and its ratio to the
/// first side's median.
pub fn report(sides: &[Side]) {
    let base = stats::median(&sides[0].samples);
    println!(
        "{:<10} {:>14} {:>14} {:>10}",
        "side", "median ns/op", "p90 ns/op", "ratio"
    );
    for s in sides {
        let m = stats::median(&s.samples);
        println!(
            "{:<10} {:>14.0} {:>14.0} {:>10.3}",
            s.name,
            m,
            stats::percentile(&s.samples, 0.9),
            m / base
        );
    }
}

/// Prints the per-side program run times `interleave` accounted.
pub fn report_programs(sides: &[Side], ops: usize) {
    println!(
        "kernel run time of the sensor's programs per side (BPF stats; the accounting adds a little):"
    );
    for s in sides {
        progstats::report(s.name, &s.prog, ops);
    }
}
