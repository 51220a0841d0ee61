//! The durable outbound spool: records are appended here before they count as
//! recorded, and removed only when the collector has acknowledged them.
//!
//! On disk: segment files `seg-<first seq, 20 digits>.log` in one directory,
//! each a run of frames `[len u32][crc32 u32][seq u64][payload]` (little-endian;
//! the CRC covers seq and payload). Sequence numbers are per host, start at 1
//! and never repeat.
//!
//! Durability: with `Fsync::Always` (the default) every append is written and
//! fsynced before it returns; with `Fsync::EveryN(n)` appends are held and
//! written together (on `write_out`/`flush`, before a read, when the tail
//! rolls, past 256 KiB), and fsynced every n-th append, on `flush()`, or by
//! the caller off its thread (`tail_for_sync`, see `syncer.rs`); a segment is
//! synced before the next one starts. That trades the records written since
//! the last fsync after a power loss (not after a process crash: the data is
//! in the page cache) for throughput; a lost unsynced tail's sequence numbers
//! may be handed out again after recovery, so nothing above [`Spool::durable`]
//! is delivered: a number the collector stored is never reused (it would
//! take the new record for a duplicate and drop it).
//!
//! Recovery on open: a torn write at the tail of the last segment (a frame cut
//! short, or whose CRC fails with nothing valid after it) is cut off and counted,
//! never replayed as garbage. Damage in the middle of a segment (bytes whose
//! frame fails its CRC) costs only the damaged frames: parsing resumes at the
//! next valid frame (its sequence above the last good one), the damaged bytes
//! are copied to `quarantine/` (when there is room) and cut out of the
//! segment in place (no new disk space needed), and the sequence numbers
//! that were in them are reported ([`Recovery::lost`]) for the caller to
//! record as a gap. Sequence numbers continue after the highest intact one
//! (or the `next_seq` file's, if higher): never reused. Never a crash loop
//! at start.
//!
//! Reads go through a per-segment index (sequence → offset), built at open
//! and on append: a batch reads its own bytes, not whole segments.
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

use residency_proto::chain;

const HEADER: usize = 16;

/// Keeps the next sequence number when no segment is left to tell it.
const NEXT_SEQ_FILE: &str = "next_seq";

/// Present while the spool does not know which sequence numbers this host
/// used before it: created when the spool opens in a directory with no
/// segment and no `next_seq` (a new host, or a wiped spool), removed once a
/// collector told what it holds.
const HISTORY_UNKNOWN_FILE: &str = "history_unknown";
/// The highest sequence a collector acknowledged, kept across restarts (a
/// collector that comes back holding less lost acknowledged records,
/// whether the agent ran meanwhile or not). Rewritten in place, unsynced:
/// after a power loss it may lag, which only weakens that check.
const ACKED_FILE: &str = "acked";

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
    /// Chain the records (see `residency_proto::chain`): each payload is
    /// written followed by its chain field, the hash over the previous
    /// record's hash, its sequence and the payload. Payloads must then be
    /// encoded records without `seq` and `chain`.
    pub chain: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            max_bytes: 256 << 20,
            segment_bytes: 8 << 20,
            fsync: Fsync::Always,
            overflow: Overflow::DropOldest,
            chain: false,
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
    /// Damaged bytes cut out (copied to quarantine/ when there was room).
    pub quarantined_bytes: u64,
    /// Sequence ranges (first, last) whose records were in damaged bytes.
    pub lost: Vec<(u64, u64)>,
    /// What recovery could not do but carried on without (a quarantine copy
    /// or the next_seq file on a full disk).
    pub warnings: Vec<String>,
}

/// Appended records that could not be written: `first..=last`, why, and the
/// chain hash the next record links to (chained spools).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unwritten {
    pub first: u64,
    pub last: u64,
    pub why: String,
    pub resume: Option<chain::Hash>,
}

/// Records dropped for lack of space (a gap to report).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Dropped {
    pub count: u64,
    pub first_seq: u64,
    pub last_seq: u64,
    /// The chain hash the record after `last_seq` links to (chained spools).
    pub resume: Option<chain::Hash>,
}

struct Segment {
    first_seq: u64,
    last_seq: u64,
    path: PathBuf,
    bytes: u64,
    /// (sequence, offset) of every frame, in order.
    index: Vec<(u64, u64)>,
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
    /// Frames appended to the tail segment and not written yet (under
    /// `Fsync::EveryN`): written by `flush`, before a read, when the tail
    /// rolls, past [`PENDING_MAX`], and on drop. One write per batch instead
    /// of one per record.
    pending: Vec<u8>,
    /// Sequence of the first frame in `pending`.
    pending_first: u64,
    /// The highest sequence a collector acknowledged (kept in
    /// [`ACKED_FILE`]; 0 before the first acknowledgement).
    acked: u64,
    /// Appended records that could not be written (disk full): (first, last
    /// sequence, why), for the caller to report as gaps.
    unwritten: Vec<Unwritten>,
    /// The chain hash of the last record appended (`chain::ZERO` where the
    /// chain starts), and the one before it (for `disown`).
    head: chain::Hash,
    head_before: chain::Hash,
    /// [`ACKED_FILE`], open for its rewrites.
    acked_file: Option<File>,
    /// The highest sequence known to be on disk (fsynced here, or found at
    /// open). What is above it may vanish in a power loss and its numbers be
    /// handed out again, so it is not delivered yet (see [`Spool::durable`]).
    durable: u64,
}

