//! The API's OpenAPI 3.1 document, made at compile time from the handlers'
//! `#[utoipa::path]` attributes and the types they read and write (so it
//! cannot drift from the code), and served at `GET /api/openapi.json`. It
//! owns the two bearer schemes and the answers every operation of a kind
//! can give; it must not describe anything no handler does.

use std::sync::OnceLock;

use actix_web::HttpResponse;
use utoipa::openapi::path::{Operation, ParameterIn};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{OpenApi as Document, RefOr, Response, ResponseBuilder};
use utoipa::{Modify, OpenApi, ToSchema};

use super::{ErrorBody, admin, device, import, obr, users};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "obr-relay",
        description = "On-behalf registration of passkeys: the admin panel's and the user app's API."
    ),
    paths(
        admin::login,
        admin::logout,
        admin::admins,
        admin::set_grant,
        admin::revoke,
        admin::sessions,
        admin::end_session,
        admin::end_all_sessions,
        admin::audit,
        admin::export_audit,
        users::list,
        users::invite,
        import::import,
        users::reinvite,
        users::passkeys,
        users::delete_passkey,
        users::reset_key,
        users::set_groups,
        users::suspend,
        users::resume,
        users::accept_invitation,
        users::my_passkeys,
        obr::select,
        obr::offer_pairing,
        obr::decide_as_admin,
        obr::end,
        obr::agents,
        obr::log_out,
        obr::approve_login,
        device::notifications,
        device::decide_approval,
        device::decide_obr,
        crate::phones::live,
        document,
    ),
    components(schemas(ErrorBody)),
    modifiers(&CommonAnswers),
    tags(
        (name = "admins", description = "Signing in, admins, their grants and sessions"),
        (name = "users", description = "Users and their security keys"),
        (name = "obr", description = "On-behalf registration: Select as OBR, +Passkey, four eyes, Done"),
        (name = "agents", description = "Agents: device-code login, listing, logging out"),
        (name = "audit", description = "The hash-chained audit log"),
        (name = "me", description = "The user app: invitation, inbox, approvals, passkeys"),
        (name = "meta", description = "This document"),
    ),
)]
struct ApiDoc;

/// `GET /api/openapi.json`: this document.
#[utoipa::path(get, path = "/api/openapi.json", tag = "meta", security(()),
    responses((status = 200, description = "The OpenAPI document", content_type = "application/json")))]
pub async fn document() -> HttpResponse {
    static JSON: OnceLock<Option<String>> = OnceLock::new();
    let json = JSON.get_or_init(|| {
        ApiDoc::openapi()
            .to_json()
            .inspect_err(|e| tracing::error!(error = %e, "cannot serialise the OpenAPI document"))
            .ok()
    });
    match json {
        Some(json) => HttpResponse::Ok()
            .content_type("application/json")
            .body(json.as_str()),
        None => HttpResponse::InternalServerError().finish(),
    }
}

/// The bearer schemes, and the answers any operation of a kind gives:
/// 401 where a token is required, 403 where it is an admin's (the wrong
/// kind of token, or not the power), 400 where a body or a query is read,
/// 503 and 500 wherever a store is used.
struct CommonAnswers;

impl Modify for CommonAnswers {
    fn modify(&self, doc: &mut Document) {
        let components = doc.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "admin",
            bearer("An admin's token from POST /api/admin/login"),
        );
        components.add_security_scheme(
            "device",
            bearer("A user app's device token from POST /api/invitations/accept"),
        );
        for item in doc.paths.paths.values_mut() {
            for operation in [
                &mut item.get,
                &mut item.post,
                &mut item.put,
                &mut item.delete,
            ]
            .into_iter()
            .flatten()
            {
                add_common_answers(operation);
            }
        }
    }
}

