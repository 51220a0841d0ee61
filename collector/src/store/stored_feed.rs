//! What the other replicas store, for this replica's watchers (PostgreSQL).
//!
//! Every commit that stores new records notifies the channel
//! [`CHANNEL`] in its own transaction (PostgreSQL delivers a notification
//! only when, and only if, its transaction commits): the committing
//! replica's origin, the host and the ranges of new sequences. Each replica
//! listens on a connection of its own, and for the notifications of other
//! origins reads those records back and hands them to its watchers. A
//! replica's own commits reach its watchers directly.
//!
//! A notification is at most 8,000 bytes: the ranges are split over as many
//! as needed. While the listening connection is down, what others store is
//! not seen live (a watcher catches up with QueryViolations); the listener
//! reconnects every second and logs each loss.

use std::time::Duration;

use residency_proto::collector::v1::Record;
use tokio_postgres::{AsyncMessage, NoTls};
use tracing::{info, warn};

/// The channel new records are announced on.
pub const CHANNEL: &str = "residency_stored";

/// Payload bytes one notification carries at most (PostgreSQL's limit is
/// 8,000).
const PAYLOAD_MAX: usize = 7_000;

/// The notifications announcing `seqs` (new records of `host`, stored by
/// `origin`): `ORIGIN\tHOST\tA-B,C-D…`, as few as fit.
pub fn announcements(origin: &str, host: &str, seqs: &[i64]) -> Vec<String> {
    let mut sorted = seqs.to_vec();
    sorted.sort_unstable();
    sorted.dedup();
    let mut ranges: Vec<(i64, i64)> = Vec::new();
    for s in sorted {
        match ranges.last_mut() {
            Some((_, b)) if *b + 1 == s => *b = s,
            _ => ranges.push((s, s)),
        }
    }
    let head = format!("{origin}\t{host}\t");
    let mut out = Vec::new();
    let mut payload = head.clone();
    for (a, b) in ranges {
        let part = format!("{a}-{b}");
        if payload.len() > head.len() && payload.len() + 1 + part.len() > PAYLOAD_MAX {
            out.push(std::mem::replace(&mut payload, head.clone()));
        }
        if payload.len() > head.len() {
            payload.push(',');
        }
        payload.push_str(&part);
    }
    if payload.len() > head.len() {
        out.push(payload);
    }
    out
}

/// A notification read back: who stored, which host, which ranges.
#[derive(Debug, PartialEq, Eq)]
pub struct Announcement {
    pub origin: String,
    pub host: String,
    pub ranges: Vec<(i64, i64)>,
}

/// Parses an [`announcements`] payload (`None`: not one).
pub fn parse(payload: &str) -> Option<Announcement> {
    let mut parts = payload.splitn(3, '\t');
    let (origin, host, ranges) = (parts.next()?, parts.next()?, parts.next()?);
    let ranges = ranges
        .split(',')
        .map(|r| {
            let (a, b) = r.split_once('-')?;
            Some((a.parse().ok()?, b.parse().ok()?))
        })
        .collect::<Option<Vec<(i64, i64)>>>()?;
    Some(Announcement {
        origin: origin.to_owned(),
        host: host.to_owned(),
        ranges,
    })
}

/// Who gets what the other replicas store.
pub trait Watchers: Send {
    /// Whether anyone watches now (when no one does, nothing is read back).
    fn any(&self) -> bool;
    /// One record of `host` another replica stored.
    fn publish(&self, host: String, record: Record);
}

/// Follows what other replicas store on `url` until the task is dropped:
/// while anyone watches, each of their new records is read back and goes
/// to `watchers`.
pub async fn follow(url: String, origin: String, watchers: impl Watchers) {
    loop {
        match follow_once(&url, &origin, &watchers).await {
            Ok(()) => {
                warn!("the PostgreSQL connection for other replicas' records ended; reconnecting")
            }
            Err(e) => {
                warn!(error = %e, "cannot follow other replicas' records (watchers here see only this replica's until it works); retrying in 1 s")
            }
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

async fn follow_once(
    url: &str,
    origin: &str,
    watchers: &impl Watchers,
) -> Result<(), tokio_postgres::Error> {
    let (client, mut connection) = tokio_postgres::connect(url, NoTls).await?;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let driver = tokio::spawn(async move {
        while let Some(message) = std::future::poll_fn(|cx| connection.poll_message(cx)).await {
            match message {
                Ok(AsyncMessage::Notification(n)) => {
                    if tx.send(n.payload().to_owned()).is_err() {
                        return;
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    warn!(error = %e, "the PostgreSQL connection for other replicas' records failed");
                    return;
                }
            }
        }
    });
    client.batch_execute(&format!("LISTEN {CHANNEL}")).await?;
    info!("following the records other replicas store");
    let read = client
        .prepare(
            "SELECT host, seq, time_ns, record, chain FROM records
             WHERE host = $1 AND seq BETWEEN $2 AND $3 ORDER BY seq",
        )
        .await?;
    while let Some(payload) = rx.recv().await {
        let Some(a) = parse(&payload) else {
            warn!(
                payload,
                "an announcement of stored records that does not parse; ignored"
            );
            continue;
        };
        if a.origin == origin || !watchers.any() {
            continue;
        }
        for (first, last) in a.ranges {
            for row in client.query(&read, &[&a.host, &first, &last]).await? {
                let stored = super::stored(
                    row.get(0),
                    row.get(1),
                    row.get(2),
                    row.get::<_, &[u8]>(3),
                    row.get(4),
                );
                if let Some(r) = stored.record {
                    watchers.publish(stored.host_id, r);
                }
            }
        }
    }
    driver.abort();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn announcements_carry_ranges_and_split_under_the_limit() {
        let a = announcements("r1", "eu-1", &[5, 3, 4, 9, 10, 4]);
        assert_eq!(a, vec!["r1\teu-1\t3-5,9-10".to_owned()]);
        assert_eq!(
            parse(&a[0]),
            Some(Announcement {
                origin: "r1".into(),
                host: "eu-1".into(),
                ranges: vec![(3, 5), (9, 10)],
            })
        );
        // Every other sequence: many ranges, several notifications.
        let seqs: Vec<i64> = (0..20_000).map(|i| i * 2).collect();
        let a = announcements("r1", "eu-1", &seqs);
        assert!(a.len() > 1 && a.iter().all(|p| p.len() <= PAYLOAD_MAX));
        let back: usize = a
            .iter()
            .map(|p| parse(p).expect("parses").ranges.len())
            .sum();
        assert_eq!(back, 20_000);
        assert!(announcements("r1", "eu-1", &[]).is_empty());
        assert_eq!(parse("no tabs"), None);
    }
}
