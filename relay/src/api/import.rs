//! Users imported from a spreadsheet: `POST /api/users/import` with a CSV
//! body (RFC 4180; a header row naming `email` and `display_name`, and
//! optionally `groups`, `;`-separated). Each row is invited as the form
//! invites one user (the mail goes to the user; no secret comes back) and
//! gets a line in the report; a bad row never stops the others. When a
//! mail cannot be sent, that user is still invited (`invited_not_mailed`:
//! send it again with `POST /api/users/{id}/invitation`) and the rows after
//! it are not mailed either, so a mail server that is down cannot hold the
//! request for long. Owners only; the import is audited as a whole, every
//! invitation and every group set on its own.

use actix_web::{HttpRequest, HttpResponse, web};
use serde::Serialize;
use utoipa::ToSchema;

use super::users::{InviteError, invite_and_mail, set_groups_audited};
use super::{ApiError, ErrorBody, read_at_most, require_power};
use crate::directory::grants::{Power, valid_groups};
use crate::state::AppState;

/// Rows one import may hold.
pub const MAX_IMPORT_ROWS: usize = 1000;
/// The largest CSV body read (1000 rows of long names fit).
pub const MAX_IMPORT_BYTES: usize = 1024 * 1024;

#[derive(Serialize, ToSchema)]
pub struct RowReport {
    /// The row's line in the file (the header is line 1).
    line: u64,
    email: String,
    /// `invited`, `invited_not_mailed` or `failed` (with `error`).
    #[schema(value_type = String)]
    status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    user_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct ImportReport {
    invited: usize,
    failed: usize,
    rows: Vec<RowReport>,
}

/// `POST /api/users/import` (CSV, see the module).
#[utoipa::path(post, path = "/api/users/import", tag = "users", security(("admin" = [])),
    request_body(content = String, content_type = "text/csv",
        description = "A header row naming `email`, `display_name` and optionally `groups` (`;`-separated); at most 1000 rows, 1 MiB"),
    responses(
        (status = 200, description = "A line per row", body = ImportReport),
        (status = 400, description = "Not CSV, no such columns, or too many rows", body = ErrorBody),
        (status = 413, description = "Larger than 1 MiB", body = ErrorBody),
    ))]
pub async fn import(
    req: HttpRequest,
    state: web::Data<AppState>,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    // Who asks is checked before the body is read: a stranger cannot make
    // the relay hold a megabyte per request.
    let admin = require_power(&req, &state, Power::ManageUsers, "import_users").await?;
    let body = read_at_most(payload, MAX_IMPORT_BYTES).await?;
    let mut reader = csv::ReaderBuilder::new()
        .trim(csv::Trim::All)
        .flexible(true)
        .from_reader(body.as_ref());
    let headers = reader
        .headers()
        .map_err(|e| ApiError::BadRequest(format!("not CSV: {e}")))?
        .clone();
    let column = |name: &str| headers.iter().position(|h| h.eq_ignore_ascii_case(name));
    let (Some(email_at), Some(name_at)) = (column("email"), column("display_name")) else {
        return Err(ApiError::BadRequest(
            "the first row must name the columns: email, display_name (and optionally groups)"
                .into(),
        ));
    };
    let groups_at = column("groups");
    // All rows read first: a file over the limit imports nothing.
    let records: Vec<_> = reader
        .records()
        .take(MAX_IMPORT_ROWS.saturating_add(1))
        .collect();
    if records.len() > MAX_IMPORT_ROWS {
        return Err(ApiError::BadRequest(format!(
            "at most {MAX_IMPORT_ROWS} rows per import: split the file"
        )));
    }
    let mut rows = Vec::new();
    let mut mail_down = false;
    for (index, record) in records.into_iter().enumerate() {
        let line = u64::try_from(index).map_or(u64::MAX, |i| i.saturating_add(2));
        let record = match record {
            Ok(record) => record,
            Err(e) => {
                rows.push(failed(line, String::new(), format!("not CSV: {e}")));
                continue;
            }
        };
        let field = |at: usize| record.get(at).unwrap_or_default().to_owned();
        let email = field(email_at);
        let groups = groups_at.map(field).unwrap_or_default();
        let groups: Vec<&str> = groups
            .split(';')
            .map(str::trim)
            .filter(|g| !g.is_empty())
            .collect();
        let groups = match valid_groups(groups.iter().copied()) {
            Ok(groups) => groups,
            Err(e) => {
                rows.push(failed(line, email, e.to_string()));
                continue;
            }
        };
        let invited = invite_row(&state, &admin, &email, &field(name_at), !mail_down).await;
        let (user, mail_error) = match invited {
            Ok(user) => (user, None),
            Err(Invitation::Unmailed(user, why)) => {
                // One mail failure says the mail server is down: the rest
                // are invited without trying (each says so), which keeps
                // the import short.
                mail_down = true;
                (user, Some(why))
            }
            Err(Invitation::Refused(e)) => {
                rows.push(failed(line, email, e.to_string()));
                continue;
            }
            Err(Invitation::Failed(e)) => return Err(e),
        };
        if !groups.is_empty() {
            set_groups_audited(&state, &admin.person.email, &user, &groups).await?;
        }
        rows.push(RowReport {
            line,
            email: user.email,
            status: if mail_error.is_some() {
                "invited_not_mailed"
            } else {
                "invited"
            },
            user_id: Some(user.id),
            error: mail_error,
        });
    }
    let invited = rows.iter().filter(|r| r.status != "failed").count();
    let failed_rows = rows.len().saturating_sub(invited);
    state
        .directory
        .audit(
            &admin.person.email,
            "users.imported",
            "users",
            serde_json::json!({ "invited": invited, "failed": failed_rows }),
        )
        .await?;
    Ok(HttpResponse::Ok().json(ImportReport {
        invited,
        failed: failed_rows,
        rows,
    }))
}

/// How one row's invitation went wrong.
enum Invitation {
    /// The user is invited, but their mail did not go (why).
    Unmailed(crate::directory::Person, String),
    /// The row itself is wrong (address, name, an existing user).
    Refused(ApiError),
    /// The relay cannot go on (its directory).
    Failed(ApiError),
}

/// [`invite_and_mail`], with what went wrong sorted for the report.
async fn invite_row(
    state: &AppState,
    admin: &crate::directory::grants::Admin,
    email: &str,
    name: &str,
    mail: bool,
) -> Result<crate::directory::Person, Invitation> {
    match invite_and_mail(state, admin, email, name, mail).await {
        Ok(user) => Ok(user),
        Err(InviteError::Unmailed(user, why)) => Err(Invitation::Unmailed(user, why)),
        Err(InviteError::Api(e @ (ApiError::BadRequest(_) | ApiError::Conflict(_)))) => {
            Err(Invitation::Refused(e))
        }
        Err(InviteError::Api(e)) => Err(Invitation::Failed(e)),
    }
}

fn failed(line: u64, email: String, error: String) -> RowReport {
    RowReport {
        line,
        email,
        status: "failed",
        user_id: None,
        error: Some(error),
    }
}
