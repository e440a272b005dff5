//! The gateway's router in process: a request in, a response out — no socket, no root, no
//! container. What a caller of the API observes about authentication, realms, errors, the
//! audit log, the rate limit and the console's sessions.

use std::sync::Arc;

use agent::Agent;
use axum::body::Body;
use axum::http::{header, Method, Request, StatusCode};
use axum::Router;
use gateway::Transport;
use http_body_util::BodyExt;
use tower::ServiceExt;

/// An agent on a temporary state directory (networking off: nothing on the host changes),
/// with its routers for both transports.
struct Gateway {
    _dir: tempfile::TempDir,
    agent: Arc<Agent>,
    local: Router,
    remote: Router,
}

fn gateway() -> Gateway {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("gateway.toml"),
        "[network]\nenabled = false\n[capacity]\ncpu = 2.0\nmemory = \"4GiB\"\nstorage = \"8GiB\"\n",
    )
    .unwrap();
    let cfg = agent::Config::new(dir.path().to_path_buf()).unwrap();
    let agent = Agent::open(cfg).unwrap();
    let server = gateway::server_for(&agent);
    Gateway {
        local: gateway::router(agent.clone(), server.clone(), Transport::Local),
        remote: gateway::router(agent.clone(), server, Transport::Remote),
        agent,
        _dir: dir,
    }
}

struct Answer {
    status: StatusCode,
    headers: axum::http::HeaderMap,
    json: serde_json::Value,
}

async fn call(app: &Router, req: Request<Body>) -> Answer {
    let response = app.clone().oneshot(req).await.unwrap();
    let status = response.status();
    let headers = response.headers().clone();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    let json = serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null);
    Answer {
        status,
        headers,
        json,
    }
}

fn get(path: &str, token: Option<&str>) -> Request<Body> {
    let mut req = Request::builder().method(Method::GET).uri(path);
    if let Some(t) = token {
        req = req.header(header::AUTHORIZATION, format!("Bearer {t}"));
    }
    req.body(Body::empty()).unwrap()
}

fn post_json(path: &str, token: Option<&str>, body: serde_json::Value) -> Request<Body> {
    let mut req = Request::builder()
        .method(Method::POST)
        .uri(path)
        .header(header::CONTENT_TYPE, "application/json");
    if let Some(t) = token {
        req = req.header(header::AUTHORIZATION, format!("Bearer {t}"));
    }
    req.body(Body::from(body.to_string())).unwrap()
}

/// A new token of `realm` (and `provider`), made by the operator on the local socket.
async fn token(gw: &Gateway, realm: &str, provider: Option<&str>) -> String {
    let answer = call(
        &gw.local,
        post_json(
            "/v1/tokens",
            None,
            serde_json::json!({ "realm": realm, "provider": provider }),
        ),
    )
    .await;
    assert_eq!(answer.status, StatusCode::CREATED, "{}", answer.json);
    answer.json["token"].as_str().unwrap().to_string()
}

#[tokio::test]
async fn root_on_the_socket_is_the_operator_and_a_remote_caller_needs_a_token() {
    let gw = gateway();
    let local = call(&gw.local, get("/v1/gateway", None)).await;
    assert_eq!(local.status, StatusCode::OK);
    assert_eq!(local.json["services"], 0);
    let remote = call(&gw.remote, get("/v1/gateway", None)).await;
    assert_eq!(remote.status, StatusCode::UNAUTHORIZED);
    assert_eq!(remote.json["code"], "unauthorized");
    assert!(remote.json["message"]
        .as_str()
        .unwrap()
        .contains("needs a token"));
    let forged = call(&gw.remote, get("/v1/gateway", Some("shg_not-a-token"))).await;
    assert_eq!(forged.status, StatusCode::UNAUTHORIZED);
    assert!(forged.json["message"]
        .as_str()
        .unwrap()
        .contains("`shg token create`"));
}

#[tokio::test]
async fn each_realm_gets_what_its_rules_allow() {
    let gw = gateway();
    let acme = token(&gw, "provider", Some("acme")).await;
    let home = token(&gw, "home", None).await;
    // The capacity is the operator's and the household's, not a provider's.
    let refused = call(&gw.remote, get("/v1/gateway/capacity", Some(&acme))).await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN);
    assert_eq!(refused.json["code"], "forbidden");
    let seen = call(&gw.remote, get("/v1/gateway/capacity", Some(&home))).await;
    assert_eq!(seen.status, StatusCode::OK);
    assert_eq!(seen.json["capacity"]["memory"], 4u64 << 30);
    // Tokens and the audit log are the operator's alone.
    for who in [&acme, &home] {
        let answer = call(&gw.remote, get("/v1/tokens", Some(who))).await;
        assert_eq!(answer.status, StatusCode::FORBIDDEN);
    }
    // A service that does not exist is a 404 in the API's shape.
    let missing = call(&gw.remote, get("/v1/services/camera", Some(&acme))).await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
    assert_eq!(missing.json["code"], "not-found");
    assert!(missing.json["message"]
        .as_str()
        .unwrap()
        .contains("`camera`"));
}

