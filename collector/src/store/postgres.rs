//! PostgreSQL storage, for fleets (`--database postgres://…`): the same tables
//! and columns as the SQLite store; a batch is one `INSERT … SELECT FROM
//! UNNEST(…)` statement (one round trip) in its own transaction, acknowledged
//! after the commit.

use residency_proto::collector::v1::{Record, StoredRecord};
use tokio_postgres::{Client, NoTls, types::ToSql};
use tracing::{info, warn};

use super::{
    HostRow, NewCounts, StoreError,
    filter::{Filter, Indexed, Param},
    now_ns,
};

/// Schema migrations, applied in order; `schema_migrations` says how many
/// ran. The first step here is SQLite's first two together; the schemas are
/// equal.
const MIGRATIONS: &[&str] = &[
    "CREATE TABLE records (
        host TEXT NOT NULL,
        seq BIGINT NOT NULL,
        kind TEXT NOT NULL,
        time_ns BIGINT NOT NULL,
        body TEXT NOT NULL,
        stored_ns BIGINT NOT NULL,
        classes TEXT NOT NULL DEFAULT '',
        country TEXT NOT NULL DEFAULT '',
        remote BYTEA NOT NULL DEFAULT '',
        exe TEXT NOT NULL DEFAULT '',
        action TEXT NOT NULL DEFAULT '',
        PRIMARY KEY (host, seq)
    );
    CREATE INDEX records_kind_time ON records (kind, time_ns);
    CREATE TABLE hosts (
        host TEXT PRIMARY KEY,
        state BYTEA NOT NULL,
        state_ns BIGINT NOT NULL
    );",
    super::HOST_COUNTS_TABLE,
    super::SEQUENCE_JUMPS_TABLE,
    super::FLEET_MODES_TABLE,
    ADD_RECORD,
    super::chain::CHAIN_TABLES_POSTGRES,
    super::WORKLOAD_COLUMNS,
    super::FORWARD_CURSORS_TABLE,
    super::NAMES_COLUMN,
    crate::replica_fleet::REPLICA_TABLES,
    super::retention::RETENTION_TABLE_POSTGRES,
];

/// The migration that adds the encoded typed record to every row: rows
/// stored before it hold JSON in `body` and are converted
/// ([`convert_legacy`]); later rows have `record` and an empty `body`.
const ADD_RECORD: &str = "ALTER TABLE records ADD COLUMN record BYTEA;";

/// Converts the JSON body of rows stored before records were typed into the
/// encoded record (and its columns), inside the migration's transaction.
async fn convert_legacy(tx: &tokio_postgres::Transaction<'_>) -> Result<(), StoreError> {
    let select = tx
        .prepare(&format!(
            "SELECT host, seq, kind, time_ns, body FROM records WHERE record IS NULL LIMIT {}",
            super::CONVERT_BATCH
        ))
        .await?;
    let update = tx
        .prepare(
            "UPDATE records SET record = $3, action = $4, body = '' WHERE host = $1 AND seq = $2",
        )
        .await?;
    let mut converted = 0;
    // A batch at a time (a converted row leaves the selection), so a large
    // database is not held in memory at once.
    loop {
        let rows = tx.query(&select, &[]).await?;
        if rows.is_empty() {
            break;
        }
        for r in &rows {
            let (host, seq): (&str, i64) = (r.get(0), r.get(1));
            let ix = super::legacy_row(seq, r.get(2), r.get(3), r.get(4));
            tx.execute(&update, &[&host, &seq, &ix.encoded, &ix.action])
                .await?;
        }
        converted += rows.len();
        info!(
            converted,
            "stored records converted to typed records so far"
        );
    }
    Ok(())
}

/// The PostgreSQL store. A lost connection (server restart, network) is
/// re-established before the next operation; the operation that found it lost
/// fails, and its agent resends the batch.
pub struct Postgres {
    client: Client,
    url: String,
    /// This collector in the announcements of what it stores (see
    /// `stored_feed`): its pid and start time.
    origin: String,
}

