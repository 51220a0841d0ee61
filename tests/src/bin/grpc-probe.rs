//! grpc-probe: calls the standard gRPC health and reflection services of the
//! daemon listening on a Unix socket and prints one JSON line:
//! `{"health":"SERVING"|"error: CODE","reflection":"ok: N services"|"error: CODE"}`.
//!
//! Usage: grpc-probe SOCKET

use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
use tonic_reflection::pb::v1::{
    ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
    server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
};

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let Some(socket) = std::env::args().nth(1) else {
        eprintln!("usage: grpc-probe SOCKET");
        std::process::exit(2);
    };
    let channel = match residency_proto::unix::channel(std::path::Path::new(&socket)).await {
        Ok(c) => c,
        Err(e) => {
            eprintln!("grpc-probe: cannot connect to {socket}: {e}");
            std::process::exit(2);
        }
    };
    let health = match HealthClient::new(channel.clone())
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
    {
        Ok(r) => format!("{:?}", r.into_inner().status()).to_uppercase(),
        Err(s) => format!("error: {:?}", s.code()),
    };
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let reflection = match ServerReflectionClient::new(channel)
        .server_reflection_info(tokio_stream::iter([request]))
        .await
    {
        Ok(r) => {
            let mut stream = r.into_inner();
            match stream.message().await {
                Ok(Some(m)) => match m.message_response {
                    Some(MessageResponse::ListServicesResponse(l)) => {
                        format!("ok: {} services", l.service.len())
                    }
                    _ => "error: unexpected answer".into(),
                },
                Ok(None) => "error: no answer".into(),
                Err(s) => format!("error: {:?}", s.code()),
            }
        }
        Err(s) => format!("error: {:?}", s.code()),
    };
    println!(
        "{}",
        serde_json::json!({ "health": health, "reflection": reflection })
    );
}
