//! The pinUvAuthToken this key issues (CTAP 2.1 §6.5.2.1, "pinUvAuthToken
//! state") through getPinUvAuthTokenUsingUvWithPermissions (§6.5.5.7.3),
//! and its use by makeCredential (§6.1.2 step 11.1) and getAssertion
//! (§6.2.2 step 6.1).
//!
//! One token per user's authenticator, in memory only: it dies with the
//! user's actor (passivation, fencing), a new one replaces the old one
//! (§6.5.5.7.3 "resetPinUvAuthToken()"), and the spec's usage timer ends
//! it ([`INITIAL_USAGE_TIME_LIMIT`], [`MAX_USAGE_TIME_PERIOD`]). A token
//! is bound to who obtained it ([`Holder`]): the admin's OBR session, or
//! the owner in normal mode; a call from anyone else cannot use it.
//!
//! The token's bytes live in a zeroizing buffer, leave only encrypted to
//! the platform that asked (`client_pin`), and are never logged; `Debug`
//! prints no byte of them.

use std::time::Duration;

use passkey_types::ctap2::Ctap2Error;
use ring::rand::SecureRandom;
use tokio::time::Instant;
use zeroize::Zeroizing;

use super::CommandError;
use super::client_pin::{PinUvAuthProtocol, verify_mac};

/// The token's length: 32 bytes, which both protocols allow (§6.5.6
/// protocol one: "16 or 32 bytes"; §6.5.7 protocol two: 32).
pub(crate) const TOKEN_LEN: usize = 32;

/// §6.5.2.1 "initial usage time limit": the platform must use the token in
/// an operation within this time or it stops being in use. The default
/// maximum for usb (the transport getInfo names) is 30 seconds.
pub(crate) const INITIAL_USAGE_TIME_LIMIT: Duration = Duration::from_secs(30);

/// §6.5.2.1 "user present time limit": how long the token's user-present
/// flag (the owner's approval, or the admin's OBR session) stands for
/// presence. "Defaults to the same default maximum per-transport values
/// as the initial usage time limit": 30 seconds.
pub(crate) const USER_PRESENT_TIME_LIMIT: Duration = Duration::from_secs(30);

/// §6.5.2.1 "max usage time period", which "SHOULD default to a maximum of
/// 10 minutes": no token outlives this, used or not. (In practice it is
/// spent sooner: the first operation with user presence clears its
/// user-verified flag and permissions, §6.1.2 step 14.4 / §6.2.2 step 9.4.)
pub(crate) const MAX_USAGE_TIME_PERIOD: Duration = Duration::from_secs(600);

/// A token's permissions (§6.5.5.7, "pinUvAuthToken permissions"). Only
/// `mc` and `ga` exist on this key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Permissions(u8);

impl Permissions {
    /// `mc` (0x01): authenticatorMakeCredential.
    pub(crate) const MAKE_CREDENTIAL: Self = Self(0x01);
    /// `ga` (0x02): authenticatorGetAssertion.
    pub(crate) const GET_ASSERTION: Self = Self(0x02);
    /// The permissions this key grants.
    const SUPPORTED: u64 = 0x01 | 0x02;
    /// Permissions the spec defines for features this key does not have
    /// (getInfo claims none of credMgmt, bioEnroll/uvBioEnroll, largeBlobs,
    /// authnrCfg/uvAcfg, perCredMgmtRO): cm 0x04, be 0x08, lbw 0x10,
    /// acfg 0x20 (CTAP 2.1) and pcmr 0x40 (CTAP 2.2).
    const UNAUTHORIZED: u64 = 0x04 | 0x08 | 0x10 | 0x20 | 0x40;
    const NONE: Self = Self(0);

    /// §6.5.5.7.3 steps 3, 4 and 14 on a requested permissions value: 0 is
    /// `CTAP1_ERR_INVALID_PARAMETER`; a defined permission this key cannot
    /// authorize is `CTAP2_ERR_UNAUTHORIZED_PERMISSION` ("the mc and ga
    /// permissions are always considered authorized"); undefined ones are
    /// ignored.
    pub(crate) fn requested(bits: u64) -> Result<Self, CommandError> {
        if bits == 0 {
            return Err(Ctap2Error::InvalidParameter.into());
        }
        if bits & Self::UNAUTHORIZED != 0 {
            return Err(Ctap2Error::UnauthorizedPermission.into());
        }
        // invariant: masked to two bits, so it fits a u8.
        Ok(Self(u8::try_from(bits & Self::SUPPORTED).unwrap_or(0)))
    }

