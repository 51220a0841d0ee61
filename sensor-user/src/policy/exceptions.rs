//! Exceptions: an operator's time-limited permission for a class to reach a
//! destination (an IP prefix or a country) that its policy forbids, granted
//! through the collector (`GrantException`).
//!
//! An exception widens the class's policy before compilation: a prefix joins the
//! class's `allowed_cidrs`, a country its allowed countries. A prefix therefore
//! beats a shorter `denied_cidrs` entry and loses to a longer one, exactly as a
//! policy's own `allowed_cidrs` would. Exceptions outlive agent restarts (kept
//! in `exceptions.pb` in the spool directory) and are removed at expiry.

use std::{
    io,
    path::Path,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use ipnet::IpNet;
use prost::Message;
use residency_proto::collector::v1::ExceptionState;

use super::validate::Policy;
use crate::regions::Country;

/// Where an exception lets a class go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Destination {
    Net(IpNet),
    Country(Country),
}

/// A checked exception.
#[derive(Debug, Clone, PartialEq)]
pub struct Exception {
    /// As granted (what is persisted and reported).
    pub state: ExceptionState,
    pub destination: Destination,
}

impl Exception {
    /// Checks what the collector sent.
    pub fn parse(state: ExceptionState) -> Result<Exception, String> {
        let d = state.destination.as_str();
        let destination = if let Ok(net) = d.parse::<IpNet>() {
            Destination::Net(net.trunc())
        } else if let Some(c) = Country::parse(d) {
            Destination::Country(c)
        } else {
            return Err(format!(
                "exception {}: destination {d:?} is neither an IP prefix nor an ISO country code",
                state.id
            ));
        };
        if state.id.is_empty() {
            return Err("an exception needs an id".into());
        }
        Ok(Exception { state, destination })
    }

    /// When it ends.
    pub fn expires(&self) -> SystemTime {
        UNIX_EPOCH + Duration::from_nanos(self.state.expires_unix_ns.max(0) as u64)
    }

    /// Whether it has ended at `now`.
    pub fn expired(&self, now: SystemTime) -> bool {
        self.expires() <= now
    }
}

/// Adds the exceptions of the policy's classes to their allowed destinations;
/// exceptions of classes the policy does not have are skipped (and returned).
pub fn widen<'a>(policy: &mut Policy, exceptions: &'a [Exception]) -> Vec<&'a Exception> {
    let mut skipped = Vec::new();
    for e in exceptions {
        let Some(class) = policy.classes.iter_mut().find(|c| c.name == e.state.class) else {
            skipped.push(e);
            continue;
        };
        match &e.destination {
            Destination::Net(n) => class.allowed_cidrs.push(*n),
            Destination::Country(c) => {
                class.allowed_countries.insert(*c);
            }
        }
    }
    skipped
}

/// File name in the spool directory.
pub const FILE: &str = "exceptions.pb";

/// Reads persisted exceptions (none when the file is absent).
pub fn load(dir: &Path) -> io::Result<Vec<Exception>> {
    let bytes = match std::fs::read(dir.join(FILE)) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut buf = bytes.as_slice();
    let mut out = Vec::new();
    while !buf.is_empty() {
        let state = ExceptionState::decode_length_delimited(&mut buf)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        out.push(Exception::parse(state).map_err(io::Error::other)?);
    }
    Ok(out)
}

/// Persists exceptions atomically (write, fsync, rename).
pub fn save(dir: &Path, exceptions: &[Exception]) -> io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let mut bytes = Vec::new();
    for e in exceptions {
        e.state
            .encode_length_delimited(&mut bytes)
            .map_err(io::Error::other)?;
    }
    crate::system::atomic::write_atomic(dir, FILE, &bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(id: &str, dest: &str) -> ExceptionState {
        ExceptionState {
            id: id.into(),
            class: "eu".into(),
            destination: dest.into(),
            expires_unix_ns: 5_000_000_000,
            justification: "vendor migration".into(),
            actor: "cert ops".into(),
        }
    }

    #[test]
    fn parse_persist_and_expire() {
        let a = Exception::parse(state("a", "203.0.113.7/24")).unwrap();
        assert_eq!(
            a.destination,
            Destination::Net("203.0.113.0/24".parse().unwrap())
        );
        let b = Exception::parse(state("b", "US")).unwrap();
        assert!(matches!(b.destination, Destination::Country(_)));
        assert!(
            Exception::parse(state("c", "nowhere"))
                .unwrap_err()
                .contains("neither")
        );
        assert!(a.expired(UNIX_EPOCH + Duration::from_secs(5)));
        assert!(!a.expired(UNIX_EPOCH + Duration::from_secs(4)));
        let dir = std::env::temp_dir().join(format!("rs-exc-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        assert!(load(&dir).unwrap().is_empty());
        save(&dir, &[a.clone(), b.clone()]).unwrap();
        assert_eq!(load(&dir).unwrap(), vec![a, b]);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
