//! A collector database written before records were typed (JSON bodies in
//! `records.body`) is converted when an upgraded collector opens it: every
//! stored violation, gap and audit record comes back as the typed record,
//! on SQLite and on PostgreSQL. Real collectord, real databases.

use harness::harness::{collector::export, database::Database, postgres::PgServer, temp::TempPath};
use residency_proto::{
    agent::v1::{Action, FlowKind, Protocol, Verdict},
    collector::v1::{GapSource, StoredRecord},
};

/// Rows as a collector before typed records stored them: (seq, kind, body).
const OLD_ROWS: [(i64, &str, &str); 3] = [
    (
        1,
        "violation",
        r#"{"kind":"connect","pid":4242,"protocol":"tcp","remote":"203.0.113.7:443","remote_country":"US","verdict":"deny","action":"denied","classes":["eu_personal"],"cookie":77,"exe":"/usr/bin/curl"}"#,
    ),
    (
        2,
        "gap",
        r#"{"source":"spool","count":5,"first_seq":10,"last_seq":14}"#,
    ),
    (
        3,
        "audit",
        r#"{"time_unix_ns":3,"actor":"uid 0 (pid 1)","action":"mode of eu_personal: monitor -> enforce","reason":"audit"}"#,
    ),
];

/// The old rows came back typed, with their columns (the action filter).
fn assert_converted(records: &[StoredRecord]) {
    assert_eq!(records.len(), 3, "{records:?}");
    let v = records
        .iter()
        .find_map(StoredRecord::violation)
        .expect("the violation");
    assert_eq!(
        (v.kind(), v.protocol(), v.verdict(), v.action()),
        (
            FlowKind::Connect,
            Protocol::Tcp,
            Verdict::Deny,
            Action::Denied
        )
    );
    assert_eq!(
        (v.pid, v.cookie, v.remote.as_str()),
        (4242, 77, "203.0.113.7:443")
    );
    let g = records.iter().find_map(StoredRecord::gap).expect("the gap");
    assert_eq!(
        (g.source(), g.count, g.first_seq, g.last_seq),
        (GapSource::SpoolFull, 5, 10, 14)
    );
    let a = records
        .iter()
        .find_map(StoredRecord::audit)
        .expect("the audit");
    assert_eq!(a.actor, "uid 0 (pid 1)");
    assert!(records.iter().all(|r| r.host_id == "old-host"));
}

/// Takes a current database (SQLite or PostgreSQL) back to the last schema
/// before typed records: the retention table's, the names column's, the
/// forwarding cursors' and workload columns' migrations, the record chain's,
/// then the typed record's, undone, and the migration count set back by six
/// (PostgreSQL: seven, with the replicas' agent_connections and
/// fleet_messages tables, which SQLite does not have).
fn back_before_typed_records(database: &str) {
    let mut db = Database::open(database);
    for undo in [
        "DROP TABLE retention",
        "ALTER TABLE records DROP COLUMN names",
        "DROP TABLE forward_cursors",
        "ALTER TABLE records DROP COLUMN unit",
        "ALTER TABLE records DROP COLUMN container",
        "ALTER TABLE records DROP COLUMN pod",
        "DROP TABLE chain_breaks",
        "ALTER TABLE records DROP COLUMN chain",
        "ALTER TABLE host_counts DROP COLUMN chain_head",
        "ALTER TABLE records DROP COLUMN record",
    ] {
        db.execute(undo, &[]);
    }
    if database.starts_with("postgres") {
        db.execute("DROP TABLE agent_connections", &[]);
        db.execute("DROP TABLE fleet_messages", &[]);
        for _ in 0..7 {
            db.execute(
                "DELETE FROM schema_migrations WHERE version = (SELECT MAX(version) FROM schema_migrations)",
                &[],
            );
        }
    } else {
        let v: i64 = db.one("PRAGMA user_version", &[]);
        db.execute(&format!("PRAGMA user_version = {}", v - 6), &[]);
    }
}

#[test]
fn a_sqlite_database_from_before_typed_records_is_converted() {
    let dir = TempPath::dir("rs-upgrade-sqlite");
    let db = dir.path().join("c.db");
    let spec = db.to_str().expect("utf-8").to_owned();
    // The current schema, then taken back to the last one before typed
    // records, with rows as that version stored them.
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    drop(
        rt.block_on(collector::store::Store::open(&spec))
            .expect("a new database"),
    );
    back_before_typed_records(&spec);
    {
        let c = rusqlite::Connection::open(&db).expect("open");
        for (seq, kind, body) in OLD_ROWS {
            c.execute(
                "INSERT INTO records (host, seq, kind, time_ns, body, stored_ns, action) VALUES ('old-host', ?1, ?2, ?1, ?3, 0, ?4)",
                rusqlite::params![seq, kind, body, if kind == "violation" { "denied" } else { "" }],
            )
            .expect("an old row");
        }
    }
    assert_converted(&export(&spec, None));
}

#[test]
fn a_postgresql_database_from_before_typed_records_is_converted() {
    let pg = PgServer::start();
    assert!(export(&pg.url, None).is_empty());
    back_before_typed_records(&pg.url);
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let (client, conn) = tokio_postgres::connect(&pg.url, tokio_postgres::NoTls)
            .await
            .expect("connect");
        tokio::spawn(conn);
        for (seq, kind, body) in OLD_ROWS {
            client
                .execute(
                    "INSERT INTO records (host, seq, kind, time_ns, body, stored_ns) VALUES ('old-host', $1, $2, $1, $3, 0)",
                    &[&seq, &kind, &body],
                )
                .await
                .expect("an old row");
        }
    });
    assert_converted(&export(&pg.url, None));
}
