//! Admins' power: a [`Grant`] (a [`Role`] and a [`Scope`] of users) per
//! admin, and [`Grants`], the only way to read one or give one.
//!
//! A grant is stored sealed (`people.grant_sealed`): its JSON MACed under a
//! key derived from the deployment's cluster key, bound to the admin's id,
//! email and password hash; an owner's revocation is sealed the same way,
//! so a revoked row stays verifiable for a later grant. Power is what a verified seal says, read at the moment it is
//! used; a row whose seal does not verify — written by someone with the
//! database but not the key, or copied from another admin — is no admin
//! at all, and is logged. `is_admin` stays as the directory's marker of
//! who is an admin (no one may act on an admin's key), never as power.
//!
//! Must not decide what a request may do beyond [`Admin::may`] and
//! [`Admin::covers`]: the rules that combine them live in `crate::obr`.

use std::collections::BTreeSet;
use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use sqlx::Row;

use super::{
    DirResult, Directory, DirectoryError, KeyStatus, PERSON_COLUMNS, Person, person_from_row,
};
use crate::clock::now_ms;
use crate::sessions::Sealer;

/// What the grant seal's key is derived for (not a Redis value's key).
const GRANT_SEAL_PURPOSE: &str = "obr-relay directory admin grant v1";
/// A grant does not expire by itself: it is replaced or removed.
const NEVER: i64 = i64::MAX;
/// Groups an admin's scope or a user may name; a group name's length.
pub const MAX_GROUPS: usize = 64;
pub const MAX_GROUP_NAME_LEN: usize = 64;

/// What an admin is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Everything: admins, users, keys, provisioning.
    Owner,
    /// Provisions the users in their scope: OBR sessions, their passkeys.
    Operator,
    /// Reads the directory, the passkeys and the audit log; changes nothing.
    Auditor,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Owner => "owner",
            Role::Operator => "operator",
            Role::Auditor => "auditor",
        }
    }
}

/// Which users an admin's role reaches.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    AllUsers,
    /// Users in at least one of these groups.
    Groups(BTreeSet<String>),
}

/// An admin's role and scope.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Grant {
    pub role: Role,
    pub scope: Scope,
}

impl Grant {
    pub fn owner() -> Self {
        Self {
            role: Role::Owner,
            scope: Scope::AllUsers,
        }
    }
}

/// What an admin may do, by kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Power {
    /// Read people, passkeys, agents and the audit log.
    Read,
    /// Start and end OBR sessions, delete passkeys (users in scope).
    Provision,
    /// Invite users, reset keys, set users' groups.
    ManageUsers,
    /// Create admins and give them roles.
    ManageAdmins,
}

impl Power {
    pub fn as_str(self) -> &'static str {
        match self {
            Power::Read => "read",
            Power::Provision => "provision",
            Power::ManageUsers => "manage_users",
            Power::ManageAdmins => "manage_admins",
        }
    }
}

/// What `people.grant_sealed` holds, under the seal.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Sealed {
    Granted(Grant),
    /// Revoked by an owner: no power, but the row stays verifiable.
    Revoked,
}

/// An admin whose grant verified just now.
#[derive(Clone, Debug, Serialize)]
pub struct Admin {
    pub person: Person,
    pub grant: Grant,
}

impl Admin {
    /// Whether the role carries `power`.
    pub fn may(&self, power: Power) -> bool {
        match self.grant.role {
            Role::Owner => true,
            Role::Operator => matches!(power, Power::Read | Power::Provision),
            Role::Auditor => power == Power::Read,
        }
    }

    /// Whether `user` is in this admin's scope.
    pub fn covers(&self, user: &Person) -> bool {
        match &self.grant.scope {
            Scope::AllUsers => true,
            Scope::Groups(groups) => user.groups.iter().any(|g| groups.contains(g)),
        }
    }
}

/// Why a grant or a group list was refused.
#[derive(Debug, thiserror::Error)]
pub enum GrantError {
    #[error(
        "at most {MAX_GROUPS} groups, each 1-{MAX_GROUP_NAME_LEN} characters of a-z, 0-9, '-' or '_'"
    )]
    BadGroups,
    #[error("a scope of named groups needs at least one group")]
    EmptyScope,
    #[error("an owner manages every user: an owner's scope is all users")]
    OwnerScope,
    #[error(
        "no verifiable admin grant on that row (never an admin, or changed outside the relay): make a new admin"
    )]
    Unverified,
    #[error("the admin's grant changed meanwhile: read it again")]
    Changed,
    #[error(transparent)]
    Directory(#[from] DirectoryError),
}

