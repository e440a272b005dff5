//! The gateway's TR-369 (USP) agent, driven through a real mosquitto broker: by usp-js (a USP
//! controller from npm that no one here wrote) for the whole life of a service, and by raw
//! records for what a controller library would never send.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use rusp_lib::usp::mod_Body::OneOfmsg_body;
use rusp_lib::usp::mod_Response::OneOfresp_type;
use rusp_lib::usp_builder::{GetBuilder, MsgBuilder, RecordBuilder};
use serde_json::Value;

use crate::harness::{run_captured, Gateway};
use testdata::free_port;

const AGENT_ID: &str = "os::SHG-e2e";
const AGENT_TOPIC: &str = "usp/agent/e2e";
const CONTROLLER_ID: &str = "self::e2e-controller";
const CONTROLLER_TOPIC: &str = "usp/controller/e2e";

/// A mosquitto broker on a free loopback port (and, with TLS, a second port where it speaks
/// only TLS under a test CA), stopped when dropped.
struct Broker {
    child: Child,
    port: u16,
    /// The TLS port and the CA's certificate file.
    tls: Option<(u16, PathBuf)>,
    _dir: tempfile::TempDir,
}

impl Broker {
    fn start() -> Broker {
        Broker::start_with(false)
    }

    fn start_with(tls: bool) -> Broker {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let mut conf = format!(
            "per_listener_settings false\nallow_anonymous true\npersistence false\n\
             listener {port} 127.0.0.1\n"
        );
        let tls = tls.then(|| {
            let ca_key = rcgen::KeyPair::generate().unwrap();
            let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
            ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
            let ca = ca.self_signed(&ca_key).unwrap();
            let key = rcgen::KeyPair::generate().unwrap();
            let cert = rcgen::CertificateParams::new(vec!["localhost".to_string()])
                .unwrap()
                .signed_by(&key, &ca, &ca_key)
                .unwrap();
            let file = |name: &str, pem: String| {
                let path = dir.path().join(name);
                std::fs::write(&path, pem).unwrap();
                path
            };
            let ca_file = file("ca.pem", ca.pem());
            let cert_file = file("broker.pem", cert.pem());
            let key_file = file("broker.key", key.serialize_pem());
            let tls_port = free_port();
            conf.push_str(&format!(
                "listener {tls_port} 127.0.0.1\ncafile {}\ncertfile {}\nkeyfile {}\n",
                ca_file.display(),
                cert_file.display(),
                key_file.display()
            ));
            (tls_port, ca_file)
        });
        let conf_file = dir.path().join("mosquitto.conf");
        std::fs::write(&conf_file, conf).unwrap();
        let child = Command::new("mosquitto")
            .arg("-c")
            .arg(&conf_file)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("mosquitto (scripts/setup.sh installs it)");
        for port in std::iter::once(port).chain(tls.as_ref().map(|t| t.0)) {
            crate::harness::eventually("mosquitto to listen", Duration::from_secs(10), || {
                std::net::TcpStream::connect(("127.0.0.1", port)).ok()
            });
        }
        Broker {
            child,
            port,
            tls,
            _dir: dir,
        }
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn config(port: u16) -> String {
    config_for(&format!("mqtt://127.0.0.1:{port}"))
}

fn config_for(broker: &str) -> String {
    format!(
        "[usp]\nendpoint_id = \"{AGENT_ID}\"\nbroker = \"{broker}\"\n\
         topic = \"{AGENT_TOPIC}\"\ncontroller_id = \"{CONTROLLER_ID}\"\n\
         controller_topic = \"{CONTROLLER_TOPIC}\"\n"
    )
}

fn sleeper(name: &str) -> String {
    format!(
        "name = \"{name}\"\nversion = \"1.0.0\"\nprovider = \"acme\"\ndescription = \"sleeps\"\n\n\
         [run]\ncommand = [\"/bin/sleep\", \"100000\"]\n"
    )
}

/// Waits until the agent's USP side is subscribed: a Get answered.
fn wait_for_agent(broker: &Broker) {
    crate::harness::eventually("the USP agent to answer", Duration::from_secs(20), || {
        let answers = exchange(broker, &[get_record(AGENT_ID, CONTROLLER_ID, "ping")], 1, 2);
        answers.into_iter().next()
    });
}

#[test]
fn a_usp_controller_installs_lists_stops_starts_and_uninstalls_a_service_through_mosquitto() {
    let broker = Broker::start();
    let gw = Gateway::start_with_config(Some(&config(broker.port)));
    let package = gw.package("probe", &sleeper("probe"), &[]);
    let update = gw.package("probe-2", &sleeper("probe").replace("1.0.0", "2.0.0"), &[]);
    let unsigned = gw.package_unsigned("rogue", &sleeper("rogue"), &[]);
    let too_big = gw.package(
        "hog",
        &format!(
            "{}\n[resources]\nmemory = {{ reserve = \"4096GiB\" }}\n",
            sleeper("hog")
        ),
        &[],
    );
    wait_for_agent(&broker);

    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/e2e/usp/controller.js");
    let mut cmd = Command::new("node");
    cmd.arg(&script)
        .env("NODE_PATH", "/opt/shg-test/node/node_modules")
        .env("BROKER_PORT", broker.port.to_string())
        .env("AGENT_ID", AGENT_ID)
        .env("AGENT_TOPIC", AGENT_TOPIC)
        .env("CONTROLLER_ID", CONTROLLER_ID)
        .env("CONTROLLER_TOPIC", CONTROLLER_TOPIC)
        .env("PACKAGE_URL", format!("file://{}", package.display()))
        .env("UPDATE_URL", format!("file://{}", update.display()))
        .env("UNSIGNED_URL", format!("file://{}", unsigned.display()))
        .env("TOO_BIG_URL", format!("file://{}", too_big.display()));
    let out = run_captured(cmd, &gw.work, Duration::from_secs(180));
    let steps: BTreeMap<String, Value> = out
        .stdout
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter_map(|v| Some((v["step"].as_str()?.to_string(), v)))
        .collect();
    let context = format!("{out}\n--- agent ---\n{}", gw.agent_log());
    assert!(out.ok() && steps.contains_key("done"), "{context}");

    let dm = steps["supported"]["dm"].to_string();
    for name in [
        "Device.SoftwareModules.ExecutionUnit.{i}.",
        "InstallDU()",
        "SetRequestedState()",
        "DUStateChange!",
        "X_SHG_RestartCount",
    ] {
        assert!(dm.contains(name), "GetSupportedDM lists {name}: {dm}");
    }
    let ee = &steps["exec-env"]["ee"];
    assert_eq!(ee["Status"], "Up", "{context}");
    let memory: u64 = ee["AllocatedMemory"].as_str().unwrap().parse().unwrap();
    assert!(memory > 0, "{ee}");

    let instances = |v: &Value| v[0]["currInsts"].as_array().map_or(0, Vec::len);
    assert_eq!(instances(&steps["instances"]["units"]), 1, "{context}");
    let eu = &steps["active"]["eu"];
    assert_eq!(eu["Name"], "probe", "{context}");
    assert_eq!(eu["X_SHG_Provider"], "acme");
    assert_eq!(eu["EUID"], "acme/probe");
    assert_eq!(eu["RequestedState"], "Active");

    assert_eq!(steps["set-idle"]["status"], "Idle", "{context}");
    assert_eq!(steps["set-active"]["status"], "Active", "{context}");
    let changes: Vec<&str> = steps["changes"]["changes"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|c| c["paramValue"].as_str())
        .collect();
    let idle = changes.iter().position(|v| *v == "Idle");
    let active = changes.iter().rposition(|v| *v == "Active");
    assert!(
        idle.is_some() && active > idle,
        "the controller was told of Idle, then Active: {changes:?}"
    );

    assert_eq!(steps["updated"]["version"], "2.0.0", "{context}");
    assert_eq!(steps["updated"]["status"], "Active", "{context}");

    let bad = &steps["bad"]["bad"];
    let err = |k: &str| {
        bad[k]["err"]
            .as_str()
            .unwrap_or_else(|| panic!("{k} was not refused: {bad}"))
            .to_string()
    };
    assert!(err("state").contains("give Active or Idle"), "{bad}");
    assert!(
        err("path").contains("not in this agent's data model"),
        "{bad}"
    );
    assert!(err("set").contains("read-only"), "{bad}");
    assert!(
        err("set").contains("SetRequestedState()"),
        "the way out: {bad}"
    );
    assert!(
        err("install").contains("/nonexistent/package.tar"),
        "names the package: {bad}"
    );
    assert!(err("unsigned").contains("is unsigned"), "{bad}");
    assert!(
        err("tooBig").contains("memory") && err("tooBig").contains("short"),
        "admission's sentence: {bad}"
    );
    assert_eq!(bad["after"], "Active", "nothing changed: {bad}");

    assert_eq!(instances(&steps["uninstalled"]["units"]), 0, "{context}");
    let events = steps["events"]["events"].as_array().unwrap();
    let performed: Vec<(&str, &str)> = events
        .iter()
        .map(|e| {
            (
                e["OperationPerformed"].as_str().unwrap_or(""),
                e["CurrentState"].as_str().unwrap_or(""),
            )
        })
        .collect();
    assert!(performed.contains(&("Install", "Installed")), "{events:?}");
    assert!(
        performed.contains(&("Install", "Failed")),
        "the bad install too: {events:?}"
    );
    assert!(
        performed.contains(&("Uninstall", "Uninstalled")),
        "{events:?}"
    );
    let uninstall = events
        .iter()
        .find(|e| e["OperationPerformed"] == "Uninstall")
        .unwrap();
    assert_eq!(uninstall["Version"], "2.0.0", "{uninstall}");
    assert_eq!(
        uninstall["UUID"], events[0]["UUID"],
        "the same unit: {events:?}"
    );
    let created = steps["events"]["created"].as_array().unwrap();
    assert!(
        created.iter().any(|p| p
            .as_str()
            .unwrap()
            .starts_with("Device.SoftwareModules.ExecutionUnit.")),
        "an ObjectCreation for the new unit: {created:?}"
    );
    assert_eq!(
        instances(&steps["subscriptions"]["left"]),
        0,
        "usp-js deleted its subscriptions"
    );

    assert!(gw.ps().is_empty(), "the service is gone");
    let audit = gw.shg_ok(&["audit"]).stdout;
    assert!(
        audit.contains("usp:self::e2e-controller")
            && audit.contains("Device.SoftwareModules.InstallDU()")
            && audit.contains("Update()")
            && audit.contains("Uninstall()"),
        "every change is in the audit log under the controller's name:\n{audit}"
    );
}

#[test]
fn malformed_oversized_and_foreign_records_change_nothing_and_the_agent_keeps_serving() {
    let broker = Broker::start();
    let gw = Gateway::start_with_config(Some(&config(broker.port)));
    wait_for_agent(&broker);

    let garbage = b"\xff\xfe this is not a USP record".to_vec();
    let not_a_msg = record(AGENT_ID, CONTROLLER_ID, b"\x0a\xff\xff\xff".to_vec());
    let oversized = record(AGENT_ID, CONTROLLER_ID, vec![0x0a; 200 << 10]);
    let foreign = get_record(AGENT_ID, "self::intruder", "foreign");
    let after = get_record(AGENT_ID, CONTROLLER_ID, "after");
    let answers = exchange(
        &broker,
        &[garbage, not_a_msg, oversized, foreign, after],
        4,
        20,
    );

    let errors: Vec<(u32, String)> = answers
        .iter()
        .filter_map(|(_, msg)| match &msg.body.as_ref()?.msg_body {
            OneOfmsg_body::error(e) => Some((e.err_code, e.err_msg.clone())),
            _ => None,
        })
        .collect();
    assert!(
        errors
            .iter()
            .any(|(c, m)| *c == 7100 && m.contains("does not parse as a USP Record")),
        "{errors:?}"
    );
    assert!(
        errors
            .iter()
            .any(|(c, m)| *c == 7000 && m.contains("does not parse as a USP Msg")),
        "{errors:?}"
    );
    assert!(
        errors
            .iter()
            .any(|(c, m)| *c == 7000 && m.contains("larger than the 65536 bytes")),
        "{errors:?}"
    );
    assert_eq!(
        errors.len(),
        3,
        "the foreign endpoint gets no answer: {answers:?}"
    );
    let served = answers.iter().find(|(_, m)| m.msg_id() == "after");
    let endpoint = served.and_then(|(_, m)| match &m.body.as_ref()?.msg_body {
        OneOfmsg_body::response(r) => match &r.resp_type {
            OneOfresp_type::get_resp(g) => Some(
                g.req_path_results[0].resolved_path_results[0].result_params["EndpointID"].clone(),
            ),
            _ => None,
        },
        _ => None,
    });
    assert_eq!(
        endpoint.as_deref(),
        Some(AGENT_ID),
        "still serving: {answers:?}"
    );
    assert!(gw.ps().is_empty());
    let audit = gw.shg_ok(&["audit"]).stdout;
    assert!(
        audit.contains("self::intruder"),
        "the refused endpoint is in the audit log:\n{audit}"
    );
}

#[test]
fn the_agent_reaches_a_tls_broker_and_refuses_one_it_cannot_verify() {
    let broker = Broker::start_with(true);
    let (tls_port, ca) = broker.tls.clone().unwrap();
    let gw = Gateway::start_with_config(Some(&format!(
        "{}ca_cert = \"{}\"\n",
        config_for(&format!("mqtts://localhost:{tls_port}")),
        ca.display()
    )));
    // The test's own tools use the plain listener; the agent is only on the TLS one.
    wait_for_agent(&broker);
    drop(gw);

    // A CA that did not sign the broker's certificate: the agent never connects.
    let other = tempfile::tempdir().unwrap();
    let wrong_ca = other.path().join("other-ca.pem");
    std::fs::write(
        &wrong_ca,
        rcgen::generate_simple_self_signed(vec!["localhost".to_string()])
            .unwrap()
            .cert
            .pem(),
    )
    .unwrap();
    let gw = Gateway::start_with_config(Some(&format!(
        "{}ca_cert = \"{}\"\n",
        config_for(&format!("mqtts://localhost:{tls_port}")),
        wrong_ca.display()
    )));
    std::thread::sleep(Duration::from_secs(3));
    let answers = exchange(
        &broker,
        &[get_record(AGENT_ID, CONTROLLER_ID, "unverified")],
        1,
        3,
    );
    assert!(
        answers.is_empty(),
        "an unverified broker got the agent: {answers:?}"
    );
    let log = gw.agent_log();
    assert!(
        log.contains("USP: cannot reach the broker") && log.contains("certificate"),
        "the operator is told why:\n{log}"
    );
    assert!(gw.ps().is_empty());
}

/// A record of a Get of `Device.LocalAgent.EndpointID` with message id `id`.
fn get_record(to: &str, from: &str, id: &str) -> Vec<u8> {
    let body = GetBuilder::new()
        .with_params(vec!["Device.LocalAgent.EndpointID".into()])
        .build()
        .unwrap();
    let msg = MsgBuilder::new()
        .with_msg_id(id.into())
        .with_body(body)
        .build()
        .unwrap();
    record(to, from, msg.to_vec().unwrap())
}

/// A USP 1.3 record from `from` to `to` carrying `payload` (an encoded message, or not).
fn record(to: &str, from: &str, payload: Vec<u8>) -> Vec<u8> {
    RecordBuilder::new()
        .with_version("1.3".into())
        .with_to_id(to.into())
        .with_from_id(from.into())
        .with_no_session_context_payload_bytes(payload)
        .build()
        .unwrap()
        .to_vec()
        .unwrap()
}

/// Publishes `records` to the agent's topic and collects up to `expect` records the agent
/// sends the controller within `wait_s` seconds, decoded (record's to_id, message).
fn exchange(
    broker: &Broker,
    records: &[Vec<u8>],
    expect: usize,
    wait_s: u64,
) -> Vec<(String, rusp_lib::usp::Msg)> {
    listen(broker, expect, wait_s, || {
        let dir = tempfile::tempdir().unwrap();
        for (i, record) in records.iter().enumerate() {
            let file = dir.path().join(format!("r{i}"));
            std::fs::write(&file, record).unwrap();
            let status = Command::new("mosquitto_pub")
                .args([
                    "-h",
                    "127.0.0.1",
                    "-p",
                    &broker.port.to_string(),
                    "-t",
                    AGENT_TOPIC,
                    "-q",
                    "1",
                    "-f",
                ])
                .arg(&file)
                .status()
                .unwrap();
            assert!(status.success(), "mosquitto_pub");
        }
    })
}

/// Listens on the controller's topic while `action` runs, and collects up to `expect`
/// records the agent sends within `wait_s` seconds, decoded.
fn listen(
    broker: &Broker,
    expect: usize,
    wait_s: u64,
    action: impl FnOnce(),
) -> Vec<(String, rusp_lib::usp::Msg)> {
    let sub = Command::new("mosquitto_sub")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &broker.port.to_string(),
            "-t",
            CONTROLLER_TOPIC,
        ])
        .args([
            "-F",
            "%x",
            "-C",
            &expect.to_string(),
            "-W",
            &wait_s.to_string(),
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("mosquitto_sub (scripts/setup.sh installs mosquitto-clients)");
    // mosquitto_sub subscribes right after it connects.
    std::thread::sleep(Duration::from_millis(500));
    action();
    let out = sub.wait_with_output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|hex| {
            let bytes: Vec<u8> = (0..hex.len() / 2)
                .map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16))
                .collect::<Result<_, _>>()
                .ok()?;
            let record = rusp_lib::usp_decoder::try_decode_record(&bytes).ok()?;
            let payload = match record.record_type {
                rusp_lib::usp_record::mod_Record::OneOfrecord_type::no_session_context(p) => {
                    p.payload
                }
                _ => return None,
            };
            Some((
                record.to_id,
                rusp_lib::usp_decoder::try_decode_msg(&payload).ok()?,
            ))
        })
        .collect()
}

