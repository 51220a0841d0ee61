//! Where the time goes: the kernel's own accounting of each of our programs'
//! run time (BPF_ENABLE_STATS), read from the program fds' fdinfo
//! (`run_time_ns`, `run_cnt`) and named through the program ids.

use std::collections::BTreeMap;

/// Turns the kernel's run-time accounting on while the returned fd lives.
pub fn enable() -> Option<std::os::fd::OwnedFd> {
    aya::sys::enable_stats(aya::sys::Stats::RunTime).ok()
}

/// (run_time_ns, run_cnt) by program id, of the programs this process holds.
pub fn snapshot() -> Stats {
    snapshot_of("self")
}

/// The same for the programs process `pid` ("self" or a number) holds.
pub fn snapshot_of(pid: &str) -> Stats {
    let mut out = BTreeMap::new();
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fdinfo")) else {
        return out;
    };
    for e in dir.flatten() {
        let text = std::fs::read_to_string(e.path()).unwrap_or_default();
        let field = |name: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.trim().parse::<u64>().ok())
        };
        if let (Some(id), Some(t), Some(n)) =
            (field("prog_id:"), field("run_time_ns:"), field("run_cnt:"))
        {
            out.insert(id as u32, (t, n));
        }
    }
    out
}

/// Per program id: (run_time_ns, run_cnt).
pub type Stats = BTreeMap<u32, (u64, u64)>;

/// Adds what ran between `before` and `after` to `total`.
pub fn accumulate(total: &mut Stats, before: &Stats, after: &Stats) {
    for (id, (t, n)) in after {
        let (t0, n0) = before.get(id).copied().unwrap_or((0, 0));
        let e = total.entry(*id).or_insert((0, 0));
        e.0 += t - t0;
        e.1 += n - n0;
    }
}

/// Prints per-program runs per operation and mean ns per run, for one side
/// that did `ops` operations.
pub fn report(side: &str, total: &Stats, ops: usize) {
    let names: BTreeMap<u32, String> = aya::programs::loaded_programs()
        .flatten()
        .map(|p| (p.id(), p.name_as_str().unwrap_or("?").to_owned()))
        .collect();
    let mut per_op = 0.0;
    for (id, (t, n)) in total {
        if *n == 0 {
            continue;
        }
        per_op += *t as f64 / ops as f64;
        println!(
            "  {side:<9} {:<18} {:>8.2} runs/op {:>8.0} ns/run",
            names.get(id).map_or("?", String::as_str),
            *n as f64 / ops as f64,
            *t as f64 / *n as f64
        );
    }
    println!(
        "  {side:<9} {:<18} {per_op:>26.0} ns/op in our programs",
        "total"
    );
}
