//! A loaded, attached sensor for a test, with helpers to read its records.

use std::time::Duration;

use sensor_common::flow::FlowEvent;
use sensor_user::{events::EventReader, kernel::KernelSensor, system::mountinfo};

/// The kernel sensor attached at the cgroup v2 root (every process on the host
/// passes its programs, as in production), and its ring buffer. Each test has its
/// own instance with its own maps, so tests in parallel do not see each other's
/// tags. Dropping it detaches everything.
pub struct SensorFixture {
    pub sensor: KernelSensor,
    pub events: EventReader,
    seen: Vec<FlowEvent>,
}

impl SensorFixture {
    /// Loads and attaches.
    pub fn attach() -> SensorFixture {
        super::privilege::require_root();
        let mut sensor = KernelSensor::load().expect("loading the kernel programs");
        let root = mountinfo::cgroup2_mount().expect("cgroup v2");
        sensor
            .attach(&root)
            .expect("attaching at the cgroup v2 root");
        let events = sensor.take_events().expect("ring buffer");
        SensorFixture {
            sensor,
            events,
            seen: Vec::new(),
        }
    }

    /// Waits (up to 3 s) until `n` records match `pred`, and returns the matching
    /// ones. Records read on the way are kept for later calls.
    pub fn wait_for(&mut self, n: usize, pred: impl Fn(&FlowEvent) -> bool) -> Vec<FlowEvent> {
        let deadline = std::time::Instant::now() + Duration::from_secs(3);
        loop {
            self.events.drain(&mut self.seen);
            let found: Vec<FlowEvent> = self.seen.iter().filter(|e| pred(e)).copied().collect();
            if found.len() >= n || std::time::Instant::now() >= deadline {
                return found;
            }
            let _ = self.events.wait(Duration::from_millis(20));
        }
    }

    /// Every record read so far that matches `pred`, after draining what is there.
    pub fn all(&mut self, pred: impl Fn(&FlowEvent) -> bool) -> Vec<FlowEvent> {
        self.events.drain(&mut self.seen);
        self.seen.iter().filter(|e| pred(e)).copied().collect()
    }
}