/// Bytes of appended frames held before they are written.
const PENDING_MAX: usize = 256 << 10;

fn seg_name(first: u64) -> String {
    format!("seg-{first:020}.log")
}

/// Appends the frame of record `seq` to `out`; its payload is `parts`
/// one after the other.
fn frame_into(out: &mut Vec<u8>, seq: u64, parts: &[&[u8]]) {
    let mut h = crc32fast::Hasher::new();
    h.update(&seq.to_le_bytes());
    let mut len = 0;
    for p in parts {
        h.update(p);
        len += p.len();
    }
    out.reserve(HEADER + len);
    out.extend_from_slice(&(len as u32).to_le_bytes());
    out.extend_from_slice(&h.finalize().to_le_bytes());
    out.extend_from_slice(&seq.to_le_bytes());
    for p in parts {
        out.extend_from_slice(p);
    }
}

#[cfg(test)]
fn frame(seq: u64, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    frame_into(&mut out, seq, &[payload]);
    out
}

/// Largest payload a frame may claim (a record is far smaller): a damaged
/// length field is not followed into the next megabytes.
const MAX_PAYLOAD: usize = 16 << 20;

/// The frame at `off` if it is valid and its sequence is at least `min_seq`:
/// (sequence, payload length).
fn frame_at(data: &[u8], off: usize, min_seq: u64) -> Option<(u64, usize)> {
    let h = data.get(off..off + HEADER)?;
    let len = u32::from_le_bytes(h[0..4].try_into().expect("4 bytes")) as usize;
    let crc = u32::from_le_bytes(h[4..8].try_into().expect("4 bytes"));
    let seq = u64::from_le_bytes(h[8..16].try_into().expect("8 bytes"));
    if seq < min_seq || len > MAX_PAYLOAD {
        return None;
    }
    let payload = data.get(off + HEADER..off + HEADER + len)?;
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&seq.to_le_bytes());
    hasher.update(payload);
    (hasher.finalize() == crc).then_some((seq, len))
}

/// A stretch of a segment no frame could be read from.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Damage {
    offset: usize,
    bytes: usize,
    /// The sequences of the intact frames on either side (0: none before;
    /// None: nothing intact after it in this segment).
    after_seq: u64,
    before_seq: Option<u64>,
}

/// What a segment's bytes hold.
#[derive(Debug, Default)]
struct Parsed {
    /// (sequence, offset, payload length) of every intact frame.
    frames: Vec<(u64, usize, usize)>,
    /// Damaged stretches followed by intact frames.
    damage: Vec<Damage>,
    /// Offset from which nothing intact follows (a torn tail or garbage).
    tail: Option<usize>,
}

/// Parses frames; sequences must increase (a frame whose sequence is not
/// above the last one's is damage: a stale copy, say). After damage, parsing
/// resumes at the next intact frame.
fn parse(data: &[u8]) -> Parsed {
    let mut p = Parsed::default();
    let (mut off, mut last) = (0, 0u64);
    while off < data.len() {
        if let Some((seq, len)) = frame_at(data, off, last + 1) {
            p.frames.push((seq, off, len));
            last = seq;
            off += HEADER + len;
            continue;
        }
        match (off + 1..data.len()).find_map(|i| frame_at(data, i, last + 1).map(|f| (i, f.0))) {
            Some((next, seq)) => {
                p.damage.push(Damage {
                    offset: off,
                    bytes: next - off,
                    after_seq: last,
                    before_seq: Some(seq),
                });
                off = next;
            }
            None => {
                p.tail = Some(off);
                break;
            }
        }
    }
    p
}

/// The payloads of `p`'s frames with sequences of at least `from`.
fn payloads(data: &[u8], p: &Parsed, from: u64) -> Vec<(u64, Vec<u8>)> {
    p.frames
        .iter()
        .filter(|f| f.0 >= from)
        .map(|&(seq, off, len)| (seq, data[off + HEADER..off + HEADER + len].to_vec()))
        .collect()
}

/// Rewrites a segment with only its intact frames, in place (it only
/// shrinks, so no new disk block is needed). A crash half-way leaves intact
/// frames followed by stale copies of later ones, which the next parse skips
/// (their sequences do not increase) or reads as the same records.
fn compact(path: &Path, data: &[u8], p: &Parsed) -> io::Result<Vec<u8>> {
    use std::os::unix::fs::FileExt;
    let mut good = Vec::with_capacity(data.len());
    for &(_, off, len) in &p.frames {
        good.extend_from_slice(&data[off..off + HEADER + len]);
    }
    let f = OpenOptions::new().write(true).open(path)?;
    f.write_all_at(&good, 0)?;
    f.set_len(good.len() as u64)?;
    f.sync_all()?;
    Ok(good)
}

/// The `acked` file's sequence (0 when missing or unreadable).
fn read_acked(dir: &Path) -> u64 {
    fs::read_to_string(dir.join(ACKED_FILE))
        .ok()
        .and_then(|t| t.trim().parse().ok())
        .unwrap_or(0)
}

/// The `next_seq` file: the next sequence (1 when missing) and the chain
/// head kept with it (absent in files of agents from before the chain).
fn read_next_seq(dir: &Path) -> (u64, Option<chain::Hash>) {
    let text = fs::read_to_string(dir.join(NEXT_SEQ_FILE)).unwrap_or_default();
    let mut words = text.split_whitespace();
    let seq = words.next().and_then(|w| w.parse().ok()).unwrap_or(1);
    let head = words
        .next()
        .and_then(chain::unhex)
        .and_then(|b| b.try_into().ok());
    (seq, head)
}

