//! What a DNS answer costs the agent, and what the names it learned cost
//! every record (`cargo xtask bench`):
//! - `dns/answer`: one answer as the kernel passes it up (a CNAME and two A
//!   records) parsed and learned, per process and host-wide;
//! - `dns/lookup_empty` beside `dns/lookup_10k`: naming one record's remote
//!   address with no names learned and with 10,000 (the added cost per
//!   record; the kernel's connect path does not read them).
//!
//! The target: under 2 µs per answer.

use std::{hint::black_box, net::IpAddr, str::FromStr, time::Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use hickory_proto::{
    op::{Message, MessageType, OpCode, Query},
    rr::{Name, RData, Record, RecordType, rdata},
};
use sensor_user::dns::{NameCache, parse};

fn answer(name: &str, edge: &str, addrs: &[IpAddr]) -> Vec<u8> {
    let mut m = Message::new(7, MessageType::Response, OpCode::Query);
    m.add_query(Query::query(Name::from_str(name).unwrap(), RecordType::A));
    m.answers.push(Record::from_rdata(
        Name::from_str(name).unwrap(),
        300,
        RData::CNAME(rdata::CNAME(Name::from_str(edge).unwrap())),
    ));
    for ip in addrs {
        let IpAddr::V4(v4) = ip else { continue };
        m.answers.push(Record::from_rdata(
            Name::from_str(edge).unwrap(),
            60,
            RData::A(rdata::A(*v4)),
        ));
    }
    m.to_vec().unwrap()
}

fn bench(c: &mut Criterion) {
    let msg = answer(
        "bucket.s3.eu-west-1.amazonaws.com.",
        "s3-r-w.eu-west-1.amazonaws.com.",
        &["52.218.1.1".parse().unwrap(), "52.218.1.2".parse().unwrap()],
    );
    let now = Instant::now();
    let mut cache = NameCache::default();
    c.bench_function("dns/answer", |b| {
        b.iter(|| {
            let a = parse(black_box(&msg), false).unwrap();
            cache.learn(black_box(4242), &a, now);
        })
    });

    let probe: IpAddr = "10.0.39.16".parse().unwrap();
    let empty = NameCache::default();
    let mut full = NameCache::default();
    for i in 0..10_000u32 {
        let ip = IpAddr::from((0x0a00_0000 + i).to_be_bytes());
        let msg = answer(
            &format!("host{i}.example."),
            &format!("edge{i}.example."),
            &[ip],
        );
        full.learn(1000 + i % 50, &parse(&msg, false).unwrap(), now);
    }
    let mut group = c.benchmark_group("dns");
    group.bench_function("lookup_empty", |b| {
        b.iter(|| empty.lookup(black_box(4242), black_box(probe), now))
    });
    group.bench_function("lookup_10k", |b| {
        b.iter(|| full.lookup(black_box(4242), black_box(probe), now))
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
