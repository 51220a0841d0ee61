//! The durable outbound spool: records are appended here before they count as
//! recorded, and removed only when the collector has acknowledged them.
//!
//! On disk: segment files `seg-<first seq, 20 digits>.log` in one directory,
//! each a run of frames `[len u32][crc32 u32][seq u64][payload]` (little-endian;
//! the CRC covers seq and payload). Sequence numbers are per host, start at 1
//! and never repeat.
//!
//! Durability: with `Fsync::Always` (the default) every append is fsynced
//! before it returns; with `Fsync::EveryN(n)` every n-th append (and every
//! `flush()`), trading up to n-1 records after a power loss (not after a process
//! crash: the data is in the page cache) for throughput. Under `EveryN` only
//! records up to the last fsync may be sent: a lost unsynced tail's sequence
//! numbers are reused after recovery.
//!
//! Recovery on open: a torn write at the tail of the last segment (a frame cut
//! short, or whose CRC fails with nothing valid after it) is cut off and counted,
//! never replayed as garbage. A frame that fails its CRC in the middle of a
//! segment cannot be trusted, nor can anything after it in that segment: the rest
//! of the segment is moved to `quarantine/` and counted, and the spool carries
//! on — never a crash loop at start.
//!
//! Bound: when the spool would exceed `max_bytes`, `Overflow::DropOldest` deletes
//! the oldest segments and `Overflow::DropNewest` refuses the new record; either
//! way [`Spool::take_dropped`] reports what was dropped (count and sequence span)
//! so the caller can record an explicit gap: silence never looks like compliance.

use std::{
    fs::{self, File, OpenOptions},
    io::{self, Read, Write},
    path::{Path, PathBuf},
};

const HEADER: usize = 16;

/// Keeps the next sequence number when no segment is left to tell it.
const NEXT_SEQ_FILE: &str = "next_seq";

/// When appends reach the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fsync {
    /// fsync after every append.
    Always,
    /// fsync after every n-th append.
    EveryN(u32),
}

/// What to drop when the spool is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Overflow {
    /// Delete the oldest unacknowledged records to make room.
    DropOldest,
    /// Refuse new records until acknowledgements make room.
    DropNewest,
}

/// Settings.
#[derive(Debug, Clone)]
pub struct Options {
    pub max_bytes: u64,
    pub segment_bytes: u64,
    pub fsync: Fsync,
    pub overflow: Overflow,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            max_bytes: 256 << 20,
            segment_bytes: 8 << 20,
            fsync: Fsync::Always,
            overflow: Overflow::DropOldest,
        }
    }
}

/// What recovery found when the spool was opened.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Recovery {
    /// Records found intact.
    pub records: u64,
    /// Bytes of a torn tail that were cut off.
    pub torn_bytes: u64,
    /// Bytes moved to quarantine (corrupt frames and what followed them).
    pub quarantined_bytes: u64,
}

/// Records dropped for lack of space (a gap to report).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Dropped {
    pub count: u64,
    pub first_seq: u64,
    pub last_seq: u64,
}

struct Segment {
    first_seq: u64,
    last_seq: u64,
    path: PathBuf,
    bytes: u64,
}

/// The spool.
pub struct Spool {
    dir: PathBuf,
    opts: Options,
    segments: Vec<Segment>,
    tail: Option<File>,
    next_seq: u64,
    unsynced: u32,
    dropped: Dropped,
}

fn seg_name(first: u64) -> String {
    format!("seg-{first:020}.log")
}

fn frame(seq: u64, payload: &[u8]) -> Vec<u8> {
    let mut h = crc32fast::Hasher::new();
    h.update(&seq.to_le_bytes());
    h.update(payload);
    let mut out = Vec::with_capacity(HEADER + payload.len());
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&h.finalize().to_le_bytes());
    out.extend_from_slice(&seq.to_le_bytes());
    out.extend_from_slice(payload);
    out
}

