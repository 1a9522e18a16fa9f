//! [`AppState`]: what every handler and actor of one relay process shares.

use std::sync::Arc;

use crate::agents::AgentRegistry;
use crate::calls::Calls;
use crate::config::RelayConfig;
use crate::directory::Directory;
use crate::directory::anchor::AuditAnchor;
use crate::directory::grants::Grants;
use crate::directory::second_factor::SecondFactor;
use crate::limits::Limits;
use crate::mail::Mailer;
use crate::obr::Obr;
use crate::phones::Phones;
use crate::routing::Router;
use crate::sessions::SessionStore;

pub struct AppState {
    pub config: Arc<RelayConfig>,
    pub directory: Directory,
    /// Admins' power: their sealed grants in the directory.
    pub grants: Grants,
    /// Admins' TOTP secrets, checked at sign-in.
    pub second_factor: SecondFactor,
    pub store: Arc<dyn SessionStore>,
    pub router: Router,
    pub agents: AgentRegistry,
    /// The user apps connected to this pod.
    pub phones: Phones,
    pub obr: Obr,
    pub calls: Calls,
    /// Mail to people: SMTP, or the outbox folder.
    pub mail: Mailer,
    pub anchor: AuditAnchor,
    pub limits: Limits,
    /// Set on SIGTERM: readiness fails, agents move elsewhere, no new agent
    /// connects here.
    pub draining: std::sync::atomic::AtomicBool,
    pub metrics: crate::metrics::Metrics,
}

impl AppState {
    pub fn is_draining(&self) -> bool {
        self.draining.load(std::sync::atomic::Ordering::Relaxed)
    }
}
