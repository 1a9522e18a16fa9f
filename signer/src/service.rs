//! The gRPC face of the signer (`obr.signer.v1.Signer`, see
//! `proto/obr/signer.proto`): the long-lived multiplexed `Link` stream that
//! carries CTAP calls, and the panel's unary credential calls. Translates
//! between protobuf and [`SignerCore`]; holds no state of its own beyond
//! each link's in-flight table.
//!
//! On a `Link`, every `Ctap` request runs as its own task and its reply is
//! sent, tagged with the request's id, when ready (out of order); `Cancel`
//! aborts that task and no reply is sent for it. A per-request argument
//! error cannot be a gRPC status without ending the whole link, so it is
//! answered in CTAP terms on that id: `CTAP1_ERR_INVALID_PARAMETER` for a
//! malformed call, `CTAP1_ERR_CHANNEL_BUSY` for an id already in flight or
//! a link over its in-flight limit. Unary calls answer bad arguments with
//! `INVALID_ARGUMENT`.

use std::collections::HashMap;
use std::future::Future;
use std::time::Duration;

use obr_proto::signer::signer_server::{Signer, SignerServer};
use obr_proto::signer::{
    self as proto, Credential, CredentialCreated, DeleteCredentialRequest,
    DeleteCredentialResponse, GetInfoRequest, GetInfoResponse, LinkRequest, LinkResponse,
    ListCredentialsRequest, ListCredentialsResponse, ResetKeyRequest, ResetKeyResponse,
    link_request,
};
use passkey_types::ctap2::Ctap2Error;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio::task::{AbortHandle, JoinSet};
use tokio_stream::StreamExt as _;
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tonic::{Request, Response, Status, Streaming};

use crate::api::SignerCore;
use crate::call::{ApprovalNeeded, CreatedCredential, CredentialInfo, CtapCall, ObrActing};
use crate::error::SignerError;

/// Replies a link buffers for a slow reader before its tasks wait.
pub const LINK_OUTBOUND_CAPACITY: usize = 1024;
/// CTAP calls one link may have in flight; more answer CHANNEL_BUSY.
pub const MAX_IN_FLIGHT_PER_LINK: usize = 4096;
pub use obr_proto::ctap::{DEFAULT_CTAP_BUDGET, MAX_CTAP_BUDGET};
/// A draining pod's link ends after this long without a request.
const LINK_QUIET: Duration = Duration::from_millis(300);
/// Largest request message accepted: a CTAP message (7609 bytes) plus ids.
const MAX_REQUEST_MESSAGE: usize = 16 * 1024;
/// HTTP/2 pings keep idle links alive through proxies and detect dead peers.
const HTTP2_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(20);
const HTTP2_KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);

/// Serve the signer's gRPC service on an already-bound `listener` until
/// `shutdown` resolves.
pub async fn serve(
    core: SignerCore,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), SignerError> {
    serve_tls(core, listener, None, shutdown).await
}

/// [`serve`], with mutual TLS when `tls` is given: only clients whose
/// certificate chains to the configured CA (the deployment's relays) get a
/// connection at all.
pub async fn serve_tls(
    core: SignerCore,
    listener: TcpListener,
    tls: Option<tonic::transport::ServerTlsConfig>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), SignerError> {
    let service =
        SignerServer::new(SignerService { core }).max_decoding_message_size(MAX_REQUEST_MESSAGE);
    let mut builder = tonic::transport::Server::builder();
    if let Some(tls) = tls {
        builder = builder.tls_config(tls)?;
    }
    // Small request/response messages: never wait for Nagle.
    let incoming = TcpListenerStream::new(listener).map(|accepted| {
        if let Ok(stream) = &accepted
            && let Err(error) = stream.set_nodelay(true)
        {
            tracing::debug!(%error, "cannot set TCP_NODELAY");
        }
        accepted
    });
    builder
        .http2_keepalive_interval(Some(HTTP2_KEEPALIVE_INTERVAL))
        .http2_keepalive_timeout(Some(HTTP2_KEEPALIVE_TIMEOUT))
        .add_service(service)
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await?;
    Ok(())
}

/// Serve `core` on a UNIX socket (the relay's embedded signer: reachable
/// through the file system's permissions only, never a TCP port) until
/// `shutdown` resolves.
pub async fn serve_unix(
    core: SignerCore,
    listener: tokio::net::UnixListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), SignerError> {
    let service =
        SignerServer::new(SignerService { core }).max_decoding_message_size(MAX_REQUEST_MESSAGE);
    tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(HTTP2_KEEPALIVE_INTERVAL))
        .http2_keepalive_timeout(Some(HTTP2_KEEPALIVE_TIMEOUT))
        .add_service(service)
        .serve_with_incoming_shutdown(
            tokio_stream::wrappers::UnixListenerStream::new(listener),
            shutdown,
        )
        .await?;
    Ok(())
}

