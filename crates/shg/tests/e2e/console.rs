//! The web console in a real browser: headless Chromium driven over WebDriver (Debian's
//! `chromium` and `chromium-driver`), against a real agent over HTTPS. Each realm logs in with
//! its token and sees only what it may; the household installs from the catalog, sees a
//! refusal explained before installing, and reorders priorities; changes without the CSRF
//! token are refused. Screenshots of the main views go to `artifacts/console/` at the root of
//! the workspace (ignored by git).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::harness::{Background, Gateway};

/// How long the page may take to show something: CI runs four tests at once on two cores.
const WAIT: Duration = Duration::from_secs(60);
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// Where the screenshots go.
fn artifacts() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../artifacts/console");
    std::fs::create_dir_all(&dir).expect("create artifacts/console");
    dir
}

/// A chromedriver of our own and one headless Chromium session on it; both end on drop.
pub(crate) struct Browser {
    port: u16,
    /// The network namespace chromedriver and Chromium run in; None: the test's own.
    netns: Option<String>,
    session: String,
    _driver: Background,
    /// chromedriver's and Chromium's TMPDIR: their profile and scoped directories go here
    /// and are removed after both ended (fields drop in order), not left behind in /tmp.
    _tmp: tempfile::TempDir,
}

/// A connection to the loopback of network namespace `netns` (None: the test's own), made
/// from a thread that enters the namespace and ends; the socket stays in it.
fn loopback(netns: Option<&str>, port: u16) -> std::io::Result<TcpStream> {
    let Some(ns) = netns else {
        return TcpStream::connect(("127.0.0.1", port));
    };
    let path = format!("/var/run/netns/{ns}");
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                use std::os::fd::AsRawFd as _;
                let file = std::fs::File::open(&path)?;
                // SAFETY: setns(2) with a valid descriptor of a network namespace; it changes
                // the namespace of this short-lived thread only.
                if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                TcpStream::connect(("127.0.0.1", port))
            })
            .join()
            .unwrap_or_else(|_| Err(std::io::Error::other("the connecting thread panicked")))
    })
}

/// One HTTP/1.1 exchange with chromedriver on the loopback.
fn http(
    netns: Option<&str>,
    port: u16,
    method: &str,
    path: &str,
    body: Option<&Value>,
) -> Result<Value, String> {
    let mut tcp = loopback(netns, port).map_err(|e| e.to_string())?;
    tcp.set_read_timeout(Some(Duration::from_secs(120)))
        .map_err(|e| e.to_string())?;
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    tcp.write_all(request.as_bytes())
        .map_err(|e| e.to_string())?;
    // chromedriver keeps the connection open whatever we ask: read the head, then exactly
    // Content-Length bytes.
    let mut answer = Vec::new();
    let mut buf = [0u8; 64 * 1024];
    let (head_end, length) = loop {
        let n = tcp.read(&mut buf).map_err(|e| e.to_string())?;
        if n == 0 {
            return Err("chromedriver closed the connection early".into());
        }
        answer.extend_from_slice(&buf[..n]);
        if let Some(end) = answer.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&answer[..end]).to_ascii_lowercase();
            let length = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse::<usize>().ok())
                .ok_or_else(|| format!("chromedriver answered without a length: {head}"))?;
            break (end + 4, length);
        }
    };
    while answer.len() < head_end + length {
        let n = tcp.read(&mut buf).map_err(|e| e.to_string())?;
        if n == 0 {
            return Err("chromedriver closed the connection mid-answer".into());
        }
        answer.extend_from_slice(&buf[..n]);
    }
    let json = &answer[head_end..head_end + length];
    serde_json::from_slice(json).map_err(|e| {
        format!(
            "chromedriver's answer is not JSON: {e}: {}",
            String::from_utf8_lossy(json)
        )
    })
}

impl Browser {
    pub(crate) fn start() -> Browser {
        Browser::start_in(None)
    }

