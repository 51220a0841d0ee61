//! One record through the agent's pipeline, as sensord runs it: the ring
//! buffer's bytes decoded, enriched (executable from the per-process cache,
//! country from the default dataset's ranges, the policy's names), then
//! - a flow or close record: kept in the flow history;
//! - a violation: made an API record, encoded for the spool, appended
//!   (no fsync: the agent syncs once per batch) and kept in the violation
//!   history.
//!
//! `cargo bench -p sensor-user --bench record` (run by `cargo xtask bench`).
//! The numbers are per record; the agent's target is 2 µs.

use std::{hint::black_box, sync::Arc};

use criterion::{Criterion, criterion_group, criterion_main};
use sensor_common::{
    flow::{FlowEvent, FlowKind},
    net::{AF_INET, IPPROTO_TCP},
    policy::{action, verdict},
};
use sensor_user::{
    agent::{
        enrich::{ExeCache, Kept, Names},
        store::{Capacity, FlowStore},
    },
    export::{
        record::{Spooled, encode_spooled},
        spool::{Fsync, Options, Spool},
    },
    policy::source::PolicySource,
};

const POLICY: &str = r#"
[host]
id = "bench"
aggregation_interval = "0"

[classes.eu_personal]
mode = "monitor"
allowed_jurisdictions = ["EEA", "CH"]
"#;

/// A connect record of this process to 1.32.232.10:443 (a US address of the
/// default dataset), as the kernel writes it.
fn kernel_bytes(kind: FlowKind, act: u8) -> Vec<u8> {
    let mut ev = FlowEvent::ZERO;
    ev.kind = kind as u8;
    ev.tgid = std::process::id();
    ev.pid = ev.tgid;
    ev.classes = 1;
    ev.family = AF_INET;
    ev.protocol = IPPROTO_TCP;
    ev.remote_addr[..4].copy_from_slice(&[1, 32, 232, 10]);
    ev.remote_port = 443;
    ev.local_port = 40_000;
    ev.verdict = verdict::DENY;
    ev.action = act;
    ev.count = 1;
    ev.comm[..5].copy_from_slice(b"bench");
    ev.ktime_ns = 1;
    // SAFETY: FlowEvent is plain old data (repr(C), no padding the kernel
    // leaves uninitialised here: it starts from ZERO).
    unsafe {
        std::slice::from_raw_parts(std::ptr::from_ref(&ev).cast::<u8>(), size_of::<FlowEvent>())
    }
    .to_vec()
}

fn bench(c: &mut Criterion) {
    let dir = std::env::temp_dir().join(format!("rs-record-bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    let policy = dir.join("policy.toml");
    std::fs::write(&policy, POLICY).expect("policy");
    let source = PolicySource {
        policy,
        regions: sensor_user::regions::default_dir(),
        aws_ranges: None,
    };
    let compiled = source
        .build(&[])
        .expect("the default dataset (cargo xtask setup) and the bench policy");
    let names: Arc<Names> = Names::of(&compiled);
    let mut exes = ExeCache::default();
    // The workload cache as the agent has it (the bench's records carry
    // one cgroup id: resolved once, then looked up).
    let mut workloads = sensor_user::system::workload::WorkloadCache::new(
        &sensor_user::system::mountinfo::cgroup2_mount()
            .unwrap_or_else(|_| std::path::PathBuf::from("/sys/fs/cgroup")),
    );
    let store = FlowStore::new(Capacity {
        violations: 10_000,
        flows: 10_000,
    });
    let offset = sensor_user::clock::wall_offset_ns();

    let close = kernel_bytes(FlowKind::Close, action::REPORTED);
    c.bench_function("flow record: decode, enrich, history", |b| {
        b.iter(|| {
            let ev = FlowEvent::from_bytes(black_box(&close)).expect("a record");
            let kept = Kept::new(&ev, &compiled, &names, &mut exes, &mut workloads, offset);
            assert!(!kept.is_violation());
            store.push_flow(kept);
        });
    });

    let (mut spool, _) = Spool::open(
        &dir.join("spool"),
        Options {
            fsync: Fsync::EveryN(u32::MAX),
            max_bytes: 64 << 20,
            // As sensord spools: every record chained (SHA-256).
            chain: true,
            ..Options::default()
        },
    )
    .expect("spool");
    let violation = kernel_bytes(FlowKind::Connect, action::REPORTED);
    c.bench_function(
        "violation: decode, enrich, API record, spool, history",
        |b| {
            b.iter(|| {
                let ev = FlowEvent::from_bytes(black_box(&violation)).expect("a record");
                let kept = Kept::new(&ev, &compiled, &names, &mut exes, &mut workloads, offset);
                assert!(kept.is_violation());
                let flow = kept.to_pb();
                spool
                    .append(&encode_spooled(
                        flow.time_unix_ns,
                        Spooled::Violation(&flow),
                    ))
                    .expect("append");
                store.push_violation(flow);
            });
        },
    );
    let _ = std::fs::remove_dir_all(&dir);
}

criterion_group!(benches, bench);
criterion_main!(benches);
