//! A gateway may refuse an upload from its path and headers alone and hang up without reading
//! the package: the client must show that answer, not the broken pipe its upload then meets.
//!
//! Each server here runs on a thread of its own with blocking sockets, as the agent runs in a
//! process of its own, and reads no more than the request head before it answers.

use std::io::{Read, Write};
use std::net::Shutdown;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use api::{Client, ClientError, ErrorBody, Options, ServiceDetail, UpdateParams};

/// Far more than the socket buffers hold, so the upload is still going when the server hangs up.
const PACKAGE_SIZE: usize = 32 * 1024 * 1024;

/// Which of the two ends sees the hang-up first is up to the kernel and the scheduler, so the
/// exchanges that leave it to them are repeated.
const ROUNDS: usize = 10;

const MESSAGE: &str = "no service named `probe`; list them with `shg ps`";
const REQUEST: &str = "POST /v1/services/probe/update";

/// The head of the request the server received.
struct Head(String);

/// Reads up to the end of the request head; some of the body may come along.
fn read_head(stream: &mut impl Read) -> Head {
    let mut got = Vec::new();
    let mut chunk = [0u8; 8192];
    let end = loop {
        let n = stream.read(&mut chunk).expect("read the request head");
        assert!(
            n > 0,
            "the client hung up before the end of its request head"
        );
        got.extend_from_slice(&chunk[..n]);
        if let Some(i) = got.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
    };
    Head(String::from_utf8_lossy(&got[..end]).into_owned())
}