/// Connects; the connection task logs when the connection ends.
async fn connect(url: &str) -> Result<Client, StoreError> {
    let (client, connection) = tokio_postgres::connect(url, NoTls).await?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            warn!(error = %e, "PostgreSQL connection lost; reconnecting at the next operation");
        }
    });
    Ok(client)
}

fn boxed(p: &Param) -> Box<dyn ToSql + Sync + Send> {
    match p {
        Param::Text(s) => Box::new(s.clone()),
        Param::Int(i) => Box::new(*i),
        Param::Bytes(b) => Box::new(b.clone()),
    }
}

/// The groups' indexes in rounds in which each host appears once (in
/// order: a host's second batch of a group goes in the second round).
fn rounds(groups: &[(&str, &[(Record, Indexed)])]) -> Vec<Vec<usize>> {
    let mut seen: std::collections::HashMap<&str, usize> = std::collections::HashMap::new();
    let mut out: Vec<Vec<usize>> = Vec::new();
    for (i, (host, _)) in groups.iter().enumerate() {
        let n = seen.entry(*host).or_insert(0);
        if out.len() <= *n {
            out.push(Vec::new());
        }
        out[*n].push(i);
        *n += 1;
    }
    out
}

/// One host's batch as the insert's column arrays, borrowing the records
/// (no copies).
struct Columns<'a> {
    seqs: Vec<i64>,
    kinds: Vec<&'a str>,
    times: Vec<i64>,
    bodies: Vec<&'a [u8]>,
    classes: Vec<&'a str>,
    countries: Vec<&'a str>,
    remotes: Vec<&'a [u8]>,
    exes: Vec<&'a str>,
    actions: Vec<&'a str>,
    chains: Vec<Option<&'a [u8]>>,
    units: Vec<&'a str>,
    containers: Vec<&'a str>,
    pods: Vec<&'a str>,
    names: Vec<&'a str>,
}

impl<'a> Columns<'a> {
    fn of(records: &'a [(Record, Indexed)]) -> Columns<'a> {
        let text = |f: fn(&'a (Record, Indexed)) -> &'a str| records.iter().map(f).collect();
        Columns {
            seqs: records.iter().map(|(r, _)| r.seq as i64).collect(),
            kinds: text(|(_, ix)| ix.kind),
            times: records.iter().map(|(r, _)| r.time_unix_ns).collect(),
            bodies: records
                .iter()
                .map(|(_, ix)| ix.encoded.as_slice())
                .collect(),
            classes: text(|(_, ix)| &ix.classes),
            countries: text(|(_, ix)| &ix.country),
            remotes: records.iter().map(|(_, ix)| ix.remote.as_slice()).collect(),
            exes: text(|(_, ix)| &ix.exe),
            actions: text(|(_, ix)| &ix.action),
            chains: records
                .iter()
                .map(|(_, ix)| (!ix.chain.is_empty()).then_some(ix.chain.as_slice()))
                .collect(),
            units: text(|(_, ix)| &ix.unit),
            containers: text(|(_, ix)| &ix.container),
            pods: text(|(_, ix)| &ix.pod),
            names: text(|(_, ix)| &ix.names),
        }
    }

    /// The insert's parameters, in its order.
    fn params<'b>(&'b self, host: &'b &str, stored: &'b i64) -> [&'b (dyn ToSql + Sync); 16] {
        [
            host,
            stored,
            &self.seqs,
            &self.kinds,
            &self.times,
            &self.bodies,
            &self.classes,
            &self.countries,
            &self.remotes,
            &self.exes,
            &self.actions,
            &self.chains,
            &self.units,
            &self.containers,
            &self.pods,
            &self.names,
        ]
    }
}

/// The advisory lock key collectors migrate under ("RSMIGR" in ASCII).
const MIGRATION_LOCK: i64 = 0x5253_4d49_4752;

impl Postgres {
    /// Connects to `url` (postgres://user@host/db, or ?host=/run/postgresql for
    /// a Unix socket) and migrates.
    pub async fn open(url: &str) -> Result<Postgres, StoreError> {
        let mut client = connect(url).await?;
        let tx = client.transaction().await?;
        // One collector migrates at a time (replicas start together): a lock
        // held until commit, taken before the table of migrations may exist
        // (two concurrent CREATE TABLE IF NOT EXISTS can both try to create
        // it, and one fails).
        tx.batch_execute(&format!(
            "SELECT pg_advisory_xact_lock({MIGRATION_LOCK});
             CREATE TABLE IF NOT EXISTS schema_migrations (version BIGINT NOT NULL)"
        ))
        .await?;
        let version: i64 = tx
            .query_one(
                "SELECT COALESCE(MAX(version), 0) FROM schema_migrations",
                &[],
            )
            .await?
            .get(0);
        for (i, m) in MIGRATIONS.iter().enumerate().skip(version as usize) {
            tx.batch_execute(m).await?;
            if *m == ADD_RECORD {
                convert_legacy(&tx).await?;
            }
            tx.execute(
                "INSERT INTO schema_migrations (version) VALUES ($1)",
                &[&((i + 1) as i64)],
            )
            .await?;
        }
        tx.commit().await?;
        Ok(Postgres {
            client,
            url: url.to_owned(),
            origin: format!("{}-{}", std::process::id(), now_ns()),
        })
    }

