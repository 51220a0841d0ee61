//! `collectord export` against a real database file.

use collector::store::{Store, filter::Indexed};
use residency_proto::{
    agent::v1::{Action, Flow},
    collector::v1::{Audit, Record, record::Body},
};

#[test]
fn exports_a_time_window_as_jsonl_and_csv() {
    let dir = std::env::temp_dir().join(format!("rs-export-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let db = dir.join("c.db");
    let day = 86_400 * 1_000_000_000i64;
    {
        let rt = tokio::runtime::Runtime::new().unwrap();
        let mut s = rt.block_on(Store::open(db.to_str().unwrap())).unwrap();
        let rec = |seq: u64, t: i64, kind: &str| Record {
            seq,
            time_unix_ns: t,
            body: Some(match kind {
                "violation" => Body::Violation(Flow {
                    pid: seq as u32,
                    action: Action::Denied as i32,
                    ..Default::default()
                }),
                _ => Body::Audit(Audit {
                    actor: "ops".into(),
                    ..Default::default()
                }),
            }),
            chain: Vec::new(),
        };
        let rows: Vec<_> = [
            rec(1, day, "violation"),
            rec(2, 2 * day, "violation"),
            rec(3, 2 * day + 1, "audit"),
            rec(4, 3 * day, "violation"),
        ]
        .into_iter()
        .map(|r| {
            let ix = Indexed::of(&r);
            (r, ix)
        })
        .collect();
        rt.block_on(s.insert("h1", &rows)).unwrap();
    }
    let run = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_collectord"))
            .arg("--database")
            .arg(&db)
            .arg("export")
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let jsonl = run(&[
        "--format",
        "jsonl",
        "--since",
        "1970-01-03",
        "--until",
        "1970-01-04",
        "--kind",
        "violation",
    ]);
    let lines: Vec<&str> = jsonl.lines().collect();
    assert_eq!(lines.len(), 1, "{jsonl}");
    let v: serde_json::Value = serde_json::from_str(lines[0]).unwrap();
    // The canonical protobuf JSON of the stored record.
    assert_eq!(v["host_id"], "h1");
    assert_eq!(v["record"]["seq"], "2");
    assert_eq!(v["record"]["violation"]["pid"], 2);
    assert_eq!(v["record"]["violation"]["action"], "ACTION_DENIED");
    let csv = run(&["--format", "csv"]);
    assert_eq!(csv.lines().count(), 5, "header and four records: {csv}");
    assert!(csv.lines().nth(3).unwrap().starts_with("h1,3,audit,"));
    let missing = std::process::Command::new(env!("CARGO_BIN_EXE_collectord"))
        .args(["--database", "/nonexistent/c.db", "export"])
        .output()
        .unwrap();
    assert!(!missing.status.success());
    assert!(
        String::from_utf8_lossy(&missing.stderr)
            .contains("no collector database at /nonexistent/c.db")
    );
    let _ = std::fs::remove_dir_all(&dir);
}
