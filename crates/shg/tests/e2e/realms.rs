//! The three realms through the real API: an authorization matrix generated from the OpenAPI
//! document (every operation × operator, provider A, provider B, household, anonymous), over
//! HTTPS with real tokens; the audit log; revocation; the event stream; Prometheus metrics.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::Value;

use crate::harness::{eventually, Gateway};

const OPENAPI: &str = include_str!("../../../gateway/openapi.json");

fn sleeper(name: &str, provider: &str) -> String {
    format!(
        "name = \"{name}\"\nversion = \"1.0.0\"\nprovider = \"{provider}\"\n\n\
         [run]\ncommand = [\"/bin/sleep\", \"100000\"]\n"
    )
}

/// Who calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Who {
    Operator,
    /// acme: owns `cam`, the service every request names.
    Owner,
    /// vodco: owns `vod`, a rival of acme.
    Rival,
    Home,
    Anonymous,
}

/// What the rules say must happen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    /// Not refused: any status but 401, 403 and 404.
    Allowed,
    Forbidden,
    /// 404, exactly as for a service that does not exist.
    Hidden,
    Unauthorized,
}

/// The rules of the issue, written out per operation (by `operationId`) independently of the
/// agent's code.
fn expected(op: &str, who: Who) -> Expect {
    use Expect::*;
    if op == "openapi" {
        return Allowed;
    }
    if who == Who::Anonymous {
        return Unauthorized;
    }
    let on_service = matches!(
        op,
        "getService"
            | "removeService"
            | "start"
            | "stop"
            | "restart"
            | "setPriority"
            | "setLan"
            | "logs"
            | "exec"
            | "serviceMetrics"
            | "update"
            | "rollback"
    );
    match (op, who) {
        // Tokens and the audit log: the operator's.
        ("listTokens" | "createToken" | "revokeToken" | "audit", Who::Operator) => Allowed,
        ("listTokens" | "createToken" | "revokeToken" | "audit", _) => Forbidden,
        // The trust policy: the operator's.
        ("listTrust" | "addTrust" | "removeTrust", Who::Operator) => Allowed,
        ("listTrust" | "addTrust" | "removeTrust", _) => Forbidden,
        // Subscriptions are the household's (and the operator's).
        (
            "subscriptions" | "subscribe" | "unsubscribe" | "fleetCatalog",
            Who::Owner | Who::Rival,
        ) => Forbidden,
        // A pull names no provider until the image is in: any realm that may install.
        ("pull", _) => Allowed,
        // Capacity: operator and household.
        ("capacity", Who::Owner | Who::Rival) => Forbidden,
        // A rival's service does not exist for a provider.
        (_, Who::Rival) if on_service => Hidden,
        // Provider data: the provider's alone.
        ("logs" | "exec" | "serviceMetrics", Who::Operator | Who::Home) => Forbidden,
        // Priorities: the household's (and the operator's).
        ("setPriority", Who::Owner) => Forbidden,
        // The home's LAN: the household's alone to open.
        ("setLan", Who::Owner | Who::Operator) => Forbidden,
        // Installing a package of acme's: acme, the household, the operator.
        ("install", Who::Rival) => Forbidden,
        _ => Allowed,
    }
}

struct Callers {
    clients: BTreeMap<Who, api::Client>,
    rt: tokio::runtime::Runtime,
}

impl Callers {
    fn new(gw: &Gateway) -> Callers {
        let token = |args: &[&str]| gw.shg_ok(args).stdout.trim().to_string();
        let home = token(&["token", "create", "--home"]);
        let mut clients = BTreeMap::new();
        let remote = |t: Option<String>| {
            let options = api::Options {
                token: t,
                ca_cert: Some(gw.ca_cert()),
                ..Default::default()
            };
            api::Client::with_options(&gw.https_url(), &options).expect("client")
        };
        // The operator on the local socket, as root on the gateway; everyone else over HTTPS.
        clients.insert(
            Who::Operator,
            api::Client::new(gw.socket().to_str().unwrap()).unwrap(),
        );
        clients.insert(Who::Owner, remote(Some(gw.provider_token("acme"))));
        clients.insert(Who::Rival, remote(Some(gw.provider_token("vodco"))));
        clients.insert(Who::Home, remote(Some(home)));
        clients.insert(Who::Anonymous, remote(None));
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        Callers { clients, rt }
    }