    /// Another connection of this collector (same origin), for another
    /// writer: group commits on several connections overlap their waits
    /// for the WAL flush and use more than one of the server's cores.
    pub async fn sibling(&self) -> Result<Postgres, StoreError> {
        Ok(Postgres {
            client: connect(&self.url).await?,
            url: self.url.clone(),
            origin: self.origin.clone(),
        })
    }

    /// The URL and this collector's origin (see `Store::feed`).
    pub fn feed(&self) -> (String, String) {
        (self.url.clone(), self.origin.clone())
    }

    /// The client, reconnected first if its connection was lost.
    async fn live(&mut self) -> Result<&mut Client, StoreError> {
        if self.client.is_closed() {
            self.client = connect(&self.url).await?;
            info!("reconnected to PostgreSQL");
        }
        Ok(&mut self.client)
    }

    pub async fn last_seq(&mut self, host: &str) -> Result<u64, StoreError> {
        let row = self
            .live()
            .await?
            .query_one(
                "SELECT COALESCE(MAX(seq), 0) FROM records WHERE host = $1",
                &[&host],
            )
            .await?;
        Ok(row.get::<_, i64>(0) as u64)
    }

    pub async fn counted_last_seq(&mut self, host: &str) -> Result<Option<u64>, StoreError> {
        let row = self
            .live()
            .await?
            .query_opt("SELECT last_seq FROM host_counts WHERE host = $1", &[&host])
            .await?;
        Ok(row.map(|r| r.get::<_, i64>(0) as u64))
    }