/// The tonic service over a [`SignerCore`].
#[derive(Debug)]
struct SignerService {
    core: SignerCore,
}

#[tonic::async_trait]
impl Signer for SignerService {
    type LinkStream = ReceiverStream<Result<LinkResponse, Status>>;

    async fn link(
        &self,
        request: Request<Streaming<LinkRequest>>,
    ) -> Result<Response<Self::LinkStream>, Status> {
        let (replies, outbound) = mpsc::channel(LINK_OUTBOUND_CAPACITY);
        tokio::spawn(run_link(self.core.clone(), request.into_inner(), replies));
        Ok(Response::new(ReceiverStream::new(outbound)))
    }

    async fn get_info(
        &self,
        _request: Request<GetInfoRequest>,
    ) -> Result<Response<GetInfoResponse>, Status> {
        Ok(Response::new(GetInfoResponse {
            payload: self.core.get_info(),
        }))
    }

    async fn list_credentials(
        &self,
        request: Request<ListCredentialsRequest>,
    ) -> Result<Response<ListCredentialsResponse>, Status> {
        let request = request.into_inner();
        let credentials = self
            .core
            .list_credentials(&request.user_id)
            .await
            .map_err(to_status)?;
        Ok(Response::new(ListCredentialsResponse {
            credentials: credentials.into_iter().map(to_proto_credential).collect(),
        }))
    }

    async fn delete_credential(
        &self,
        request: Request<DeleteCredentialRequest>,
    ) -> Result<Response<DeleteCredentialResponse>, Status> {
        let request = request.into_inner();
        let admin = acting_admin(&request.acting_admin_id)?;
        let deleted = self
            .core
            .delete_credential(&request.user_id, &request.credential_id)
            .await
            .map_err(to_status)?;
        tracing::info!(target: "obr::audit", action = "passkey.deleted", admin,
            user = %request.user_id, deleted, "panel: delete a passkey");
        Ok(Response::new(DeleteCredentialResponse { deleted }))
    }

    async fn pending_records(
        &self,
        request: Request<proto::PendingRecordsRequest>,
    ) -> Result<Response<proto::PendingRecordsResponse>, Status> {
        let request = request.into_inner();
        let limit = request.limit.clamp(1, MAX_RECORDS_PER_CALL);
        let records = self
            .core
            .pending_obr_records(request.created_before_ms, limit)
            .await
            .map_err(to_status)?
            .into_iter()
            .map(|r| proto::ObrRecord {
                credential_id: r.credential_id,
                user_id: r.user_id,
                admin_id: r.admin_id,
                obr_session_id: r.obr_session_id,
                rp_id: r.rp_id,
                user_name: r.user_name,
                user_display_name: r.user_display_name,
                discoverable: r.discoverable,
                created_at_ms: r.created_at_ms,
            })
            .collect();
        Ok(Response::new(proto::PendingRecordsResponse { records }))
    }

    async fn ack_record(
        &self,
        request: Request<proto::AckRecordRequest>,
    ) -> Result<Response<proto::AckRecordResponse>, Status> {
        let acked = self
            .core
            .ack_obr_record(&request.into_inner().credential_id)
            .await
            .map_err(to_status)?;
        Ok(Response::new(proto::AckRecordResponse { acked }))
    }

    async fn reset_key(
        &self,
        request: Request<ResetKeyRequest>,
    ) -> Result<Response<ResetKeyResponse>, Status> {
        let request = request.into_inner();
        let admin = acting_admin(&request.acting_admin_id)?;
        let deleted_credentials = self
            .core
            .reset_user_key(&request.user_id)
            .await
            .map_err(to_status)?;
        tracing::info!(target: "obr::audit", action = "key.reset", admin,
            user = %request.user_id, deleted_credentials, "panel: reset a key");
        Ok(Response::new(ResetKeyResponse {
            deleted_credentials,
        }))
    }
}

/// Most outbox records one PendingRecords answer carries.
const MAX_RECORDS_PER_CALL: u32 = 500;

/// Longest admin id a management call may name.
const MAX_ID_LEN: usize = 128;

/// A management call names the admin it acts for, or it is refused.
fn acting_admin(admin_id: &str) -> Result<&str, Status> {
    if admin_id.is_empty() || admin_id.len() > MAX_ID_LEN {
        return Err(Status::invalid_argument(
            "a management call must name the acting admin (acting_admin_id)",
        ));
    }
    Ok(admin_id)
}