    fn call(&self, who: Who, method: &str, uri: &str, body: Option<Vec<u8>>) -> (u16, Vec<u8>) {
        self.rt
            .block_on(self.clients[&who].raw(method, uri, body))
            .unwrap_or_else(|e| panic!("{who:?} {method} {uri}: {e}"))
    }
}

/// Puts `cam` back as the matrix expects it: installed and running.
fn restore(gw: &Gateway, cam: &std::path::Path) {
    if gw.svc("cam").is_none() {
        gw.shg_ok(&["install", cam.to_str().unwrap()]);
    }
    if gw.svc("cam").unwrap().state != "running" {
        gw.shg_ok(&["start", "cam"]);
    }
    gw.wait_running("cam");
}

#[test]
fn every_operation_answers_each_realm_by_the_rules() {
    let gw = Gateway::start_listening();
    let cam = gw.package("cam", &sleeper("cam", "acme"), &[]);
    gw.shg_ok(&["install", cam.to_str().unwrap()]);
    gw.install("vod", &sleeper("vod", "vodco"), &[]);
    gw.wait_running("cam");
    let callers = Callers::new(&gw);
    let probe = std::fs::read(gw.package("probe", &sleeper("probe", "acme"), &[])).unwrap();

    let doc: Value = serde_json::from_str(OPENAPI).unwrap();
    let mut checked = 0;
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            if method == "parameters" {
                continue;
            }
            let id = op["operationId"].as_str().unwrap();
            for who in [
                Who::Operator,
                Who::Owner,
                Who::Rival,
                Who::Home,
                Who::Anonymous,
            ] {
                // A live token to revoke, made fresh for each caller.
                let victim = gw.shg_ok(&["token", "create", "--home", "--json"]).stdout;
                let victim: Value = serde_json::from_str(&victim).unwrap();
                // And a trusted key to remove.
                let keys = gw.work.join(format!("victim-{checked}"));
                std::fs::create_dir_all(&keys).unwrap();
                let made = gw.shg_ok(&[
                    "key",
                    "gen",
                    "victim",
                    "--json",
                    "--dir",
                    keys.to_str().unwrap(),
                ]);
                let made: Value = serde_json::from_str(&made.stdout).unwrap();
                let public = made["public_key"].as_str().unwrap().to_string();
                gw.shg_ok(&["trust", "add", "--provider", "victim", &public]);
                let uri = path
                    .replace("{name}", "cam")
                    .replace("{id}", &victim["id"].to_string())
                    .replace("{key_id}", made["key_id"].as_str().unwrap());
                let trust_body = serde_json::to_vec(&serde_json::json!({
                    "provider": "victim",
                    "public_key": std::fs::read_to_string(&public).unwrap(),
                }))
                .unwrap();
                let (uri, body) = match id {
                    // Dry runs: the authorization is what is under test, not a new service.
                    "install" => (format!("{uri}?dry_run=true"), Some(probe.clone())),
                    // Another service's package: refused after the authorization.
                    "update" => (uri, Some(probe.clone())),
                    "addTrust" => (uri, Some(trust_body)),
                    // Nothing listens there: the pull fails after the authorization.
                    "pull" => (
                        uri,
                        Some(br#"{"reference":"127.0.0.1:9/none/none:1"}"#.to_vec()),
                    ),
                    "setPriority" => (uri, Some(br#"{"priority":60}"#.to_vec())),
                    "setLan" => (uri, Some(br#"{"hosts":["192.168.1.20"]}"#.to_vec())),
                    "exec" => (uri, Some(br#"{"command":["true"]}"#.to_vec())),
                    "createToken" => (uri, Some(br#"{"realm":"home"}"#.to_vec())),
                    _ => (uri, None),
                };
                // Refused before its body is read, an anonymous call sends none.
                let body = body.filter(|_| who != Who::Anonymous);
                let (status, reply) = callers.call(who, &method.to_uppercase(), &uri, body);
                let want = expected(id, who);
                let text = String::from_utf8_lossy(&reply);
                let ok = match want {
                    Expect::Allowed => ![401, 403, 404].contains(&status),
                    Expect::Forbidden => status == 403,
                    Expect::Hidden => status == 404,
                    Expect::Unauthorized => status == 401,
                };
                assert!(
                    ok,
                    "{id} ({method} {uri}) as {who:?}: want {want:?}, got {status}: {text}"
                );
                if want == Expect::Hidden {
                    // The very answer a missing service gets: nothing tells them apart.
                    let (missing, _) = callers.call(
                        who,
                        &method.to_uppercase(),
                        &uri.replace("/cam", "/nosuch"),
                        None,
                    );
                    assert_eq!(missing, 404);
                    assert!(text.contains("no service named `cam`"), "{text}");
                }
                restore(&gw, &cam);
                checked += 1;
            }
        }
    }
    assert_eq!(
        checked,
        32 * 5,
        "every operation of the document was checked"
    );
}

#[test]
fn lists_streams_and_metrics_show_each_realm_only_its_own() {
    let gw = Gateway::start_listening();
    gw.install("cam", &sleeper("cam", "acme"), &[]);
    gw.install("vod", &sleeper("vod", "vodco"), &[]);
    gw.wait_running("cam");
    gw.wait_running("vod");
    let callers = Callers::new(&gw);
    let json = |who: Who, uri: &str| -> Value {
        let (status, body) = callers.call(who, "GET", uri, None);
        assert_eq!(
            status,
            200,
            "{who:?} {uri}: {}",
            String::from_utf8_lossy(&body)
        );
        serde_json::from_slice(&body).unwrap()
    };
    let names = |v: &Value| -> Vec<String> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|s| s["name"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(names(&json(Who::Owner, "/v1/services")), ["cam"]);
    assert_eq!(names(&json(Who::Rival, "/v1/services")), ["vod"]);
    assert_eq!(names(&json(Who::Home, "/v1/services")), ["cam", "vod"]);
    let stats = json(Who::Owner, "/v1/stats");
    assert_eq!(names(&stats["services"]), ["cam"]);
    assert!(
        stats["gateway"].is_null(),
        "a provider sees no gateway totals"
    );
    assert!(json(Who::Home, "/v1/stats")["gateway"]["memory"]["capacity"].is_u64());

    let events = json(Who::Owner, "/v1/events?limit=1000");
    let services: Vec<&str> = events
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["service"].as_str().unwrap_or("(gateway)"))
        .collect();
    assert!(services.contains(&"cam"), "{services:?}");
    assert!(services.iter().all(|s| *s == "cam"), "{services:?}");
    let rival_asks = json(Who::Rival, "/v1/events?service=cam");
    assert_eq!(
        rival_asks,
        serde_json::json!([]),
        "as for a name never used"
    );

    let (_, metrics) = callers.call(Who::Owner, "GET", "/metrics", None);
    let metrics = String::from_utf8(metrics).unwrap();
    assert!(
        metrics.contains("shg_service_up{service=\"cam\",provider=\"acme\"} 1"),
        "{metrics}"
    );
    assert!(!metrics.contains("vod"), "{metrics}");
    assert!(!metrics.contains("shg_gateway_"), "{metrics}");

    // The event stream, as the owner, over HTTPS: it sees its own service stop, not the rival's.
    let stream = gw.spawn_shg_as(
        &[
            "--gateway",
            &gw.https_url(),
            "--ca-cert",
            gw.ca_cert().to_str().unwrap(),
            "events",
            "--follow",
            "--json",
        ],
        &gw.provider_token("acme"),
    );
    std::thread::sleep(Duration::from_millis(500));
    gw.shg_ok(&["stop", "vod"]);
    gw.shg_ok(&["stop", "cam"]);
    let seen = eventually(
        "the stream to show `cam` stopping",
        Duration::from_secs(10),
        || {
            let text = std::fs::read_to_string(&stream.1).unwrap_or_default();
            text.contains("\"kind\":\"stopped\"").then_some(text)
        },
    );
    assert!(seen.contains("\"service\":\"cam\""), "{seen}");
    assert!(!seen.contains("vod"), "{seen}");
    drop(stream);

    // Every change went into the audit log with who made it; a revoked token stops working.
    let audit = gw.shg_ok(&["audit", "--json"]).stdout;
    let audit: Value = serde_json::from_str(&audit).unwrap();
    assert!(
        audit
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a["principal"] == "operator"
                && a["action"] == "POST /v1/services/cam/stop"
                && a["status"] == 200),
        "{audit}"
    );
    let list = gw.shg_ok(&["token", "list", "--json"]).stdout;
    let list: Value = serde_json::from_str(&list).unwrap();
    assert!(
        !list.to_string().contains("shg_"),
        "tokens are never listed: {list}"
    );
    let home_id = list
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["realm"] == "home")
        .unwrap()["id"]
        .to_string();
    gw.shg_ok(&["token", "revoke", &home_id]);
    let (status, body) = callers.call(Who::Home, "GET", "/v1/services", None);
    assert_eq!(status, 401, "{}", String::from_utf8_lossy(&body));
}

#[test]
fn promtool_accepts_the_metrics_and_prometheus_scrapes_them() {
    let gw = Gateway::start_listening();
    gw.install("cam", &sleeper("cam", "acme"), &[]);
    gw.wait_running("cam");
    // Let the sampler see the service once.
    std::thread::sleep(Duration::from_millis(1500));
    let text = gw.shg_ok(&["metrics"]).stdout;
    assert!(
        text.contains("shg_service_memory_bytes{service=\"cam\""),
        "{text}"
    );
    let metrics_file = gw.work.join("metrics.txt");
    std::fs::write(&metrics_file, &text).unwrap();
    let check = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!(
            "promtool check metrics < {}",
            metrics_file.display()
        ))
        .output()
        .expect("run promtool (scripts/setup.sh installs prometheus)");
    assert!(
        check.status.success(),
        "promtool check metrics: {}{}",
        String::from_utf8_lossy(&check.stdout),
        String::from_utf8_lossy(&check.stderr)
    );

    // A real Prometheus scrapes the agent over HTTPS with the household's token.
    let token = gw
        .shg_ok(&["token", "create", "--home"])
        .stdout
        .trim()
        .to_string();
    let token_file = gw.work.join("token");
    std::fs::write(&token_file, &token).unwrap();
    let port = testdata::free_port();
    let config = gw.work.join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: shg\n    scheme: https\n    \
             authorization:\n      credentials_file: {}\n    tls_config:\n      ca_file: {}\n    \
             static_configs:\n      - targets: ['{}']\n",
            token_file.display(),
            gw.ca_cert().display(),
            gw.listen.unwrap()
        ),
    )
    .unwrap();
    let prometheus = std::process::Command::new("prometheus")
        .arg(format!("--config.file={}", config.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            gw.work.join("tsdb").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(gw.work.join("prometheus.log")).unwrap())
        .spawn()
        .expect("run prometheus (scripts/setup.sh installs it)");
    let _prometheus = crate::harness::Background(prometheus);
    let query = "/api/v1/query?query=shg_service_up%7Bservice%3D%22cam%22%7D";
    let answer = eventually(
        "Prometheus to have scraped `cam`",
        Duration::from_secs(30),
        || {
            let text = http_get(port, query).ok()?;
            text.contains("\"service\":\"cam\"").then_some(text)
        },
    );
    assert!(answer.contains("\"1\"]"), "shg_service_up is 1: {answer}");
}

/// A plain HTTP/1.0 GET on loopback (Prometheus's own API); the body.
fn http_get(port: u16, path: &str) -> std::io::Result<String> {
    use std::io::{Read, Write};
    let mut conn = std::net::TcpStream::connect(("127.0.0.1", port))?;
    conn.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(conn, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")?;
    let mut reply = String::new();
    conn.read_to_string(&mut reply)?;
    Ok(reply
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_string())
        .unwrap_or_default())
}

/// schemathesis (from PyPI, installed by scripts/test-tools.sh) drives every operation of the
/// OpenAPI document with generated and boundary inputs as the household: no 5xx, no answer
/// outside the document (status, content type, schema).
#[test]
fn schemathesis_finds_no_server_error_and_no_answer_outside_the_document() {
    let schemathesis = std::path::Path::new("/opt/shg-test/venv/bin/schemathesis");
    assert!(
        schemathesis.exists(),
        "{} is missing: run scripts/test-tools.sh (scripts/test.sh does)",
        schemathesis.display()
    );
    let gw = Gateway::start_listening();
    // The document's example name, so calls on a service reach a real one.
    gw.install("camera", &sleeper("camera", "acme"), &[]);
    let token = gw
        .shg_ok(&["token", "create", "--home"])
        .stdout
        .trim()
        .to_string();
    let out = std::process::Command::new(schemathesis)
        .current_dir(&gw.work)
        .args(["run", concat!(env!("CARGO_MANIFEST_DIR"), "/../gateway/openapi.json")])
        .args(["--url", &gw.https_url()])
        .args(["-H", &format!("Authorization: Bearer {token}")])
        .arg("--tls-verify")
        .arg(gw.ca_cert())
        .args([
            "--checks",
            "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance",
            "--phases",
            "examples,coverage,fuzzing",
            "--max-examples",
            "10",
            "--rate-limit",
            "15/s",
            "--seed",
            "1",
            "--no-color",
        ])
        .output()
        .expect("run schemathesis");
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "schemathesis failed:\n{report}\n--- agent log\n{}",
        gw.agent_log()
    );
    assert!(report.contains("32 selected / 32 total"), "{report}");
}

/// An upload refused before its body is read (here: a query that does not parse) still gets
/// its answer: the agent reads what the client keeps sending instead of resetting the
/// connection under it. Python's `requests` writes the whole body before reading, so it is
/// the client that used to see "EOF occurred in violation of protocol".
#[test]
fn an_upload_refused_early_still_gets_its_answer_over_https() {
    let gw = Gateway::start_listening();
    let token = gw
        .shg_ok(&["token", "create", "--home"])
        .stdout
        .trim()
        .to_string();
    let script = r#"
import os, sys, requests
url, token, ca = sys.argv[1:4]
codes = []
for _ in range(5):
    r = requests.post(url + "/v1/services?start=maybe", data=os.urandom(3_000_000),
                      headers={"Authorization": "Bearer " + token,
                               "Content-Type": "application/octet-stream"}, verify=ca)
    codes.append(r.status_code)
print(",".join(map(str, codes)))
"#;
    let out = std::process::Command::new("/opt/shg-test/venv/bin/python")
        .args(["-c", script, &gw.https_url(), &token])
        .arg(gw.ca_cert())
        .output()
        .expect("run python from /opt/shg-test/venv (scripts/test-tools.sh)");
    assert!(
        out.status.success(),
        "{}\n--- agent log\n{}",
        String::from_utf8_lossy(&out.stderr),
        gw.agent_log()
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "400,400,400,400,400"
    );
}

#[test]
fn malformed_requests_get_a_clear_json_error_and_change_nothing() {
    let gw = Gateway::start();
    gw.install("cam", &sleeper("cam", "acme"), &[]);
    gw.wait_running("cam");
    let operator = api::Client::new(gw.socket().to_str().unwrap()).unwrap();
    let owner = api::Client::with_options(
        gw.socket().to_str().unwrap(),
        &api::Options {
            token: Some(gw.provider_token("acme")),
            ..Default::default()
        },
    )
    .unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let tokens_before = gw.shg_ok(&["token", "list", "--json"]).stdout;
    let huge = format!("{{\"priority\": 5, \"pad\": \"{}\"}}", "x".repeat(200_000));
    let cases: Vec<(&str, &str, Option<Vec<u8>>, &str)> = vec![
        (
            "POST",
            "/v1/services/cam/priority",
            Some(b"{".to_vec()),
            "priority request",
        ),
        (
            "POST",
            "/v1/services/cam/priority",
            Some(br#"{"priority":"high"}"#.to_vec()),
            "priority",
        ),
        (
            "POST",
            "/v1/services/cam/priority",
            Some(br#"{"priority":5,"extra":1}"#.to_vec()),
            "unknown field `extra`",
        ),
        (
            "POST",
            "/v1/services/cam/priority",
            Some(huge.into_bytes()),
            "length limit",
        ),
        (
            "POST",
            "/v1/services/cam/priority",
            Some(br#"{"priority":500}"#.to_vec()),
            "out of range",
        ),
        (
            "POST",
            "/v1/services/cam/exec",
            Some(br#"{"command":[]}"#.to_vec()),
            "`command` is empty",
        ),
        (
            "POST",
            "/v1/services/cam/exec",
            Some(br#"{"command":"ls"}"#.to_vec()),
            "exec request",
        ),
        (
            "POST",
            "/v1/tokens",
            Some(br#"{"realm":"king"}"#.to_vec()),
            "unknown realm `king`",
        ),
        (
            "POST",
            "/v1/tokens",
            Some(br#"{"realm":"provider"}"#.to_vec()),
            "needs the provider's name",
        ),
        (
            "POST",
            "/v1/tokens",
            Some(br#"{"realm":"home","admin":true}"#.to_vec()),
            "unknown field `admin`",
        ),
        ("GET", "/v1/events?limit=lots", None, "limit"),
        ("DELETE", "/v1/tokens/abc", None, "not a token id"),
        (
            "POST",
            "/v1/services/cam/start?dry_run=maybe",
            None,
            "dry_run",
        ),
        ("PUT", "/v1/services", None, "does not take that method"),
    ];
    for (method, uri, body, want) in cases {
        // Running commands is the provider's right; the rest is the operator's.
        let caller = if uri.ends_with("/exec") {
            &owner
        } else {
            &operator
        };
        let (status, reply) = rt.block_on(caller.raw(method, uri, body)).unwrap();
        let text = String::from_utf8_lossy(&reply);
        assert!(
            (400..500).contains(&status),
            "{method} {uri}: want a 4xx, got {status}: {text}"
        );
        let error: Value = serde_json::from_slice(&reply)
            .unwrap_or_else(|e| panic!("{method} {uri}: the error is not JSON ({e}): {text}"));
        assert!(error["code"].is_string(), "{text}");
        assert!(
            error["message"].as_str().unwrap().contains(want),
            "{method} {uri}: want `{want}` in {text}"
        );
    }
    let cam = gw.svc("cam").unwrap();
    assert_eq!(
        (cam.priority, cam.state.as_str()),
        (50, "running"),
        "nothing changed"
    );
    assert_eq!(
        gw.shg_ok(&["token", "list", "--json"]).stdout,
        tokens_before
    );
}

#[test]
fn a_registered_client_certificate_stands_in_for_a_token() {
    let gw = Gateway::start_listening();
    gw.install("cam", &sleeper("cam", "acme"), &[]);
    gw.install("vod", &sleeper("vod", "vodco"), &[]);
    // The provider's own key pair; the operator registers only the certificate.
    let made = rcgen::generate_simple_self_signed(vec!["acme-client".to_string()]).unwrap();
    let (cert, key) = (gw.work.join("acme.pem"), gw.work.join("acme.key"));
    std::fs::write(&cert, made.cert.pem()).unwrap();
    std::fs::write(&key, made.key_pair.serialize_pem()).unwrap();
    let ps = |cert: &std::path::Path, key: &std::path::Path| {
        gw.shg(&[
            "--gateway",
            &gw.https_url(),
            "--ca-cert",
            gw.ca_cert().to_str().unwrap(),
            "--client-cert",
            cert.to_str().unwrap(),
            "--client-key",
            key.to_str().unwrap(),
            "ps",
            "--json",
        ])
    };
    let unknown = ps(&cert, &key);
    assert!(!unknown.ok(), "{unknown}");
    assert!(unknown.stderr.contains("is not registered"), "{unknown}");

    let registered = gw.shg_ok(&[
        "token",
        "create",
        "--provider",
        "acme",
        "--cert",
        cert.to_str().unwrap(),
    ]);
    assert!(
        registered.stdout.contains("client certificate sha256"),
        "{registered}"
    );
    let seen = ps(&cert, &key);
    assert!(seen.ok(), "{seen}");
    let names: Vec<Value> = serde_json::from_str(&seen.stdout).unwrap();
    assert_eq!(names.len(), 1, "{seen}");
    assert_eq!(names[0]["name"], "cam", "acme sees its own service only");

    // Another key with the same name is another certificate: not registered.
    let other = rcgen::generate_simple_self_signed(vec!["acme-client".to_string()]).unwrap();
    let (cert2, key2) = (gw.work.join("other.pem"), gw.work.join("other.key"));
    std::fs::write(&cert2, other.cert.pem()).unwrap();
    std::fs::write(&key2, other.key_pair.serialize_pem()).unwrap();
    assert!(!ps(&cert2, &key2).ok());
    // The registered certificate with the wrong key fails the handshake itself.
    assert!(!ps(&cert, &key2).ok());

    let list: Value =
        serde_json::from_str(&gw.shg_ok(&["token", "list", "--json"]).stdout).unwrap();
    let id = list
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["kind"] == "client-cert")
        .unwrap()["id"]
        .to_string();
    gw.shg_ok(&["token", "revoke", &id]);
    assert!(!ps(&cert, &key).ok(), "revoked");
}

#[test]
fn revoking_a_token_ends_its_open_streams() {
    let gw = Gateway::start_listening();
    gw.install("cam", &sleeper("cam", "acme"), &[]);
    let made: Value =
        serde_json::from_str(&gw.shg_ok(&["token", "create", "--home", "--json"]).stdout).unwrap();
    let token = made["token"].as_str().unwrap();
    let (mut stream, _) = gw.spawn_shg_as(
        &[
            "--gateway",
            &gw.https_url(),
            "--ca-cert",
            gw.ca_cert().to_str().unwrap(),
            "events",
            "--follow",
        ],
        token,
    );
    std::thread::sleep(Duration::from_secs(1));
    assert!(stream.0.try_wait().unwrap().is_none(), "the stream is open");
    gw.shg_ok(&["token", "revoke", &made["id"].to_string()]);
    eventually("the stream to end", Duration::from_secs(15), || {
        stream.0.try_wait().unwrap()
    });
}