/// Checks group names: lower-case ASCII letters, digits, `-` and `_`.
pub fn valid_groups<'a>(
    groups: impl IntoIterator<Item = &'a str>,
) -> Result<BTreeSet<String>, GrantError> {
    let groups: BTreeSet<String> = groups.into_iter().map(str::to_owned).collect();
    let valid = groups.len() <= MAX_GROUPS
        && groups.iter().all(|g| {
            (1..=MAX_GROUP_NAME_LEN).contains(&g.len())
                && g.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
        });
    if valid {
        Ok(groups)
    } else {
        Err(GrantError::BadGroups)
    }
}

/// A scope names at least one valid group, and an owner's is all users.
fn check_scope(grant: &Grant) -> Result<(), GrantError> {
    match &grant.scope {
        Scope::Groups(groups) if groups.is_empty() => Err(GrantError::EmptyScope),
        Scope::Groups(_) if grant.role == Role::Owner => Err(GrantError::OwnerScope),
        Scope::Groups(groups) => valid_groups(groups.iter().map(String::as_str)).map(drop),
        Scope::AllUsers => Ok(()),
    }
}

/// The directory's admins, read and written through the grant seal.
#[derive(Clone)]
pub struct Grants {
    directory: Directory,
    seal: Arc<Sealer>,
}

impl Grants {
    /// Grants in `directory`, sealed under a key derived from `cluster`.
    pub fn new(directory: Directory, cluster: &Sealer) -> Self {
        Self {
            directory,
            seal: Arc::new(cluster.derived(GRANT_SEAL_PURPOSE)),
        }
    }

    /// The directory the grants are kept in.
    pub fn directory(&self) -> &Directory {
        &self.directory
    }

    /// What a grant is bound to: the admin's id and email, and the
    /// password hash they sign in with (so that a database writer who puts
    /// a hash of a password they know on an admin's row voids the grant
    /// rather than signs in with it).
    fn binding(person: &Person, password_hash: &str) -> String {
        let password = URL_SAFE_NO_PAD.encode(Sha256::digest(password_hash.as_bytes()));
        format!("admin-grant\0{}\0{}\0{password}", person.id, person.email)
    }

    /// `person_id` as an admin, if their grant verifies and is not revoked.
    pub async fn admin(&self, person_id: &str) -> DirResult<Option<Admin>> {
        Ok(match self.verified(person_id).await? {
            Some((person, Sealed::Granted(grant), _)) => Some(Admin { person, grant }),
            Some((person, Sealed::Revoked, _)) => {
                tracing::info!(person = %person.id, email = %person.email,
                    "a revoked admin's credentials were used: no admin power");
                None
            }
            None => None,
        })
    }

    /// `person_id`'s sealed grant (granted or revoked) if it verifies, with
    /// the stored value it was read from.
    /// (One query: this runs on every API call and every CTAP request of
    /// an OBR session.)
    async fn verified(&self, person_id: &str) -> DirResult<Option<(Person, Sealed, String)>> {
        let row = sqlx::query(&format!(
            "SELECT {PERSON_COLUMNS}, grant_sealed, password_hash FROM people \
             WHERE id = $1 AND grant_sealed IS NOT NULL"
        ))
        .bind(person_id)
        .fetch_optional(self.directory.pool())
        .await?;
        row.map_or(Ok(None), |row| self.open(&row))
    }

    /// The person and verified sealed value of a row read with
    /// [`PERSON_COLUMNS`], `grant_sealed` and `password_hash`.
    fn open(&self, row: &sqlx::sqlite::SqliteRow) -> DirResult<Option<(Person, Sealed, String)>> {
        let person = person_from_row(row)?;
        let sealed: String = row.try_get("grant_sealed")?;
        let password_hash: Option<String> = row.try_get("password_hash")?;
        let binding = Self::binding(&person, password_hash.as_deref().unwrap_or_default());
        let opened = self
            .seal
            .open(&binding, &sealed, now_ms())
            .ok()
            .and_then(|(json, _)| serde_json::from_str::<Sealed>(json).ok());
        if opened.is_none() {
            tracing::warn!(person = %person.id, email = %person.email,
                "an admin grant in the directory does not verify: no admin power");
        }
        Ok(opened.map(|grant| (person, grant, sealed)))
    }

    /// Every admin whose grant verifies and is not revoked, by email.
    pub async fn admins(&self) -> DirResult<Vec<Admin>> {
        let rows = sqlx::query(&format!(
            "SELECT {PERSON_COLUMNS}, grant_sealed, password_hash FROM people \
             WHERE grant_sealed IS NOT NULL ORDER BY email"
        ))
        .fetch_all(self.directory.pool())
        .await?;
        let mut admins = Vec::with_capacity(rows.len());
        for row in &rows {
            if let Some((person, Sealed::Granted(grant), _)) = self.open(row)? {
                admins.push(Admin { person, grant });
            }
        }
        Ok(admins)
    }