/// One link: read requests until the relay closes its side, run each CTAP
/// call as a task, then let the calls in flight answer and end the stream.
async fn run_link(
    core: SignerCore,
    mut inbound: Streaming<LinkRequest>,
    replies: mpsc::Sender<Result<LinkResponse, Status>>,
) {
    let mut tasks: JoinSet<u64> = JoinSet::new();
    let mut in_flight: HashMap<u64, AbortHandle> = HashMap::new();
    let closing = until_closing(core.links_closing());
    tokio::pin!(closing);
    let mut closed = false;
    // Once the pod drains, the link ends when it has been quiet this long
    // with nothing in flight: a request the relay sent just before it
    // heard is still read and answered (by now, a redirect), never lost
    // in the stream's buffer.
    let quiet = tokio::time::sleep(LINK_QUIET);
    tokio::pin!(quiet);
    loop {
        tokio::select! {
            () = &mut closing, if !closed => {
                tracing::debug!(in_flight = in_flight.len(), "link closing: the signer drains");
                closed = true;
                quiet.as_mut().reset(tokio::time::Instant::now() + LINK_QUIET);
            }
            () = &mut quiet, if closed => {
                if in_flight.is_empty() {
                    break;
                }
                quiet.as_mut().reset(tokio::time::Instant::now() + LINK_QUIET);
            }
            message = inbound.message() => match message {
                Ok(Some(request)) => {
                    on_request(&core, request, &replies, &mut tasks, &mut in_flight).await;
                    quiet.as_mut().reset(tokio::time::Instant::now() + LINK_QUIET);
                }
                Ok(None) => break,
                Err(status) => {
                    tracing::debug!(%status, "link broken: abandoning its calls");
                    tasks.abort_all();
                    break;
                }
            },
            Some(done) = tasks.join_next_with_id(), if !tasks.is_empty() => {
                on_task_done(done, &mut in_flight);
            }
            () = replies.closed() => {
                tracing::debug!("link reader gone: abandoning its calls");
                tasks.abort_all();
                break;
            }
        }
    }
    while let Some(done) = tasks.join_next_with_id().await {
        on_task_done(done, &mut in_flight);
    }
}

/// Resolves once links are to close (never, if nobody can say so).
async fn until_closing(mut closing: tokio::sync::watch::Receiver<bool>) {
    if closing.wait_for(|closing| *closing).await.is_err() {
        std::future::pending::<()>().await;
    }
}

async fn on_request(
    core: &SignerCore,
    request: LinkRequest,
    replies: &mpsc::Sender<Result<LinkResponse, Status>>,
    tasks: &mut JoinSet<u64>,
    in_flight: &mut HashMap<u64, AbortHandle>,
) {
    let id = request.id;
    match request.kind {
        Some(link_request::Kind::Ctap(call)) => {
            if in_flight.contains_key(&id) || in_flight.len() >= MAX_IN_FLIGHT_PER_LINK {
                tracing::warn!(
                    id,
                    in_flight = in_flight.len(),
                    "CTAP call refused: id busy or link full"
                );
                reply_status(replies, id, Ctap2Error::ChannelBusy).await;
                return;
            }
            let call = match to_core_call(core, call) {
                Ok(call) => call,
                Err(problem) => {
                    tracing::warn!(id, problem, "malformed CTAP call");
                    reply_status(replies, id, Ctap2Error::InvalidParameter).await;
                    return;
                }
            };
            let core = core.clone();
            let replies = replies.clone();
            let task = tasks.spawn(async move {
                let reply = core.ctap(call).await;
                let response = LinkResponse {
                    id,
                    payload: reply.payload,
                    created: reply.created.map(to_proto_created),
                    queue_us: micros(reply.queue),
                    work_us: micros(reply.work),
                    owner: reply.owner.unwrap_or_default(),
                    approval_needed: reply.approval_needed.map(to_proto_approval_needed),
                    obr_assertion: reply.obr_assertion.map(|a| proto::ObrAssertion {
                        credential_id: a.credential_id,
                        rp_id: a.rp_id,
                        refused: a.refused,
                    }),
                };
                if replies.send(Ok(response)).await.is_err() {
                    tracing::debug!(id, "link closed before the reply");
                }
                id
            });
            in_flight.insert(id, task);
        }
        Some(link_request::Kind::Cancel(_)) => {
            // The browser sent CTAPHID_CANCEL; the relay answers it.
            if let Some(task) = in_flight.remove(&id) {
                task.abort();
                tracing::debug!(id, "CTAP call cancelled");
            }
        }
        None => tracing::warn!(id, "link request without a kind ignored"),
    }
}

