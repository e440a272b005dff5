//! The `arcade` binary as lobby and two gateways, each its own process on loopback: a player
//! of the first gateway walks into the second's stripe and back, steered through its own
//! gateway all along, and seen by it without a jump; garbage from players and from would-be
//! gateways is refused and the game goes on.

use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

const ARCADE: &str = env!("CARGO_BIN_EXE_arcade");

struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

use testdata::free_port;

fn spawn(args: &[&str]) -> Proc {
    Proc(
        Command::new(ARCADE)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    )
}

/// `curl`: (status, body).
fn call(method: &str, url: &str, body: Option<&str>) -> (u16, String) {
    call_as(None, method, url, body)
}

/// `curl` with `key` as its bearer credential, as a gateway calls another: (status, body).
fn call_as(key: Option<&str>, method: &str, url: &str, body: Option<&str>) -> (u16, String) {
    let mut args = vec!["-s", "-m", "5", "-X", method, "-w", "\n%{http_code}"];
    let auth = key.map(|k| format!("authorization: Bearer {k}"));
    if let Some(auth) = &auth {
        args.extend_from_slice(&["-H", auth]);
    }
    if let Some(body) = body {
        args.extend_from_slice(&["-H", "content-type: application/json", "-d", body]);
    }
    args.push(url);
    let out: Output = Command::new("curl").args(&args).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (code.parse().unwrap_or(0), body.to_string())
}

fn json(url: &str) -> Option<Value> {
    json_as(None, url)
}

fn json_as(key: Option<&str>, url: &str) -> Option<Value> {
    let (code, body) = call_as(key, "GET", url, None);
    (code == 200)
        .then(|| serde_json::from_str(&body).ok())
        .flatten()
}

