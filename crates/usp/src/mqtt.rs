//! The MQTT message transfer protocol: the agent subscribes to its topic and publishes its
//! responses and notifications to the controller's, reconnecting whenever the broker goes
//! away.

use std::sync::Arc;
use std::time::Duration;

use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS, Transport};
use tokio::sync::mpsc::UnboundedReceiver;

use crate::Usp;

pub(crate) async fn run(usp: Arc<Usp>, mut out: UnboundedReceiver<Vec<u8>>) {
    let opts = match options(&usp.cfg) {
        Ok(opts) => opts,
        Err(e) => {
            tracing::error!("USP agent not started: {e}");
            eprintln!("shg gateway: USP agent not started: {e}");
            return;
        }
    };
    let (client, mut events) = AsyncClient::new(opts, 64);
    let topic = usp.cfg.topic();
    let publisher = client.clone();
    let controller_topic = usp.cfg.controller_topic.clone();
    tokio::spawn(async move {
        while let Some(bytes) = out.recv().await {
            if let Err(e) = publisher
                .publish(&controller_topic, QoS::AtLeastOnce, false, bytes)
                .await
            {
                tracing::warn!("USP: cannot queue a record for the broker: {e}");
            }
        }
    });
    let mut up = false;
    let mut booted = false;
    let mut failures = 0u32;
    loop {
        match events.poll().await {
            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                tracing::info!(broker = %usp.cfg.broker, %topic, "USP: connected");
                up = true;
                failures = 0;
                if let Err(e) = client.try_subscribe(&topic, QoS::AtLeastOnce) {
                    tracing::error!("USP: cannot subscribe to {topic}: {e}");
                }
                // Once per start of the agent, on its first connection.
                if !booted {
                    booted = true;
                    usp.boot();
                }
            }
            Ok(Event::Incoming(Packet::Publish(p))) => {
                let usp = usp.clone();
                tokio::spawn(async move { usp.on_record(&p.payload).await });
            }
            Ok(_) => {}
            Err(e) => {
                if up {
                    tracing::warn!(broker = %usp.cfg.broker, "USP: lost the broker: {e}; reconnecting");
                } else if failures.is_multiple_of(60) {
                    // The first failure, then once a minute: a broker the agent never
                    // reaches (a wrong address, a certificate it cannot verify) is told.
                    tracing::warn!(broker = %usp.cfg.broker, "USP: cannot reach the broker: {e}; retrying every second");
                }
                failures += 1;
                up = false;
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

fn options(cfg: &agent::UspConfig) -> Result<MqttOptions, String> {
    let (tls, rest) = match cfg.broker.split_once("://") {
        Some(("mqtts", rest)) => (true, rest),
        Some(("mqtt", rest)) => (false, rest),
        _ => return Err(format!("usp.broker `{}` is not an MQTT URL", cfg.broker)),
    };
    let rest = rest.trim_end_matches('/');
    let (host, port) = match rest.rsplit_once(':') {
        Some((h, p)) => (
            h.trim_start_matches('[').trim_end_matches(']'),
            p.parse::<u16>()
                .map_err(|_| format!("usp.broker `{}`: `{p}` is not a port", cfg.broker))?,
        ),
        None => (rest, if tls { 8883 } else { 1883 }),
    };
    // MQTT client ids: letters and digits are what every broker takes.
    let client_id: String = cfg
        .endpoint_id
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    let mut opts = MqttOptions::new(client_id, host, port);
    opts.set_keep_alive(Duration::from_secs(30));
    opts.set_max_packet_size(crate::MAX_PACKET, crate::MAX_PACKET);
    let read = |what: &str, path: &std::path::Path| {
        std::fs::read(path).map_err(|e| format!("usp.{what} {}: {e}", path.display()))
    };
    if tls {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let ca = match &cfg.ca_cert {
            Some(path) => read("ca_cert", path)?,
            None => return Err("usp.broker is mqtts:// but usp.ca_cert is missing: give the CA that signed the broker's certificate".into()),
        };
        let client_auth = match (&cfg.client_cert, &cfg.client_key) {
            (Some(cert), Some(key)) => Some((read("client_cert", cert)?, read("client_key", key)?)),
            _ => None,
        };
        opts.set_transport(Transport::tls(ca, client_auth, None));
    }
    if let Some(user) = &cfg.username {
        let password = match &cfg.password_file {
            Some(path) => String::from_utf8(read("password_file", path)?)
                .map_err(|_| "usp.password_file is not text".to_string())?
                .trim_end_matches(['\r', '\n'])
                .to_string(),
            None => String::new(),
        };
        opts.set_credentials(user, password);
    }
    Ok(opts)
}
