//! Reading flow records out of the kernel's `EVENTS` ring buffer.
//!
//! The drain does nothing but copy records out, so the kernel never waits for us;
//! decoding into [`FlowEvent`] is a plain copy of 128 bytes.

use std::{
    os::fd::{AsRawFd, RawFd},
    time::{Duration, Instant},
};

use aya::maps::{MapData, RingBuf};
use sensor_common::{dns::DnsAnswer, exec::ExecPath, flow::FlowEvent};

/// The consumer side of the ring buffer.
pub struct EventReader {
    ring: RingBuf<MapData>,
}

impl EventReader {
    pub(crate) fn new(ring: RingBuf<MapData>) -> Self {
        Self { ring }
    }

    /// Copies out every record available now.
    pub fn drain(&mut self, out: &mut Vec<FlowEvent>) -> usize {
        let before = out.len();
        while let Some(item) = self.ring.next() {
            if let Some(ev) = FlowEvent::from_bytes(&item) {
                out.push(ev);
            }
        }
        out.len() - before
    }

    /// Blocks until at least one record is available or `timeout` passes.
    pub fn wait(&self, timeout: Duration) -> std::io::Result<bool> {
        let mut pfd = libc::pollfd {
            fd: self.ring.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let ms = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
        // SAFETY: pfd is a valid pollfd for the duration of the call.
        let rc = unsafe { libc::poll(&mut pfd, 1, ms) };
        if rc < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(rc > 0)
    }

    /// Collects records until `done` says the collection is complete or
    /// `timeout` passes; returns everything read.
    pub fn collect_until(
        &mut self,
        timeout: Duration,
        mut done: impl FnMut(&[FlowEvent]) -> bool,
    ) -> Vec<FlowEvent> {
        let deadline = Instant::now() + timeout;
        let mut out = Vec::new();
        loop {
            self.drain(&mut out);
            if done(&out) {
                return out;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return out;
            }
            let _ = self.wait(left.min(Duration::from_millis(50)));
        }
    }
}

impl AsRawFd for EventReader {
    fn as_raw_fd(&self) -> RawFd {
        self.ring.as_raw_fd()
    }
}

/// The consumer side of a ring buffer of plain-data records `T` read in
/// place (`DNS` answers, `EXEC_PATHS`).
pub struct RecordRing<T> {
    ring: RingBuf<MapData>,
    _records: std::marker::PhantomData<T>,
}

/// DNS answers to tagged processes.
pub type DnsReader = RecordRing<DnsAnswer>;
/// Paths tagged processes exec'd.
pub type ExecPathReader = RecordRing<ExecPath>;

impl<T: Copy> RecordRing<T> {
    pub(crate) fn new(ring: RingBuf<MapData>) -> Self {
        Self {
            ring,
            _records: std::marker::PhantomData,
        }
    }

    /// The ring's fd (readable when records wait), to poll on.
    pub fn raw_fd(&self) -> RawFd {
        self.ring.as_raw_fd()
    }

    /// Hands every record available now to `f`; returns how many.
    pub fn drain(&mut self, mut f: impl FnMut(&T)) -> usize {
        let mut n = 0;
        while let Some(item) = self.ring.next() {
            if let Some(a) = sensor_common::read_record::<T>(&item) {
                f(&a);
                n += 1;
            }
        }
        n
    }
}

/// A ring buffer's fd, borrowed for polling: its owner ([`RecordRing`])
/// must outlive it.
pub struct BorrowedRingFd(pub RawFd);

impl AsRawFd for BorrowedRingFd {
    fn as_raw_fd(&self) -> RawFd {
        self.0
    }
}
