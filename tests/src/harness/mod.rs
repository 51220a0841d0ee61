pub mod cgroup;
pub mod netns;
pub mod privilege;
pub mod probe;
pub mod slot;
