//! Where an address is: IP-range → country data, cloud provider ranges, and the
//! lookups the policy compiler and `sensorctl lookup` use.
//!
//! - [`ranges`]: the disjoint-range map everything is built on.
//! - [`lpm`]: the fewest prefixes for a longest-prefix-match table (ORTC).
//! - [`csv`]: `start,end,CC` range files (the offline default dataset's format).
//! - [`mmdb`]: MaxMind DB files.
//! - [`cloud`]: AWS `ip-ranges.json` and the cloud-region → jurisdiction table.
//! - [`countries`]: country codes and the EU27 / EEA / EU_ADEQUACY groups.
//! - [`reserved`]: private and reserved ranges (unknown unless a site names them).

pub mod cloud;
pub mod countries;
pub mod csv;
pub mod lpm;
pub mod mmdb;
pub mod ranges;
pub mod reserved;

use std::{
    fmt,
    path::{Path, PathBuf},
};

use ranges::RangeMap;

/// An ISO 3166-1 alpha-2 code (upper case ASCII).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Country(pub [u8; 2]);

impl Country {
    /// Parses a two-letter code (any case).
    pub fn parse(s: &str) -> Option<Country> {
        let b = s.as_bytes();
        (b.len() == 2 && b.iter().all(u8::is_ascii_alphabetic))
            .then(|| Country([b[0].to_ascii_uppercase(), b[1].to_ascii_uppercase()]))
    }

    /// The code as text.
    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.0).unwrap_or("??")
    }
}

impl fmt::Display for Country {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for Country {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where a region dataset came from (part of the agent's status).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Provenance {
    /// Dataset name.
    pub name: String,
    /// Version or date.
    pub version: String,
    /// Licence of the data.
    pub licence: String,
    /// Attribution the licence asks for.
    pub attribution: String,
    /// Files it was read from.
    pub files: Vec<PathBuf>,
}

/// The offline default dataset (defined once, in sensor-build, which
/// `cargo xtask setup` uses to fetch it).
pub use sensor_build::dataset as default_dataset;

/// IP → country.
#[derive(Debug, Clone, Default)]
pub struct RegionDb {
    pub countries: RangeMap<Country>,
    pub provenance: Option<Provenance>,
}

/// Failures reading region data. Each names the file and, where it helps, the line.
#[derive(Debug, thiserror::Error)]
pub enum RegionError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}:{line}: {msg}")]
    Line {
        path: PathBuf,
        line: usize,
        msg: String,
    },
    #[error(
        "{path}: ranges {first} and {second} overlap; a range file must assign every address at most once"
    )]
    Overlap {
        path: PathBuf,
        first: String,
        second: String,
    },
    #[error("{path}: {msg}")]
    Format { path: PathBuf, msg: String },
}

impl RegionDb {
    /// Country of an address.
    pub fn country(&self, ip: std::net::IpAddr) -> Option<Country> {
        self.countries.get(ranges::addr(ip)).copied()
    }

    /// Loads the default dataset from `dir` (the directory `cargo xtask setup`
    /// fills, or /usr/share/residency/regions in the package).
    pub fn load_default(dir: &Path) -> Result<RegionDb, RegionError> {
        let files: Vec<PathBuf> = default_dataset::FILES.iter().map(|f| dir.join(f)).collect();
        let mut db = csv::load(&files)?;
        db.provenance = Some(Provenance {
            name: default_dataset::PACKAGE.into(),
            version: default_dataset::VERSION.into(),
            licence: default_dataset::LICENCE.into(),
            attribution: default_dataset::ATTRIBUTION.into(),
            files,
        });
        Ok(db)
    }
}

/// Where the default dataset is looked for when none is configured: the
/// packaged location, then the workspace's `data/regions` (a development
/// checkout after `cargo xtask setup`).
pub fn default_dir() -> PathBuf {
    let system = PathBuf::from(default_dataset::SYSTEM_DIR);
    if system.join(default_dataset::FILES[0]).is_file() {
        return system;
    }
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(default_dataset::WORKSPACE_DIR)
}

/// Loads region data from `path`: a directory holding the default dataset, a
/// MaxMind DB file (`.mmdb`), or a range CSV file.
pub fn load_any(path: &Path) -> Result<RegionDb, RegionError> {
    if path.is_dir() {
        return RegionDb::load_default(path);
    }
    let mut db = if path.extension().is_some_and(|e| e == "mmdb") {
        mmdb::load(path)?
    } else {
        csv::load(&[path.to_owned()])?
    };
    db.provenance = Some(Provenance {
        name: path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        version: std::fs::metadata(path)
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map(|d| format!("file modified at Unix time {}", d.as_secs()))
            .unwrap_or_default(),
        licence: "as supplied by the operator".into(),
        attribution: String::new(),
        files: vec![path.to_owned()],
    });
    Ok(db)
}