fn add_common_answers(operation: &mut Operation) {
    // This document and the feed's handshake touch no store.
    if matches!(operation.operation_id.as_deref(), Some("document" | "live")) {
        return;
    }
    let schemes: Vec<String> = operation
        .security
        .iter()
        .flatten()
        .filter_map(|requirement| serde_json::to_value(requirement).ok())
        .filter_map(|json| {
            json.as_object()
                .map(|o| o.keys().cloned().collect::<Vec<_>>())
        })
        .flatten()
        .collect();
    // A body, or a query string (whose unknown fields are refused too).
    let reads_input = operation.request_body.is_some()
        || operation.parameters.iter().flatten().any(
            |parameter| matches!(parameter, RefOr::T(p) if p.parameter_in == ParameterIn::Query),
        );
    let answers = &mut operation.responses.responses;
    let mut add = |status: &str, why: &str| {
        answers
            .entry(status.to_owned())
            .or_insert_with(|| error_answer(why));
    };
    if !schemes.is_empty() {
        add("401", "Missing, invalid or expired bearer token");
    }
    // Only an admin token can be the wrong kind, or lack the power.
    if schemes.iter().any(|s| s == "admin") {
        add(
            "403",
            "The token's holder may not do this (role, scope, own key, another admin's), \
             or it is not an admin token",
        );
    }
    if reads_input {
        add("400", "The body or query is not what this operation reads");
    }
    add(
        "503",
        "The session store, the mail server or a signer cannot be reached",
    );
    add(
        "500",
        "The directory failed (the error is logged with its cause)",
    );
}

fn error_answer(why: &str) -> RefOr<Response> {
    ResponseBuilder::new()
        .description(why)
        .content(
            "application/json",
            utoipa::openapi::ContentBuilder::new()
                .schema(Some(RefOr::Ref(utoipa::openapi::Ref::from_schema_name(
                    ErrorBody::name(),
                ))))
                .build(),
        )
        .build()
        .into()
}

fn bearer(description: &str) -> SecurityScheme {
    SecurityScheme::Http(
        HttpBuilder::new()
            .scheme(HttpAuthScheme::Bearer)
            .description(Some(description))
            .build(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn operations(doc: &Document) -> Vec<(String, &Operation)> {
        doc.paths
            .paths
            .iter()
            .flat_map(|(path, item)| {
                [
                    ("GET", &item.get),
                    ("POST", &item.post),
                    ("PUT", &item.put),
                    ("DELETE", &item.delete),
                ]
                .into_iter()
                .filter_map(move |(method, op)| {
                    op.as_ref().map(|op| (format!("{method} {path}"), op))
                })
            })
            .collect()
    }

    #[test]
    fn every_operation_answers_success_and_names_a_known_scheme() {
        let doc = ApiDoc::openapi();
        let schemes = &doc
            .components
            .as_ref()
            .expect("components")
            .security_schemes;
        let ops = operations(&doc);
        assert!(ops.len() >= 34, "{} operations", ops.len());
        for (name, op) in ops {
            assert!(
                op.responses
                    .responses
                    .keys()
                    .any(|s| s.starts_with('2') || s == "101"),
                "{name} documents no success"
            );
            for requirement in op.security.iter().flatten() {
                let json = serde_json::to_value(requirement).expect("serialises");
                for scheme in json.as_object().expect("a map").keys() {
                    assert!(
                        schemes.contains_key(scheme),
                        "{name}: unknown scheme {scheme}"
                    );
                }
            }
            assert!(op.operation_id.is_some(), "{name} has no operation id");
        }
    }

    #[test]
    fn token_operations_document_401_and_403() {
        let doc = ApiDoc::openapi();
        let (name, op) = operations(&doc)
            .into_iter()
            .find(|(name, _)| name == "GET /api/users")
            .expect("GET /api/users is documented");
        for status in ["200", "401", "403", "503"] {
            assert!(
                op.responses.responses.contains_key(status),
                "{name}: {status}"
            );
        }
        let mut ids: Vec<_> = operations(&doc)
            .into_iter()
            .filter_map(|(_, op)| op.operation_id.clone())
            .collect();
        let count = ids.len();
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), count, "operation ids are unique");
    }
}
