//! The names phase: DNS answers reaching a tagged process through the real
//! sensord, which parses them, learns the addresses of names the policy
//! allows and writes them into the kernel's `NAMES` map.
//!
//! A resolver in the US host's network namespace (port 53 of a
//! `host.trusted_resolvers` address) sends answers for `nI.names.bench`
//! (one A record each, TTL one hour) to a UDP socket of a tagged worker, at
//! paced rates. Each step reports what sensord handled, what the kernel's
//! DNS ring lost and sensord's CPU per answer; the first step leaves the
//! worker with 10,000 learned names for the connect sides that follow.

use std::{
    net::{Ipv4Addr, SocketAddr, UdpSocket},
    time::{Duration, Instant},
};

use harness::harness::{
    agent::RunningAgent,
    answers::{a_answer, send_paced},
    bench::process,
};

/// The names the policy allows (`allowed_names`) and the answers name.
pub const ALLOWED: &str = "*.names.bench";

/// Answers for `n0.names.bench` … with one A record each, in 100.64.0.0/10
/// (addresses the workers never connect to: the connect sides' lookups miss).
pub fn answers(n: u32) -> Vec<Vec<u8>> {
    (0..n)
        .map(|i| {
            a_answer(
                (i % 65_536) as u16,
                &format!("n{i}.names.bench"),
                Ipv4Addr::from(0x6440_0000u32 + i),
                3600,
            )
        })
        .collect()
}

/// A value of sensord's `/metrics` on `port` (0 when absent).
pub fn metric(port: u16, name: &str) -> u64 {
    harness::harness::http::metric(port, name) as u64
}

const ANSWERS: &str = "residency_sensor_dns_answers_total";
pub const ENTRIES: &str = "residency_sensor_name_entries";

/// Sends `msgs` to `to` at each of `rates` in turn, printing per step what
/// sensord handled, what the kernel lost and sensord's CPU per answer.
pub fn steps(
    agent: &RunningAgent,
    admin: u16,
    socket: &UdpSocket,
    to: SocketAddr,
    msgs: &[Vec<u8>],
    rates: &[u64],
) {
    println!(
        "{:>10} {:>10} {:>9} {:>9} {:>7} {:>14}",
        "target/s", "sent/s", "sent", "handled", "lost", "µs CPU/answer"
    );
    for &rate in rates {
        let (cpu0, handled0, lost0) = (
            process::cpu_ns(agent.pid()),
            metric(admin, ANSWERS),
            agent.counter("dns_lost"),
        );
        let sent_rate = send_paced(socket, to, msgs, rate);
        let sent = msgs.len() as u64;
        // Until sensord has read what the kernel passed up (or 5 s); its
        // CPU is read before asking it (asking costs it a little).
        let deadline = Instant::now() + Duration::from_secs(5);
        let (handled, lost, cpu) = loop {
            std::thread::sleep(Duration::from_millis(200));
            let cpu = process::cpu_ns(agent.pid()) - cpu0;
            let handled = metric(admin, ANSWERS) - handled0;
            let lost = agent.counter("dns_lost") - lost0;
            if handled + lost >= sent || Instant::now() >= deadline {
                break (handled, lost, cpu);
            }
        };
        println!(
            "{rate:>10} {sent_rate:>10.0} {sent:>9} {handled:>9} {lost:>7} {:>14.2}",
            cpu as f64 / 1e3 / handled.max(1) as f64
        );
    }
}
