//! The fleet console: one page, script and style sheet (files in `console/`) served by the
//! controller, a client of its `/v1` API through a cookie session (`server::console`): the
//! gateways with filters by label and state, each deployment wave by wave with every
//! gateway's outcome, each service's health and use across the fleet, and the catalog with
//! approval for the operator. A provider sees only its own, as everywhere.

use std::sync::Arc;

use axum::Router;
use realm::Principal;
use serde::Serialize;
use server::{Server, Transport};

const PAGES: server::console::Pages = server::console::Pages {
    html: include_str!("console/index.html"),
    js: include_str!("console/app.js"),
    css: include_str!("console/app.css"),
};

/// What the page learns about its session.
#[derive(Serialize)]
struct SessionView {
    realm: &'static str,
    provider: Option<String>,
    csrf: Option<String>,
}

pub(crate) fn router<S: Clone + Send + Sync + 'static>(
    server: Arc<Server>,
    transport: Transport,
) -> Router<S> {
    let view: server::console::SessionView = Arc::new(|who, csrf| {
        let provider = match who {
            Principal::Provider(p) => Some(p.clone()),
            _ => None,
        };
        serde_json::to_value(SessionView {
            realm: who.realm(),
            provider,
            csrf,
        })
        .unwrap_or_default()
    });
    server::console::router(server, transport, PAGES, view)
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
        assert!(!html.contains(" onclick="), "no inline event handlers");
        assert!(!html.contains("style="), "no inline styles");
    }
}