    pub(crate) fn contains(self, other: Self) -> bool {
        other.0 != 0 && self.0 & other.0 == other.0
    }
}

/// Who obtained a token, and so who may use it: a token stands for the
/// user verification of the context that obtained it, not of another.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Holder {
    /// The key's owner, verified by their approval on their device.
    Owner,
    /// The admin acting in this OBR session, verified by the session.
    Obr { session_id: String },
}

/// The pinUvAuthTokens this key holds: one per holder — the owner's own,
/// and one on-behalf session's. CTAP 2.1 §6.5.5.7 step 11 invalidates
/// "every existing pinUvAuthToken" on a new request; a cloud key serves the
/// owner's platforms and an admin's at once, so a new request replaces only
/// its own holder's token, and the user's own sign-ins and an admin's
/// on-behalf registration never invalidate each other's tokens.
#[derive(Debug, Default)]
pub(crate) struct Tokens {
    owner: Option<PinUvAuthToken>,
    on_behalf: Option<PinUvAuthToken>,
}

impl Tokens {
    /// `holder`'s token slot.
    pub(crate) fn slot(&mut self, holder: &Holder) -> &mut Option<PinUvAuthToken> {
        match holder {
            Holder::Owner => &mut self.owner,
            Holder::Obr { .. } => &mut self.on_behalf,
        }
    }

    /// Forget every token (the key was reset).
    pub(crate) fn clear(&mut self) {
        self.owner = None;
        self.on_behalf = None;
    }
}

/// What an operation presents to use the token.
#[derive(Debug, Clone, Copy)]
pub(crate) struct TokenUse<'a> {
    /// The request's pinUvAuthParam: authenticate(token, clientDataHash).
    pub param: &'a [u8],
    pub protocol: PinUvAuthProtocol,
    pub client_data_hash: &'a [u8],
    /// `mc` for makeCredential, `ga` for getAssertion.
    pub permission: Permissions,
    pub rp_id: &'a str,
    pub holder: &'a Holder,
}

/// A token accepted for an operation: the user is verified.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Grant {
    /// getUserPresentFlagValue(): the token still stands for user presence,
    /// so the operation needs no other (§6.1.2 step 14.1, §6.2.2 step 9.1).
    pub user_present: bool,
}

/// The key's pinUvAuthToken and its state (§6.5.2.1).
pub(crate) struct PinUvAuthToken {
    token: Zeroizing<[u8; TOKEN_LEN]>,
    protocol: PinUvAuthProtocol,
    permissions: Permissions,
    /// The permissions RP ID; `None` until the first use associates one.
    rp_id: Option<String>,
    holder: Holder,
    issued_at: Instant,
    /// Used in an operation: the initial usage time limit no longer applies.
    used: bool,
    user_verified: bool,
    user_present: bool,
    /// The operations the user-present flag stands for. On behalf, all the
    /// token's permissions (the session stands for presence anyway); for the
    /// owner, only what they were asked to approve on their device: a token
    /// approved to "register a passkey" does not also sign in unasked.
    presence_for: Permissions,
}

impl std::fmt::Debug for PinUvAuthToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PinUvAuthToken")
            .field("protocol", &self.protocol)
            .field("permissions", &self.permissions)
            .field("rp_id", &self.rp_id)
            .field("holder", &self.holder)
            .field("user_verified", &self.user_verified)
            .field("user_present", &self.user_present)
            .field("presence_for", &self.presence_for)
            .finish_non_exhaustive()
    }
}

impl PinUvAuthToken {
    /// §6.5.5.7.3 steps 11–14: a fresh random token (resetPinUvAuthToken),
    /// in use from now with the user verified
    /// (beginUsingPinUvAuthToken(userIsPresent)), with the requested
    /// permissions and permissions RP ID. The user-present flag stands for
    /// the operations `presence_for` allows (see [`Self::presence_for`]).
    pub(crate) fn issue(
        protocol: PinUvAuthProtocol,
        permissions: Permissions,
        rp_id: Option<String>,
        holder: Holder,
        user_present: bool,
        rng: &dyn SecureRandom,
    ) -> Result<Self, CommandError> {
        let presence_for = Self::presence_for(&holder, permissions);
        let mut token = Zeroizing::new([0u8; TOKEN_LEN]);
        rng.fill(token.as_mut()).map_err(|_| Ctap2Error::Other)?;
        Ok(Self {
            token,
            protocol,
            permissions,
            rp_id,
            holder,
            issued_at: Instant::now(),
            used: false,
            user_verified: true,
            user_present,
            presence_for,
        })
    }