fn on_task_done(
    done: Result<(tokio::task::Id, u64), tokio::task::JoinError>,
    in_flight: &mut HashMap<u64, AbortHandle>,
) {
    match done {
        // Only if the entry is still this task's (the id may be reused).
        Ok((task, id)) => {
            if in_flight.get(&id).is_some_and(|h| h.id() == task) {
                in_flight.remove(&id);
            }
        }
        Err(error) => {
            if error.is_panic() {
                tracing::error!(%error, "a CTAP call task panicked");
            }
            let task = error.id();
            in_flight.retain(|_, handle| handle.id() != task);
        }
    }
}

async fn reply_status(
    replies: &mpsc::Sender<Result<LinkResponse, Status>>,
    id: u64,
    status: Ctap2Error,
) {
    let response = LinkResponse {
        id,
        payload: vec![status.into()],
        created: None,
        queue_us: 0,
        work_us: 0,
        owner: String::new(),
        approval_needed: None,
        obr_assertion: None,
    };
    if replies.send(Ok(response)).await.is_err() {
        tracing::debug!(id, "link closed before the reply");
    }
}

fn to_proto_approval_needed(needed: ApprovalNeeded) -> proto::ApprovalNeeded {
    proto::ApprovalNeeded {
        rp_id: needed.rp_id,
        operation: needed.operation.as_str().to_owned(),
        user_verification: needed.user_verification,
    }
}

/// A protobuf call as the core takes it; the deadline starts now.
fn to_core_call(core: &SignerCore, call: proto::CtapCall) -> Result<CtapCall, &'static str> {
    if call.user_id.is_empty() {
        return Err("user_id is empty");
    }
    let obr = match call.acting {
        None => None,
        Some(acting) if acting.admin_id.is_empty() || acting.obr_session_id.is_empty() => {
            return Err("acting needs both admin_id and obr_session_id");
        }
        Some(acting) => Some(ObrActing {
            admin_id: acting.admin_id,
            obr_session_id: acting.obr_session_id,
        }),
    };
    let budget = match call.budget_ms {
        0 => DEFAULT_CTAP_BUDGET,
        ms => Duration::from_millis(u64::from(ms)).min(MAX_CTAP_BUDGET),
    };
    // The relay sets it only after the key's owner approved this call on
    // their device, with its MAC over this user's this request; an id
    // without a MAC that verifies is no approval.
    let approval = if call.approval_id.is_empty() {
        None
    } else {
        let approval = core.approval_for(
            &call.approval_id,
            &call.user_id,
            &call.payload,
            &call.approval_mac,
        );
        if approval.is_none() {
            tracing::warn!(user = %call.user_id, "an approval whose MAC does not verify was ignored");
        }
        approval
    };
    Ok(CtapCall {
        user_id: call.user_id,
        obr,
        approval,
        payload: call.payload,
        deadline: tokio::time::Instant::now() + budget,
    })
}

/// The one mapping of [`SignerError`] to gRPC status.
fn to_status(error: SignerError) -> Status {
    match error {
        SignerError::InvalidArgument(e) => Status::invalid_argument(e.to_string()),
        SignerError::Fenced => Status::failed_precondition(error.to_string()),
        SignerError::ShutDown => Status::unavailable(error.to_string()),
        other => {
            tracing::error!(error = %other, "signer call failed");
            Status::internal(other.to_string())
        }
    }
}

fn micros(duration: Duration) -> u32 {
    u32::try_from(duration.as_micros()).unwrap_or(u32::MAX)
}

fn to_proto_created(created: CreatedCredential) -> CredentialCreated {
    CredentialCreated {
        credential_id: created.credential_id,
        rp_id: created.rp_id,
        user_name: created.user_name,
        user_display_name: created.user_display_name,
        discoverable: created.discoverable,
    }
}

fn to_proto_credential(info: CredentialInfo) -> Credential {
    Credential {
        credential_id: info.credential_id,
        rp_id: info.rp_id,
        user_handle: info.user_handle,
        user_name: info.user_name,
        user_display_name: info.user_display_name,
        discoverable: info.discoverable,
        created_at_ms: info.created_at_ms,
        created_by_admin: info.created_by_admin.unwrap_or_default(),
        obr_session_id: info.obr_session_id.unwrap_or_default(),
        sign_count: info.sign_count,
        last_used_at_ms: info.last_used_at_ms.unwrap_or_default(),
        algorithm: info.algorithm,
    }
}
