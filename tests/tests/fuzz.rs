//! Byte fuzzing of every parser that reads what a user or a peer hands the
//! product: the policy TOML, range CSVs, MaxMind DBs, AWS `ip-ranges.json`,
//! the spool's segment files and the collector's record decoder.
//!
//! proptest drives it on the stable toolchain: each target starts from the
//! seeds in `tests/fuzz/corpus/<target>/` and mutates them (byte flips,
//! insertions, truncation, splices of two seeds). The property: no input makes
//! a parser panic, and every rejection names the file it came from.
//! `cargo xtask test` runs a short pass (proptest's 256 cases per target);
//! `cargo xtask fuzz` a long one (PROPTEST_CASES, default there 20,000). The
//! spool seed is written by this build's spool at run time; set
//! RS_FUZZ_WRITE_SEED=tests/fuzz/corpus/spool to refresh the stored copy.

use std::path::{Path, PathBuf};

use proptest::prelude::*;

/// The seeds of `target`.
fn corpus(target: &str) -> Vec<Vec<u8>> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target);
    let mut seeds: Vec<Vec<u8>> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("corpus {}: {e}", dir.display()))
        .flatten()
        .filter_map(|e| std::fs::read(e.path()).ok())
        .collect();
    if target == "spool" {
        seeds.push(spool_segment());
    }
    assert!(!seeds.is_empty(), "no seeds in {}", dir.display());
    seeds.push(Vec::new());
    seeds
}

/// A segment file as this build's spool writes it (three records).
fn spool_segment() -> Vec<u8> {
    use sensor_user::export::spool::{Options, Spool};
    let s = Scratch::new("spool-seed");
    let (mut spool, _) = Spool::open(&s.0, Options::default()).expect("spool");
    for body in [&b"{\"k\":\"violation\"}"[..], b"{\"k\":\"gap\"}", b"x"] {
        spool.append(body).expect("append");
    }
    spool.flush().expect("flush");
    let seg = std::fs::read_dir(&s.0)
        .expect("dir")
        .flatten()
        .find(|e| e.file_name().to_string_lossy().starts_with("seg-"))
        .expect("a segment");
    let bytes = std::fs::read(seg.path()).expect("segment");
    if let Ok(dir) = std::env::var("RS_FUZZ_WRITE_SEED") {
        std::fs::write(Path::new(&dir).join("three-records.seg"), &bytes).expect("seed");
    }
    bytes
}

/// One edit of a seed.
#[derive(Debug, Clone)]
enum Edit {
    Flip(usize, u8),
    Insert(usize, Vec<u8>),
    Truncate(usize),
    Splice(usize, usize),
}

/// Seeds, edited.
fn mutated(seeds: Vec<Vec<u8>>) -> impl Strategy<Value = Vec<u8>> {
    let n = seeds.len();
    let edit = prop_oneof![
        (any::<usize>(), any::<u8>()).prop_map(|(i, b)| Edit::Flip(i, b)),
        (any::<usize>(), prop::collection::vec(any::<u8>(), 1..8))
            .prop_map(|(i, b)| Edit::Insert(i, b)),
        any::<usize>().prop_map(Edit::Truncate),
        (any::<usize>(), any::<usize>()).prop_map(|(i, j)| Edit::Splice(i, j)),
    ];
    (0..n, prop::collection::vec(edit, 0..6)).prop_map(move |(k, edits)| {
        let mut b = seeds[k].clone();
        for e in edits {
            let at = |i: usize, len: usize| if len == 0 { 0 } else { i % (len + 1) };
            match e {
                Edit::Flip(i, x) if !b.is_empty() => {
                    let i = i % b.len();
                    b[i] ^= x;
                }
                Edit::Flip(..) => {}
                Edit::Insert(i, bytes) => {
                    let i = at(i, b.len());
                    b.splice(i..i, bytes);
                }
                Edit::Truncate(i) => b.truncate(at(i, b.len())),
                Edit::Splice(i, j) => {
                    let other = &seeds[j % seeds.len()];
                    let i = at(i, b.len());
                    let from = at(j, other.len());
                    b.truncate(i);
                    b.extend_from_slice(&other[from..]);
                }
            }
        }
        b
    })
}

/// A scratch directory per case, removed after.
struct Scratch(PathBuf);

impl Scratch {
    fn new(what: &str) -> Scratch {
        static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let d = std::env::temp_dir().join(format!(
            "rs-fuzz-{what}-{}-{}",
            std::process::id(),
            N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&d).expect("scratch dir");
        Scratch(d)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

proptest! {
    #[test]
    fn policy_toml(bytes in mutated(corpus("policy"))) {
        let text = String::from_utf8_lossy(&bytes);
        if let Err(e) = sensor_user::policy::validate::parse(Path::new("fuzz.toml"), &text) {
            prop_assert!(e.to_string().starts_with("fuzz.toml"), "{e}");
        }
    }

    #[test]
    fn range_csv(bytes in mutated(corpus("csv"))) {
        let text = String::from_utf8_lossy(&bytes);
        if let Err(e) = sensor_user::regions::csv::parse(Path::new("fuzz.csv"), &text) {
            prop_assert!(e.to_string().contains("fuzz.csv"), "{e}");
        }
    }

    #[test]
    fn maxmind_db(bytes in mutated(corpus("mmdb"))) {
        let s = Scratch::new("mmdb");
        let path = s.0.join("fuzz.mmdb");
        std::fs::write(&path, &bytes).expect("write");
        if let Err(e) = sensor_user::regions::mmdb::load(&path) {
            prop_assert!(e.to_string().contains("fuzz.mmdb"), "{e}");
        }
    }

    #[test]
    fn aws_ip_ranges(bytes in mutated(corpus("aws"))) {
        let text = String::from_utf8_lossy(&bytes);
        if let Err(e) = sensor_user::regions::cloud::parse_aws(Path::new("fuzz.json"), &text) {
            prop_assert!(e.to_string().contains("fuzz.json"), "{e}");
        }
    }

    #[test]
    fn spool_segments(bytes in mutated(corpus("spool"))) {
        use sensor_user::export::spool::{Options, Spool};
        let s = Scratch::new("spool");
        std::fs::write(s.0.join(format!("seg-{:020}.log", 1)), &bytes).expect("write");
        // A damaged segment is cut or quarantined, never a panic; what is
        // read back is what was recovered.
        if let Ok((mut spool, _)) = Spool::open(&s.0, Options::default()) {
            let read = spool.read_from(0, 10_000);
            prop_assert!(read.is_ok());
        }
    }

    #[test]
    fn collector_record_decoder(bytes in mutated(corpus("record"))) {
        use prost::Message;
        // Whatever an agent sends that decodes is indexed without a panic.
        if let Ok(r) = residency_proto::collector::v1::Record::decode(bytes.as_slice()) {
            let _ = collector::store::filter::Indexed::of(&r);
        }
    }
}
