//! [`Api`]: the admin's and the user's HTTP calls to the relay, as the
//! panel and the user app make them. Returns status and JSON, so tests can
//! assert on refusals as precisely as on successes.

use anyhow::{Context, bail};
use serde_json::{Value, json};

pub struct Api {
    base: String,
    agent: ureq::Agent,
}

/// An HTTP answer: status code and JSON body.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: u16,
    pub body: Value,
}

impl Answer {
    pub fn ok(self) -> anyhow::Result<Value> {
        if !(200..300).contains(&self.status) {
            bail!("HTTP {}: {}", self.status, self.body);
        }
        Ok(self.body)
    }
}

impl Api {
    pub fn new(base: &str) -> Self {
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(std::time::Duration::from_secs(30)))
            .build()
            .into();
        Self {
            base: base.trim_end_matches('/').to_owned(),
            agent,
        }
    }

    pub fn call(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> anyhow::Result<Answer> {
        let url = format!("{}{path}", self.base);
        let auth = token.map(|t| format!("Bearer {t}"));
        let response = match method {
            "GET" | "DELETE" => {
                let mut req = if method == "GET" {
                    self.agent.get(&url)
                } else {
                    self.agent.delete(&url)
                };
                if let Some(a) = &auth {
                    req = req.header("Authorization", a);
                }
                req.call()
            }
            "POST" | "PUT" => {
                let mut req = if method == "POST" {
                    self.agent.post(&url)
                } else {
                    self.agent.put(&url)
                };
                if let Some(a) = &auth {
                    req = req.header("Authorization", a);
                }
                req.send_json(body.unwrap_or(json!({})))
            }
            other => bail!("unsupported method {other}"),
        }
        .with_context(|| format!("{method} {url}"))?;
        let status = response.status().as_u16();
        let text = response.into_body().read_to_string()?;
        let body = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        Ok(Answer { status, body })
    }

    /// `POST path` with a body that is not JSON (`content_type`).
    pub fn post_text(
        &self,
        path: &str,
        token: &str,
        content_type: &str,
        body: &str,
    ) -> anyhow::Result<Answer> {
        let url = format!("{}{path}", self.base);
        let response = self
            .agent
            .post(&url)
            .header("Authorization", &format!("Bearer {token}"))
            .header("Content-Type", content_type)
            .send(body)
            .with_context(|| format!("POST {url}"))?;
        let status = response.status().as_u16();
        let text = response.into_body().read_to_string()?;
        let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
        Ok(Answer { status, body })
    }

    /// Sign in with password and the current code of `totp_secret`; a code
    /// already used (another sign-in this 30-second step) is followed by a
    /// wait for the next step, as a person would.
    pub fn admin_login(
        &self,
        email: &str,
        password: &str,
        totp_secret: &str,
    ) -> anyhow::Result<String> {
        let login = |code: &str| {
            self.call(
                "POST",
                "/api/admin/login",
                None,
                Some(json!({ "email": email, "password": password, "totp": code })),
            )
        };
        let mut answer = login(&totp_code(totp_secret)?)?;
        if answer.status == 401 && answer.body["error"] == "totp_replayed" {
            std::thread::sleep(until_next_totp_step());
            answer = login(&totp_code(totp_secret)?)?;
        }
        Ok(answer.ok()?["token"]
            .as_str()
            .context("no token")?
            .to_owned())
    }

    /// Sign in as the demo organisation's owner.
    pub fn demo_owner(&self, demo: &obr_relay::demo::DemoOrg) -> anyhow::Result<String> {
        self.admin_login(
            &demo.admin_email,
            &demo.admin_password,
            &demo.admin_totp_secret,
        )
    }

    /// Sign in as the demo organisation's helpdesk operator.
    pub fn demo_helpdesk(&self, demo: &obr_relay::demo::DemoOrg) -> anyhow::Result<String> {
        let helpdesk = &demo.helpdesk;
        self.admin_login(&helpdesk.email, &helpdesk.password, &helpdesk.totp_secret)
    }

    pub fn approve_login(&self, token: &str, user_code: &str) -> anyhow::Result<Answer> {
        self.call(
            "POST",
            "/api/agent-logins/approve",
            Some(token),
            Some(json!({ "user_code": user_code })),
        )
    }

    pub fn select_obr(&self, token: &str, user_id: &str) -> anyhow::Result<Answer> {
        self.call(
            "POST",
            &format!("/api/users/{user_id}/obr"),
            Some(token),
            Some(json!({})),
        )
    }

    pub fn end_obr(&self, token: &str, agent_id: &str) -> anyhow::Result<Answer> {
        self.call(
            "DELETE",
            &format!("/api/agents/{agent_id}/obr"),
            Some(token),
            None,
        )
    }

    pub fn users(&self, token: &str) -> anyhow::Result<Vec<Value>> {
        let body = self.call("GET", "/api/users", Some(token), None)?.ok()?;
        Ok(body.as_array().cloned().unwrap_or_default())
    }

    pub fn passkeys(&self, token: &str, user_id: &str) -> anyhow::Result<Vec<Value>> {
        let body = self
            .call(
                "GET",
                &format!("/api/users/{user_id}/passkeys"),
                Some(token),
                None,
            )?
            .ok()?;
        Ok(body.as_array().cloned().unwrap_or_default())
    }

    pub fn audit(&self, token: &str) -> anyhow::Result<Value> {
        self.call("GET", "/api/audit", Some(token), None)?.ok()
    }

    /// Every notification in the user's inbox, oldest first (the relay
    /// answers a page of 200 at a time).
    pub fn notifications(&self, device_token: &str) -> anyhow::Result<Vec<Value>> {
        let mut all: Vec<Value> = Vec::new();
        loop {
            let after = all.last().and_then(|n| n["id"].as_i64()).unwrap_or(0);
            let page = self.inbox_page(device_token, after)?;
            if page.is_empty() {
                return Ok(all);
            }
            all.extend(page);
        }
    }
}

