//! `cloud-proxy gateway --listen ADDR --data DIR --cloud http://HOST:PORT/files/ [--max-size BYTES]`
//! `cloud-proxy cloud --listen ADDR --data DIR [--max-size BYTES]`

use std::path::PathBuf;

use cloud_proxy::{sender, tus};

const USAGE: &str = "usage: cloud-proxy gateway --listen ADDR --data DIR --cloud http://HOST:PORT/PATH/ [--max-size BYTES]\n       cloud-proxy cloud --listen ADDR --data DIR [--max-size BYTES]";

fn main() {
    if let Err(e) = run() {
        eprintln!("cloud-proxy: {e}\n{USAGE}");
        std::process::exit(2);
    }
}

fn run() -> Result<(), String> {
    let mut args = std::env::args().skip(1);
    let mode = args.next().ok_or("no mode given")?;
    let (mut listen, mut data, mut cloud, mut max_size) = (None, None, None, 1u64 << 30);
    while let Some(flag) = args.next() {
        let value = args.next().ok_or_else(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--listen" => listen = Some(value),
            "--data" => data = Some(PathBuf::from(value)),
            "--cloud" => cloud = Some(sender::Cloud::parse(&value)?),
            "--max-size" => {
                max_size = value
                    .parse()
                    .map_err(|_| format!("`{value}` is not a size in bytes"))?
            }
            other => return Err(format!("unknown flag {other}")),
        }
    }
    let listen = listen.ok_or("--listen is missing")?;
    let data = data.ok_or("--data is missing")?;
    let cloud = match (mode.as_str(), cloud) {
        ("gateway", Some(c)) => Some(c),
        ("gateway", None) => return Err("--cloud is missing".into()),
        ("cloud", None) => None,
        ("cloud", Some(_)) => return Err("the cloud takes no --cloud".into()),
        (other, _) => return Err(format!("unknown mode `{other}`")),
    };
    let store =
        tus::Store::open(&data, max_size).map_err(|e| format!("{}: {e}", data.display()))?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(&listen)
            .await
            .map_err(|e| format!("cannot listen on {listen}: {e}"))?;
        eprintln!(
            "cloud-proxy {mode}: tus on http://{listen}/files/, uploads in {}",
            data.display()
        );
        if let Some(cloud) = cloud {
            tokio::spawn(sender::run(store.clone(), cloud));
        }
        axum::serve(listener, tus::router(store))
            .await
            .map_err(|e| e.to_string())
    })
}