/// Parses frames from `data`; returns (records, offset of the first bad byte if
/// any).
fn parse(data: &[u8]) -> (Vec<(u64, Vec<u8>)>, Option<usize>) {
    let mut out = Vec::new();
    let mut off = 0;
    while off < data.len() {
        if data.len() - off < HEADER {
            return (out, Some(off));
        }
        let len = u32::from_le_bytes(data[off..off + 4].try_into().expect("4 bytes")) as usize;
        let crc = u32::from_le_bytes(data[off + 4..off + 8].try_into().expect("4 bytes"));
        let seq = u64::from_le_bytes(data[off + 8..off + 16].try_into().expect("8 bytes"));
        if data.len() - off - HEADER < len {
            return (out, Some(off));
        }
        let payload = &data[off + HEADER..off + HEADER + len];
        let mut h = crc32fast::Hasher::new();
        h.update(&seq.to_le_bytes());
        h.update(payload);
        if h.finalize() != crc {
            return (out, Some(off));
        }
        out.push((seq, payload.to_vec()));
        off += HEADER + len;
    }
    (out, None)
}

impl Spool {
    /// Opens (creating) the spool in `dir`, recovering from a crash.
    pub fn open(dir: &Path, opts: Options) -> io::Result<(Spool, Recovery)> {
        fs::create_dir_all(dir)?;
        let mut names: Vec<PathBuf> = fs::read_dir(dir)?
            .flatten()
            .map(|e| e.path())
            .filter(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with("seg-") && n.ends_with(".log"))
            })
            .collect();
        names.sort();
        let mut rec = Recovery::default();
        let mut segments = Vec::new();
        let count = names.len();
        for (i, path) in names.into_iter().enumerate() {
            let mut data = Vec::new();
            File::open(&path)?.read_to_end(&mut data)?;
            let (records, bad) = parse(&data);
            if let Some(off) = bad {
                let rest = &data[off..];
                let is_last = i + 1 == count;
                // A torn tail: the bad frame is the last thing in the last segment.
                let torn = is_last && parse_tail_is_garbage(rest);
                if torn {
                    rec.torn_bytes += rest.len() as u64;
                } else {
                    let qdir = dir.join("quarantine");
                    fs::create_dir_all(&qdir)?;
                    let name = path
                        .file_name()
                        .map(|n| n.to_string_lossy().into_owned())
                        .unwrap_or_default();
                    fs::write(qdir.join(format!("{name}.at-{off}")), rest)?;
                    rec.quarantined_bytes += rest.len() as u64;
                }
                let f = OpenOptions::new().write(true).open(&path)?;
                f.set_len(off as u64)?;
                f.sync_all()?;
            }
            rec.records += records.len() as u64;
            match (records.first(), records.last()) {
                (Some(first), Some(last)) => segments.push(Segment {
                    first_seq: first.0,
                    last_seq: last.0,
                    path,
                    bytes: records.iter().map(|r| (HEADER + r.1.len()) as u64).sum(),
                }),
                _ => fs::remove_file(&path)?,
            }
        }
        // Numbering continues after the highest sequence ever handed out, even
        // when every segment has been acknowledged and deleted: a reused
        // sequence would be ignored by the collector as a duplicate.
        let recorded: u64 = fs::read_to_string(dir.join(NEXT_SEQ_FILE))
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(1);
        let next_seq = segments.last().map_or(1, |s| s.last_seq + 1).max(recorded);
        let spool = Spool {
            dir: dir.to_owned(),
            opts,
            segments,
            tail: None,
            next_seq,
            unsynced: 0,
            dropped: Dropped::default(),
        };
        // The file exists from now on, so rewriting it never needs space.
        spool.save_next_seq()?;
        Ok((spool, rec))
    }

    /// Bytes on disk.
    pub fn bytes(&self) -> u64 {
        self.segments.iter().map(|s| s.bytes).sum()
    }

    /// Unacknowledged records.
    pub fn depth(&self) -> u64 {
        match (self.segments.first(), self.segments.last()) {
            (Some(f), Some(l)) => l.last_seq + 1 - f.first_seq,
            _ => 0,
        }
    }

    /// The oldest record not yet acknowledged (`next_seq` when none is).
    pub fn first_unacked(&self) -> u64 {
        self.segments.first().map_or(self.next_seq, |s| s.first_seq)
    }

    /// The sequence number the next append gets.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    fn note_dropped(&mut self, first: u64, last: u64) {
        let d = &mut self.dropped;
        if d.count == 0 {
            d.first_seq = first;
        }
        d.first_seq = d.first_seq.min(first);
        d.last_seq = d.last_seq.max(last);
        d.count += last + 1 - first;
    }

    /// Records dropped since the last call (a gap to report), if any.
    pub fn take_dropped(&mut self) -> Option<Dropped> {
        (self.dropped.count > 0).then(|| std::mem::take(&mut self.dropped))
    }

    /// Appends a record; returns its sequence number, or `None` when the spool is
    /// full and the policy is DropNewest (the record is counted as dropped).
    pub fn append(&mut self, payload: &[u8]) -> io::Result<Option<u64>> {
        let seq = self.next_seq;
        let size = (HEADER + payload.len()) as u64;
        while self.bytes() + size > self.opts.max_bytes {
            match self.opts.overflow {
                Overflow::DropNewest => {
                    self.next_seq += 1;
                    self.note_dropped(seq, seq);
                    return Ok(None);
                }
                Overflow::DropOldest => {
                    if self.segments.len() <= 1 {
                        // Only the segment being written: start a new one.
                        self.tail = None;
                        if let Some(s) = self.segments.first() {
                            let (f, l) = (s.first_seq, s.last_seq);
                            self.save_next_seq()?;
                            fs::remove_file(&s.path)?;
                            self.segments.clear();
                            self.note_dropped(f, l);
                        }
                        break;
                    }
                    let s = self.segments.remove(0);
                    fs::remove_file(&s.path)?;
                    self.note_dropped(s.first_seq, s.last_seq);
                }
            }
        }
        let roll = self.tail.is_none()
            || self
                .segments
                .last()
                .is_none_or(|s| s.bytes + size > self.opts.segment_bytes);
        if roll {
            let path = self.dir.join(seg_name(seq));
            self.tail = Some(OpenOptions::new().create(true).append(true).open(&path)?);
            self.segments.push(Segment {
                first_seq: seq,
                last_seq: seq - 1,
                path,
                bytes: 0,
            });
            if let Ok(d) = File::open(&self.dir) {
                let _ = d.sync_all();
            }
        }
        let f = self.tail.as_mut().expect("opened above");
        let sync = match self.opts.fsync {
            Fsync::Always => true,
            Fsync::EveryN(n) => self.unsynced + 1 >= n.max(1),
        };
        let written = f
            .write_all(&frame(seq, payload))
            .and_then(|()| if sync { f.sync_data() } else { Ok(()) });
        if let Err(e) = written {
            // A frame half written (disk full) would hide every frame
            // appended after it from the reader, and one written but not
            // synced would share its sequence with the next: cut it off. The
            // caller counts the record as not spooled.
            let keep = self.segments.last().map_or(0, |s| s.bytes);
            let _ = f.set_len(keep);
            return Err(e);
        }
        self.unsynced = if sync { 0 } else { self.unsynced + 1 };
        let s = self.segments.last_mut().expect("pushed above");
        s.last_seq = seq;
        s.bytes += size;
        self.next_seq += 1;
        Ok(Some(seq))
    }

    /// fsyncs what was appended.
    pub fn flush(&mut self) -> io::Result<()> {
        if let Some(f) = &self.tail {
            f.sync_data()?;
        }
        self.unsynced = 0;
        Ok(())
    }

    /// Up to `max` records with sequence numbers ≥ `from`, in order.
    pub fn read_from(&self, from: u64, max: usize) -> io::Result<Vec<(u64, Vec<u8>)>> {
        let mut out = Vec::new();
        for s in self.segments.iter().filter(|s| s.last_seq >= from) {
            let mut data = Vec::new();
            File::open(&s.path)?.read_to_end(&mut data)?;
            let (records, _) = parse(&data);
            for r in records.into_iter().filter(|r| r.0 >= from) {
                out.push(r);
                if out.len() == max {
                    return Ok(out);
                }
            }
        }
        Ok(out)
    }

    /// The collector acknowledged everything up to `seq`: whole segments at or
    /// below it are deleted (a partly acknowledged segment stays until the rest
    /// is acknowledged; re-sending its acknowledged part is harmless because the
    /// collector de-duplicates by sequence).
    pub fn ack(&mut self, seq: u64) -> io::Result<()> {
        while let Some(s) = self.segments.first() {
            if s.last_seq > seq {
                break;
            }
            let s = self.segments.remove(0);
            if self.segments.is_empty() {
                self.tail = None;
                self.save_next_seq()?;
            }
            fs::remove_file(&s.path)?;
        }
        Ok(())
    }

    /// Records the next sequence durably (before the last segment goes).
    /// Rewritten in place at a fixed width (the file is created when the
    /// spool opens): it needs no new disk block, so acknowledgements still
    /// free a full disk instead of failing on it.
    fn save_next_seq(&self) -> io::Result<()> {
        use std::os::unix::fs::FileExt;
        let line = format!("{:020}\n", self.next_seq);
        let f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .open(self.dir.join(NEXT_SEQ_FILE))?;
        f.write_all_at(line.as_bytes(), 0)?;
        f.set_len(line.len() as u64)?;
        f.sync_data()
    }
}