/// The newest record of `action` in an `/api/audit` answer.
pub fn newest_record(audit: &Value, action: &str) -> anyhow::Result<Value> {
    audit["records"]
        .as_array()
        .and_then(|records| records.iter().rev().find(|r| r["action"] == action))
        .cloned()
        .ok_or_else(|| anyhow::anyhow!("no {action} record in {audit}"))
}

/// A record's `detail`, as JSON (whether stored as JSON or as text).
pub fn record_detail(record: &Value) -> anyhow::Result<Value> {
    Ok(match &record["detail"] {
        Value::String(text) => serde_json::from_str(text)?,
        other => other.clone(),
    })
}

/// The invitation token in the mail to `email` in the relay's `outbox`
/// folder (its link is `…/app/#invite=TOKEN`).
pub fn mailed_invitation(outbox: &std::path::Path, email: &str) -> anyhow::Result<String> {
    let mail = std::fs::read_dir(outbox)?
        .filter_map(|entry| std::fs::read_to_string(entry.ok()?.path()).ok())
        .find(|mail| mail.starts_with(&format!("To: {email}\r\n")))
        .ok_or_else(|| anyhow::anyhow!("no mail to {email} in {}", outbox.display()))?;
    mail.split("/app/#invite=")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .map(str::to_owned)
        .ok_or_else(|| anyhow::anyhow!("no invitation link in {mail}"))
}

/// The code an authenticator app holding `secret_base32` shows now (RFC
/// 6238 with obr's parameters: SHA-1, 6 digits, 30-second steps).
pub fn totp_code(secret_base32: &str) -> anyhow::Result<String> {
    Ok(totp(secret_base32)?.generate_current().to_string())
}

fn totp(secret_base32: &str) -> anyhow::Result<totp_rs::Totp> {
    let secret = totp_rs::Secret::try_from_base32(secret_base32)
        .map_err(|e| anyhow::anyhow!("TOTP secret: {e}"))?;
    totp_rs::Builder::new()
        .with_algorithm(totp_rs::Algorithm::SHA1)
        .with_digits(6)
        .with_step_duration(TOTP_STEP_S)
        .with_secret(secret)
        .build()
        .map_err(|e| anyhow::anyhow!("TOTP: {e}"))
}

const TOTP_STEP_S: u64 = 30;

/// How long until the next TOTP step begins (and a little more).
pub fn until_next_totp_step() -> std::time::Duration {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let step = std::time::Duration::from_secs(TOTP_STEP_S);
    let into = std::time::Duration::from_millis(
        u64::try_from(now.as_millis() % step.as_millis()).unwrap_or(0),
    );
    step - into + std::time::Duration::from_millis(200)
}

/// The code in `obr-agent login --no-wait`'s output.
pub fn login_code(cli_output: &str) -> anyhow::Result<String> {
    cli_output
        .split_whitespace()
        .skip_while(|w| *w != "code")
        .nth(1)
        .map(str::to_owned)
        .context("no code in the agent's login output")
}

impl Api {
    /// Answer the next `approval.requested` notification in the device's
    /// inbox (newer than notification `after`), as the owner's phone would.
    /// Returns the approval id.
    pub fn answer_next_approval(
        &self,
        device_token: &str,
        after: i64,
        approve: bool,
        timeout: std::time::Duration,
    ) -> anyhow::Result<String> {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            if let Some(request) = self
                .inbox_page(device_token, after)?
                .into_iter()
                .find(|n| n["kind"] == "approval.requested")
            {
                let id = request["detail"]["approval_id"]
                    .as_str()
                    .context("approval id")?
                    .to_owned();
                self.call(
                    "POST",
                    &format!("/api/me/approvals/{id}"),
                    Some(device_token),
                    Some(json!({ "approve": approve })),
                )?
                .ok()?;
                return Ok(id);
            }
            if std::time::Instant::now() > deadline {
                bail!("no approval was requested within {timeout:?}");
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }

    /// One page (up to 200) of the inbox: the notifications after `after`.
    fn inbox_page(&self, device_token: &str, after: i64) -> anyhow::Result<Vec<Value>> {
        let page = self
            .call(
                "GET",
                &format!("/api/me/notifications?after={after}"),
                Some(device_token),
                None,
            )?
            .ok()?;
        Ok(page.as_array().cloned().unwrap_or_default())
    }

    /// The id of the newest notification in the device's inbox (0 if none).
    pub fn inbox_head(&self, device_token: &str) -> anyhow::Result<i64> {
        Ok(self
            .notifications(device_token)?
            .iter()
            .filter_map(|n| n["id"].as_i64())
            .max()
            .unwrap_or(0))
    }
}

/// The `action` of every record in an `/api/audit` answer, oldest first.
pub fn audit_actions(audit: &Value) -> Vec<String> {
    audit["records"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|r| r["action"].as_str().map(str::to_owned))
        .collect()
}
