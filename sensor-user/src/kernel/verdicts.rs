//! Modes and per-class destination verdicts.
//!
//! Verdicts live in two LPM tries. A new table is written into the one the
//! kernel is not reading, then one write of the CONFIG map switches the kernel
//! over (and bumps the generation every record carries): the kernel never sees
//! an empty or half-written table.

use std::{fmt, str::FromStr};

use aya::maps::{
    Array, MapData,
    lpm_trie::{Key, LpmTrie},
};
use ipnet::IpNet;
use sensor_common::{
    net::{map_prefix_len, to_map_form},
    policy::{VERDICT_CLASS_BITS, VerdictKey, mode, verdict},
};

use super::{
    KernelSensor, map_err,
    tagging::{ClassId, class_bit},
};
use crate::SensorError;

/// Enforcement mode of a class.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Mode {
    /// Nothing is judged or reported.
    Off,
    /// Violations are reported.
    Monitor,
    /// Violations are reported and denied (EPERM before any packet).
    Enforce,
}

impl Mode {
    /// The kernel's code.
    pub fn code(self) -> u8 {
        match self {
            Mode::Off => mode::OFF,
            Mode::Monitor => mode::MONITOR,
            Mode::Enforce => mode::ENFORCE,
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Mode::Off => "off",
            Mode::Monitor => "monitor",
            Mode::Enforce => "enforce",
        })
    }
}

impl FromStr for Mode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "off" => Ok(Mode::Off),
            "monitor" => Ok(Mode::Monitor),
            "enforce" => Ok(Mode::Enforce),
            other => Err(format!(
                "unknown mode {other:?}: write off, monitor or enforce"
            )),
        }
    }
}

/// A destination verdict.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Verdict {
    Allow,
    Deny,
    /// Explicitly unknown: a hole in a covering allow/deny prefix where no
    /// region data says anything (the kernel treats it like no entry).
    Unknown,
}

impl Verdict {
    fn code(self) -> u8 {
        match self {
            Verdict::Allow => verdict::ALLOW,
            Verdict::Deny => verdict::DENY,
            Verdict::Unknown => verdict::UNKNOWN,
        }
    }
}

/// One row of a verdict table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VerdictEntry {
    pub class: ClassId,
    pub net: IpNet,
    pub verdict: Verdict,
}

fn verdict_key(class: ClassId, net: IpNet) -> Key<VerdictKey> {
    let data = VerdictKey {
        class_be: u32::from(class).to_be_bytes(),
        addr: to_map_form(net.network()),
    };
    Key::new(
        VERDICT_CLASS_BITS + map_prefix_len(net.addr(), net.prefix_len()),
        data,
    )
}

/// What the kernel's programs would decide for a destination now (see
/// `decide.rs` in sensor-ebpf), read from the same maps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Judgement {
    /// Classes for which the destination is a violation.
    pub violating: u64,
    /// The worst verdict code among them (`sensor_common::policy::verdict`).
    pub verdict: u8,
    /// Whether a violating class is in enforce mode.
    pub enforce: bool,
}

impl KernelSensor {
    /// Judges `ip` for a process carrying `classes` exactly as the kernel
    /// does at connect: failsafe destinations and loopback pass, every class
    /// whose mode is not off is looked up in the live verdict table. `None`:
    /// not a violation.
    pub fn judge(&self, classes: u64, ip: std::net::IpAddr) -> Option<Judgement> {
        if ip.is_loopback() || ip.to_canonical().is_loopback() {
            return None;
        }
        let addr = to_map_form(ip);
        let failsafe: LpmTrie<&MapData, [u8; 16], u8> =
            LpmTrie::try_from(self.ebpf.map("FAILSAFE")?).ok()?;
        if failsafe.get(&Key::new(128, addr), 0).is_ok() {
            return None;
        }
        let modes: Array<&MapData, u8> = Array::try_from(self.ebpf.map("MODES")?).ok()?;
        let name = if self.config.active_verdicts == 0 {
            "VERDICTS_A"
        } else {
            "VERDICTS_B"
        };
        let trie: LpmTrie<&MapData, VerdictKey, u8> =
            LpmTrie::try_from(self.ebpf.map(name)?).ok()?;
        let mut j = Judgement {
            violating: 0,
            verdict: verdict::NONE,
            enforce: false,
        };
        for class in 0..64u32 {
            if classes & (1 << class) == 0 {
                continue;
            }
            let m = modes.get(&class, 0).unwrap_or(mode::OFF);
            if m == mode::OFF {
                continue;
            }
            let key = Key::new(
                VERDICT_CLASS_BITS + 128,
                VerdictKey {
                    class_be: class.to_be_bytes(),
                    addr,
                },
            );
            let v = trie.get(&key, 0).unwrap_or(verdict::UNKNOWN);
            let bad = v == verdict::DENY
                || (v == verdict::UNKNOWN && self.config.unknown_is_violation != 0);
            if bad {
                j.violating |= 1 << class;
                if j.verdict != verdict::DENY {
                    j.verdict = v;
                }
                j.enforce |= m == mode::ENFORCE;
            }
        }
        (j.violating != 0).then_some(j)
    }

    /// Sets the mode of one class (it applies to the next call of every process).
    pub fn set_mode(&mut self, class: ClassId, m: Mode) -> Result<(), SensorError> {
        class_bit(class)?;
        super::array_mut::<u8>(&mut self.ebpf, "MODES")?
            .set(u32::from(class), m.code(), 0)
            .map_err(map_err("MODES"))?;
        // Verdicts cached under the old mode must not outlive it.
        self.write_config()
    }

    /// The policy generation in force (0 before the first table).
    pub fn generation(&self) -> u32 {
        self.config.generation
    }

    /// Replaces the whole verdict table: writes `entries` into the inactive trie,
    /// then switches the kernel to it in one CONFIG write. Returns the new
    /// generation. On error the old table stays in force.
    pub fn replace_verdicts(&mut self, entries: &[VerdictEntry]) -> Result<u32, SensorError> {
        for e in entries {
            class_bit(e.class)?;
        }
        let inactive = if self.config.active_verdicts == 0 {
            "VERDICTS_B"
        } else {
            "VERDICTS_A"
        };
        let map = self
            .ebpf
            .map_mut(inactive)
            .ok_or(SensorError::MissingMap(inactive))?;
        let mut trie: LpmTrie<&mut MapData, VerdictKey, u8> =
            LpmTrie::try_from(map).map_err(map_err(inactive))?;
        // Clear what an earlier generation left in this trie.
        let stale: Vec<Key<VerdictKey>> = trie.keys().filter_map(Result::ok).collect();
        for k in &stale {
            trie.remove(k).map_err(map_err(inactive))?;
        }
        for e in entries {
            trie.insert(&verdict_key(e.class, e.net), e.verdict.code(), 0)
                .map_err(map_err(inactive))?;
        }
        self.config.active_verdicts ^= 1;
        self.config.generation = self.config.generation.wrapping_add(1);
        self.write_config()?;
        Ok(self.config.generation)
    }
}