/// The chain hash of a segment's last record (read from its frame).
fn last_hash(s: &Segment) -> Option<chain::Hash> {
    use std::os::unix::fs::FileExt;
    let &(_, off) = s.index.last()?;
    let mut data = vec![0; (s.bytes - off) as usize];
    File::open(&s.path)
        .ok()?
        .read_exact_at(&mut data, off)
        .ok()?;
    let (_, _, len) = *parse(&data).frames.first()?;
    chain::split(&data[HEADER..HEADER + len]).map(|(_, h)| h)
}

impl Spool {
    /// Opens (creating) the spool in `dir`, recovering from a crash.
    pub fn open(dir: &Path, opts: Options) -> io::Result<(Spool, Recovery)> {
        fs::create_dir_all(dir)?;
        let fresh = !dir.join(NEXT_SEQ_FILE).exists()
            && !fs::read_dir(dir)?
                .flatten()
                .any(|e| e.file_name().to_string_lossy().starts_with("seg-"));
        if fresh {
            File::create(dir.join(HISTORY_UNKNOWN_FILE))?;
        }
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
        let mut segments: Vec<Segment> = Vec::new();
        let count = names.len();
        // Damage at the end of a segment: its lost sequences end where the
        // next segment starts.
        let mut open_loss: Option<u64> = None;
        for (i, path) in names.into_iter().enumerate() {
            let mut data = Vec::new();
            File::open(&path)?.read_to_end(&mut data)?;
            let mut parsed = parse(&data);
            let name = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            if let Some(first) = parsed.frames.first()
                && let Some(after) = open_loss.take()
                && first.0 > after + 1
            {
                rec.lost.push((after + 1, first.0 - 1));
            }
            let is_last = i + 1 == count;
            let mut cut: Vec<(usize, usize)> = Vec::new();
            for d in &parsed.damage {
                cut.push((d.offset, d.bytes));
                if let Some(before) = d.before_seq
                    && before > d.after_seq + 1
                {
                    rec.lost.push((d.after_seq + 1, before - 1));
                }
            }
            if let Some(off) = parsed.tail {
                let rest = data.len() - off;
                if is_last {
                    // What the last append was writing when the process or
                    // the machine died.
                    rec.torn_bytes += rest as u64;
                } else {
                    cut.push((off, rest));
                    open_loss = Some(
                        parsed
                            .frames
                            .last()
                            .map_or(segments.last().map_or(0, |s: &Segment| s.last_seq), |f| f.0),
                    );
                }
            }
            for &(off, len) in &cut {
                rec.quarantined_bytes += len as u64;
                let q = dir.join("quarantine");
                let copy = fs::create_dir_all(&q).and_then(|()| {
                    fs::write(q.join(format!("{name}.at-{off}")), &data[off..off + len])
                });
                if let Err(e) = copy {
                    rec.warnings.push(format!(
                        "{name}: {len} damaged bytes at {off} could not be copied to quarantine/ ({e}); they are cut out all the same"
                    ));
                }
            }
            if !cut.is_empty() || parsed.tail.is_some() {
                match compact(&path, &data, &parsed) {
                    Ok(good) => {
                        data = good;
                        parsed = parse(&data);
                    }
                    Err(e) => rec.warnings.push(format!(
                        "{name}: rewriting without its damaged bytes failed ({e}); they stay and are skipped when read"
                    )),
                }
            }
            rec.records += parsed.frames.len() as u64;
            match (parsed.frames.first(), parsed.frames.last()) {
                (Some(first), Some(last)) => segments.push(Segment {
                    first_seq: first.0,
                    last_seq: last.0,
                    path,
                    bytes: data.len() as u64,
                    index: parsed
                        .frames
                        .iter()
                        .map(|&(seq, off, _)| (seq, off as u64))
                        .collect(),
                }),
                _ => {
                    if let Err(e) = fs::remove_file(&path) {
                        rec.warnings
                            .push(format!("{name}: removing the empty segment failed ({e})"));
                    }
                }
            }
        }
        // Numbering continues after the highest sequence ever handed out, even
        // when every segment has been acknowledged and deleted: a reused
        // sequence would be ignored by the collector as a duplicate.
        let (recorded, recorded_head) = read_next_seq(dir);
        let next_seq = segments.last().map_or(1, |s| s.last_seq + 1).max(recorded);
        // The chain goes on from the last record written, or from the head
        // kept with the next sequence when every segment was acknowledged.
        let head = match segments.last() {
            Some(s) if s.last_seq + 1 == next_seq => last_hash(s).unwrap_or(chain::ZERO),
            _ => recorded_head.unwrap_or(chain::ZERO),
        };
        if let Some(after) = open_loss
            && next_seq > after + 1
            && segments.last().is_some_and(|s| s.last_seq <= after)
        {
            rec.lost.push((after + 1, next_seq - 1));
        }
        let mut spool = Spool {
            dir: dir.to_owned(),
            opts,
            segments,
            tail: None,
            next_seq,
            unsynced: 0,
            dropped: Dropped::default(),
            pending: Vec::new(),
            pending_first: 0,
            acked: read_acked(dir).min(next_seq - 1),
            unwritten: Vec::new(),
            head,
            head_before: head,
            // What survived into this open is what the disk holds.
            durable: next_seq - 1,
            acked_file: None,
        };
        // The files exist from now on, so rewriting them never needs space.
        if let Err(e) = spool.save_next_seq() {
            rec.warnings.push(format!(
                "writing {NEXT_SEQ_FILE} failed ({e}); numbering is kept in the segments meanwhile"
            ));
        }
        if let Err(e) = spool.save_acked() {
            rec.warnings.push(format!(
                "writing {ACKED_FILE} failed ({e}); what a collector acknowledged is known to this run only"
            ));
        }
        Ok((spool, rec))
    }

