//! Several collectord replicas on one PostgreSQL: an agent may deliver to
//! any of them and move between them at any time, while an older stream of
//! the same host is still committing on another.

use std::path::Path;

use harness::harness::{
    collector::{Delivery, RunningCollector, chained_violation},
    postgres::PgServer,
    temp::TempPath,
};

const HOST: &str = "replica-host";

/// `n` replicas on `url`, started at the same moment (as a deployment
/// starts them): on an empty database they all try to create the schema.
fn replicas(dir: &Path, url: &str, n: usize) -> Vec<RunningCollector> {
    std::thread::scope(|s| {
        let starting: Vec<_> = (0..n)
            .map(|i| {
                s.spawn(move || {
                    let d = dir.join(format!("replica-{i}"));
                    std::fs::create_dir_all(&d).expect("replica dir");
                    RunningCollector::start_with(&d, url, None)
                })
            })
            .collect();
        starting
            .into_iter()
            .map(|t| t.join().expect("a replica started"))
            .collect()
    })
}

#[test]
fn concurrent_streams_of_one_host_on_three_replicas_store_each_record_once_with_an_intact_chain() {
    let pg = PgServer::start();
    let tmp = TempPath::dir("replicas");
    let replicas = replicas(tmp.path(), &pg.url, 3);
    const BATCH: usize = 1_000;
    const N: u64 = 20_000;
    let mut prev = residency_proto::chain::ZERO;
    let records: Vec<_> = (1..=N)
        .map(|seq| chained_violation(seq, HOST, &mut prev))
        .collect();
    // Two streams at the same moment, on two replicas (both streams open
    // first): windows k and k + 1 on one, k + 1 and k + 2 on the other, as
    // an agent that gave up on a slow stream and sent everything
    // unacknowledged again elsewhere. Whichever commits second stores
    // records past what the other had not committed when it began.
    let windows: Vec<&[_]> = records.chunks(BATCH).collect();
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let two = |k: usize| -> Vec<_> {
        windows[k.min(windows.len() - 1)..(k + 2).min(windows.len())].concat()
    };
    for (round, k) in (0..windows.len()).step_by(2).enumerate() {
        let (a, b) = (&replicas[round % 3], &replicas[(round + 1) % 3]);
        let (first, second) = (two(k), two(k + 1));
        let acks = (
            first.last().map_or(0, |r| r.seq),
            second.last().map_or(0, |r| r.seq),
        );
        let got = rt.block_on(async {
            let mut on_a = Delivery::open(a.agent_client(HOST).await, HOST).await;
            let mut on_b = Delivery::open(b.agent_client(HOST).await, HOST).await;
            tokio::join!(on_a.send(first), on_b.send(second))
        });
        assert_eq!(got, acks, "round {round}'s acknowledgements");
    }

    // Each record once, whichever replica is asked.
    for r in &replicas {
        assert_eq!(r.count(HOST, "violation"), N as usize);
        let host = r
            .hosts()
            .into_iter()
            .find(|h| h.host_id == HOST)
            .expect("the host is listed");
        assert_eq!(host.violations, N, "the host's counter: {host:?}");
        assert_eq!(
            host.unexplained_jumps, 0,
            "a replica saw a jump that was only another replica's uncommitted batch: {host:?}"
        );
    }
    // And the chain is whole: no break recorded where a replica linked a
    // record to a head another replica was still replacing.
    let (report, code) = replicas[2].verify(HOST);
    assert_eq!(code, 0, "{report:?}");
    assert!(report.intact && report.findings.is_empty(), "{report:?}");
    assert_eq!((report.records, report.chained), (N, N), "{report:?}");
}
