//! The gateway's web console: its page, script and style sheet (files in `console/`), what
//! the page learns about its session, and the shelf of packages it offers to install.
//!
//! Sessions, log-in and log-out are `server::console`'s; the page's script is a client of
//! `/v1` only, with the same rules as any other caller. The console adds no operation of its
//! own beyond the catalog of packages under `STATE/samples` (read-only, filtered to what the
//! caller may install).

use std::sync::Arc;

use agent::{AgentError, Principal};
use axum::extract::{Path as UrlPath, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{middleware, Extension, Json, Router};
use serde::Serialize;
use server::Transport;

use crate::api::{ApiError, Ctx};

const PAGES: server::console::Pages = server::console::Pages {
    html: include_str!("console/index.html"),
    js: include_str!("console/app.js"),
    css: include_str!("console/app.css"),
};

/// What the page learns about its session.
#[derive(Serialize)]
struct SessionView {
    /// `operator`, `provider` or `home`.
    realm: &'static str,
    provider: Option<String>,
    /// The token to send as `X-CSRF-Token` with every change; None for a caller that did
    /// not come with a session cookie (it needs none).
    csrf: Option<String>,
    /// Where the page's event stream starts (`since`), so it shows the recent journal first.
    events_since: i64,
}

/// How many journal entries back the page's event list starts.
const RECENT_EVENTS: i64 = 200;

/// The console's routes: the page and the sessions (`server::console`), and the catalog
/// (behind `authenticate`, like the API).
pub(crate) fn router(ctx: &Ctx, transport: Transport) -> Router<Ctx> {
    let agent = ctx.agent.clone();
    let view: server::console::SessionView = Arc::new(move |who, csrf| {
        let provider = match who {
            Principal::Provider(p) => Some(p.clone()),
            Principal::Operator | Principal::Home | Principal::Gateway(_) => None,
        };
        let last = agent.last_event_id().unwrap_or(0);
        serde_json::to_value(SessionView {
            realm: who.realm(),
            provider,
            csrf,
            events_since: (last - RECENT_EVENTS).max(0),
        })
        .unwrap_or_default()
    });
    let catalog_routes = Router::new()
        .route("/console/catalog", get(catalog))
        .route("/console/catalog/{file}", get(catalog_package))
        .route_layer(middleware::from_fn_with_state(
            (ctx.server.clone(), transport),
            server::authenticate,
        ));
    server::console::router(ctx.server.clone(), transport, PAGES, view).merge(catalog_routes)
}

/// `GET /console/catalog`: what can be installed from the gateway's own package shelf.
async fn catalog(
    State(Ctx { agent, .. }): State<Ctx>,
    Extension(who): Extension<Principal>,
) -> Result<Json<Vec<api::ShelfEntry>>, ApiError> {
    let entries = tokio::task::spawn_blocking(move || agent.shelf(&who))
        .await
        .map_err(AgentError::Task)??;
    Ok(Json(entries))
}

/// `GET /console/catalog/{file}`: the package itself, for the page to send to
/// `POST /v1/services` (with `dry_run=true` first) like any uploaded file.
async fn catalog_package(
    State(Ctx { agent, .. }): State<Ctx>,
    Extension(who): Extension<Principal>,
    UrlPath(file): UrlPath<String>,
) -> Result<Response, ApiError> {
    let path = tokio::task::spawn_blocking(move || agent.shelf_package(&who, &file))
        .await
        .map_err(AgentError::Task)??;
    let bytes = tokio::fs::read(&path)
        .await
        .map_err(|e| AgentError::io(&path, e))?;
    Ok(([(header::CONTENT_TYPE, "application/octet-stream")], bytes).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The page loads nothing but its own script and style sheet, and no inline script.
    #[test]
    fn the_page_has_no_inline_script() {
        let html = PAGES.html;
        assert!(html.contains(r#"<script src="/console/app.js""#));
        assert_eq!(html.matches("<script").count(), 1);
        let handlers = html.split(" on").skip(1).filter(|rest| {
            let name: String = rest.chars().take_while(char::is_ascii_lowercase).collect();
            !name.is_empty() && rest[name.len()..].starts_with('=')
        });
        assert_eq!(handlers.count(), 0, "no inline event handlers");
        assert!(!html.contains("style="), "no inline styles");
    }
}