fn until<T>(what: &str, limit: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_player_crosses_into_the_next_gateway_and_back_without_a_jump() {
    let lobby_port = free_port();
    let lobby_url = format!("http://127.0.0.1:{lobby_port}");
    let _lobby = spawn(&[
        "lobby",
        "--parts",
        "2",
        "--listen",
        &format!("127.0.0.1:{lobby_port}"),
    ]);
    let mut lan = Vec::new();
    let mut wan = Vec::new();
    let mut gateways = Vec::new();
    let dir = tempfile::tempdir().unwrap();
    let mut keys = Vec::new();
    // One after the other, so that the first to join is part 0.
    for _ in 0..2 {
        let (l, w) = (free_port(), free_port());
        let part = gateways.len();
        let key_file = dir.path().join(format!("gateway-{part}.key"));
        gateways.push(spawn(&[
            "gateway",
            "--lobby",
            &lobby_url,
            "--lan",
            &format!("127.0.0.1:{l}"),
            "--wan",
            &format!("127.0.0.1:{w}"),
            "--key-file",
            key_file.to_str().unwrap(),
        ]));
        until("the gateway to join", Duration::from_secs(10), || {
            let v = json(&format!("{lobby_url}/parts"))?;
            (v["urls"].as_array()?.len() == part + 1).then_some(())
        });
        // What the gateway keeps (made at its first start), and gave the lobby the hash of.
        let key = std::fs::read_to_string(&key_file)
            .unwrap()
            .trim()
            .to_string();
        assert_eq!(key.len(), 64, "{key}");
        keys.push(key);
        lan.push(format!("http://127.0.0.1:{l}"));
        wan.push(format!("http://127.0.0.1:{w}"));
    }
    until(
        "each gateway to show the whole maze",
        Duration::from_secs(10),
        || {
            lan.iter()
                .all(|l| {
                    json(&format!("{l}/world")).is_some_and(|w| {
                        w["parts"]
                            .as_array()
                            .is_some_and(|p| p.iter().all(|p| p["shown"] == true))
                    })
                })
                .then_some(())
        },
    );

    let (code, body) = call(
        "POST",
        &format!("{}/join", lan[0]),
        Some(r#"{"name":"ann"}"#),
    );
    assert_eq!(code, 200, "{body}");
    let me: Value = serde_json::from_str(&body).unwrap();
    let (id, key) = (me["id"].as_str().unwrap(), me["key"].as_str().unwrap());
    assert_eq!(me["part"], 0);
    let steer = |dir: &str| {
        let body = format!(r#"{{"id":"{id}","key":"{key}","dir":"{dir}"}}"#);
        call("POST", &format!("{}/input", lan[0]), Some(&body))
    };
    assert_eq!(steer("right").0, 204);

    // Watched from the player's own gateway, as its page does: every sighting.
    let border = 24;
    let mut track: Vec<(Instant, i64, i64, u64)> = Vec::new();
    let mut watch = |stop: &dyn Fn(i64) -> bool| {
        until("the player to get there", Duration::from_secs(20), || {
            let w = json(&format!("{}/world", lan[0]))?;
            if let Some(p) = w["players"].as_array()?.iter().find(|p| p["id"] == id) {
                let (x, y, seq) = (p["x"].as_i64()?, p["y"].as_i64()?, p["seq"].as_u64()?);
                track.push((Instant::now(), x, y, seq));
                return stop(x).then_some(());
            }
            None
        });
    };
    watch(&|x| x >= border + 3);
    // The second gateway holds the player now; the first does not.
    // Read as the other gateway reads it: from its address, with its key.
    let east = json_as(Some(&keys[0]), &format!("{}/view", wan[1])).unwrap();
    assert!(
        east["players"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["id"] == id),
        "{east}"
    );
    let west = json_as(Some(&keys[1]), &format!("{}/view", wan[0])).unwrap();
    assert!(!west["players"]
        .as_array()
        .unwrap()
        .iter()
        .any(|p| p["id"] == id));

    // Steered through its own gateway still: back west, home again.
    assert_eq!(steer("left").0, 204);
    watch(&|x| x <= border - 3);
    let west = json_as(Some(&keys[1]), &format!("{}/view", wan[0])).unwrap();
    assert!(west["players"]
        .as_array()
        .unwrap()
        .iter()
        .any(|p| p["id"] == id));

    // No jump: between two sightings the player moved at most one cell a move, moves only
    // forward; and it was never out of sight for long.
    for pair in track.windows(2) {
        let ((t0, x0, y0, s0), (t1, x1, y1, s1)) = (pair[0], pair[1]);
        assert!(s1 >= s0, "an older sighting after a newer one: {pair:?}");
        assert!(
            (x1 - x0).abs() + (y1 - y0).abs() <= (s1 - s0) as i64,
            "a jump: {pair:?}"
        );
        assert!(
            t1 - t0 < Duration::from_millis(600),
            "out of sight for {:?}",
            t1 - t0
        );
    }
    assert!(track.iter().any(|s| s.1 >= border) && track.iter().any(|s| s.1 < border));
    let score = json(&format!("{}/world", lan[0])).unwrap()["players"][0]["score"]
        .as_u64()
        .unwrap();
    assert!(score >= 20, "pellets on both sides were eaten: {score}");

    // Garbage from a player's browser gets a refusal that says why.
    for (path, body, want) in [
        ("/join", "not json", 400),
        ("/join", r#"{"name":"<script>alert(1)</script>"}"#, 400),
        ("/join", r#"{"name":""}"#, 400),
        ("/input", r#"{"id":"x","key":"y","dir":"sideways"}"#, 400),
        (
            "/input",
            &format!(r#"{{"id":"{id}","key":"{}","dir":"up"}}"#, "0".repeat(32)),
            403,
        ),
        (
            "/input",
            &format!(r#"{{"id":"ffffffffffffffff","key":"{key}","dir":"up"}}"#),
            404,
        ),
    ] {
        let (code, text) = call("POST", &format!("{}{path}", lan[0]), Some(body));
        assert_eq!(code, want, "{path} {body}: {text}");
        assert!(text.contains("error"), "{text}");
    }
    let big = format!(r#"{{"name":"{}"}}"#, "a".repeat(10_000));
    assert_eq!(call("POST", &format!("{}/join", lan[0]), Some(&big)).0, 413);
    // A gateway's WAN side answers only a gateway's key: none, or one it did not join with,
    // gets a refusal that says so, even from a gateway's address.
    let (code, text) = call("GET", &format!("{}/view", wan[1]), None);
    assert_eq!(code, 403, "{text}");
    assert!(text.contains("no gateway key"), "{text}");
    let (code, text) = call_as(
        Some(&"0".repeat(64)),
        "GET",
        &format!("{}/view", wan[1]),
        None,
    );
    assert_eq!(code, 403, "{text}");
    assert!(
        text.contains("with the key it joined the lobby with"),
        "{text}"
    );
    // A gateway's own key does not pass for another's hash: the lobby lists hashes only.
    let parts = json(&format!("{lobby_url}/parts")).unwrap();
    let hash = parts["key_hashes"][0].as_str().unwrap().to_string();
    assert!(!keys.contains(&hash));
    assert_eq!(
        call_as(Some(&hash), "GET", &format!("{}/view", wan[1]), None).0,
        403
    );
    // Joining again from a gateway's address and port: with its key's hash, its own part
    // back; with another key (any device behind the same home's NAT), refused.
    let port0 = wan[0].rsplit_once(':').unwrap().1.to_string();
    let rejoin = |hash: &str| {
        let body = format!(r#"{{"port":{port0},"key_hash":"{hash}"}}"#);
        call("POST", &format!("{lobby_url}/join"), Some(&body))
    };
    let (code, text) = rejoin(&hash);
    assert_eq!(
        (
            code,
            serde_json::from_str::<Value>(&text).unwrap()["part"].as_u64()
        ),
        (200, Some(0)),
        "{text}"
    );
    let (code, text) = rejoin(&"0".repeat(64));
    assert_eq!(code, 409, "{text}");
    assert!(text.contains("--key-file"), "{text}");
    let (code, text) = rejoin("not a hash");
    assert_eq!(code, 400, "{text}");
    assert_eq!(
        json(&format!("{lobby_url}/parts")).unwrap()["key_hashes"][0],
        hash.as_str()
    );
    // And from a gateway gone wrong: garbage, a player dropped in the middle of the stripe.
    assert_eq!(
        call_as(
            Some(&keys[0]),
            "POST",
            &format!("{}/handoff", wan[1]),
            Some("{{{")
        )
        .0,
        400
    );
    let forged = format!(
        r#"{{"id":"aaaaaaaaaaaaaaaa","name":"mallory","x":40,"y":1,"dir":"left","score":5,"seq":1,"home":0,"key":"{}","want":"left"}}"#,
        "b".repeat(32)
    );
    let (code, text) = call_as(
        Some(&keys[0]),
        "POST",
        &format!("{}/handoff", wan[1]),
        Some(&forged),
    );
    assert_eq!(code, 400, "{text}");
    // Only the maze's gateways talk to a gateway's WAN side: from another address, nothing,
    // even with a gateway's key.
    let auth = format!("authorization: Bearer {}", keys[1]);
    let out = Command::new("curl")
        .args([
            "-s",
            "-m",
            "5",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "-H",
            &auth,
            "--interface",
            "127.0.0.2",
        ])
        .arg(format!("{}/view", wan[0]))
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "403");
    // The game goes on.
    assert!(json(&format!("{}/world", lan[1])).is_some());
    assert_eq!(steer("stop").0, 204);

    // Memory against the manifest's reservation (8 MiB): each gateway's own (anonymous)
    // memory after the game; its peak resident size, binary included, reported beside.
    for gateway in &gateways {
        let status = std::fs::read_to_string(format!("/proc/{}/status", gateway.0.id())).unwrap();
        let field = |name: &str| -> u64 {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
                .unwrap()
        };
        let (own, peak) = (field("RssAnon:"), field("VmHWM:"));
        eprintln!("arcade gateway: {own} KiB of its own, peak resident {peak} KiB");
        assert!(own < 8 * 1024, "the reservation is too small: {own} KiB");
    }
}