/// A persistent subscription survives the agent's restart, and the restart is told to the
/// controller as `Device.Boot!`.
#[test]
fn a_persistent_subscription_survives_a_restart_and_hears_boot() {
    use rusp_lib::usp_builder::{AddBuilder, CreateObjectBuilder};
    let broker = Broker::start();
    let mut gw = Gateway::start_with_config(Some(&config(broker.port)));
    wait_for_agent(&broker);
    let body = AddBuilder::new()
        .with_create_objs(vec![CreateObjectBuilder::new(
            "Device.LocalAgent.Subscription.".into(),
        )
        .with_param_settings(vec![
            ("Enable".into(), "true".into(), true),
            ("ID".into(), "boot-watch".into(), true),
            ("NotifType".into(), "Event".into(), true),
            ("ReferenceList".into(), "Device.Boot!".into(), true),
            ("Persistent".into(), "true".into(), true),
        ])])
        .build()
        .unwrap();
    let msg = MsgBuilder::new()
        .with_msg_id("add-boot".into())
        .with_body(body)
        .build()
        .unwrap();
    let add = record(AGENT_ID, CONTROLLER_ID, msg.to_vec().unwrap());
    let answers = exchange(&broker, &[add], 1, 10);
    let added = answers.iter().any(|(_, m)| {
        matches!(
            m.body.as_ref().map(|b| &b.msg_body),
            Some(OneOfmsg_body::response(r)) if matches!(r.resp_type, OneOfresp_type::add_resp(_))
        )
    });
    assert!(added, "the subscription was added: {answers:?}");

    let heard = listen(&broker, 1, 30, || {
        gw.stop_agent();
        gw.restart_agent();
    });
    let boot = heard
        .iter()
        .find_map(|(_, m)| match &m.body.as_ref()?.msg_body {
            OneOfmsg_body::request(r) => match &r.req_type {
                rusp_lib::usp::mod_Request::OneOfreq_type::notify(n) => Some(n.clone()),
                _ => None,
            },
            _ => None,
        });
    let boot =
        boot.unwrap_or_else(|| panic!("no Boot! after the restart: {heard:?}\n{}", gw.agent_log()));
    assert_eq!(boot.subscription_id, "boot-watch");
    let text = format!("{boot:?}");
    assert!(
        text.contains("Boot!") && text.contains("LocalReboot"),
        "{text}"
    );
}
