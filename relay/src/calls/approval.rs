//! Normal mode's user presence: before the owner's own key registers or
//! signs, the owner approves on their device.
//!
//! [`AskUser::ask`] stores a pending [`Approval`] (TTL = the call's
//! remaining budget), puts the question in the owner's inbox, switches the
//! agent's KEEPALIVEs to "user presence needed" (CTAP 2.1 §11.2.9.1.7), and
//! waits for the decision (`POST /api/me/approvals/{id}`) until the
//! deadline. The answer is a [`Decision`]: an approval id to send the call
//! again with, or the CTAP status the browser gets.

use std::time::Duration;

use obr_proto::agent::KeepaliveState;
use obr_proto::ctap::StatusCode;
use obr_proto::signer::ApprovalNeeded;
use serde_json::json;

use super::{Calls, StatusSink};
use crate::clock::now_ms;
use crate::sessions::{Approval, ApprovalState};

/// How often the waiting call looks for the owner's decision.
const DECISION_POLL: Duration = Duration::from_millis(100);

pub(super) enum Decision {
    Approved(String),
    Refused(StatusCode),
}

pub(super) struct AskUser<'a> {
    pub calls: &'a Calls,
    pub status: &'a StatusSink,
    pub person_id: &'a str,
    pub agent_id: &'a str,
}

impl AskUser<'_> {
    pub(super) async fn ask(
        &self,
        needed: &ApprovalNeeded,
        deadline: tokio::time::Instant,
    ) -> Decision {
        let approval = Approval {
            id: uuid::Uuid::new_v4().to_string(),
            person_id: self.person_id.to_owned(),
            agent_id: self.agent_id.to_owned(),
            rp_id: needed.rp_id.clone(),
            operation: needed.operation.clone(),
            user_verification: needed.user_verification,
            state: ApprovalState::Pending,
            created_at_ms: now_ms(),
        };
        let ttl = deadline.saturating_duration_since(tokio::time::Instant::now());
        if let Err(e) = self.record(&approval, ttl).await {
            tracing::error!(error = %e, "cannot ask for approval");
            return Decision::Refused(StatusCode::Other);
        }
        (self.status)(KeepaliveState::UserPresenceNeeded);
        let decision = self.wait(&approval.id, deadline).await;
        (self.status)(KeepaliveState::Processing);
        decision
    }

    async fn record(&self, approval: &Approval, ttl: Duration) -> Result<(), String> {
        self.calls
            .store
            .put_approval(approval, ttl)
            .await
            .map_err(|e| e.to_string())?;
        let verb = match approval.operation.as_str() {
            "register" => "register a passkey",
            _ => "sign in",
        };
        // Always named: the signer refuses a normal-mode pinUvAuthToken
        // request without an RP ID rather than have the owner approve blind.
        let site = approval.rp_id.as_str();
        self.calls
            .directory
            .notify(
                &approval.person_id,
                "approval.requested",
                &format!(
                    "Approve: {verb} at {site} from your workstation {}?",
                    approval.agent_id
                ),
                json!({ "approval_id": approval.id, "rp_id": approval.rp_id,
                        "operation": approval.operation, "agent": approval.agent_id,
                        "user_verification": approval.user_verification }),
            )
            .await
            .map_err(|e| e.to_string())?;
        Ok(())
    }

    async fn wait(&self, id: &str, deadline: tokio::time::Instant) -> Decision {
        let mut tick = tokio::time::interval(DECISION_POLL);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                () = tokio::time::sleep_until(deadline) => {
                    return Decision::Refused(StatusCode::UserActionTimeout);
                }
            }
            match self.calls.store.get_approval(id).await {
                Ok(Some(a)) if a.state == ApprovalState::Approved => {
                    return Decision::Approved(a.id);
                }
                Ok(Some(a)) if a.state == ApprovalState::Denied => {
                    return Decision::Refused(StatusCode::OperationDenied);
                }
                Ok(Some(_)) => {}
                Ok(None) => return Decision::Refused(StatusCode::UserActionTimeout),
                Err(e) => tracing::warn!(error = %e, "cannot read approval; retrying"),
            }
        }
    }
}