/// True when `rest` (from the first bad frame on) holds no valid frame anywhere
/// after its start: a torn tail rather than corruption followed by good data.
fn parse_tail_is_garbage(rest: &[u8]) -> bool {
    (1..rest.len()).all(|i| parse(&rest[i..]).0.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("rs-spool-{}-{name}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        d
    }

    fn payloads(s: &Spool) -> Vec<(u64, String)> {
        s.read_from(0, usize::MAX)
            .unwrap()
            .into_iter()
            .map(|(q, p)| (q, String::from_utf8(p).unwrap()))
            .collect()
    }

    #[test]
    fn survives_reopen_and_acks() {
        let d = dir("reopen");
        let (mut s, r) = Spool::open(&d, Options::default()).unwrap();
        assert_eq!(r, Recovery::default());
        for i in 0..5 {
            assert_eq!(s.append(format!("r{i}").as_bytes()).unwrap(), Some(i + 1));
        }
        drop(s);
        let (mut s, r) = Spool::open(&d, Options::default()).unwrap();
        assert_eq!(r.records, 5);
        assert_eq!(s.next_seq(), 6);
        assert_eq!(payloads(&s)[4], (5, "r4".into()));
        s.ack(5).unwrap();
        assert_eq!(s.depth(), 0);
        drop(s);
        // Numbering survives an empty spool and a restart.
        let (mut s, _) = Spool::open(&d, Options::default()).unwrap();
        assert_eq!(
            s.append(b"after").unwrap(),
            Some(6),
            "sequence numbers never repeat"
        );
        let _ = fs::remove_dir_all(&d);
    }

    #[test]
    fn a_torn_tail_is_cut_not_replayed() {
        let d = dir("torn");
        let (mut s, _) = Spool::open(&d, Options::default()).unwrap();
        s.append(b"one").unwrap();
        s.append(b"two").unwrap();
        drop(s);
        // A crash in the middle of writing a third frame.
        let seg = d.join(seg_name(1));
        let mut f = OpenOptions::new().append(true).open(&seg).unwrap();
        f.write_all(&frame(3, b"three")[..10]).unwrap();
        drop(f);
        let (s, r) = Spool::open(&d, Options::default()).unwrap();
        assert_eq!(r.records, 2);
        assert_eq!(r.torn_bytes, 10);
        assert_eq!(payloads(&s), vec![(1, "one".into()), (2, "two".into())]);
        assert_eq!(s.next_seq(), 3);
        let _ = fs::remove_dir_all(&d);
    }

    #[test]
    fn corruption_in_the_middle_is_quarantined_and_counted() {
        let d = dir("corrupt");
        let opts = Options {
            segment_bytes: 40,
            ..Options::default()
        };
        let (mut s, _) = Spool::open(&d, opts.clone()).unwrap();
        for p in [b"aaaa", b"bbbb", b"cccc", b"dddd"] {
            s.append(p).unwrap();
        }
        drop(s);
        // Flip a payload byte of the first frame of the first segment.
        let seg = d.join(seg_name(1));
        let mut data = fs::read(&seg).unwrap();
        data[HEADER] ^= 0xff;
        fs::write(&seg, &data).unwrap();
        let (s, r) = Spool::open(&d, opts).unwrap();
        assert!(r.quarantined_bytes > 0, "{r:?}");
        assert!(d.join("quarantine").read_dir().unwrap().count() == 1);
        // The other segments are intact and still delivered.
        let got = payloads(&s);
        assert!(got.iter().any(|(q, _)| *q == 4), "{got:?}");
        assert!(got.iter().all(|(q, _)| *q != 1));
        let _ = fs::remove_dir_all(&d);
    }

    #[test]
    fn full_spool_drops_oldest_and_reports_the_gap() {
        let d = dir("full");
        let opts = Options {
            max_bytes: 100,
            segment_bytes: 40,
            ..Options::default()
        };
        let (mut s, _) = Spool::open(&d, opts).unwrap();
        for i in 0..10u64 {
            assert_eq!(s.append(&i.to_le_bytes()).unwrap(), Some(i + 1));
        }
        let gap = s.take_dropped().expect("something was dropped");
        assert!(gap.count > 0 && gap.first_seq == 1, "{gap:?}");
        let kept = payloads(&s);
        assert_eq!(
            kept.first().unwrap().0,
            gap.last_seq + 1,
            "dropped and kept meet exactly"
        );
        assert_eq!(kept.last().unwrap().0, 10);
        assert!(s.bytes() <= 100);
        assert_eq!(s.take_dropped(), None);
        let _ = fs::remove_dir_all(&d);
    }

    #[test]
    fn full_spool_drops_newest_when_configured() {
        let d = dir("newest");
        let opts = Options {
            max_bytes: 72, // three 24-byte frames
            segment_bytes: 1000,
            overflow: Overflow::DropNewest,
            ..Options::default()
        };
        let (mut s, _) = Spool::open(&d, opts).unwrap();
        let results: Vec<Option<u64>> = (0..5u64)
            .map(|i| s.append(&i.to_le_bytes()).unwrap())
            .collect();
        assert_eq!(results, vec![Some(1), Some(2), Some(3), None, None]);
        assert_eq!(
            s.take_dropped(),
            Some(Dropped {
                count: 2,
                first_seq: 4,
                last_seq: 5
            })
        );
        let _ = fs::remove_dir_all(&d);
    }

    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// Whatever the sequence of appends, acks and reopens, the spool holds
        /// exactly the unacknowledged records (an oracle keeps them in a list),
        /// except whole segments kept until fully acknowledged.
        #[test]
        fn matches_an_oracle(ops in prop::collection::vec((0u8..3, 1usize..40), 1..60)) {
            let d = dir(&format!("prop-{}", ops.len()));
            let opts = Options { segment_bytes: 100, max_bytes: 1 << 20, ..Options::default() };
            let (mut s, _) = Spool::open(&d, opts.clone()).unwrap();
            let mut oracle: Vec<(u64, Vec<u8>)> = Vec::new();
            let mut acked = 0u64;
            for (op, n) in ops {
                match op {
                    0 => {
                        let payload = vec![n as u8; n];
                        let seq = s.append(&payload).unwrap().unwrap();
                        oracle.push((seq, payload));
                    }
                    1 => {
                        acked = acked.max(oracle.iter().map(|r| r.0).nth(n % (oracle.len() + 1)).unwrap_or(acked));
                        s.ack(acked).unwrap();
                    }
                    _ => {
                        drop(s);
                        s = Spool::open(&d, opts.clone()).unwrap().0;
                    }
                }
                let held = s.read_from(acked + 1, usize::MAX).unwrap();
                let want: Vec<_> = oracle.iter().filter(|r| r.0 > acked).cloned().collect();
                prop_assert_eq!(held, want);
            }
            let _ = fs::remove_dir_all(&d);
        }

        /// A crash that cuts the last segment at any byte loses at most the
        /// record being written, never returns garbage, and keeps numbering.
        #[test]
        fn a_cut_anywhere_recovers_a_prefix(n in 1usize..12, cut_from_end in 0usize..60) {
            let d = dir(&format!("cut-{n}-{cut_from_end}"));
            let (mut s, _) = Spool::open(&d, Options::default()).unwrap();
            let appended: Vec<Vec<u8>> = (0..n).map(|i| vec![i as u8; 3 + i]).collect();
            for p in &appended {
                s.append(p).unwrap();
            }
            drop(s);
            let seg = d.join(seg_name(1));
            let len = fs::metadata(&seg).unwrap().len();
            let new_len = len.saturating_sub(cut_from_end as u64);
            OpenOptions::new().write(true).open(&seg).unwrap().set_len(new_len).unwrap();
            let (mut s, r) = Spool::open(&d, Options::default()).unwrap();
            let got = s.read_from(0, usize::MAX).unwrap();
            prop_assert!(got.len() as u64 == r.records);
            for (i, (seq, p)) in got.iter().enumerate() {
                prop_assert_eq!(*seq, i as u64 + 1);
                prop_assert_eq!(p, &appended[i]);
            }
            prop_assert_eq!(r.quarantined_bytes, 0, "a cut tail is torn, not corrupt");
            let next = s.append(b"x").unwrap().unwrap();
            prop_assert_eq!(next, got.len() as u64 + 1);
            let _ = fs::remove_dir_all(&d);
        }
    }
}
