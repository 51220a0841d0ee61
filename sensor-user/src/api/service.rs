//! The `residency.agent.v1.Agent` service: checks the caller, turns requests
//! into agent commands, maps errors to gRPC codes.

use std::{net::IpAddr, pin::Pin, sync::Arc};

use residency_proto::agent::v1::{self as pb, agent_server::Agent};
use tokio_stream::{Stream, StreamExt, wrappers::BroadcastStream};
use tonic::{Request, Response, Status};

use super::auth::{self, Caller};

use crate::{
    agent::{
        AgentHandle, Command, CommandError,
        compiler::{Budget, Compiler, Input},
        policy_state::{Intent, apply_response},
        store::{FlowStore, matches},
    },
    kernel::verdicts::Mode,
};

/// The service; cheap to clone.
#[derive(Clone)]
pub struct AgentApi {
    handle: AgentHandle,
    store: Arc<FlowStore>,
    /// Policies are compiled here, not on the agent's task.
    compiler: Compiler,
    /// Certificate names with each role (TLS callers).
    roles: Arc<auth::TlsRoles>,
}

impl AgentApi {
    /// Who may call (for the services beside this one).
    pub fn roles(&self) -> Arc<auth::TlsRoles> {
        self.roles.clone()
    }

    pub fn new(
        handle: AgentHandle,
        store: Arc<FlowStore>,
        compiler: Compiler,
        roles: auth::TlsRoles,
    ) -> AgentApi {
        AgentApi {
            handle,
            store,
            compiler,
            roles: Arc::new(roles),
        }
    }

    fn caller<T>(&self, req: &Request<T>) -> Result<Caller, Status> {
        auth::caller(req, &self.roles)
    }

    fn operator<T>(&self, req: &Request<T>, what: &str) -> Result<String, Status> {
        let c = self.caller(req)?;
        auth::require_operator(&c, what)?;
        Ok(c.actor)
    }
}

fn status(e: CommandError) -> Status {
    match e {
        CommandError::Invalid(m) => Status::invalid_argument(m),
        CommandError::NotFound(m) => Status::not_found(m),
        CommandError::Internal(m) => Status::internal(m),
        CommandError::Busy(m) => Status::resource_exhausted(m),
        CommandError::Deadline(m) => Status::deadline_exceeded(m),
    }
}

fn mode_from(m: i32) -> Result<Mode, Status> {
    match pb::Mode::try_from(m) {
        Ok(pb::Mode::Off) => Ok(Mode::Off),
        Ok(pb::Mode::Monitor) => Ok(Mode::Monitor),
        Ok(pb::Mode::Enforce) => Ok(Mode::Enforce),
        _ => Err(Status::invalid_argument(
            "mode must be MODE_OFF, MODE_MONITOR or MODE_ENFORCE",
        )),
    }
}

type FlowStream = Pin<Box<dyn Stream<Item = Result<pb::FlowEvent, Status>> + Send>>;

/// Refuses a filter whose verdict names none (it would match nothing, and the
/// caller would see an empty list instead of their mistake).
fn checked_filter(f: &pb::FlowFilter) -> Result<(), Status> {
    use residency_proto::records::Label;
    if !f.verdict.is_empty() && pb::Verdict::parse_label(&f.verdict).is_none() {
        return Err(Status::invalid_argument(format!(
            "verdict {:?} is not one of: allow, deny, unknown (or VERDICT_ALLOW, VERDICT_DENY, VERDICT_UNKNOWN)",
            f.verdict
        )));
    }
    Ok(())
}

#[tonic::async_trait]
impl Agent for AgentApi {
    async fn get_status(
        &self,
        req: Request<pb::GetStatusRequest>,
    ) -> Result<Response<pb::Status>, Status> {
        self.caller(&req)?;
        self.handle
            .call(Command::Status)
            .await
            .map(Response::new)
            .map_err(status)
    }

    async fn list_flows(
        &self,
        req: Request<pb::FlowFilter>,
    ) -> Result<Response<pb::FlowList>, Status> {
        self.caller(&req)?;
        checked_filter(req.get_ref())?;
        Ok(Response::new(pb::FlowList {
            flows: self.store.list(req.get_ref(), false),
        }))
    }

    async fn list_violations(
        &self,
        req: Request<pb::FlowFilter>,
    ) -> Result<Response<pb::FlowList>, Status> {
        self.caller(&req)?;
        checked_filter(req.get_ref())?;
        Ok(Response::new(pb::FlowList {
            flows: self.store.list(req.get_ref(), true),
        }))
    }

    type WatchFlowsStream = FlowStream;

    async fn watch_flows(
        &self,
        req: Request<pb::FlowFilter>,
    ) -> Result<Response<Self::WatchFlowsStream>, Status> {
        self.caller(&req)?;
        checked_filter(req.get_ref())?;
        let filter = req.into_inner();
        let stream =
            BroadcastStream::new(self.store.subscribe()).filter_map(move |item| match item {
                Ok(ev) => match &ev.event {
                    Some(pb::flow_event::Event::Flow(f)) if !matches(&filter, f) => None,
                    _ => Some(Ok(ev)),
                },
                // A watcher too slow for the feed: say how much it missed.
                Err(tokio_stream::wrappers::errors::BroadcastStreamRecvError::Lagged(n)) => {
                    Some(Ok(pb::FlowEvent {
                        event: Some(pb::flow_event::Event::Lost(pb::Lost {
                            source: "watch".into(),
                            count: n,
                        })),
                    }))
                }
            });
        Ok(Response::new(Box::pin(stream)))
    }

