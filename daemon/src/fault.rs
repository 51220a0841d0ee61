//! Fault injection for the test suite: `RESIDENCY_FAULT=NAME[,NAME…]` in a
//! daemon's environment arms the named faults. Nothing is armed unless the
//! variable names it; the faults exist to prove what the daemon does when a
//! part of it fails (see tests/tests/suite_guards.rs).
//!
//! - `delivery-panic` (sensord): the delivery task panics a moment after
//!   it starts.
//! - `ignore-sigterm` (sensord): SIGTERM is logged and ignored.

/// The environment variable that arms faults.
pub const VAR: &str = "RESIDENCY_FAULT";

/// True when `name` is armed.
pub fn armed(name: &str) -> bool {
    std::env::var(VAR).is_ok_and(|v| is_listed(&v, name))
}

fn is_listed(list: &str, name: &str) -> bool {
    list.split(',').any(|f| f.trim() == name)
}

#[cfg(test)]
mod tests {
    #[test]
    fn names_are_matched_whole() {
        assert!(super::is_listed(
            "ignore-sigterm,delivery-panic",
            "delivery-panic"
        ));
        assert!(!super::is_listed("delivery-panic-later", "delivery-panic"));
        assert!(!super::is_listed("", "delivery-panic"));
    }
}