    /// What the token's presence may stand for: on behalf, every permission;
    /// for the owner, the one operation their device showed them
    /// ("register" when `mc` was asked for, else "sign in"), so the `ga`
    /// that platforms add to a registration's token (to check the exclude
    /// list silently) cannot sign in with presence.
    fn presence_for(holder: &Holder, permissions: Permissions) -> Permissions {
        match holder {
            Holder::Obr { .. } => permissions,
            Holder::Owner if permissions.contains(Permissions::MAKE_CREDENTIAL) => {
                Permissions::MAKE_CREDENTIAL
            }
            Holder::Owner => permissions,
        }
    }

    /// The token's bytes, to encrypt for the platform that obtained it.
    pub(crate) fn bytes(&self) -> &[u8] {
        self.token.as_ref()
    }

    pub(crate) fn permissions(&self) -> Permissions {
        self.permissions
    }

    pub(crate) fn rp_id(&self) -> Option<&str> {
        self.rp_id.as_deref()
    }

    /// §6.5.2.1's usage timer: in use until the initial usage time limit if
    /// never used, and never past the max usage time period.
    pub(crate) fn in_use(&self, now: Instant) -> bool {
        let age = now.saturating_duration_since(self.issued_at);
        age <= MAX_USAGE_TIME_PERIOD && (self.used || age <= INITIAL_USAGE_TIME_LIMIT)
    }

    /// §6.1.2 step 11.1 (makeCredential) and §6.2.2 step 6.1
    /// (getAssertion): the request's pinUvAuthParam must be
    /// authenticate(token, clientDataHash) under the token's protocol, the
    /// token in use with its user-verified flag, the permission, and the
    /// permissions RP ID (associated now if it had none). Anything else is
    /// `CTAP2_ERR_PIN_AUTH_INVALID`, which also covers a token used by
    /// someone other than its [`Holder`].
    pub(crate) fn authorize(
        &mut self,
        request: TokenUse<'_>,
        now: Instant,
    ) -> Result<Grant, CommandError> {
        let invalid = || CommandError::from(Ctap2Error::PinAuthInvalid);
        // A platform holds the token of the protocol it obtained it with;
        // under another protocol there is no token it knows.
        if request.protocol != self.protocol || !self.in_use(now) {
            return Err(invalid());
        }
        // (makeCredential's sub-steps are numbered; getAssertion's step 6.1
        // has the same checks in another order.) 11.1.1: verify(
        // pinUvAuthToken, clientDataHash, pinUvAuthParam), in constant time.
        if !verify_mac(
            self.protocol,
            self.token.as_ref(),
            request.client_data_hash,
            request.param,
        ) {
            return Err(invalid());
        }
        // 11.1.2: the mc (or, for getAssertion, ga) permission.
        if !self.permissions.contains(request.permission) {
            return Err(invalid());
        }
        // 11.1.3: the permissions RP ID, if any, is this request's.
        if self.rp_id.as_deref().is_some_and(|id| id != request.rp_id) {
            return Err(invalid());
        }
        // 11.1.4–11.1.5: getUserVerifiedFlagValue().
        if !self.user_verified {
            return Err(invalid());
        }
        if *request.holder != self.holder {
            return Err(invalid());
        }
        // 11.1.7: associate the request's RP ID.
        if self.rp_id.is_none() {
            self.rp_id = Some(request.rp_id.to_owned());
        }
        self.used = true;
        Ok(Grant {
            user_present: self.user_present_now(now)
                && self.presence_for.contains(request.permission),
        })
    }

    /// §6.1.2 step 14.4 / §6.2.2 step 9.4, after an operation with user
    /// presence: clearUserPresentFlag(), clearUserVerifiedFlag() and
    /// clearPinUvAuthTokenPermissionsExceptLbw() (this key has no lbw).
    /// The token can then verify nobody until a new one is obtained.
    pub(crate) fn consume(&mut self) {
        self.user_present = false;
        self.user_verified = false;
        self.permissions = Permissions::NONE;
    }

    /// getUserPresentFlagValue(): the flag, cleared once the user present
    /// time limit has passed.
    fn user_present_now(&self, now: Instant) -> bool {
        self.user_present
            && now.saturating_duration_since(self.issued_at) <= USER_PRESENT_TIME_LIMIT
    }

    /// Pretend the token was issued `by` earlier (time moved by hand in
    /// tests: the store's I/O runs on real threads, so tokio's paused
    /// clock cannot be used).
    #[cfg(test)]
    pub(crate) fn backdate(&mut self, by: Duration) {
        self.issued_at = self.issued_at.checked_sub(by).expect("backdate");
    }
}