    /// `value`, sealed for `person` and the password hash they hold.
    async fn seal_for(&self, person: &Person, value: &Sealed) -> Result<String, GrantError> {
        let password_hash: Option<String> =
            sqlx::query_scalar("SELECT password_hash FROM people WHERE id = $1")
                .bind(&person.id)
                .fetch_optional(self.directory.pool())
                .await
                .map_err(DirectoryError::from)?
                .flatten();
        let json =
            serde_json::to_string(value).map_err(|e| DirectoryError::Corrupt(e.to_string()))?;
        let binding = Self::binding(person, password_hash.as_deref().unwrap_or_default());
        Ok(self.seal.seal(&binding, &json, NEVER))
    }

    /// Replace the sealed value `old` of `person_id` with `new`, if nobody
    /// changed it meanwhile.
    async fn replace(&self, person_id: &str, old: &str, new: &str) -> Result<bool, GrantError> {
        let replaced =
            sqlx::query("UPDATE people SET grant_sealed = $1 WHERE id = $2 AND grant_sealed = $3")
                .bind(new)
                .bind(person_id)
                .bind(old)
                .execute(self.directory.pool())
                .await
                .map_err(DirectoryError::from)?;
        Ok(replaced.rows_affected() == 1)
    }

    /// A new admin with `grant`, signing in with the password
    /// `password_hash`: the person and their sealed grant in one statement.
    pub async fn create_admin(
        &self,
        email: &str,
        display_name: &str,
        password_hash: &str,
        grant: &Grant,
    ) -> Result<Admin, GrantError> {
        check_scope(grant)?;
        let person = Person {
            id: uuid::Uuid::new_v4().to_string(),
            email: email.to_owned(),
            display_name: display_name.to_owned(),
            is_admin: true,
            key_status: KeyStatus::Active,
            created_at_ms: now_ms(),
            groups: Vec::new(),
        };
        let json = serde_json::to_string(&Sealed::Granted(grant.clone()))
            .map_err(|e| DirectoryError::Corrupt(e.to_string()))?;
        let sealed = self
            .seal
            .seal(&Self::binding(&person, password_hash), &json, NEVER);
        self.directory
            .insert_person(&person, Some(password_hash), Some(&sealed))
            .await?;
        Ok(Admin {
            person,
            grant: grant.clone(),
        })
    }

    /// Give `admin_id` `grant` in place of their grant or revocation, whose
    /// seal must verify: a row a database writer changed since (its email,
    /// its password hash), or a person who never was an admin, is refused
    /// ([`GrantError::Unverified`]) — make a new admin instead.
    pub async fn set_grant(&self, admin_id: &str, grant: &Grant) -> Result<(), GrantError> {
        check_scope(grant)?;
        let (person, _, old) = self
            .verified(admin_id)
            .await?
            .ok_or(GrantError::Unverified)?;
        let new = self
            .seal_for(&person, &Sealed::Granted(grant.clone()))
            .await?;
        if self.replace(admin_id, &old, &new).await? {
            Ok(())
        } else {
            Err(GrantError::Changed)
        }
    }

    /// Revoke `admin_id`'s grant: a sealed revocation in its place, so the
    /// row stays verifiable for a later grant. They remain an admin nobody
    /// may act on, with no power.
    pub async fn revoke(&self, admin_id: &str) -> Result<(), GrantError> {
        let Some((person, Sealed::Granted(_), old)) = self.verified(admin_id).await? else {
            return Err(GrantError::Unverified);
        };
        let new = self.seal_for(&person, &Sealed::Revoked).await?;
        if self.replace(admin_id, &old, &new).await? {
            Ok(())
        } else {
            Err(GrantError::Changed)
        }
    }

    /// Whether `person_id` is an admin whose row verifies (granted or
    /// revoked): whom an owner may give a grant.
    pub async fn is_verified_admin(&self, person_id: &str) -> DirResult<bool> {
        Ok(self.verified(person_id).await?.is_some())
    }
}

