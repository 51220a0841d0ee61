pub mod agent;
pub mod cgroup;
pub mod netns;
pub mod privilege;
pub mod probe;
pub mod scenario;
pub mod sensor;
pub mod slot;
