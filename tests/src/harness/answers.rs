//! DNS answers made by the test itself (no server): for floods that a real
//! resolver would take too long to produce, sent from port 53 of a remote
//! host straight to a tagged process's socket.

use std::{
    net::{Ipv4Addr, SocketAddr, UdpSocket},
    str::FromStr,
    time::{Duration, Instant},
};

use hickory_proto::{
    op::{Message, MessageType, OpCode, Query},
    rr::{Name, RData, Record, RecordType, rdata},
};

use super::netns::RemoteHost;

/// An answer for `name` with one A record, `addr`, for `ttl` seconds.
pub fn a_answer(id: u16, name: &str, addr: Ipv4Addr, ttl: u32) -> Vec<u8> {
    let name = Name::from_str(&format!("{name}.")).expect("a DNS name");
    let mut m = Message::new(id, MessageType::Response, OpCode::Query);
    m.metadata.recursion_desired = true;
    m.metadata.recursion_available = true;
    m.add_query(Query::query(name.clone(), RecordType::A));
    m.answers
        .push(Record::from_rdata(name, ttl, RData::A(rdata::A(addr))));
    m.to_vec().expect("encoding an answer")
}

/// A resolver's socket: port 53 of `remote`'s IPv4 address, in its
/// namespace.
pub fn resolver(remote: &RemoteHost) -> UdpSocket {
    let addr = remote.v4;
    remote.inside(move || {
        UdpSocket::bind(SocketAddr::from((addr, 53)))
            .unwrap_or_else(|e| panic!("binding {addr}:53 in its namespace: {e}"))
    })
}

/// Sends `msgs` to `to` at about `rate` per second (sleeping in slices of
/// at least 1 ms); returns the rate achieved.
pub fn send_paced(socket: &UdpSocket, to: SocketAddr, msgs: &[Vec<u8>], rate: u64) -> f64 {
    let start = Instant::now();
    for (i, m) in msgs.iter().enumerate() {
        socket.send_to(m, to).expect("sending an answer");
        let due = start + Duration::from_nanos((i as u64 + 1) * 1_000_000_000 / rate);
        if let Some(wait) = due.checked_duration_since(Instant::now())
            && wait >= Duration::from_millis(1)
        {
            std::thread::sleep(wait);
        }
    }
    msgs.len() as f64 / start.elapsed().as_secs_f64()
}