impl Directory {
    /// Replace `person_id`'s groups.
    pub async fn set_groups(&self, person_id: &str, groups: &BTreeSet<String>) -> DirResult<()> {
        let mut tx = self.pool().begin().await?;
        sqlx::query("DELETE FROM person_groups WHERE person_id = $1")
            .bind(person_id)
            .execute(&mut *tx)
            .await?;
        for group in groups {
            sqlx::query("INSERT INTO person_groups (person_id, group_name) VALUES ($1, $2)")
                .bind(person_id)
                .bind(group)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const POWERS: [Power; 4] = [
        Power::Read,
        Power::Provision,
        Power::ManageUsers,
        Power::ManageAdmins,
    ];

    fn person(id: &str, groups: &[&str]) -> Person {
        Person {
            id: id.to_owned(),
            email: format!("{id}@example.com"),
            display_name: id.to_owned(),
            is_admin: false,
            key_status: KeyStatus::Active,
            created_at_ms: 0,
            groups: groups.iter().map(|g| (*g).to_owned()).collect(),
        }
    }

    fn admin(role: Role, scope: Scope) -> Admin {
        Admin {
            person: person("admin", &[]),
            grant: Grant { role, scope },
        }
    }

    #[test]
    fn each_role_carries_exactly_its_powers() {
        let table = [
            (Role::Owner, [true, true, true, true]),
            (Role::Operator, [true, true, false, false]),
            (Role::Auditor, [true, false, false, false]),
        ];
        for (role, expected) in table {
            let admin = admin(role, Scope::AllUsers);
            let actual = POWERS.map(|power| admin.may(power));
            assert_eq!(actual, expected, "{role:?}");
        }
    }

    #[test]
    fn a_scope_of_groups_covers_their_members_only() {
        let emea = admin(
            Role::Operator,
            Scope::Groups(BTreeSet::from(["emea".to_owned(), "apac".to_owned()])),
        );
        assert!(emea.covers(&person("bob", &["emea"])));
        assert!(emea.covers(&person("bob", &["sales", "apac"])));
        assert!(!emea.covers(&person("carol", &["sales"])));
        assert!(!emea.covers(&person("dave", &[])));
        assert!(admin(Role::Operator, Scope::AllUsers).covers(&person("dave", &[])));
    }

    #[test]
    fn group_names_are_checked() {
        assert_eq!(
            valid_groups(["emea", "b", "emea", "it_ops-2"]).unwrap(),
            BTreeSet::from(["b".into(), "emea".into(), "it_ops-2".into()])
        );
        let too_long = "x".repeat(MAX_GROUP_NAME_LEN + 1);
        for bad in ["", "EMEA", "e mea", "emea,apac", "é", too_long.as_str()] {
            assert!(valid_groups([bad]).is_err(), "{bad:?}");
        }
        let many: Vec<String> = (0..=MAX_GROUPS).map(|i| format!("g{i}")).collect();
        assert!(valid_groups(many.iter().map(String::as_str)).is_err());
    }

    #[tokio::test]
    async fn a_grant_verifies_only_for_its_admin_and_under_its_key() {
        let dir = std::env::temp_dir().join(format!("obr-grants-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let directory = Directory::open(&dir.join("relay.db")).await.unwrap();
        let cluster = Sealer::new(&[7; crate::sessions::seal::CLUSTER_KEY_LEN]);
        let grants = Grants::new(directory.clone(), &cluster);
        let owner = grants
            .create_admin("owner@example.com", "Owner", "hash", &Grant::owner())
            .await
            .unwrap();
        let auditor = Grant {
            role: Role::Auditor,
            scope: Scope::AllUsers,
        };
        let other = grants
            .create_admin("audit@example.com", "Audit", "hash", &auditor)
            .await
            .unwrap();
        assert_eq!(
            grants.admin(&owner.person.id).await.unwrap().unwrap().grant,
            Grant::owner()
        );
        assert_eq!(grants.admins().await.unwrap().len(), 2);

        // The owner's seal on the auditor's row: bound to the owner, so no admin.
        sqlx::query(
            "UPDATE people SET grant_sealed = (SELECT grant_sealed FROM people WHERE id = $1) \
             WHERE id = $2",
        )
        .bind(&owner.person.id)
        .bind(&other.person.id)
        .execute(directory.pool())
        .await
        .unwrap();
        assert!(grants.admin(&other.person.id).await.unwrap().is_none());
        // Another deployment's key, or a key derived for another purpose: no admin.
        for key in [Sealer::new(&[8; 32]), Sealer::new(&[7; 32])] {
            let foreign = Grants::new(directory.clone(), &key.derived("another purpose"));
            assert!(foreign.admin(&owner.person.id).await.unwrap().is_none());
        }
        // The cluster key itself (not the key derived from it): no admin.
        let underived = Grants {
            directory: directory.clone(),
            seal: Arc::new(Sealer::new(&[7; 32])),
        };
        assert!(underived.admin(&owner.person.id).await.unwrap().is_none());
        let refused = [
            (Role::Operator, BTreeSet::new()),
            (Role::Owner, BTreeSet::from(["emea".to_owned()])),
        ];
        for (role, groups) in refused {
            let grant = Grant {
                role,
                scope: Scope::Groups(groups),
            };
            let made = grants.create_admin("no@example.com", "No", "hash", &grant);
            assert!(made.await.is_err(), "{grant:?}");
        }
        // A password hash other than the one the grant was made with.
        sqlx::query("UPDATE people SET password_hash = 'other' WHERE id = $1")
            .bind(&owner.person.id)
            .execute(directory.pool())
            .await
            .unwrap();
        assert!(grants.admin(&owner.person.id).await.unwrap().is_none());
        std::fs::remove_dir_all(dir).unwrap();
    }
}
