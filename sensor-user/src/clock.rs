//! Wall-clock time for kernel timestamps.
//!
//! The kernel stamps records with `bpf_ktime_get_ns()` (CLOCK_MONOTONIC, cheap,
//! never jumps); records also need wall-clock time for auditors. The offset
//! between the two clocks is read when converting, so a clock step (NTP) is
//! reflected from then on.

use std::time::{Duration, SystemTime};

fn clock_ns(clock: libc::clockid_t) -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: ts is a valid out-pointer.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    (ts.tv_sec as u64)
        .saturating_mul(1_000_000_000)
        .saturating_add(ts.tv_nsec as u64)
}

/// CLOCK_MONOTONIC now, in ns (what `bpf_ktime_get_ns()` returns).
pub fn monotonic_ns() -> u64 {
    clock_ns(libc::CLOCK_MONOTONIC)
}

/// Wall-clock minus monotonic time now (ns): a kernel timestamp plus this is
/// its Unix time. Read once per batch of records.
pub fn wall_offset_ns() -> i64 {
    clock_ns(libc::CLOCK_REALTIME) as i64 - monotonic_ns() as i64
}

/// The wall-clock time of a kernel timestamp.
pub fn wall_from_ktime(ktime_ns: u64) -> SystemTime {
    let mono = monotonic_ns();
    let real = clock_ns(libc::CLOCK_REALTIME);
    let offset = real.saturating_sub(mono);
    SystemTime::UNIX_EPOCH + Duration::from_nanos(offset.saturating_add(ktime_ns))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_now_is_wall_now() {
        let wall = wall_from_ktime(monotonic_ns());
        let diff = SystemTime::now()
            .duration_since(wall)
            .unwrap_or_else(|e| e.duration());
        assert!(diff < Duration::from_secs(1), "{diff:?}");
    }
}
