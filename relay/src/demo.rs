//! The demo organisation created by `obr-relay --demo-org` on an empty
//! directory: two admins (the owner who logs in, and a helpdesk operator
//! for all users, whom nobody may act on behalf of) and two users whose keys are active (their
//! invitations accepted through the same code path as the API), plus one
//! user still `invited`. Its secrets (passwords, TOTP secrets, user app
//! tokens) are written to `demo-org.json` in the data directory, readable
//! only by the owner, so scripts can sign in; they are never printed.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::api::{accept, invite_user};
use crate::auth;
use crate::directory::KeyStatus;
use crate::directory::grants::{Grant, Role, Scope};
use crate::state::AppState;

pub const DEMO_FILE: &str = "demo-org.json";

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DemoOrg {
    pub admin_email: String,
    pub admin_password: String,
    /// The admin's TOTP secret (base32), what an authenticator app holds.
    pub admin_totp_secret: String,
    pub admin_id: String,
    /// A second admin: another admin's key is off limits to OBR and reset.
    pub helpdesk: DemoAdmin,
    pub users: Vec<DemoUser>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DemoAdmin {
    pub id: String,
    pub email: String,
    pub password: String,
    pub totp_secret: String,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DemoUser {
    pub id: String,
    pub email: String,
    pub key_status: KeyStatus,
    /// The user app's token (active users).
    pub device_token: Option<String>,
    /// The unaccepted invitation (invited users).
    pub invitation_token: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error("cannot seed the demo organisation: {0}")]
    Seed(String),
    #[error("cannot write {path}: {source}")]
    Write {
        path: String,
        source: std::io::Error,
    },
}

/// Seed the demo organisation if the directory is empty; otherwise read
/// the file written when it was seeded (if any).
pub async fn ensure(state: &AppState) -> Result<Option<DemoOrg>, DemoError> {
    let path = state.config.data_dir.join(DEMO_FILE);
    let seed_err = |e: &dyn std::fmt::Display| DemoError::Seed(e.to_string());
    if !state.directory.is_empty().await.map_err(|e| seed_err(&e))? {
        let org: Option<DemoOrg> = match std::fs::read(&path) {
            Ok(bytes) => Some(serde_json::from_slice(&bytes).map_err(|e| {
                DemoError::Seed(format!(
                    "{} is from an older obr ({e}): delete {} to make a new demo",
                    path.display(),
                    state.config.data_dir.display()
                ))
            })?),
            Err(_) => None,
        };
        if let Some(org) = &org {
            let granted = state.grants.admin(&org.admin_id).await;
            if granted.map_err(|e| seed_err(&e))?.is_none() {
                return Err(DemoError::Seed(format!(
                    "the demo admin in {} has no verified grant (a directory from before sealed \
                     grants, or another cluster key): delete {} to make a new demo",
                    state.config.data_dir.display(),
                    state.config.data_dir.display()
                )));
            }
        }
        return Ok(org);
    }
    let admin = create_admin(state, "admin@demo.obr", "Ada Admin", Grant::owner()).await?;
    let operator = Grant {
        role: Role::Operator,
        scope: Scope::AllUsers,
    };
    let helpdesk = create_admin(state, "helpdesk@demo.obr", "Hugo Helpdesk", operator).await?;
    let mut users = Vec::new();
    for (email, name, activate) in [
        ("bob@demo.obr", "Bob User", true),
        ("carol@demo.obr", "Carol User", true),
        ("dave@demo.obr", "Dave Newcomer", false),
    ] {
        let (user, invitation) = invite_user(state, &admin.email, email, name)
            .await
            .map_err(|e| seed_err(&e))?;
        let (key_status, device_token, invitation_token) = if activate {
            let (_, device) = accept(state, &invitation)
                .await
                .map_err(|e| seed_err(&e))?
                .ok_or_else(|| DemoError::Seed("fresh invitation refused".into()))?;
            (KeyStatus::Active, Some(device), None)
        } else {
            (KeyStatus::Invited, None, Some(invitation))
        };
        users.push(DemoUser {
            id: user.id,
            email: email.to_owned(),
            key_status,
            device_token,
            invitation_token,
        });
    }
    let org = DemoOrg {
        admin_email: admin.email,
        admin_password: admin.password,
        admin_totp_secret: admin.totp_secret,
        admin_id: admin.id,
        helpdesk,
        users,
    };
    write_private(
        &path,
        &serde_json::to_vec_pretty(&org).map_err(|e| seed_err(&e))?,
    )?;
    Ok(Some(org))
}

/// An admin with `grant`, a random password and a TOTP secret.
async fn create_admin(
    state: &AppState,
    email: &str,
    name: &str,
    grant: Grant,
) -> Result<DemoAdmin, DemoError> {
    let seed_err = |e: &dyn std::fmt::Display| DemoError::Seed(e.to_string());
    let password = auth::new_password().map_err(|e| seed_err(&e))?;
    let hash = auth::hash_password(&password).map_err(|e| seed_err(&e))?;
    let admin = state
        .grants
        .create_admin(email, name, &hash, &grant)
        .await
        .map_err(|e| seed_err(&e))?;
    let enrolment = state
        .second_factor
        .enrol(&admin.person)
        .await
        .map_err(|e| seed_err(&e))?;
    Ok(DemoAdmin {
        id: admin.person.id,
        email: admin.person.email,
        password,
        totp_secret: enrolment.secret_base32.to_string(),
    })
}

fn write_private(path: &Path, bytes: &[u8]) -> Result<(), DemoError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let write_err = |source| DemoError::Write {
        path: path.display().to_string(),
        source,
    };
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(write_err)?;
    file.write_all(bytes).map_err(write_err)
}