    /// True while the spool does not know which sequence numbers this host
    /// used before (new or wiped), until [`Spool::history_known`].
    pub fn history_unknown(&self) -> bool {
        self.dir.join(HISTORY_UNKNOWN_FILE).exists()
    }

    /// A collector told what it holds for this host, and it fits.
    pub fn history_known(&self) -> io::Result<()> {
        match fs::remove_file(self.dir.join(HISTORY_UNKNOWN_FILE)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    /// The collector holds records up to `last` that this spool, its history
    /// lost, may have numbered again: the records held are numbered afresh
    /// after `last` (written anew before the old segments go, so a crash
    /// in between duplicates rather than loses them). Returns how many.
    pub fn continue_after(&mut self, last: u64) -> io::Result<usize> {
        let held = self.read_from(0, usize::MAX)?;
        let old = std::mem::take(&mut self.segments);
        self.tail = None;
        self.next_seq = self.next_seq.max(last + 1);
        // Renumbered records start a new chain: the collector's records
        // before them are of a history this spool no longer knows.
        self.head = chain::ZERO;
        self.save_next_seq()?;
        for (_, payload) in &held {
            let content = match self.opts.chain {
                true => chain::split(payload).map_or(payload.as_slice(), |(c, _)| c),
                false => payload,
            };
            self.append(content)?;
        }
        self.flush()?;
        for s in old {
            fs::remove_file(&s.path)?;
        }
        self.history_known()?;
        Ok(held.len())
    }

    /// Bytes on disk.
    pub fn bytes(&self) -> u64 {
        self.segments.iter().map(|s| s.bytes).sum()
    }

    /// Unacknowledged records.
    pub fn depth(&self) -> u64 {
        match (self.segments.first(), self.segments.last()) {
            (Some(f), Some(l)) => (l.last_seq + 1).saturating_sub(f.first_seq.max(self.acked + 1)),
            _ => 0,
        }
    }

    /// The highest sequence a collector acknowledged to this process (0
    /// before the first acknowledgement).
    pub fn acked(&self) -> u64 {
        self.acked
    }

    /// The oldest record not yet acknowledged (`next_seq` when none is).
    pub fn first_unacked(&self) -> u64 {
        self.segments.first().map_or(self.next_seq, |s| s.first_seq)
    }

    /// The sequence number the next append gets.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// The chain head: the last sequence handed out and the chain hash of
    /// the last record appended (`chain::ZERO` before the first).
    pub fn chain_head(&self) -> (u64, chain::Hash) {
        (self.next_seq - 1, self.head)
    }

    /// `resume`: the chain hash the record after `last` links to.
    fn note_dropped(&mut self, first: u64, last: u64, resume: Option<chain::Hash>) {
        // The acknowledged part of a dropped segment was delivered: not a
        // loss (counting it made gap records claim records the collector
        // had stored).
        let first = first.max(self.acked + 1);
        if first > last {
            return;
        }
        let d = &mut self.dropped;
        if d.count == 0 {
            d.first_seq = first;
        }
        d.first_seq = d.first_seq.min(first);
        if last >= d.last_seq {
            d.resume = resume;
        }
        d.last_seq = d.last_seq.max(last);
        d.count += last + 1 - first;
    }

    /// The chain hash records link to now (None: not chained).
    fn resume(&self) -> Option<chain::Hash> {
        self.opts.chain.then_some(self.head)
    }

    /// Records dropped since the last call (a gap to report), if any.
    pub fn take_dropped(&mut self) -> Option<Dropped> {
        (self.dropped.count > 0).then(|| std::mem::take(&mut self.dropped))
    }

    /// Appends a record; returns its sequence number, or `None` when the spool is
    /// full and the policy is DropNewest (the record is counted as dropped).
    /// Under `Fsync::EveryN` the frame may be held and written later with
    /// others; should that write fail, the records are reported by
    /// [`Spool::take_unwritten`]. An error returned here is this record's
    /// own: the caller counts it.
    pub fn append(&mut self, payload: &[u8]) -> io::Result<Option<u64>> {
        self.append_inner(payload, false)
    }

    /// As `append`, written at once (with whatever was held before it): for
    /// a record whose own loss the caller must learn of now (a gap record).
    pub fn append_now(&mut self, payload: &[u8]) -> io::Result<Option<u64>> {
        self.append_inner(payload, true)
    }

    fn append_inner(&mut self, payload: &[u8], now: bool) -> io::Result<Option<u64>> {
        let seq = self.next_seq;
        let chained = if self.opts.chain {
            chain::SUFFIX_LEN
        } else {
            0
        };
        let size = (HEADER + payload.len() + chained) as u64;
        while self.bytes() + size > self.opts.max_bytes {
            match self.opts.overflow {
                Overflow::DropNewest => {
                    // Dropped unhashed: the next record links to the head.
                    self.next_seq += 1;
                    self.note_dropped(seq, seq, self.resume());
                    return Ok(None);
                }
                Overflow::DropOldest => {
                    if self.segments.len() <= 1 {
                        // Only the segment being written: start a new one.
                        self.tail = None;
                        self.pending.clear();
                        if let Some(s) = self.segments.first() {
                            let (f, l) = (s.first_seq, s.last_seq);
                            self.save_next_seq()?;
                            fs::remove_file(&s.path)?;
                            self.segments.clear();
                            // The segment held the newest records: the next
                            // links to the head.
                            self.note_dropped(f, l, self.resume());
                        }
                        break;
                    }
                    let s = self.segments.remove(0);
                    // The next segment's first record links to this one's last.
                    let resume = if self.opts.chain { last_hash(&s) } else { None };
                    fs::remove_file(&s.path)?;
                    self.note_dropped(s.first_seq, s.last_seq, resume);
                }
            }
        }
        let roll = self.tail.is_none()
            || self
                .segments
                .last()
                .is_none_or(|s| s.bytes + size > self.opts.segment_bytes);
        if roll {
            // What the old tail holds goes to it first (a failure is
            // recorded as unwritten).
            let _ = self.write_pending();
            // The old tail is durable before the new one takes records: a
            // sync asked for later covers only the new tail.
            if let Some(f) = &self.tail
                && f.sync_data().is_ok()
            {
                self.durable = self.durable.max(seq - 1);
            }
            let path = self.dir.join(seg_name(seq));
            self.tail = Some(OpenOptions::new().create(true).append(true).open(&path)?);
            self.segments.push(Segment {
                first_seq: seq,
                last_seq: seq - 1,
                path,
                bytes: 0,
                index: Vec::new(),
            });
            if let Ok(d) = File::open(&self.dir) {
                let _ = d.sync_all();
            }
        }
        if self.pending.is_empty() {
            self.pending_first = seq;
        }
        match self.opts.chain {
            true => {
                let h = chain::link(&self.head, seq, payload);
                frame_into(&mut self.pending, seq, &[payload, &chain::suffix(&h)]);
                self.head_before = self.head;
                self.head = h;
            }
            false => frame_into(&mut self.pending, seq, &[payload]),
        }
        let s = self.segments.last_mut().expect("pushed above");
        s.index.push((seq, s.bytes));
        s.last_seq = seq;
        s.bytes += size;
        self.next_seq += 1;
        let sync = match self.opts.fsync {
            Fsync::Always => true,
            Fsync::EveryN(n) => self.unsynced + 1 >= n.max(1),
        };
        if now || sync || self.pending.len() >= PENDING_MAX {
            let written = self.write_pending().and_then(|()| match &self.tail {
                Some(f) if sync => f.sync_data(),
                _ => Ok(()),
            });
            if let Err(e) = written {
                self.disown(seq);
                return Err(e);
            }
            if sync {
                self.durable = self.durable.max(seq);
            }
        }
        self.unsynced = if sync { 0 } else { self.unsynced + 1 };
        Ok(Some(seq))
    }

    /// Writes the held frames to the tail segment. On failure the segment is
    /// cut back to what was written before (a frame half written would hide
    /// every frame after it), and the records are noted as unwritten.
    fn write_pending(&mut self) -> io::Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let (first, last) = (self.pending_first, self.next_seq - 1);
        let held = self.pending.len() as u64;
        let written = match self.tail.as_mut() {
            Some(f) => f.write_all(&self.pending).inspect_err(|_| {
                let keep = self.segments.last().map_or(0, |s| s.bytes - held);
                let _ = f.set_len(keep);
            }),
            None => Err(io::Error::other("no open segment")),
        };
        self.pending.clear();
        if let Err(e) = written {
            if let Some(s) = self.segments.last_mut() {
                s.bytes -= held;
                s.index.retain(|x| x.0 < first);
                s.last_seq = first - 1;
            }
            // The held frames were the newest: the next record links to the
            // head.
            let resume = self.resume();
            self.unwritten.push(Unwritten {
                first,
                last,
                why: e.to_string(),
                resume,
            });
            return Err(e);
        }
        Ok(())
    }

    /// The record `seq` (the last appended) failed with an error its caller
    /// gets (its write, or the fsync after it): it is cut out of the segment
    /// if it reached it, not also reported as unwritten, and its number,
    /// never delivered, is the next one's.
    fn disown(&mut self, seq: u64) {
        if let Some(s) = self.segments.last_mut()
            && let Some(&(last_seq, off)) = s.index.last()
            && last_seq == seq
        {
            if let Some(f) = &self.tail {
                let _ = f.set_len(off);
            }
            s.index.pop();
            s.bytes = off;
            s.last_seq = seq - 1;
        }
        if self.next_seq == seq + 1 {
            self.next_seq = seq;
            // The number is the next record's, and so is the link.
            self.head = self.head_before;
        }
        let resume = self.resume();
        if let Some(last) = self.unwritten.last_mut()
            && last.last == seq
        {
            if last.first == seq {
                self.unwritten.pop();
            } else {
                last.last -= 1;
                last.resume = resume;
            }
        }
    }

    /// Appended records that could not be written since the last call:
    /// (first, last sequence, why). Report each as a gap.
    pub fn take_unwritten(&mut self) -> Vec<Unwritten> {
        std::mem::take(&mut self.unwritten)
    }

    /// Puts back a range `take_unwritten` gave whose gap record could not be
    /// written either (reported again later).
    pub fn keep_unwritten(&mut self, range: Unwritten) {
        self.unwritten.push(range);
    }

    /// Writes what was appended (no fsync: see [`Spool::tail_for_sync`]).
    pub fn write_out(&mut self) -> io::Result<()> {
        self.write_pending()
    }

    /// A handle on the tail segment for an fsync off the caller's thread
    /// (earlier segments were synced when the tail moved on).
    pub fn tail_for_sync(&self) -> Option<File> {
        self.tail.as_ref().and_then(|f| f.try_clone().ok())
    }

    /// Writes and fsyncs what was appended.
    pub fn flush(&mut self) -> io::Result<()> {
        self.write_pending()?;
        if let Some(f) = &self.tail {
            f.sync_data()?;
        }
        self.unsynced = 0;
        self.durable = self.durable.max(self.next_seq - 1);
        Ok(())
    }

    /// The highest sequence on disk: synced by this spool, or by another
    /// thread through [`Spool::tail_for_sync`] (`synced_elsewhere`, the
    /// highest sequence written before that sync started). Delivery stops
    /// there: a record the collector acknowledged must never have its number
    /// reused after a power loss.
    pub fn durable(&self, synced_elsewhere: u64) -> u64 {
        self.durable.max(synced_elsewhere.min(self.next_seq - 1))
    }

    /// The highest sequence written to the tail so far (what a sync started
    /// now covers).
    pub fn written(&self) -> u64 {
        if self.pending.is_empty() {
            self.next_seq - 1
        } else {
            self.pending_first - 1
        }
    }

    /// Up to `max` records with sequence numbers ≥ `from`, in order. Reads
    /// only their bytes (found through the index), and checks each frame
    /// again: one damaged since the spool opened is skipped, not sent.
    pub fn read_from(&mut self, from: u64, max: usize) -> io::Result<Vec<(u64, Vec<u8>)>> {
        use std::os::unix::fs::FileExt;
        // A failure is recorded (unwritten) and what failed is gone from
        // the index: the rest can be read.
        let _ = self.write_pending();
        let mut out = Vec::new();
        let first = self.segments.partition_point(|s| s.last_seq < from);
        for s in &self.segments[first..] {
            let start = s.index.partition_point(|e| e.0 < from);
            let want = max - out.len();
            let Some(&(_, begin)) = s.index.get(start) else {
                continue;
            };
            let end = s
                .index
                .get(start.saturating_add(want))
                .map_or(s.bytes, |e| e.1);
            let mut data = vec![0; (end - begin) as usize];
            File::open(&s.path)?.read_exact_at(&mut data, begin)?;
            let parsed = parse(&data);
            out.extend(payloads(&data, &parsed, from).into_iter().take(want));
            if out.len() >= max {
                break;
            }
        }
        Ok(out)
    }

    /// The collector acknowledged everything up to `seq`: whole segments at or
    /// below it are deleted (a partly acknowledged segment stays until the rest
    /// is acknowledged; re-sending its acknowledged part is harmless because the
    /// collector de-duplicates by sequence).
    pub fn ack(&mut self, seq: u64) -> io::Result<()> {
        if seq > self.acked {
            self.acked = seq;
            // Kept for the next start; failing to keep it (a file that
            // could not be created on a full disk) must not keep the
            // acknowledged segments from going, which frees that disk.
            let _ = self.save_acked();
        }
        while let Some(s) = self.segments.first() {
            if s.last_seq > seq {
                break;
            }
            let s = self.segments.remove(0);
            if self.segments.is_empty() {
                self.tail = None;
                self.pending.clear();
                self.save_next_seq()?;
            }
            fs::remove_file(&s.path)?;
        }
        Ok(())
    }

    /// Keeps `acked` (see [`ACKED_FILE`]): in place, at a fixed width, on
    /// the file kept open (one write per acknowledgement; opened again only
    /// if it could not be before).
    fn save_acked(&mut self) -> io::Result<()> {
        use std::os::unix::fs::FileExt;
        if self.acked_file.is_none() {
            self.acked_file = Some(
                OpenOptions::new()
                    .write(true)
                    .create(true)
                    .truncate(false)
                    .open(self.dir.join(ACKED_FILE))?,
            );
        }
        let line = format!("{:020}\n", self.acked);
        match &self.acked_file {
            Some(f) => f.write_all_at(line.as_bytes(), 0),
            None => Ok(()),
        }
    }

    /// Records the next sequence durably (before the last segment goes).
    /// Rewritten in place at a fixed width (the file is created when the
    /// spool opens): it needs no new disk block, so acknowledgements still
    /// free a full disk instead of failing on it.
    fn save_next_seq(&self) -> io::Result<()> {
        use std::os::unix::fs::FileExt;
        let line = format!("{:020} {}\n", self.next_seq, chain::hex(&self.head));
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

impl Drop for Spool {
    /// What is held is written (a clean stop loses nothing).
    fn drop(&mut self) {
        let _ = self.write_pending();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("rs-spool-{}-{name}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        d
    }

    fn payloads(s: &mut Spool) -> Vec<(u64, String)> {
        s.read_from(0, usize::MAX)
            .unwrap()
            .into_iter()
            .map(|(q, p)| (q, String::from_utf8(p).unwrap()))
            .collect()
    }

    /// Checks the chain of everything the spool holds; returns its head.
    fn linked(s: &mut Spool, mut prev: chain::Hash) -> chain::Hash {
        for (seq, payload) in s.read_from(0, usize::MAX).unwrap() {
            let (content, h) = chain::split(&payload).expect("chained");
            assert_eq!(chain::link(&prev, seq, content), h, "record {seq}");
            prev = h;
        }
        prev
    }

    #[test]
    fn the_chain_links_every_record_across_reopen_ack_and_renumbering() {
        let d = dir("chain");
        let opts = || Options {
            chain: true,
            ..Options::default()
        };
        let (mut s, _) = Spool::open(&d, opts()).unwrap();
        for i in 0..3 {
            s.append(format!("r{i}").as_bytes()).unwrap();
        }
        let head = linked(&mut s, chain::ZERO);
        assert_eq!(s.chain_head(), (3, head));
        drop(s);
        // Reopened: the head comes from the last frame.
        let (mut s, _) = Spool::open(&d, opts()).unwrap();
        assert_eq!(s.chain_head(), (3, head));
        s.append(b"r3").unwrap();
        assert_eq!(linked(&mut s, chain::ZERO), s.chain_head().1);
        let head = s.chain_head().1;
        // Everything acknowledged: the head is kept with the next sequence.
        s.ack(4).unwrap();
        drop(s);
        let (mut s, _) = Spool::open(&d, opts()).unwrap();
        assert_eq!(s.chain_head(), (4, head));
        s.append(b"r4").unwrap();
        assert_eq!(linked(&mut s, head), s.chain_head().1);
        drop(s);
        // A history lost and renumbered: a new chain from ZERO.
        File::create(d.join(HISTORY_UNKNOWN_FILE)).unwrap();
        let (mut s, _) = Spool::open(&d, opts()).unwrap();
        s.continue_after(100).unwrap();
        let renumbered = s.read_from(0, usize::MAX).unwrap();
        assert_eq!(renumbered[0].0, 101);
        let (content, _) = chain::split(&renumbered[0].1).unwrap();
        assert_eq!(
            content, b"r4",
            "the old chain field is not kept in the content"
        );
        assert_eq!(linked(&mut s, chain::ZERO), s.chain_head().1);
        let _ = fs::remove_dir_all(&d);
    }

    #[test]
    fn what_a_collector_acknowledged_is_kept_across_restarts() {
        let d = dir("acked-kept");
        let (mut s, _) = Spool::open(&d, Options::default()).unwrap();
        for i in 0..5 {
            s.append(format!("r{i}").as_bytes()).unwrap();
        }
        s.flush().unwrap();
        s.ack(3).unwrap();
        s.ack(2).unwrap();
        drop(s);
        let (s, _) = Spool::open(&d, Options::default()).unwrap();
        assert_eq!(s.acked(), 3, "the highest, kept");
        assert_eq!(s.depth(), 2);
        drop(s);
        // Never past what was numbered; unreadable: unknown.
        fs::write(d.join(ACKED_FILE), format!("{:020}\n", 99)).unwrap();
        assert_eq!(Spool::open(&d, Options::default()).unwrap().0.acked(), 5);
        fs::write(d.join(ACKED_FILE), "garbage").unwrap();
        assert_eq!(Spool::open(&d, Options::default()).unwrap().0.acked(), 0);
        let _ = fs::remove_dir_all(&d);
    }

    #[test]
    fn only_what_is_on_disk_counts_as_durable() {
        let d = dir("durable");
        let opts = || Options {
            fsync: Fsync::EveryN(u32::MAX),
            ..Options::default()
        };
        let (mut s, _) = Spool::open(&d, opts()).unwrap();
        for i in 0..3 {
            s.append(format!("r{i}").as_bytes()).unwrap();
        }
        assert_eq!(s.durable(0), 0, "written, not synced");
        assert_eq!(s.written(), 0, "held, not even written");
        s.write_out().unwrap();
        assert_eq!(s.written(), 3);
        assert_eq!(
            s.durable(2),
            2,
            "a sync elsewhere covered what was written before it"
        );
        s.flush().unwrap();
        assert_eq!(s.durable(0), 3);
        s.append(b"r3").unwrap();
        assert_eq!(s.durable(0), 3);
        assert_eq!(s.durable(100), 4, "never past what was appended");
        drop(s);
        let (s, _) = Spool::open(&d, opts()).unwrap();
        assert_eq!(s.durable(0), 4, "what survived into an open is on disk");
        let _ = fs::remove_dir_all(&d);
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
        assert_eq!(payloads(&mut s)[4], (5, "r4".into()));
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
        let (mut s, r) = Spool::open(&d, Options::default()).unwrap();
        assert_eq!(r.records, 2);
        assert_eq!(r.torn_bytes, 10);
        assert_eq!(payloads(&mut s), vec![(1, "one".into()), (2, "two".into())]);
        assert_eq!(s.next_seq(), 3);
        let _ = fs::remove_dir_all(&d);
    }

    #[test]
    fn corruption_costs_only_the_damaged_frames() {
        let d = dir("corrupt");
        let opts = Options {
            segment_bytes: 60,
            ..Options::default()
        };
        let (mut s, _) = Spool::open(&d, opts.clone()).unwrap();
        for p in [b"aaaa", b"bbbb", b"cccc", b"dddd", b"eeee", b"ffff"] {
            s.append(p).unwrap();
        }
        drop(s);
        // Segments of three 20-byte frames: 1-3 and 4-6. Damage frame 2's
        // payload, and the last frame of the last segment (6) entirely.
        let seg = d.join(seg_name(1));
        let mut data = fs::read(&seg).unwrap();
        data[20 + HEADER] ^= 0xff;
        fs::write(&seg, &data).unwrap();
        let (mut s, r) = Spool::open(&d, opts.clone()).unwrap();
        assert_eq!(r.lost, vec![(2, 2)], "{r:?}");
        assert_eq!(r.quarantined_bytes, 20);
        assert_eq!(d.join("quarantine").read_dir().unwrap().count(), 1);
        let seqs: Vec<u64> = payloads(&mut s).iter().map(|p| p.0).collect();
        assert_eq!(seqs, vec![1, 3, 4, 5, 6], "only the damaged frame is lost");
        assert_eq!(s.next_seq(), 7);
        drop(s);
        // The damage was cut out: a second open finds nothing wrong.
        let (mut s, r) = Spool::open(&d, opts.clone()).unwrap();
        assert_eq!((r.lost.len(), r.quarantined_bytes), (0, 0), "{r:?}");
        // Garbage over the last frames of a middle segment: the sequences
        // that were there are lost, the numbering goes on after the highest.
        s.append(b"gggg").unwrap();
        drop(s);
        let seg = d.join(seg_name(4));
        let mut data = fs::read(&seg).unwrap();
        let n = data.len();
        data[n - 30..].fill(0x5a);
        fs::write(&seg, &data).unwrap();
        let (mut s, r) = Spool::open(&d, opts).unwrap();
        assert_eq!(r.lost, vec![(5, 6)], "{r:?}");
        assert_eq!(s.append(b"hhhh").unwrap(), Some(8), "never a reused number");
        let _ = fs::remove_dir_all(&d);
    }

    #[test]
    fn a_lost_history_continues_after_the_collector() {
        let d = dir("lost");
        let (mut s, _) = Spool::open(&d, Options::default()).unwrap();
        assert!(s.history_unknown(), "a new spool knows no history");
        s.append(b"a").unwrap();
        s.append(b"b").unwrap();
        drop(s);
        let (mut s, _) = Spool::open(&d, Options::default()).unwrap();
        assert!(s.history_unknown(), "until a collector said what it holds");
        assert_eq!(s.continue_after(1000).unwrap(), 2);
        assert!(!s.history_unknown());
        assert_eq!(
            payloads(&mut s),
            vec![(1001, "a".into()), (1002, "b".into())],
            "renumbered after the collector's last"
        );
        assert_eq!(s.append(b"c").unwrap(), Some(1003));
        drop(s);
        let (s, _) = Spool::open(&d, Options::default()).unwrap();
        assert!(!s.history_unknown());
        assert_eq!(s.next_seq(), 1004);
        let _ = fs::remove_dir_all(&d);
    }

    #[test]
    fn reads_only_what_is_asked_through_the_index() {
        let d = dir("index");
        let opts = Options {
            segment_bytes: 200,
            ..Options::default()
        };
        let (mut s, _) = Spool::open(&d, opts).unwrap();
        for i in 0..50u64 {
            s.append(&i.to_le_bytes()).unwrap();
        }
        let got = s.read_from(17, 5).unwrap();
        assert_eq!(
            got.iter().map(|r| r.0).collect::<Vec<_>>(),
            vec![17, 18, 19, 20, 21]
        );
        assert_eq!(got[0].1, 16u64.to_le_bytes().to_vec());
        assert!(s.read_from(51, 5).unwrap().is_empty());
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
        let kept = payloads(&mut s);
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
    fn a_chained_spool_says_where_the_chain_resumes_after_a_loss() {
        let d = dir("full-chained");
        let opts = Options {
            max_bytes: 300,
            segment_bytes: 120,
            chain: true,
            ..Options::default()
        };
        let (mut s, _) = Spool::open(&d, opts).unwrap();
        for i in 0..20u64 {
            s.append(&i.to_le_bytes()).unwrap();
        }
        let gap = s.take_dropped().expect("something was dropped");
        let resume = gap.resume.expect("a chained spool knows the hash");
        let kept = s.read_from(0, usize::MAX).unwrap();
        let (seq, payload) = &kept[0];
        assert_eq!(*seq, gap.last_seq + 1);
        let (content, hash) = chain::split(payload).unwrap();
        assert_eq!(
            chain::link(&resume, *seq, content),
            hash,
            "the first record kept links to the hash the gap names"
        );
        let _ = fs::remove_dir_all(&d);
    }

    #[test]
    fn a_dropped_segment_counts_only_what_was_not_acknowledged() {
        let d = dir("full-acked");
        let opts = Options {
            max_bytes: 100,    // four 24-byte frames
            segment_bytes: 80, // three
            ..Options::default()
        };
        let (mut s, _) = Spool::open(&d, opts).unwrap();
        for i in 0..4u64 {
            s.append(&i.to_le_bytes()).unwrap();
        }
        // Segment 1-3 is partly acknowledged (1-2 are at the collector).
        s.ack(2).unwrap();
        assert_eq!(s.depth(), 2, "3 and 4 wait");
        s.append(&4u64.to_le_bytes()).unwrap();
        let gap = s.take_dropped().expect("the first segment was dropped");
        assert_eq!(
            (gap.count, gap.first_seq, gap.last_seq),
            (1, 3, 3),
            "only record 3 was lost"
        );
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
                last_seq: 5,
                resume: None,
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
