//! `automation --data DIR [--mqtt ADDR] [--http ADDR] [--limit-w W] [--report http://HOST:PORT/PATH]
//!            [--report-every SECONDS] [--share aggregates|readings]`

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::response::{Html, Json};
use axum::routing::get;
use axum::Router;
use bytes::Bytes;
use home_automation::{Home, Share};
use http_body_util::{BodyExt, Full};

const USAGE: &str = "usage: automation --data DIR [--mqtt 0.0.0.0:1883] [--http 0.0.0.0:8088] [--limit-w 2000] [--report http://HOST:PORT/PATH] [--report-every 60] [--share aggregates|readings]";

struct Args {
    data: PathBuf,
    mqtt: String,
    http: String,
    limit_w: f64,
    report: Option<String>,
    every: u64,
    share: Share,
}

fn main() {
    let args = match parse() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("automation: {e}\n{USAGE}");
            std::process::exit(2);
        }
    };
    if let Err(e) = run(args) {
        eprintln!("automation: {e}");
        std::process::exit(1);
    }
}

fn parse() -> Result<Args, String> {
    let mut a = Args {
        data: PathBuf::new(),
        mqtt: "0.0.0.0:1883".into(),
        http: "0.0.0.0:8088".into(),
        limit_w: 2000.0,
        report: None,
        every: 60,
        share: Share::Aggregates,
    };
    let mut data = None;
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--data" => data = Some(PathBuf::from(value)),
            "--mqtt" => a.mqtt = value,
            "--http" => a.http = value,
            "--limit-w" => {
                a.limit_w = value
                    .parse()
                    .map_err(|_| format!("`{value}` is not watts"))?
            }
            "--report" => a.report = Some(value),
            "--report-every" => {
                a.every = value
                    .parse()
                    .map_err(|_| format!("`{value}` is not seconds"))?
            }
            "--share" => {
                a.share = match value.as_str() {
                    "aggregates" => Share::Aggregates,
                    "readings" => Share::Readings,
                    other => return Err(format!("--share `{other}`: give aggregates or readings")),
                }
            }
            other => return Err(format!("unknown flag {other}")),
        }
    }
    a.data = data.ok_or("--data is missing")?;
    Ok(a)
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn broker_config(listen: &str) -> Result<rumqttd::Config, String> {
    let text = format!(
        "id = 0\n[router]\nmax_connections = 64\nmax_outgoing_packet_count = 200\n\
         max_segment_size = 1048576\nmax_segment_count = 10\n\
         [v4.1]\nname = \"home\"\nlisten = \"{listen}\"\nnext_connection_delay_ms = 1\n\
         [v4.1.connections]\nconnection_timeout_ms = 60000\nmax_payload_size = 4096\n\
         max_inflight_count = 100\ndynamic_filters = true\n"
    );
    toml::from_str(&text).map_err(|e| format!("broker configuration: {e}"))
}

fn run(args: Args) -> Result<(), String> {
    std::fs::create_dir_all(&args.data).map_err(|e| format!("{}: {e}", args.data.display()))?;
    let home = Arc::new(Mutex::new(Home::new(
        args.limit_w,
        args.data.join("history.csv"),
    )));

    // The broker, and the service's own link into it.
    let mut broker = rumqttd::Broker::new(broker_config(&args.mqtt)?);
    let (mut tx, mut rx) = broker.link("automation").map_err(|e| e.to_string())?;
    std::thread::spawn(move || {
        if let Err(e) = broker.start() {
            eprintln!("automation: the MQTT broker stopped: {e}");
            std::process::exit(1);
        }
    });
    tx.subscribe("home/+/power").map_err(|e| e.to_string())?;
    let rules = home.clone();
    std::thread::spawn(move || loop {
        match rx.recv() {
            Ok(Some(rumqttd::Notification::Forward(f))) => {
                let topic = String::from_utf8_lossy(&f.publish.topic).to_string();
                let off = rules.lock().unwrap_or_else(|p| p.into_inner()).message(
                    &topic,
                    &f.publish.payload,
                    now_ms(),
                );
                if let Some(device) = off {
                    eprintln!("automation: {device} is above the limit: switching it off");
                    let _ = tx.publish(format!("home/{device}/set"), "off");
                }
            }
            Ok(_) => {}
            Err(e) => {
                eprintln!("automation: lost the broker link: {e}");
                std::process::exit(1);
            }
        }
    });
    eprintln!(
        "automation: MQTT on {}, page on http://{}/, history in {}",
        args.mqtt,
        args.http,
        args.data.display()
    );

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    rt.block_on(async move {
        if let Some(url) = args.report.clone() {
            tokio::spawn(report(home.clone(), url, args.every, args.share));
        }
        let app = Router::new()
            .route("/", get(page))
            .route("/api/home", get(state))
            .with_state(home);
        let listener = tokio::net::TcpListener::bind(&args.http)
            .await
            .map_err(|e| format!("cannot listen on {}: {e}", args.http))?;
        axum::serve(listener, app).await.map_err(|e| e.to_string())
    })
}

type Shared = Arc<Mutex<Home>>;

async fn page(State(home): State<Shared>) -> Html<String> {
    Html(home.lock().unwrap_or_else(|p| p.into_inner()).page())
}

async fn state(State(home): State<Shared>) -> Json<serde_json::Value> {
    let h = home.lock().unwrap_or_else(|p| p.into_inner());
    Json(serde_json::json!({
        "limit_w": h.limit_w,
        "devices": h.latest,
        "actions": h.actions,
        "rejected": h.rejected,
    }))
}

/// Sends the provider what the household allows, every `every` seconds.
async fn report(home: Shared, url: String, every: u64, share: Share) {
    loop {
        tokio::time::sleep(Duration::from_secs(every.max(1))).await;
        let body = {
            let h = home.lock().unwrap_or_else(|p| p.into_inner());
            serde_json::to_vec(&h.report(share, now_ms())).unwrap_or_default()
        };
        if let Err(e) = post(&url, body).await {
            eprintln!("automation: cannot report to {url}: {e}");
        }
    }
}

async fn post(url: &str, body: Vec<u8>) -> Result<(), String> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| format!("`{url}` is not an http:// URL"))?;
    let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
    let stream = tokio::time::timeout(
        Duration::from_secs(10),
        tokio::net::TcpStream::connect(authority),
    )
    .await
    .map_err(|_| "timed out".to_string())?
    .map_err(|e| e.to_string())?;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    let req = hyper::Request::post(format!("/{path}"))
        .header("Host", authority)
        .header("Content-Type", "application/json")
        .body(Full::new(Bytes::from(body)))
        .map_err(|e| e.to_string())?;
    let answer = sender.send_request(req).await.map_err(|e| e.to_string())?;
    let status = answer.status();
    let _ = answer.into_body().collect().await;
    if status.is_success() {
        Ok(())
    } else {
        Err(format!("HTTP {status}"))
    }
}
