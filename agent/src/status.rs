//! [`AgentStatus`]: what the agent shows its admin — connection, login,
//! and the mode the relay says it is in. Published on a `watch` channel by
//! the tunnel; read by the control socket and the CTAP forwarder.

use obr_proto::agent::{LoginPending, Mode, ModeKind};
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentStatus {
    pub agent_id: String,
    pub relay: String,
    pub connected: bool,
    pub mode: ModeView,
    /// A device-code login waiting for approval.
    pub login: Option<LoginView>,
    /// Bumped whenever the mode changes; caches keyed on it go stale.
    pub generation: u64,
    pub last_error: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ModeView {
    #[default]
    NotLoggedIn,
    Normal {
        principal: String,
        is_admin: bool,
    },
    Obr {
        admin: String,
        target_user: String,
        session_id: String,
        expires_at_ms: i64,
    },
    /// "Back to normal mode" was pressed: the agent no longer acts for the
    /// user, and waits for the relay to confirm the session's end.
    EndingObr {
        target_user: String,
        session_id: String,
    },
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoginView {
    pub user_code: String,
    pub verification_uri: String,
    pub expires_in_s: u32,
}

impl From<LoginPending> for LoginView {
    fn from(p: LoginPending) -> Self {
        Self {
            user_code: p.user_code,
            verification_uri: p.verification_uri,
            expires_in_s: p.expires_in_s,
        }
    }
}

impl From<&Mode> for ModeView {
    fn from(mode: &Mode) -> Self {
        match ModeKind::try_from(mode.kind).unwrap_or(ModeKind::NotLoggedIn) {
            ModeKind::NotLoggedIn => ModeView::NotLoggedIn,
            ModeKind::Normal => ModeView::Normal {
                principal: mode.principal.clone(),
                is_admin: mode.principal_is_admin,
            },
            ModeKind::Obr => ModeView::Obr {
                admin: mode.principal.clone(),
                target_user: mode.target_user.clone(),
                session_id: mode.obr_session_id.clone(),
                expires_at_ms: mode.obr_expires_at_ms,
            },
        }
    }
}

impl ModeView {
    /// The status line, in the seed's words.
    pub fn display(&self) -> String {
        match self {
            ModeView::NotLoggedIn => "not logged in".to_owned(),
            ModeView::Normal {
                principal,
                is_admin: true,
            } => format!("normal mode: ready for on behalf registration ({principal})"),
            ModeView::Normal { principal, .. } => format!("normal mode ({principal})"),
            ModeView::Obr {
                target_user,
                expires_at_ms,
                ..
            } => format!(
                "OBR: acting for {target_user} (ends in {})",
                time_left(*expires_at_ms)
            ),
            ModeView::EndingObr { target_user, .. } => format!(
                "normal mode: no longer acting for {target_user} (ending the session; the relay has not confirmed yet)"
            ),
        }
    }
}

/// "14 min 52 s" from now until `at_ms` (Unix ms), "0 s" once past.
fn time_left(at_ms: i64) -> String {
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
    let left_s = at_ms.saturating_sub(now_ms).max(0) / 1000;
    match (left_s / 60, left_s % 60) {
        (0, s) => format!("{s} s"),
        (m, s) => format!("{m} min {s} s"),
    }
}

impl AgentStatus {
    pub fn display(&self) -> String {
        let link = if self.connected {
            "connected"
        } else {
            "disconnected"
        };
        format!("{} [{link} to {}]", self.mode.display(), self.relay)
    }
}