    async fn list_tagged(
        &self,
        req: Request<pb::ListTaggedRequest>,
    ) -> Result<Response<pb::ListTaggedResponse>, Status> {
        self.caller(&req)?;
        self.handle
            .call(Command::Tagged)
            .await
            .map(Response::new)
            .map_err(status)
    }

    async fn tag_process(
        &self,
        req: Request<pb::TagProcessRequest>,
    ) -> Result<Response<pb::TagProcessResponse>, Status> {
        let actor = self.operator(&req, "tag processes")?;
        let r = req.into_inner();
        self.handle
            .call(|reply| Command::Tag {
                pid: r.pid,
                class: r.class,
                actor,
                reply,
            })
            .await
            .map(|()| Response::new(pb::TagProcessResponse {}))
            .map_err(status)
    }

    async fn untag_process(
        &self,
        req: Request<pb::UntagProcessRequest>,
    ) -> Result<Response<pb::UntagProcessResponse>, Status> {
        let actor = self.operator(&req, "untag processes")?;
        let r = req.into_inner();
        self.handle
            .call(|reply| Command::Untag {
                pid: r.pid,
                class: r.class,
                actor,
                reply,
            })
            .await
            .map(|()| Response::new(pb::UntagProcessResponse {}))
            .map_err(status)
    }

    async fn set_enforcement(
        &self,
        req: Request<pb::SetEnforcementRequest>,
    ) -> Result<Response<pb::SetEnforcementResponse>, Status> {
        let actor = self.operator(&req, "change enforcement")?;
        let r = req.into_inner();
        let mode = mode_from(r.mode)?;
        let class = (!r.class.is_empty()).then_some(r.class);
        self.handle
            .call(|reply| Command::SetEnforcement {
                class,
                mode,
                reason: r.reason,
                actor,
                reply,
            })
            .await
            .map(|modes| Response::new(pb::SetEnforcementResponse { modes }))
            .map_err(status)
    }

    async fn apply_policy(
        &self,
        req: Request<pb::ApplyPolicyRequest>,
    ) -> Result<Response<pb::ApplyPolicyResponse>, Status> {
        let caller = self.caller(&req)?;
        let r = req.into_inner();
        if !r.dry_run {
            auth::require_operator(&caller, "apply policies")?;
            if r.reason.trim().is_empty() {
                return Err(Status::invalid_argument(
                    "a reason is required to apply a policy (it is recorded with the change)",
                ));
            }
        }
        // Viewers may only dry-run, within a smaller budget.
        let budget = if auth::require_operator(&caller, "").is_err() {
            Budget::VIEWER
        } else {
            Budget::OPERATOR
        };
        let inputs = self
            .handle
            .call(Command::CompileInputs)
            .await
            .map_err(status)?;
        let built = self
            .compiler
            .build(
                inputs.source,
                Input::Text(r.policy_toml),
                inputs.exceptions,
                budget,
            )
            .await
            .map_err(status)?;
        let mut resp = apply_response(&built.0, &inputs.classes);
        if r.dry_run {
            (resp.changes, resp.flows_replayed) = self
                .handle
                .call(|reply| Command::WhatIf {
                    policy: Box::new(built.0),
                    flows: None,
                    reply,
                })
                .await
                .map_err(status)?;
            return Ok(Response::new(resp));
        }
        let intent = Intent::Apply {
            reason: r.reason,
            actor: caller.actor,
        };
        resp.generation = self
            .handle
            .call(|reply| Command::Compiled {
                result: Ok(Box::new(built)),
                serial: inputs.serial,
                intent,
                reply: Some(reply),
            })
            .await
            .map_err(status)?;
        Ok(Response::new(resp))
    }

    async fn get_policy(
        &self,
        req: Request<pb::GetPolicyRequest>,
    ) -> Result<Response<pb::GetPolicyResponse>, Status> {
        self.caller(&req)?;
        self.handle
            .call(Command::GetPolicy)
            .await
            .map(Response::new)
            .map_err(status)
    }

    async fn lookup(
        &self,
        req: Request<pb::LookupRequest>,
    ) -> Result<Response<pb::LookupResponse>, Status> {
        self.caller(&req)?;
        let r = req.into_inner();
        let class = (!r.class.is_empty()).then_some(r.class);
        // An address, or a DNS name (what its name rules say).
        if let Ok(ip) = r.ip.parse::<IpAddr>() {
            return self
                .handle
                .call(|reply| Command::Lookup { ip, class, reply })
                .await
                .map(Response::new)
                .map_err(status);
        }
        if !residency_proto::names::is_dns_name(&r.ip) {
            return Err(Status::invalid_argument(format!(
                "{:?} is neither an IPv4 or IPv6 address nor a DNS name",
                r.ip
            )));
        }
        let name = r.ip.trim_end_matches('.').to_ascii_lowercase();
        self.handle
            .call(|reply| Command::LookupName { name, class, reply })
            .await
            .map(Response::new)
            .map_err(status)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_verdict_filter_that_names_no_verdict_is_refused() {
        let f = |v: &str| pb::FlowFilter {
            verdict: v.into(),
            ..Default::default()
        };
        assert!(checked_filter(&f("")).is_ok());
        assert!(checked_filter(&f("deny")).is_ok());
        assert!(checked_filter(&f("VERDICT_ALLOW")).is_ok());
        let e = checked_filter(&f("denied")).unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
        assert!(
            e.message().contains("allow, deny, unknown"),
            "{}",
            e.message()
        );
    }
}