/// The agent's answer to an update of a service the caller cannot see.
fn answer_404(stream: &mut impl Write) {
    let body = serde_json::to_vec(&ErrorBody {
        code: "not-found".into(),
        message: MESSAGE.into(),
        detail: None,
    })
    .unwrap();
    let mut response = format!(
        "HTTP/1.1 404 Not Found\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\
         connection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    response.extend_from_slice(&body);
    stream.write_all(&response).expect("write the answer");
    stream.flush().expect("flush the answer");
}

fn package(dir: &Path) -> PathBuf {
    let path = dir.join("probe.tar");
    std::fs::write(&path, vec![0x5a; PACKAGE_SIZE]).unwrap();
    path
}

/// `shg update probe PKG`, the call of the issue; a hang fails the test instead of stalling it.
async fn update(client: &Client, package: &Path) -> Result<ServiceDetail, ClientError> {
    tokio::time::timeout(
        Duration::from_secs(60),
        client.update("probe", package, &UpdateParams::default()),
    )
    .await
    .expect("the client still waits a minute after the server hung up")
}

fn assert_refused(result: Result<ServiceDetail, ClientError>) {
    match result {
        Err(ClientError::Api {
            status,
            code,
            message,
            ..
        }) => {
            assert_eq!(status, 404);
            assert_eq!(code, "not-found");
            assert_eq!(message, MESSAGE);
        }
        other => panic!("expected the server's 404, got {other:?}"),
    }
}

fn assert_heads(server: JoinHandle<Vec<Head>>, rounds: usize) {
    let heads = server.join().expect("the server thread");
    assert_eq!(heads.len(), rounds);
    for Head(head) in heads {
        assert!(
            head.starts_with(&format!("{REQUEST} HTTP/1.1\r\n")),
            "{head}"
        );
        let length = format!("content-length: {PACKAGE_SIZE}\r\n");
        assert!(head.to_ascii_lowercase().contains(&length), "{head}");
    }
}

fn unix_listener(dir: &Path) -> (UnixListener, Client) {
    let socket = dir.join("api.sock");
    let listener = UnixListener::bind(&socket).unwrap();
    let client = Client::new(socket.to_str().unwrap()).unwrap();
    (listener, client)
}

/// The order that lost the answer every time: the server stops reading, so the client's next
/// write breaks the pipe, and only then does the answer come.
#[tokio::test]
async fn an_early_refusal_reaches_the_client_while_it_still_uploads() {
    let dir = tempfile::tempdir().unwrap();
    let package = package(dir.path());
    let (listener, client) = unix_listener(dir.path());
    let server = std::thread::spawn(move || {
        let (mut stream, _) = listener.accept().unwrap();
        let head = read_head(&mut stream);
        stream.shutdown(Shutdown::Read).unwrap();
        // Emptying what the client queued frees its send buffer, so it wakes and writes at once:
        // into a pipe that is now broken, a good while before the answer exists.
        std::io::copy(&mut stream, &mut std::io::sink()).unwrap();
        std::thread::sleep(Duration::from_millis(300));
        answer_404(&mut stream);
        vec![head]
    });

    assert_refused(update(&client, &package).await);
    assert_heads(server, 1);
}

/// What the agent does: answer from the head, then close with the upload unread.
#[tokio::test]
async fn an_answer_then_hang_up_reaches_the_client_whichever_it_sees_first() {
    let dir = tempfile::tempdir().unwrap();
    let package = package(dir.path());
    let (listener, client) = unix_listener(dir.path());
    let server = std::thread::spawn(move || {
        (0..ROUNDS)
            .map(|_| {
                let (mut stream, _) = listener.accept().unwrap();
                let head = read_head(&mut stream);
                answer_404(&mut stream);
                head
            })
            .collect()
    });

    for _ in 0..ROUNDS {
        assert_refused(update(&client, &package).await);
    }
    assert_heads(server, ROUNDS);
}

/// The same over TLS, where the unread upload makes the server's kernel reset the connection.
#[tokio::test]
async fn an_early_refusal_reaches_the_client_over_tls_while_it_still_uploads() {
    let dir = tempfile::tempdir().unwrap();
    let package = package(dir.path());
    let made = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string()]).unwrap();
    let cert_pem = dir.path().join("cert.pem");
    std::fs::write(&cert_pem, made.cert.pem()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![made.cert.der().clone()],
            rustls::pki_types::PrivateKeyDer::Pkcs8(made.key_pair.serialize_der().into()),
        )
        .unwrap();
    let config = Arc::new(config);
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let target = format!("https://{}", listener.local_addr().unwrap());
    let server = std::thread::spawn(move || {
        (0..ROUNDS)
            .map(|_| {
                let (tcp, _) = listener.accept().unwrap();
                // The close resets the connection and drops whatever the kernel still holds
                // back; Nagle would hold the answer back until the session tickets are acked.
                tcp.set_nodelay(true).unwrap();
                let tls = rustls::ServerConnection::new(Arc::clone(&config)).unwrap();
                let mut stream = rustls::StreamOwned::new(tls, tcp);
                let head = read_head(&mut stream);
                answer_404(&mut stream);
                head
            })
            .collect()
    });

    let options = Options {
        token: Some("a-rival-provider".into()),
        ca_cert: Some(cert_pem),
        client_cert: None,
        pinned_ca_sha256: None,
    };
    let client = Client::with_options(&target, &options).unwrap();
    for _ in 0..ROUNDS {
        assert_refused(update(&client, &package).await);
    }
    assert_heads(server, ROUNDS);
}

/// Waiting for an answer after a broken pipe must not outlast the connection: a server that
/// hangs up without one still ends the call, with an error that names it.
#[tokio::test]
async fn a_hang_up_without_an_answer_is_a_broken_connection() {
    let dir = tempfile::tempdir().unwrap();
    let package = package(dir.path());
    let (listener, client) = unix_listener(dir.path());
    let server = std::thread::spawn(move || {
        let (mut stream, _) = listener.accept().unwrap();
        vec![read_head(&mut stream)]
    });

    match update(&client, &package).await {
        Err(ClientError::Http { request, .. }) => assert_eq!(request, REQUEST),
        other => panic!("expected a broken connection, got {other:?}"),
    }
    assert_heads(server, 1);
}