#[tokio::test]
async fn a_revoked_token_is_refused_at_once() {
    let gw = gateway();
    let home = token(&gw, "home", None).await;
    assert_eq!(
        call(&gw.remote, get("/v1/services", Some(&home)))
            .await
            .status,
        StatusCode::OK
    );
    let listed = call(&gw.local, get("/v1/tokens", None)).await;
    let id = listed.json[0]["id"].as_i64().unwrap();
    let revoke = Request::builder()
        .method(Method::DELETE)
        .uri(format!("/v1/tokens/{id}"))
        .body(Body::empty())
        .unwrap();
    assert_eq!(call(&gw.local, revoke).await.status, StatusCode::NO_CONTENT);
    assert_eq!(
        call(&gw.remote, get("/v1/services", Some(&home)))
            .await
            .status,
        StatusCode::UNAUTHORIZED
    );
}

#[tokio::test]
async fn every_change_is_audited_with_its_caller_and_status() {
    let gw = gateway();
    let acme = token(&gw, "provider", Some("acme")).await;
    // A provider trying an operator's change: refused, and the attempt is in the log.
    let attempt = call(
        &gw.remote,
        post_json(
            "/v1/tokens",
            Some(&acme),
            serde_json::json!({ "realm": "operator" }),
        ),
    )
    .await;
    assert_eq!(attempt.status, StatusCode::FORBIDDEN);
    let log = gw.agent.audit_log(0, 100).unwrap();
    let entries: Vec<(String, String, u16)> = log
        .into_iter()
        .map(|e| (e.principal, e.action, e.status))
        .collect();
    assert_eq!(
        entries,
        vec![
            ("operator".to_string(), "POST /v1/tokens".to_string(), 201),
            (
                "provider:acme".to_string(),
                "POST /v1/tokens".to_string(),
                403
            ),
        ]
    );
}

#[tokio::test]
async fn a_remote_principal_is_held_to_its_request_rate() {
    let gw = gateway();
    let home = token(&gw, "home", None).await;
    // A burst of 100, then 20 a second: requests in a tight loop (far faster than 20 a
    // second) meet the limit, and never before the burst is spent.
    let mut answers = Vec::new();
    while answers.len() < 1000 {
        let answer = call(&gw.remote, get("/v1/services", Some(&home))).await;
        let limited = answer.status == StatusCode::TOO_MANY_REQUESTS;
        answers.push(answer);
        if limited {
            break;
        }
    }
    assert!(answers.len() > 100, "limited within the burst");
    let last = answers.last().unwrap();
    assert_eq!(last.status, StatusCode::TOO_MANY_REQUESTS, "never limited");
    assert_eq!(last.json["code"], "rate-limited");
    // The socket is root's: no rate limit there.
    for _ in 0..150 {
        assert_eq!(
            call(&gw.local, get("/v1/services", None)).await.status,
            StatusCode::OK
        );
    }
}

