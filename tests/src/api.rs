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

    pub fn admin_login(&self, email: &str, password: &str) -> anyhow::Result<String> {
        let body = self
            .call(
                "POST",
                "/api/admin/login",
                None,
                Some(json!({ "email": email, "password": password })),
            )?
            .ok()?;
        Ok(body["token"].as_str().context("no token")?.to_owned())
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

    pub fn notifications(&self, device_token: &str) -> anyhow::Result<Vec<Value>> {
        let body = self
            .call("GET", "/api/me/notifications", Some(device_token), None)?
            .ok()?;
        Ok(body.as_array().cloned().unwrap_or_default())
    }
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
            let inbox = self
                .call(
                    "GET",
                    &format!("/api/me/notifications?after={after}"),
                    Some(device_token),
                    None,
                )?
                .ok()?;
            if let Some(request) = inbox
                .as_array()
                .into_iter()
                .flatten()
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