    pub async fn put_fleet_mode(&mut self, m: &super::FleetMode) -> Result<(), StoreError> {
        let tx = self.live().await?.transaction().await?;
        if m.class.is_empty() {
            tx.execute(super::CLEAR_CLASS_MODES, &[&m.target]).await?;
        }
        tx.execute(
            super::PUT_FLEET_MODE,
            &[
                &m.target,
                &m.class,
                &m.mode,
                &m.actor,
                &m.reason,
                &m.issued_ns,
            ],
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    pub async fn fleet_modes(&mut self, host: &str) -> Result<Vec<super::FleetMode>, StoreError> {
        let rows = self
            .live()
            .await?
            .query(super::FLEET_MODES_FOR, &[&host])
            .await?;
        Ok(rows
            .iter()
            .map(|r| super::FleetMode {
                target: r.get(0),
                class: r.get(1),
                mode: r.get(2),
                actor: r.get(3),
                reason: r.get(4),
                issued_ns: r.get(5),
            })
            .collect())
    }

    /// Stores batches of several hosts in one transaction (group commit);
    /// returns the sequences of each that were new.
    ///
    /// A few round trips per group, not per host: the statements are
    /// prepared together, the hosts' locks taken and their last sequences
    /// read with one statement each, and the hosts' inserts, then their
    /// counters and announcements, sent together (tokio-postgres pipelines
    /// statements issued at once). A host twice in a group is stored in a
    /// later round of the same transaction, which reads what the first
    /// wrote.
    pub async fn insert(
        &mut self,
        groups: &[(&str, &[(Record, Indexed)])],
    ) -> Result<Vec<Vec<i64>>, StoreError> {
        use futures_util::future::try_join_all;
        let origin = self.origin.clone();
        let tx = self.live().await?.transaction().await?;
        let (stmt, bump, last_of, notify, broke, jump, explain, lock) = tokio::try_join!(
            tx.prepare(
                "INSERT INTO records (host, seq, kind, time_ns, body, stored_ns, classes, country, remote, exe, action, record, chain, unit, container, pod, names)
                 SELECT $1, s, k, t, '', $2, c, co, r, e, a, b, h, un, ct, pd, nm
                 FROM UNNEST($3::bigint[], $4::text[], $5::bigint[], $6::bytea[], $7::text[], $8::text[], $9::bytea[], $10::text[], $11::text[], $12::bytea[], $13::text[], $14::text[], $15::text[], $16::text[])
                   AS u(s, k, t, b, c, co, r, e, a, h, un, ct, pd, nm)
                 ON CONFLICT (host, seq) DO NOTHING
                 RETURNING seq, kind",
            ),
            tx.prepare(
                "INSERT INTO host_counts (host, last_seq, last_stored_ns, violations, gaps, audits, chain_head)
                 VALUES ($1, $2, $3, $4, $5, $6, $7)
                 ON CONFLICT (host) DO UPDATE SET
                   chain_head = CASE WHEN excluded.last_seq >= host_counts.last_seq
                     THEN excluded.chain_head ELSE host_counts.chain_head END,
                   last_seq = GREATEST(host_counts.last_seq, excluded.last_seq),
                   last_stored_ns = excluded.last_stored_ns,
                   violations = host_counts.violations + excluded.violations,
                   gaps = host_counts.gaps + excluded.gaps,
                   audits = host_counts.audits + excluded.audits",
            ),
            tx.prepare(
                "SELECT host, last_seq, chain_head FROM host_counts WHERE host = ANY($1::text[])"
            ),
            tx.prepare("SELECT pg_notify($1, $2)"),
            tx.prepare(super::chain::INSERT_BREAK),
            tx.prepare(super::INSERT_JUMP),
            tx.prepare(super::EXPLAIN_JUMPS),
            // Replicas share the database: another collector may be storing
            // the same host's records right now (an agent that failed over
            // while its old stream was still committing). The (host, seq)
            // key keeps the records once each; a lock per host, taken in
            // host order (no deadlock between two group commits), keeps the
            // reading of the host's last sequence and chain head below
            // consistent with what this transaction writes: no false jump,
            // no false chain break.
            tx.prepare(
                "SELECT count(pg_advisory_xact_lock(hashtextextended(h, 0)))
                 FROM (SELECT DISTINCT h FROM unnest($1::text[]) AS u(h) ORDER BY h) AS o"
            ),
        )?;
        let mut hosts: Vec<&str> = groups.iter().map(|(h, _)| *h).collect();
        hosts.sort_unstable();
        hosts.dedup();
        tx.query_one(&lock, &[&hosts]).await?;
        let stored = now_ns();
        let mut counts = vec![Vec::new(); groups.len()];
        for round in rounds(groups) {
            let names: Vec<&str> = round.iter().map(|&i| groups[i].0).collect();
            let mut lasts: std::collections::HashMap<String, (i64, Vec<u8>)> = tx
                .query(&last_of, &[&names])
                .await?
                .iter()
                .map(|r| {
                    (
                        r.get(0),
                        (r.get(1), r.get::<_, Option<Vec<u8>>>(2).unwrap_or_default()),
                    )
                })
                .collect();
            let columns: Vec<Columns> = round.iter().map(|&i| Columns::of(groups[i].1)).collect();
            let params: Vec<[&(dyn ToSql + Sync); 16]> = round
                .iter()
                .zip(&columns)
                .map(|(&i, c)| c.params(&groups[i].0, &stored))
                .collect();
            let inserted = try_join_all(params.iter().map(|p| tx.query(&stmt, p))).await?;
            let mut bumps = Vec::new();
            let mut payloads = Vec::new();
            for (&i, rows) in round.iter().zip(inserted) {
                let (host, records) = &groups[i];
                // None: the host's first records here (a spool that starts
                // past 1 is no jump).
                let mut link: super::chain::Last = lasts.remove(*host);
                let last: Option<i64> = link.as_ref().map(|(s, _)| *s);
                let mut new = NewCounts::default();
                let mut new_seqs = Vec::with_capacity(rows.len());
                for row in &rows {
                    new.add(row.get::<_, &str>(1), row.get::<_, i64>(0));
                    new_seqs.push(row.get::<_, i64>(0));
                }
                for j in super::jumps_after(last, &new_seqs) {
                    tx.execute(&jump, &[host, &j.from, &j.to, &stored]).await?;
                }
                let fresh: std::collections::HashSet<i64> = new_seqs.iter().copied().collect();
                for (r, ix) in records
                    .iter()
                    .filter(|(r, _)| fresh.contains(&(r.seq as i64)))
                {
                    if let Some(b) = super::chain::check(&mut link, r, ix) {
                        tx.execute(&broke, &[host, &b.seq, &b.expected, &b.found, &stored])
                            .await?;
                    }
                }
                let head: Option<Vec<u8>> = link
                    .filter(|(s, c)| *s == new.last_seq && !c.is_empty())
                    .map(|(_, c)| c);
                for (seq, first, last) in super::spool_gaps(records) {
                    tx.execute(&explain, &[host, &seq, &first, &last]).await?;
                }
                if new.total > 0 {
                    bumps.push((*host, new, head));
                }
                // Other replicas' watchers learn of them at commit.
                payloads.extend(super::stored_feed::announcements(&origin, host, &new_seqs));
                counts[i] = new_seqs;
            }
            let bump_params: Vec<[&(dyn ToSql + Sync); 7]> = bumps
                .iter()
                .map(|(host, new, head)| -> [&(dyn ToSql + Sync); 7] {
                    [
                        host,
                        &new.last_seq,
                        &stored,
                        &new.violations,
                        &new.gaps,
                        &new.audits,
                        head,
                    ]
                })
                .collect();
            try_join_all(bump_params.iter().map(|p| tx.execute(&bump, p))).await?;
            let channel = super::stored_feed::CHANNEL;
            let notify_params: Vec<[&(dyn ToSql + Sync); 2]> =
                payloads.iter().map(|p| [&channel as _, p as _]).collect();
            try_join_all(notify_params.iter().map(|p| tx.execute(&notify, p))).await?;
        }
        tx.commit().await?;
        Ok(counts)
    }

    pub async fn forward_pending(
        &mut self,
        sink: &str,
    ) -> Result<Vec<(String, i64, i64)>, StoreError> {
        let rows = self
            .live()
            .await?
            .query(super::FORWARD_PENDING, &[&sink])
            .await?;
        Ok(rows
            .iter()
            .map(|r| (r.get(0), r.get(1), r.get(2)))
            .collect())
    }

    pub async fn set_forward_cursor(
        &mut self,
        sink: &str,
        host: &str,
        seq: i64,
    ) -> Result<(), StoreError> {
        self.live()
            .await?
            .execute(super::SET_FORWARD_CURSOR, &[&sink, &host, &seq])
            .await?;
        Ok(())
    }

    pub async fn ping(&mut self) -> Result<(), StoreError> {
        self.live().await?.simple_query("SELECT 1").await?;
        Ok(())
    }

    /// Runs the query `sql` builds around `filter`'s WHERE clause, with
    /// the filter's parameters.
    async fn query_where(
        &mut self,
        filter: &Filter,
        sql: impl FnOnce(&str) -> String,
    ) -> Result<Vec<tokio_postgres::Row>, StoreError> {
        let (clause, params) = filter.sql(|n| format!("${n}"));
        let params: Vec<Box<dyn ToSql + Sync + Send>> = params.iter().map(boxed).collect();
        let refs: Vec<&(dyn ToSql + Sync)> = params
            .iter()
            .map(|p| p.as_ref() as &(dyn ToSql + Sync))
            .collect();
        Ok(self.live().await?.query(&sql(&clause), &refs).await?)
    }

    pub async fn stats(
        &mut self,
        filter: &Filter,
        bucket_ns: i64,
    ) -> Result<Vec<super::StatsRow>, StoreError> {
        let rows = self
            .query_where(filter, |clause| super::stats_sql(clause, bucket_ns))
            .await?;
        Ok(rows
            .iter()
            .map(|r| super::StatsRow {
                bucket_ns: r.get(0),
                classes: r.get(1),
                country: r.get(2),
                count: r.get(3),
            })
            .collect())
    }

    pub async fn select(
        &mut self,
        filter: &Filter,
        order: &str,
        limit: Option<u32>,
    ) -> Result<Vec<StoredRecord>, StoreError> {
        let limit = limit.map(|l| format!(" LIMIT {l}")).unwrap_or_default();
        let rows = self
            .query_where(filter, |clause| {
                format!("SELECT host, seq, time_ns, record, chain FROM records WHERE {clause} ORDER BY {order}{limit}")
            })
            .await?;
        Ok(rows
            .iter()
            .map(|r| super::stored(r.get(0), r.get(1), r.get(2), r.get::<_, &[u8]>(3), r.get(4)))
            .collect())
    }

    pub async fn put_state(&mut self, host: &str, state: &[u8]) -> Result<(), StoreError> {
        self.live()
            .await?
            .execute(
                "INSERT INTO hosts (host, state, state_ns) VALUES ($1, $2, $3)
                 ON CONFLICT (host) DO UPDATE SET state = excluded.state, state_ns = excluded.state_ns",
                &[&host, &state, &now_ns()],
            )
            .await?;
        Ok(())
    }

    pub(crate) async fn hosts(&mut self) -> Result<Vec<HostRow>, StoreError> {
        let rows = self.live().await?.query(super::HOSTS_SQL, &[]).await?;
        Ok(rows
            .iter()
            .map(|r| HostRow {
                host: r.get(0),
                last_seen_ns: r.get(1),
                last_seq: r.get(2),
                violations: r.get(3),
                gaps: r.get(4),
                audits: r.get(5),
                state: r.get(6),
                state_ns: r.get(7),
                unexplained_jumps: r.get(8),
                chain_head: r.get(9),
                chain_breaks: r.get(10),
            })
            .collect())
    }

    pub(crate) async fn seq_range(
        &mut self,
        host: &str,
        since: i64,
        until: i64,
    ) -> Result<Option<(i64, i64)>, StoreError> {
        let row = self
            .live()
            .await?
            .query_one(super::chain::SEQ_RANGE, &[&host, &since, &until])
            .await?;
        let (lo, hi): (Option<i64>, Option<i64>) = (row.get(0), row.get(1));
        Ok(lo.zip(hi))
    }

    pub(crate) async fn chain_rows(
        &mut self,
        host: &str,
        after: i64,
        upto: i64,
        limit: i64,
        kind: &str,
    ) -> Result<Vec<super::chain::StoredRow>, StoreError> {
        let rows = self
            .live()
            .await?
            .query(
                super::chain::CHAIN_ROWS,
                &[&host, &after, &upto, &limit, &kind],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|r| super::chain::StoredRow {
                seq: r.get(0),
                time_ns: r.get(1),
                kind: r.get(2),
                classes: r.get(3),
                country: r.get(4),
                remote: r.get(5),
                exe: r.get(6),
                action: r.get(7),
                record: r.get::<_, Option<Vec<u8>>>(8).unwrap_or_default(),
                chain: r.get(9),
                unit: r.get(10),
                container: r.get(11),
                pod: r.get(12),
                names: r.get(13),
            })
            .collect())
    }

    /// What retention removed of `host` (see `retention`).
    pub(crate) async fn retained(
        &mut self,
        host: &str,
    ) -> Result<Option<super::retention::Retained>, StoreError> {
        let row = self
            .live()
            .await?
            .query_opt(super::retention::RETAINED, &[&host])
            .await?;
        Ok(row.map(|r| super::retention::Retained {
            upto_seq: r.get::<_, i64>(0) as u64,
            chain: r.get::<_, Option<Vec<u8>>>(1).unwrap_or_default(),
            removed: r.get::<_, i64>(2) as u64,
            at_ns: r.get(3),
        }))
    }

    /// The first column of every row of `sql` (no parameters).
    pub(crate) async fn strings(&mut self, sql: &str) -> Result<Vec<String>, StoreError> {
        let rows = self.live().await?.query(sql, &[]).await?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    /// The one integer `sql` answers (None: NULL).
    pub(crate) async fn one_int(
        &mut self,
        sql: &str,
        p: &[Param],
    ) -> Result<Option<i64>, StoreError> {
        let boxed: Vec<_> = p.iter().map(boxed).collect();
        let refs: Vec<&(dyn ToSql + Sync)> = boxed.iter().map(|b| b.as_ref() as _).collect();
        let row = self.live().await?.query_one(sql, &refs).await?;
        Ok(row.get(0))
    }

    /// Runs `steps` (each with how many of `p` it takes) in one
    /// transaction, holding the advisory lock of the host `p` starts with.
    pub(crate) async fn script(
        &mut self,
        steps: &[(&str, usize)],
        p: &[Param],
    ) -> Result<(), StoreError> {
        let boxed: Vec<_> = p.iter().map(boxed).collect();
        let refs: Vec<&(dyn ToSql + Sync)> = boxed.iter().map(|b| b.as_ref() as _).collect();
        let tx = self.live().await?.transaction().await?;
        if let Some(Param::Text(host)) = p.first() {
            // The host's lock, as batches take it (see `insert`).
            tx.execute(
                "SELECT pg_advisory_xact_lock(hashtextextended($1, 0))",
                &[host],
            )
            .await?;
        }
        for (sql, n) in steps {
            tx.execute(*sql, &refs[..*n]).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    pub(crate) async fn row_before(
        &mut self,
        host: &str,
        seq: i64,
    ) -> Result<Option<super::chain::SeqChain>, StoreError> {
        let row = self
            .live()
            .await?
            .query_opt(super::chain::ROW_BEFORE, &[&host, &seq])
            .await?;
        Ok(row.map(|r| (r.get(0), r.get(1))))
    }

    pub(crate) async fn chain_breaks(
        &mut self,
        host: &str,
        from: i64,
        to: i64,
    ) -> Result<Vec<super::chain::Break>, StoreError> {
        let rows = self
            .live()
            .await?
            .query(super::chain::BREAKS, &[&host, &from, &to])
            .await?;
        Ok(rows
            .iter()
            .map(|r| super::chain::Break {
                seq: r.get(0),
                expected: r.get(1),
                found: r.get(2),
            })
            .collect())
    }
}