#[tokio::test]
async fn malformed_requests_get_json_errors_and_change_nothing() {
    let gw = gateway();
    let unknown = call(&gw.local, get("/v2/nothing", None)).await;
    assert_eq!(unknown.status, StatusCode::NOT_FOUND);
    assert_eq!(unknown.json["code"], "not-found");
    let wrong_method = Request::builder()
        .method(Method::PUT)
        .uri("/v1/services")
        .body(Body::empty())
        .unwrap();
    let answer = call(&gw.local, wrong_method).await;
    assert_eq!(answer.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(answer.json["code"], "method-not-allowed");
    let bad_token = call(
        &gw.local,
        post_json("/v1/tokens", None, serde_json::json!({ "realm": "root" })),
    )
    .await;
    assert_eq!(bad_token.status, StatusCode::BAD_REQUEST);
    assert!(bad_token.json["message"]
        .as_str()
        .unwrap()
        .contains("unknown realm `root`"));
    let empty_upload = Request::builder()
        .method(Method::POST)
        .uri("/v1/services")
        .body(Body::empty())
        .unwrap();
    let answer = call(&gw.local, empty_upload).await;
    assert_eq!(answer.status, StatusCode::BAD_REQUEST);
    assert_eq!(answer.json["code"], "bad-package");
    assert!(gw
        .agent
        .list(&agent::Principal::Operator)
        .unwrap()
        .is_empty());
    assert!(gw.agent.list_tokens().unwrap().is_empty());
}

/// A standard image (no label) as buildah writes one, in `dir`.
fn standard_image(dir: &std::path::Path) -> std::path::PathBuf {
    let root = dir.join("rootfs");
    std::fs::create_dir_all(root.join("bin")).unwrap();
    std::fs::write(root.join("bin/app"), "#!/bin/sh\n").unwrap();
    let config = serde_json::json!({ "Entrypoint": ["/bin/app"], "Env": ["MODE=prod"] });
    let tar = dir.join("image.tar");
    image::pack_image(&root, config.as_object().unwrap().clone(), &tar).unwrap();
    tar
}

fn upload(path: &str, package: &[u8], manifest: Option<&str>) -> Request<Body> {
    let mut req = Request::builder()
        .method(Method::POST)
        .uri(path)
        .header(header::CONTENT_TYPE, "application/octet-stream");
    if let Some(m) = manifest {
        req = req.header(api::MANIFEST_HEADER, m);
    }
    req.body(Body::from(package.to_vec())).unwrap()
}

#[tokio::test]
async fn a_standard_image_comes_with_its_manifest_in_a_header() {
    use base64::Engine as _;
    let gw = gateway();
    let dir = tempfile::tempdir().unwrap();
    let image = std::fs::read(standard_image(dir.path())).unwrap();
    let path = "/v1/services?dry_run=true&allow_unsigned=true";

    // Without the header, the image says nothing of how to run it: both ways out are named.
    let answer = call(&gw.local, upload(path, &image, None)).await;
    assert_eq!(answer.status, StatusCode::BAD_REQUEST);
    assert_eq!(answer.json["code"], "bad-package");
    let message = answer.json["message"].as_str().unwrap();
    assert!(
        message.contains("--manifest") && message.contains("X-SHG-Manifest"),
        "{message}"
    );

    // A header that is not base64 of text is named, with what to send instead.
    for bad in ["not base64!", "//79"] {
        let answer = call(&gw.local, upload(path, &image, Some(bad))).await;
        assert_eq!(answer.status, StatusCode::BAD_REQUEST, "{bad}");
        let message = answer.json["message"].as_str().unwrap();
        assert!(
            message.contains("x-shg-manifest header") && message.contains("base64-encoded"),
            "{message}"
        );
    }

    // With it, the manifest needs no [run]: the image's Entrypoint is the command.
    let manifest = "name = \"web\"\nversion = \"1.0.0\"\nprovider = \"acme\"\n";
    let encoded = base64::engine::general_purpose::STANDARD.encode(manifest);
    let answer = call(&gw.local, upload(path, &image, Some(&encoded))).await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.json);
    assert_eq!(answer.json["service"], "web");
    assert_eq!(answer.json["admitted"], true);
    // Unsigned, it is refused without the development override, saying how to sign the pair.
    let answer = call(
        &gw.local,
        upload("/v1/services?dry_run=true", &image, Some(&encoded)),
    )
    .await;
    assert_eq!(answer.status, StatusCode::FORBIDDEN);
    let message = answer.json["message"].as_str().unwrap();
    assert!(message.contains("shg sign IMAGE --manifest"), "{message}");
}

#[tokio::test]
async fn the_openapi_document_is_served_without_a_token() {
    let gw = gateway();
    let answer = call(&gw.remote, get("/openapi.json", None)).await;
    assert_eq!(answer.status, StatusCode::OK);
    assert!(answer.json["paths"]["/v1/services"].is_object());
}

#[tokio::test]
async fn a_console_session_changes_something_only_with_its_csrf_token() {
    let gw = gateway();
    let home = token(&gw, "home", None).await;
    let login = Request::builder()
        .method(Method::POST)
        .uri("/console/login")
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(serde_json::json!({ "token": home }).to_string()))
        .unwrap();
    let answer = call(&gw.remote, login).await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.json);
    assert_eq!(answer.json["realm"], "home");
    let csrf = answer.json["csrf"].as_str().unwrap().to_string();
    let cookie = answer.headers[header::SET_COOKIE]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_string();
    let with_cookie = |method: Method, path: &str, csrf: Option<&str>| {
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header(header::COOKIE, &cookie)
            .header(header::CONTENT_TYPE, "application/json");
        if let Some(c) = csrf {
            req = req.header("x-csrf-token", c);
        }
        req.body(Body::from("{\"priority\": 70}")).unwrap()
    };
    // Reading needs only the cookie.
    let read = call(&gw.remote, with_cookie(Method::GET, "/v1/services", None)).await;
    assert_eq!(read.status, StatusCode::OK);
    // A change without the CSRF token is refused before the handler runs.
    let forged = call(
        &gw.remote,
        with_cookie(Method::POST, "/v1/services/camera/priority", None),
    )
    .await;
    assert_eq!(forged.status, StatusCode::FORBIDDEN);
    assert!(forged.json["message"].as_str().unwrap().contains("CSRF"));
    // With it, the request reaches the handler (and the service is missing).
    let real = call(
        &gw.remote,
        with_cookie(Method::POST, "/v1/services/camera/priority", Some(&csrf)),
    )
    .await;
    assert_eq!(real.status, StatusCode::NOT_FOUND);
    // Log-out ends the session.
    call(
        &gw.remote,
        with_cookie(Method::POST, "/console/logout", Some(&csrf)),
    )
    .await;
    let after = call(&gw.remote, with_cookie(Method::GET, "/v1/services", None)).await;
    assert_eq!(after.status, StatusCode::UNAUTHORIZED);
}
