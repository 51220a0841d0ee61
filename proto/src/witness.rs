//! The auditor's witness file (`--witness FILE` of `collectorctl verify`
//! and `residency-verify`): the chain heads earlier checks saw, kept
//! outside the collector's database. Whoever can rewrite the database can
//! cut the tail of a host's chain and even forge a new tail with correct
//! links (the chain is not keyed), but cannot make a head this file holds
//! appear again: a later check that does not find every witnessed head, with
//! its hash, reports the chain TRUNCATED.
//!
//! One JSON object per line, appended (and fsynced) after each check that
//! found the chain intact: `{"host", "seq", "head" (hex), "seen" (UTC),
//! "seen_unix_ns"}`; and, when the check got the live agent's signed head,
//! a line for that too with `"acked_seq"` and `"signed"` (the `SignedHead`
//! message, hex): a head the agent itself vouches for, checked again
//! (signature and signer) each time the file is used. Keep it where the
//! database's owner cannot write (the auditor's own machine, a write-once
//! store).

use std::{io::Write, path::Path};

use prost::Message;

use crate::collector::v1::{ChainReport, SignedHead, WitnessedHead};

/// Who saw a head kept signed in the file.
pub const SIGNED_BY: &str = "the agent's signed head in the witness file";

/// The heads witnessed for `host` (none when the file does not exist yet).
pub fn read(path: &Path, host: &str) -> Result<Vec<WitnessedHead>, String> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(format!("reading the witness file {}: {e}", path.display())),
    };
    let mut out = Vec::new();
    for (i, line) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        let bad = |why: &str| {
            format!(
                "the witness file {} line {}: {why}; it must hold only lines this tool wrote",
                path.display(),
                i + 1
            )
        };
        let v: serde_json::Value = serde_json::from_str(line).map_err(|e| bad(&e.to_string()))?;
        if v["host"].as_str() != Some(host) {
            continue;
        }
        if let Some(signed) = v.get("signed") {
            let h = signed
                .as_str()
                .and_then(crate::chain::unhex)
                .and_then(|b| SignedHead::decode(b.as_slice()).ok())
                .ok_or_else(|| bad("its signed head does not decode"))?;
            out.push(WitnessedHead {
                seq: h.seq,
                head: h.head.clone(),
                seen_unix_ns: h.time_unix_ns,
                by: SIGNED_BY.into(),
                signed: Some(h),
            });
            continue;
        }
        let seq = v["seq"].as_u64().ok_or_else(|| bad("no seq"))?;
        let head = v["head"]
            .as_str()
            .and_then(crate::chain::unhex)
            .ok_or_else(|| bad("no head"))?;
        out.push(WitnessedHead {
            seq,
            head,
            seen_unix_ns: v["seen_unix_ns"].as_i64().unwrap_or(0),
            by: String::new(),
            signed: None,
        });
    }
    Ok(out)
}

/// Appends the head `report` reached, when the chain was found intact up to
/// it (a broken chain's head is not worth witnessing) and it is past every
/// head witnessed for the host; and the live agent's signed head the check
/// got, when it is past every signed one kept. Returns the lines appended.
pub fn record(
    path: &Path,
    report: &ChainReport,
    known: &[WitnessedHead],
    now_unix_ns: i64,
) -> Result<usize, String> {
    if !report.intact || report.records == 0 || report.head.is_empty() {
        return Ok(0);
    }
    let mut lines = Vec::new();
    let unsigned = known.iter().filter(|w| w.signed.is_none());
    if unsigned.clone().all(|w| w.seq < report.last_seq) {
        lines.push(serde_json::json!({
            "host": report.host_id,
            "seq": report.last_seq,
            "head": crate::chain::hex(&report.head),
            "seen": crate::time::utc(now_unix_ns),
            "seen_unix_ns": now_unix_ns,
        }));
    }
    if let Some(h) = &report.agent_head
        && !h.head.is_empty()
        && known
            .iter()
            .filter_map(|w| w.signed.as_ref())
            .all(|k| (k.seq, k.acked_seq) < (h.seq, h.acked_seq))
    {
        lines.push(serde_json::json!({
            "host": report.host_id,
            "seq": h.seq,
            "head": crate::chain::hex(&h.head),
            "acked_seq": h.acked_seq,
            "seen": crate::time::utc(h.time_unix_ns),
            "seen_unix_ns": h.time_unix_ns,
            "signed": crate::chain::hex(&h.encode_to_vec()),
        }));
    }
    if lines.is_empty() {
        return Ok(0);
    }
    let write = || -> std::io::Result<()> {
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)?;
        for line in &lines {
            writeln!(f, "{line}")?;
        }
        f.sync_all()
    };
    write().map_err(|e| format!("appending to the witness file {}: {e}", path.display()))?;
    Ok(lines.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_head_is_kept_per_host_and_only_when_intact_and_new() {
        let path = std::env::temp_dir().join(format!("rs-witness-{}", std::process::id()));
        let _ = std::fs::remove_file(&path);
        assert!(
            read(&path, "a").unwrap().is_empty(),
            "no file: nothing witnessed"
        );
        let report = |seq: u64, intact: bool| ChainReport {
            host_id: "a".into(),
            records: seq,
            last_seq: seq,
            head: vec![seq as u8; 32],
            intact,
            ..Default::default()
        };
        assert_eq!(record(&path, &report(5, true), &[], 7).unwrap(), 1);
        let known = read(&path, "a").unwrap();
        assert_eq!(known.len(), 1);
        assert_eq!(
            (known[0].seq, known[0].head.clone(), known[0].seen_unix_ns),
            (5, vec![5; 32], 7)
        );
        assert_eq!(
            record(&path, &report(5, true), &known, 8).unwrap(),
            0,
            "not past the last"
        );
        assert_eq!(
            record(&path, &report(9, false), &known, 8).unwrap(),
            0,
            "not intact"
        );
        assert_eq!(record(&path, &report(9, true), &known, 8).unwrap(), 1);
        assert_eq!(read(&path, "a").unwrap().len(), 2);
        // The agent's signed head is kept whole, and read back as signed.
        let agent = SignedHead {
            host_id: "a".into(),
            seq: 12,
            head: vec![12; 32],
            acked_seq: 9,
            time_unix_ns: 9,
            signature: vec![1, 2, 3],
            ..Default::default()
        };
        let with_head = ChainReport {
            agent_head: Some(agent.clone()),
            ..report(9, true)
        };
        let known = read(&path, "a").unwrap();
        assert_eq!(record(&path, &with_head, &known, 9).unwrap(), 1);
        let known = read(&path, "a").unwrap();
        let signed: Vec<_> = known.iter().filter_map(|w| w.signed.clone()).collect();
        assert_eq!(signed, vec![agent]);
        assert_eq!(
            known.iter().find(|w| w.signed.is_some()).unwrap().by,
            SIGNED_BY
        );
        assert_eq!(
            record(&path, &with_head, &known, 10).unwrap(),
            0,
            "the same head again"
        );
        assert!(read(&path, "b").unwrap().is_empty(), "per host");
        std::fs::write(&path, "not json\n").unwrap();
        assert!(read(&path, "a").unwrap_err().contains("line 1"));
        let _ = std::fs::remove_file(&path);
    }
}
