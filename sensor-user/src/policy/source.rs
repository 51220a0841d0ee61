//! Where a running agent's policy comes from, and building it: read the policy
//! file and region data, check and compile. Nothing here touches the kernel, so
//! a failure leaves the running policy in force.

use std::path::PathBuf;

use super::{
    compile::{self, Compiled},
    exceptions::{self, Exception},
    validate::{self, PolicyErrors},
};
use crate::regions::{
    self, RegionError,
    cloud::{self, CloudRanges},
};

/// The files a policy is built from.
#[derive(Debug, Clone)]
pub struct PolicySource {
    pub policy: PathBuf,
    /// Region data (directory with the default dataset, .mmdb or .csv).
    pub regions: PathBuf,
    /// Optional AWS ip-ranges.json.
    pub aws_ranges: Option<PathBuf>,
}

/// Why a policy could not be built.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("policy rejected:\n{0}")]
    Policy(#[from] PolicyErrors),
    #[error("region data: {0}")]
    Regions(#[from] RegionError),
    /// The policy file could not be read.
    #[error("reading the policy {path}: {source}")]
    Read {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The compiled policy needs more kernel map entries than there are.
    #[error("{0}")]
    Capacity(String),
}

impl PolicySource {
    /// Reads, checks and compiles the policy file, widened by `exceptions`.
    pub fn build(&self, exceptions: &[Exception]) -> Result<Compiled, BuildError> {
        self.compile(validate::load(&self.policy)?, exceptions)
    }

    /// Checks and compiles policy text (as if read from the policy file),
    /// widened by `exceptions`.
    pub fn build_text(&self, text: &str, exceptions: &[Exception]) -> Result<Compiled, BuildError> {
        self.compile(validate::parse(&self.policy, text)?, exceptions)
    }

    fn compile(
        &self,
        mut policy: validate::Policy,
        exceptions: &[Exception],
    ) -> Result<Compiled, BuildError> {
        exceptions::widen(&mut policy, exceptions);
        let mut db = regions::load_any(&self.regions)?;
        let cloud = match &self.aws_ranges {
            Some(p) => {
                let c = cloud::load_aws(p)?;
                if c.skipped > 0 {
                    tracing::warn!(file = %p.display(), prefixes = c.skipped, regions = ?c.unknown_regions, "AWS prefixes skipped: their region has no single jurisdiction in this build's table (they fall back to the country data)");
                }
                if c.host_bits > 0 {
                    tracing::warn!(file = %p.display(), prefixes = c.host_bits, "AWS prefixes written with host bits set; used as their networks");
                }
                c
            }
            None => CloudRanges::default(),
        };
        let compiled = compile::compile(policy, &db, &cloud);
        let (_, prefixes) = compiled.prefix_counts();
        let cap = sensor_common::policy::capacity::VERDICTS as usize;
        if prefixes > cap {
            let per_class: Vec<String> = compiled
                .classes
                .iter()
                .map(|c| format!("{} {}", c.name, c.entries.len()))
                .collect();
            return Err(BuildError::Capacity(format!(
                "{}: the compiled verdict table needs {prefixes} prefixes ({}); the kernel holds {cap}: give classes with the same allowed set one class, or allow whole groups (EEA) rather than many single countries",
                self.policy.display(),
                per_class.join(", ")
            )));
        }
        // The dataset's ranges are no longer needed once compiled (the geography
        // keeps what lookups use); drop them before the caller keeps `compiled`.
        db.countries = Default::default();
        Ok(compiled)
    }
}
