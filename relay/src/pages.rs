//! The pages people click, served by the relay: the admin panel (`/panel/`)
//! and the user app (`/app/`, installable on a phone). Static HTML, CSS and
//! script compiled into the binary; every action goes through the JSON API
//! with a bearer token the page keeps in browser storage, never a cookie —
//! so no request is made with someone's authority by another site (no
//! CSRF), and the Content-Security-Policy allows no script but these files
//! (no inline script, no `eval`), which the pages build their DOM without
//! `innerHTML`.
//!
//! Must not hold any state or secret: a page is the same for everyone.

use actix_web::http::header::{self, HeaderValue};
use actix_web::{HttpResponse, web};

/// What a page may load and where it may connect: only this origin.
const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
    style-src 'self'; img-src 'self' data:; connect-src 'self'; manifest-src 'self'; \
    worker-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'";

/// Every embedded file: name, content type, bytes.
const ASSETS: &[(&str, &str, &str)] = &[
    (
        "panel.html",
        "text/html; charset=utf-8",
        include_str!("../pages/panel.html"),
    ),
    (
        "app.html",
        "text/html; charset=utf-8",
        include_str!("../pages/app.html"),
    ),
    (
        "panel.js",
        "text/javascript; charset=utf-8",
        include_str!("../pages/panel.js"),
    ),
    (
        "app.js",
        "text/javascript; charset=utf-8",
        include_str!("../pages/app.js"),
    ),
    (
        "common.js",
        "text/javascript; charset=utf-8",
        include_str!("../pages/common.js"),
    ),
    (
        "obr.css",
        "text/css; charset=utf-8",
        include_str!("../pages/obr.css"),
    ),
    (
        "app.webmanifest",
        "application/manifest+json",
        include_str!("../pages/app.webmanifest"),
    ),
    (
        "icon.svg",
        "image/svg+xml",
        include_str!("../pages/icon.svg"),
    ),
];

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/", web::get().to(home))
        .route("/panel", web::get().to(|| async { redirect("/panel/") }))
        .route("/panel/", web::get().to(|| async { asset("panel.html") }))
        .route("/app", web::get().to(|| async { redirect("/app/") }))
        .route("/app/", web::get().to(|| async { asset("app.html") }))
        .route("/assets/{name}", web::get().to(named));
}

async fn home() -> HttpResponse {
    redirect("/panel/")
}

async fn named(name: web::Path<String>) -> HttpResponse {
    asset(&name)
}

fn redirect(to: &'static str) -> HttpResponse {
    HttpResponse::SeeOther()
        .insert_header((header::LOCATION, to))
        .finish()
}

fn asset(name: &str) -> HttpResponse {
    let Some((_, content_type, body)) = ASSETS.iter().find(|(n, _, _)| *n == name) else {
        return HttpResponse::NotFound()
            .content_type("text/plain; charset=utf-8")
            .body("no such page");
    };
    let mut response = HttpResponse::Ok();
    response
        .content_type(*content_type)
        .insert_header((
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(CONTENT_SECURITY_POLICY),
        ))
        .insert_header((header::X_CONTENT_TYPE_OPTIONS, "nosniff"))
        .insert_header((header::REFERRER_POLICY, "no-referrer"))
        .insert_header((header::X_FRAME_OPTIONS, "DENY"))
        .insert_header((header::CACHE_CONTROL, "no-cache"));
    response.body(*body)
}
