//! The `residency.collector.v1.Collector` service.
//!
//! One writer: every delivery stream sends its batches to the store task over a
//! channel and waits for the commit before acknowledging.

use std::{pin::Pin, sync::Arc};

use residency_proto::collector::v1::{
    self as pb, agent_message::Message as In, collector_message::Message as Out,
    collector_server::Collector,
};
use tokio::sync::{Mutex, mpsc};
use tokio_stream::{Stream, StreamExt, wrappers::ReceiverStream};
use tonic::{Request, Response, Status, Streaming};
use tracing::{info, warn};

use crate::store::Store;

/// The service; the store is shared by every stream (one writer at a time).
#[derive(Clone)]
pub struct CollectorService {
    store: Arc<Mutex<Store>>,
}

impl CollectorService {
    pub fn new(store: Store) -> CollectorService {
        CollectorService {
            store: Arc::new(Mutex::new(store)),
        }
    }
}

type OutStream = Pin<Box<dyn Stream<Item = Result<pb::CollectorMessage, Status>> + Send>>;

fn out(m: Out) -> Result<pb::CollectorMessage, Status> {
    Ok(pb::CollectorMessage { message: Some(m) })
}

#[tonic::async_trait]
impl Collector for CollectorService {
    type DeliverStream = OutStream;

    async fn deliver(
        &self,
        req: Request<Streaming<pb::AgentMessage>>,
    ) -> Result<Response<Self::DeliverStream>, Status> {
        let mut incoming = req.into_inner();
        let first = incoming
            .next()
            .await
            .ok_or_else(|| Status::invalid_argument("the stream closed before hello"))??;
        let Some(In::Hello(hello)) = first.message else {
            return Err(Status::invalid_argument(
                "the first message of a delivery stream must be hello",
            ));
        };
        if hello.host_id.is_empty() {
            return Err(Status::invalid_argument("hello needs a host_id"));
        }
        let host = hello.host_id;
        let last = self
            .store
            .lock()
            .await
            .last_seq(&host)
            .map_err(|e| Status::internal(e.to_string()))?;
        info!(host = %host, version = %hello.version, last_seq = last, "agent connected");
        let (tx, rx) = mpsc::channel(16);
        let _ = tx
            .send(out(Out::Welcome(pb::Welcome { last_seq: last })))
            .await;
        let store = self.store.clone();
        tokio::spawn(async move {
            while let Some(msg) = incoming.next().await {
                let batch = match msg {
                    Ok(pb::AgentMessage {
                        message: Some(In::Batch(b)),
                    }) => b,
                    Ok(_) => continue,
                    Err(e) => {
                        warn!(host = %host, error = %e, "delivery stream ended");
                        break;
                    }
                };
                let Some(upto) = batch.records.iter().map(|r| r.seq).max() else {
                    continue;
                };
                // Commit, then acknowledge: an ack always means durable.
                let res = store.lock().await.insert(&host, &batch.records);
                match res {
                    Ok(new) => {
                        info!(host = %host, seq = upto, records = batch.records.len(), new, "batch stored");
                        if tx.send(out(Out::Ack(pb::Ack { seq: upto }))).await.is_err() {
                            break;
                        }
                    }
                    Err(e) => {
                        let _ = tx
                            .send(Err(Status::internal(format!(
                                "storing the batch failed: {e}"
                            ))))
                            .await;
                        break;
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn list_hosts(
        &self,
        _req: Request<pb::ListHostsRequest>,
    ) -> Result<Response<pb::HostList>, Status> {
        let hosts = self
            .store
            .lock()
            .await
            .hosts()
            .map_err(|e| Status::internal(e.to_string()))?;
        Ok(Response::new(pb::HostList { hosts }))
    }

    async fn query_violations(
        &self,
        req: Request<pb::ViolationQuery>,
    ) -> Result<Response<pb::ViolationPage>, Status> {
        let q = req.into_inner();
        let host = (!q.host_id.is_empty()).then_some(q.host_id.as_str());
        let limit = if q.limit == 0 { 1000 } else { q.limit };
        let records = self
            .store
            .lock()
            .await
            .query("violation", host, limit)
            .map_err(|e| Status::internal(e.to_string()))?;
        Ok(Response::new(pb::ViolationPage { records }))
    }
}