    /// A browser in network namespace `netns` (a household's, say), or the test's own.
    pub(crate) fn start_in(netns: Option<&str>) -> Browser {
        let port = testdata::free_port();
        let tmp = tempfile::tempdir().expect("a temporary directory for Chromium");
        let mut driver = match netns {
            Some(ns) => {
                let mut cmd = Command::new("ip");
                cmd.args(["netns", "exec", ns, "chromedriver"]);
                cmd
            }
            None => Command::new("chromedriver"),
        };
        let driver = driver
            .arg(format!("--port={port}"))
            .env("TMPDIR", tmp.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("run chromedriver (Debian's chromium-driver; scripts/setup.sh installs it)");
        let driver = Background(driver);
        crate::harness::eventually("chromedriver to answer", WAIT, || {
            http(netns, port, "GET", "/status", None)
                .ok()
                .filter(|s| s["value"]["ready"] == true)
        });
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            // The agent's self-made certificate.
            "acceptInsecureCerts": true,
            "goog:chromeOptions": {
                "binary": "/usr/bin/chromium",
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                         "--disable-dev-shm-usage", "--window-size=1280,1000"]
            }
        }}});
        let made =
            http(netns, port, "POST", "/session", Some(&caps)).expect("new WebDriver session");
        let session = made["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no WebDriver session: {made}"))
            .to_string();
        Browser {
            port,
            netns: netns.map(str::to_string),
            session,
            _driver: driver,
            _tmp: tmp,
        }
    }

    /// A WebDriver command on this session; Err holds WebDriver's error.
    fn cmd(&self, method: &str, path: &str, body: Option<Value>) -> Result<Value, String> {
        let answer = http(
            self.netns.as_deref(),
            self.port,
            method,
            &format!("/session/{}{path}", self.session),
            body.as_ref(),
        )?;
        match answer["value"].get("error") {
            Some(e) => Err(format!("{e}: {}", answer["value"]["message"])),
            None => Ok(answer["value"].clone()),
        }
    }

    pub(crate) fn go(&self, url: &str) {
        self.cmd("POST", "/url", Some(json!({ "url": url })))
            .expect("navigate");
    }

    /// Runs `script` (a function body; a returned promise is awaited) in the page.
    pub(crate) fn js(&self, script: &str) -> Value {
        self.cmd(
            "POST",
            "/execute/sync",
            Some(json!({"script": script, "args": []})),
        )
        .unwrap_or_else(|e| panic!("script failed: {e}\n{script}"))
    }

    /// Waits until `condition` (a JS expression) is true in the page.
    pub(crate) fn wait(&self, what: &str, condition: &str) {
        let script = format!("return !!({condition});");
        let deadline = Instant::now() + WAIT;
        loop {
            if self
                .cmd(
                    "POST",
                    "/execute/sync",
                    Some(json!({"script": script, "args": []})),
                )
                .is_ok_and(|v| v == true)
            {
                return;
            }
            if Instant::now() >= deadline {
                let text = self.js("return document.body.innerText;");
                panic!("timed out after {WAIT:?} waiting for {what} ({condition}); the page says:\n{text}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The element at `css`, waiting for it to exist.
    fn find(&self, css: &str) -> String {
        let deadline = Instant::now() + WAIT;
        loop {
            let found = self.cmd(
                "POST",
                "/element",
                Some(json!({"using": "css selector", "value": css})),
            );
            if let Ok(v) = found {
                return v[ELEMENT].as_str().expect("element id").to_string();
            }
            assert!(
                Instant::now() < deadline,
                "no element `{css}` within {WAIT:?}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Clicks `css` as a user would, once it is there, shown and enabled.
    pub(crate) fn click(&self, css: &str) {
        self.wait(
            &format!("`{css}` to be clickable"),
            &format!(
                "(() => {{ const e = document.querySelector({css:?}); \
                 return e && !e.disabled && e.offsetParent !== null; }})()"
            ),
        );
        let id = self.find(css);
        self.cmd("POST", &format!("/element/{id}/click"), Some(json!({})))
            .unwrap_or_else(|e| panic!("click `{css}`: {e}"));
    }

    pub(crate) fn type_into(&self, css: &str, text: &str) {
        let id = self.find(css);
        self.cmd(
            "POST",
            &format!("/element/{id}/value"),
            Some(json!({ "text": text })),
        )
        .unwrap_or_else(|e| panic!("type into `{css}`: {e}"));
    }

    fn text(&self, css: &str) -> String {
        self.js(&format!(
            "const e = document.querySelector({css:?}); return e ? e.innerText : null;"
        ))
        .as_str()
        .unwrap_or_default()
        .to_string()
    }

    pub(crate) fn screenshot(&self, name: &str) -> PathBuf {
        let shot = self.cmd("GET", "/screenshot", None).expect("screenshot");
        let png = base64_decode(shot.as_str().expect("base64 PNG"));
        let path = artifacts().join(name);
        std::fs::write(&path, png).expect("write the screenshot");
        eprintln!("screenshot: {}", path.display());
        path
    }

    fn window(&self, width: u32, height: u32) {
        self.cmd(
            "POST",
            "/window/rect",
            Some(json!({"width": width, "height": height})),
        )
        .expect("resize the window");
    }

    /// Logs in on the console's page with `token`, as a person would.
    pub(crate) fn login(&self, base: &str, token: &str, realm: &str) {
        self.go(&format!("{base}/"));
        self.wait(
            "the log-in form",
            "!document.getElementById('login').hidden",
        );
        self.type_into("#token", token);
        self.click("#login-button");
        self.wait(
            &format!("the {realm} view"),
            &format!("document.body.dataset.realm === '{realm}'"),
        );
        // The token went in a request body, never into the address.
        let url = self.js("return location.href;");
        assert_eq!(
            url,
            json!(format!("{base}/")),
            "the address after logging in"
        );
        assert_eq!(
            self.js("return document.cookie;"),
            json!(""),
            "the session cookie is HttpOnly: no script reads it"
        );
    }

    pub(crate) fn logout(&self) {
        self.click("#logout");
        self.wait(
            "the log-in form",
            "!document.getElementById('login').hidden",
        );
    }

    /// The status of `fetch(path, {method})` from the page, with the session cookie and
    /// without the CSRF header.
    pub(crate) fn fetch_status(&self, method: &str, path: &str) -> u64 {
        self.js(&format!(
            "return fetch({path:?}, {{method: {method:?}, credentials: 'same-origin'}}).then(r => r.status);"
        ))
        .as_u64()
        .expect("a status")
    }

    /// The service cards shown, top to bottom.
    fn cards(&self) -> Vec<String> {
        let v = self.js(
            "return [...document.querySelectorAll('#services .card')].map(c => c.dataset.service);",
        );
        serde_json::from_value(v).unwrap()
    }

    /// A running service's card once it shows `running` with measured memory.
    fn wait_card_running(&self, name: &str) {
        self.wait(
            &format!("`{name}` running with its use measured"),
            &format!(
                "(() => {{ const c = document.querySelector('[data-service=\"{name}\"]'); \
                 return c && c.querySelector('.state').textContent === 'running' \
                 && c.innerText.includes('used ·'); }})()"
            ),
        );
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // Ends Chromium; chromedriver itself is killed by its `Background`.
        let _ = http(
            self.netns.as_deref(),
            self.port,
            "DELETE",
            &format!("/session/{}", self.session),
            None,
        );
    }
}

fn base64_decode(text: &str) -> Vec<u8> {
    let value = |c: u8| match c {
        b'A'..=b'Z' => Some(c - b'A'),
        b'a'..=b'z' => Some(c - b'a' + 26),
        b'0'..=b'9' => Some(c - b'0' + 52),
        b'+' => Some(62),
        b'/' => Some(63),
        _ => None,
    };
    let (mut out, mut acc, mut bits) = (Vec::new(), 0u32, 0);
    for v in text.bytes().filter_map(value) {
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    out
}

fn sleeper(name: &str, provider: &str, memory: &str) -> String {
    format!(
        "name = \"{name}\"\nversion = \"1.0.0\"\nprovider = \"{provider}\"\n\
         description = \"{name} of {provider}\"\n\n\
         [run]\ncommand = [\"/bin/sh\", \"-c\", \"echo {name} says hello; exec sleep 100000\"]\n\n\
         [resources]\nmemory = {{ reserve = \"{memory}\", limit = \"96MiB\" }}\n\
         cpu = {{ reserve = 0.1, limit = 0.5 }}\nstorage = {{ reserve = \"16MiB\" }}\n"
    )
}

fn token(gw: &Gateway, realm: &str) -> String {
    let out = gw.shg_ok(&["token", "create", realm]);
    out.stdout.trim().to_string()
}

#[test]
fn each_realm_logs_in_and_sees_only_what_it_may() {
    let gw = Gateway::start_listening();
    gw.install("cam", &sleeper("cam", "acme", "16MiB"), &[]);
    gw.install("meter", &sleeper("meter", "voltwise", "16MiB"), &[]);
    let base = gw.https_url();
    let (home, operator, acme) = (
        token(&gw, "--home"),
        token(&gw, "--operator"),
        gw.provider_token("acme"),
    );
    let browser = Browser::start();

    // A wrong token gets a plain answer and no session.
    browser.go(&format!("{base}/"));
    browser.wait(
        "the log-in form",
        "!document.getElementById('login').hidden",
    );
    browser.type_into("#token", "shg_not-a-token");
    browser.click("#login-button");
    browser.wait(
        "the refusal",
        "document.getElementById('login-error').textContent.includes('not valid')",
    );

    // The household: every service, the capacity, the installer, priorities.
    browser.login(&base, &home, "home");
    browser.wait_card_running("cam");
    browser.wait_card_running("meter");
    browser.wait(
        "the capacity table",
        "document.querySelector('#capacity tr[data-resource=memory]')",
    );
    assert!(browser.js("return document.getElementById('tenants-panel').hidden;") == true);
    assert!(browser.js("return !document.getElementById('install-panel').hidden;") == true);
    assert!(browser.js("return !!document.querySelector('[data-service=cam] button.up');") == true);
    // The cookie alone changes nothing: a change needs the session's CSRF token.
    assert_eq!(browser.fetch_status("POST", "/v1/services/cam/stop"), 403);
    assert_eq!(gw.svc("cam").unwrap().state, "running");
    browser.screenshot("home-desktop.png");
    browser.window(390, 844);
    browser.wait(
        "the phone layout",
        "document.querySelector('#services .card').getBoundingClientRect().width < 390",
    );
    browser.screenshot("home-phone.png");
    browser.window(1280, 1000);
    // What the home page cost to load, as the browser counted it.
    let sizes = browser.js(
        "const n = performance.getEntriesByType('navigation')[0]; \
         const r = performance.getEntriesByType('resource'); \
         const own = r.filter(e => e.name.includes('/console/app.')); \
         return {page: n.transferSize, assets: own.reduce((s, e) => s + e.transferSize, 0), \
                 api: r.filter(e => !e.name.includes('/console/app.')).reduce((s, e) => s + e.transferSize, 0), \
                 decoded: n.decodedBodySize + own.reduce((s, e) => s + e.decodedBodySize, 0)};",
    );
    eprintln!("home page transferred: {sizes}");
    std::fs::write(artifacts().join("home-page-size.json"), sizes.to_string()).unwrap();
    browser.logout();
    assert_eq!(
        browser.fetch_status("GET", "/v1/services"),
        401,
        "logging out ends the session"
    );

    // A provider: its own service only, with its logs; no capacity.
    browser.login(&base, &acme, "provider");
    browser.wait_card_running("cam");
    assert_eq!(
        browser.cards(),
        vec!["cam"],
        "acme sees its own service only"
    );
    assert!(browser.js("return document.getElementById('capacity-panel').hidden;") == true);
    assert_eq!(
        browser.fetch_status("GET", "/v1/gateway/capacity"),
        403,
        "the console's session has the API's rules"
    );
    assert_eq!(browser.fetch_status("GET", "/v1/services/meter"), 404);
    browser.click("[data-service=cam] button.show-logs");
    browser.wait(
        "cam's logs",
        "document.querySelector('[data-service=cam] .logs').textContent.includes('cam says hello')",
    );
    browser.screenshot("provider.png");
    browser.logout();

    // The operator: capacity, tenants, every service's use; no logs, no buttons on services.
    browser.login(&base, &operator, "operator");
    browser.wait_card_running("cam");
    browser.wait_card_running("meter");
    browser.wait(
        "both tenants",
        "document.querySelector('#tenants tr[data-tenant=acme]') && \
         document.querySelector('#tenants tr[data-tenant=voltwise]')",
    );
    assert!(browser
        .text("#tenants tr[data-tenant=acme]")
        .contains("16 MiB"));
    assert!(browser.js("return document.querySelectorAll('#services button').length;") == 0);
    assert_eq!(browser.fetch_status("GET", "/v1/services/cam/logs"), 403);
    browser.wait(
        "the event stream",
        "document.querySelector('#events li[data-kind=started]')",
    );
    browser.screenshot("operator.png");

    // A revoked token ends its console sessions at once.
    let tokens: Vec<Value> =
        serde_json::from_str(&gw.shg_ok(&["token", "list", "--json"]).stdout).unwrap();
    let id = tokens
        .iter()
        .filter(|t| t["realm"] == "operator")
        .map(|t| t["id"].as_i64().unwrap())
        .max()
        .unwrap();
    gw.shg_ok(&["token", "revoke", &id.to_string()]);
    assert_eq!(browser.fetch_status("GET", "/v1/services"), 401);
    browser.wait(
        "the log-in form after the revocation",
        "!document.getElementById('login').hidden",
    );
}

/// 200 MiB of memory, 72 MiB kept for the system: 128 MiB for services.
const SMALL_GATEWAY: &str = r#"
[capacity]
cpu = 2.0
memory = "200MiB"
[reserve]
cpu = 0.0
memory = "72MiB"
[network]
enabled = false
"#;

#[test]
fn the_household_installs_sees_a_refusal_explained_and_reorders() {
    let mut gw = Gateway::start_listening();
    // Capacity is read at start: a small gateway, so a refusal is easy to provoke.
    std::fs::write(gw.dir.join("gateway.toml"), SMALL_GATEWAY).unwrap();
    gw.stop_agent();
    gw.restart_agent();
    gw.install("big", &sleeper("big", "vodco", "64MiB"), &[]);
    // The catalog: packages on the gateway's shelf, as `shg demo` leaves its samples.
    let web = gw.package("web", &sleeper("web", "acme", "32MiB"), &[]);
    std::fs::create_dir_all(gw.dir.join("samples")).unwrap();
    std::fs::copy(&web, gw.dir.join("samples/web.tar")).unwrap();
    let huge = gw.package("huge", &sleeper("huge", "acme", "80MiB"), &[]);
    let home = token(&gw, "--home");
    let base = gw.https_url();
    let browser = Browser::start();
    browser.login(&base, &home, "home");
    browser.wait_card_running("big");

    // From the catalog: the verdict comes first, then the install.
    assert!(browser.js("return document.getElementById('install').disabled;") == true);
    browser.click("[data-package=web] button.check");
    browser.wait(
        "web's verdict",
        "document.getElementById('verdict').textContent.includes('Fits')",
    );
    browser.click("#install");
    browser.wait_card_running("web");
    assert_eq!(gw.svc("web").unwrap().state, "running");

    // A package that does not fit: refused before anything happens, in plain words.
    browser.type_into("#package", huge.to_str().unwrap());
    browser.wait(
        "huge's refusal",
        "document.querySelector('#verdict.refused') && \
         document.getElementById('verdict').textContent.includes('Not enough room for huge')",
    );
    let verdict = browser.text("#verdict");
    assert!(verdict.contains("Memory: it needs 80 MiB"), "{verdict}");
    assert!(verdict.contains("short"), "{verdict}");
    assert!(browser.js("return document.getElementById('install').disabled;") == true);
    assert!(gw.svc("huge").is_none(), "a verdict installs nothing");
    browser.js("document.getElementById('install-panel').scrollIntoView();");
    browser.screenshot("refusal.png");

    // A refusal journaled by someone else's attempt shows up live, explained.
    let out = gw.shg(&["install", huge.to_str().unwrap()]);
    assert!(!out.ok(), "{out}");
    browser.wait(
        "the refusal in the event stream",
        "document.querySelector('#events li[data-kind=admission-refused] .explain')",
    );

    // Priorities by order: web moves above big, and the priorities say so.
    assert_eq!(browser.cards(), vec!["big", "web"]);
    browser.click("[data-service=web] button.up");
    browser.wait(
        "web on top",
        "document.querySelector('#services .card').dataset.service === 'web'",
    );
    // The move is over (its notice shown, the page refreshed) when its button is no longer
    // busy: a click before that can land where the notice then pushes the page down. (Not
    // "enabled": web is on top now, so its Up button stays disabled.)
    browser.wait(
        "the move up done",
        "!document.querySelector('[data-service=web] button.up').dataset.busy",
    );
    assert!(
        browser.js("return document.querySelector('[data-service=web] button.up').disabled;")
            == true,
        "the top card's Up button is disabled"
    );
    let (big, web) = (gw.svc("big").unwrap(), gw.svc("web").unwrap());
    assert!(web.priority > big.priority, "{web:?} {big:?}");
    browser.click("[data-service=web] button.down");
    browser.wait(
        "web below big again",
        "document.querySelector('#services .card').dataset.service === 'big'",
    );
    browser.wait(
        "the move down done",
        "!document.querySelector('[data-service=web] button.down').dataset.busy",
    );
    let (big, web) = (gw.svc("big").unwrap(), gw.svc("web").unwrap());
    assert!(web.priority < big.priority, "{web:?} {big:?}");

    // Stop and start, updated live.
    browser.click("[data-service=web] button.stop");
    browser.wait(
        "web stopped",
        "document.querySelector('[data-service=web] .state').textContent === 'stopped'",
    );
    browser.click("[data-service=web] button.start");
    browser.wait_card_running("web");
    browser.screenshot("home-installed.png");
}
