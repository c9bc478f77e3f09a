//! The MQTT side: an rumqttd broker embedded in-process, or an external one, plus a collector
//! that records every message under a topic prefix for assertions.
//!
//! rumqttd can neither report the port it bound nor be stopped, so [`Broker::start_embedded`]
//! picks free ports itself (bind `:0`, read, release), hands them to the broker's config, and
//! proves the listeners are the broker's by completing an MQTT handshake on each; on a collision
//! it retries with new ports. A started broker lives until the process exits.

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::Bytes;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::Packet;
use rumqttc::v5::{AsyncClient, Event, MqttOptions};
use rumqttd::{Config, ConnectionSettings, RouterConfig, ServerSettings};
use tokio::sync::Notify;

/// Errors of starting or reaching a broker.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    /// No free port could be reserved for a listener.
    #[error("cannot reserve a port for the broker: {0}")]
    Port(std::io::Error),
    /// The broker's threads could not be spawned.
    #[error("cannot spawn the broker thread: {0}")]
    Spawn(std::io::Error),
    /// Every attempt ended without the broker answering an MQTT CONNECT on its ports.
    #[error("embedded broker did not come up after {attempts} attempts")]
    NotReady {
        /// Attempts made, each with fresh ports.
        attempts: u32,
    },
    /// A broker URL that is not `mqtt://host:port` (or `host:port`).
    #[error("bad broker URL {0:?}: expected mqtt://host:port")]
    BadUrl(String),
    /// The collector's subscription was not acknowledged in time.
    #[error("broker at {addr} did not acknowledge the subscription to {filter:?}")]
    SubscribeTimeout {
        /// Broker address.
        addr: String,
        /// The topic filter.
        filter: String,
    },
    /// The MQTT client rejected a request (its queue is closed).
    #[error("MQTT client error: {0}")]
    Client(Box<rumqttc::v5::ClientError>),
}

impl From<rumqttc::v5::ClientError> for BrokerError {
    fn from(e: rumqttc::v5::ClientError) -> Self {
        // Boxed: the client error carries the whole rejected request, which would make every
        // `Result<_, BrokerError>` hundreds of bytes wide.
        Self::Client(Box::new(e))
    }
}

/// Where a broker listens.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BrokerAddr {
    /// Host name or IP.
    pub host: String,
    /// TCP port.
    pub port: u16,
}

impl BrokerAddr {
    /// Parses `mqtt://host:port` (or bare `host:port`; the port defaults to 1883).
    pub fn parse(url: &str) -> Result<Self, BrokerError> {
        let bad = || BrokerError::BadUrl(url.to_owned());
        let rest = url.strip_prefix("mqtt://").unwrap_or(url);
        let rest = rest.trim_end_matches('/');
        if rest.is_empty() || rest.contains('/') || rest.contains('@') {
            return Err(bad());
        }
        match rest.rsplit_once(':') {
            Some((host, port)) => Ok(Self {
                host: host.trim_matches(['[', ']']).to_owned(),
                port: port.parse().map_err(|_| bad())?,
            }),
            None => Ok(Self {
                host: rest.to_owned(),
                port: 1883,
            }),
        }
    }

    /// `mqtt://host:port`.
    pub fn url(&self) -> String {
        format!("mqtt://{}:{}", self.host, self.port)
    }
}

impl From<SocketAddr> for BrokerAddr {
    fn from(a: SocketAddr) -> Self {
        Self {
            host: a.ip().to_string(),
            port: a.port(),
        }
    }
}

/// A running embedded broker.
#[derive(Clone, Debug)]
pub struct BrokerHandle {
    /// The MQTT 5 listener (what the board uses).
    pub addr: SocketAddr,
    /// An MQTT 3.1.1 listener on the same broker (same topics, same router).
    pub v4_addr: SocketAddr,
}

impl BrokerHandle {
    /// `mqtt://127.0.0.1:PORT` of the v5 listener.
    pub fn url(&self) -> String {
        BrokerAddr::from(self.addr).url()
    }
}

/// Entry point for the embedded broker.
pub struct Broker;

/// Ports reserved per attempt before giving up; a collision needs another process to grab the
/// port in the microseconds between our release and rumqttd's bind, so a few tries suffice.
const ATTEMPTS: u32 = 5;

impl Broker {
    /// Starts rumqttd on loopback with a v5 and a v4 listener; returns once both answer CONNECT.
    ///
    /// Blocking (up to a few seconds); call it before or outside latency-sensitive async code.
    pub fn start_embedded() -> Result<BrokerHandle, BrokerError> {
        Self::start_embedded_on(IpAddr::from([127, 0, 0, 1]))
    }

    /// As [`Broker::start_embedded`], on another local address (HIL: the host's LAN address).
    pub fn start_embedded_on(ip: IpAddr) -> Result<BrokerHandle, BrokerError> {
        for _ in 0..ATTEMPTS {
            let v5 = free_port(ip)?;
            let v4 = free_port(ip)?;
            if v4 == v5 {
                continue;
            }
            let mut broker = rumqttd::Broker::new(config(v5, v4));
            std::thread::Builder::new()
                .name("sim-rumqttd".into())
                .spawn(move || {
                    // Returns only if every listener failed to bind (a collision); the probe
                    // below notices and we try other ports.
                    let _ = broker.start();
                })
                .map_err(BrokerError::Spawn)?;
            if probe(v5, 5) && probe(v4, 4) {
                return Ok(BrokerHandle {
                    addr: v5,
                    v4_addr: v4,
                });
            }
        }
        Err(BrokerError::NotReady { attempts: ATTEMPTS })
    }
}

fn free_port(ip: IpAddr) -> Result<SocketAddr, BrokerError> {
    let l = TcpListener::bind((ip, 0)).map_err(BrokerError::Port)?;
    l.local_addr().map_err(BrokerError::Port)
}

fn config(v5: SocketAddr, v4: SocketAddr) -> Config {
    let connections = ConnectionSettings {
        connection_timeout_ms: 60_000,
        // Activity logs are small, but a board that queued many while offline sends them in bulk.
        max_payload_size: 256 * 1024,
        max_inflight_count: 100,
        auth: None,
        external_auth: None,
        dynamic_filters: true,
    };
    let server = |name: &str, listen| ServerSettings {
        name: name.to_owned(),
        listen,
        tls: None,
        next_connection_delay_ms: 1,
        connections: connections.clone(),
    };
    Config {
        id: 0,
        router: RouterConfig {
            max_connections: 1000,
            max_outgoing_packet_count: 200,
            max_segment_size: 16 * 1024 * 1024,
            max_segment_count: 10,
            custom_segment: None,
            initialized_filters: None,
            shared_subscriptions_strategy: Default::default(),
        },
        v5: Some([("v5-sim".to_owned(), server("v5-sim", v5))].into()),
        v4: Some([("v4-sim".to_owned(), server("v4-sim", v4))].into()),
        ..Config::default()
    }
}

/// Connects, sends an MQTT CONNECT of `level` (4 or 5) and waits for a CONNACK: proof that the
/// port is rumqttd's listener and not another process that won the race for it.
fn probe(addr: SocketAddr, level: u8) -> bool {
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        match TcpStream::connect_timeout(&addr, Duration::from_millis(200)) {
            Ok(mut s) => return handshake(&mut s, level).unwrap_or(false),
            // Not listening yet: the broker thread is still building its runtime.
            Err(_) => std::thread::sleep(Duration::from_millis(10)),
        }
    }
    false
}

fn handshake(s: &mut TcpStream, level: u8) -> std::io::Result<bool> {
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    let id = format!("sim-probe-{level}");
    // CONNECT: protocol name, level, flags = clean start, keep-alive 60 s, [v5: no properties].
    let mut var = vec![0, 4, b'M', b'Q', b'T', b'T', level, 0x02, 0, 60];
    if level == 5 {
        var.push(0);
    }
    var.extend_from_slice(&(id.len() as u16).to_be_bytes());
    var.extend_from_slice(id.as_bytes());
    let mut packet = vec![0x10, var.len() as u8];
    packet.extend_from_slice(&var);
    s.write_all(&packet)?;
    let mut first = [0u8; 1];
    s.read_exact(&mut first)?;
    // DISCONNECT, so the broker does not log the probe as a lost client.
    let _ = s.write_all(&[0xE0, 0x00]);
    Ok(first[0] == 0x20)
}

/// One message as the collector received it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MqttMessage {
    /// Full topic.
    pub topic: String,
    /// Payload bytes.
    pub payload: Bytes,
    /// Delivery QoS (0, 1, 2) as granted by the broker.
    pub qos: u8,
    /// The retain flag as delivered (set for retained messages replayed on subscribe).
    pub retain: bool,
}

/// Subscribes to `<prefix>/#` and keeps every message, in arrival order.
pub struct Collector {
    messages: Arc<Mutex<Vec<MqttMessage>>>,
    arrived: Arc<Notify>,
    client: AsyncClient,
    task: tokio::task::JoinHandle<()>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic elsewhere must not hide the messages collected so far.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Collector {
    /// Connects to `broker` (an embedded one's [`BrokerHandle::url`] or any `mqtt://host:port`),
    /// subscribes with QoS 1 and returns once the broker acknowledged the subscription.
    pub async fn connect(broker: &BrokerAddr, prefix: &str) -> Result<Self, BrokerError> {
        let filter = format!("{}/#", prefix.trim_end_matches('/'));
        // Unique per collector: a second client with the same id would make the broker drop the first.
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let id = format!("sim-collector-{}-{n}", std::process::id());
        let mut opts = MqttOptions::new(id, broker.host.clone(), broker.port);
        opts.set_keep_alive(Duration::from_secs(30));
        opts.set_clean_start(true);
        let (client, mut eventloop) = AsyncClient::new(opts, 64);
        client.subscribe(filter.clone(), QoS::AtLeastOnce).await?;

        let messages = Arc::new(Mutex::new(Vec::new()));
        let arrived = Arc::new(Notify::new());
        let (subscribed_tx, subscribed_rx) = tokio::sync::oneshot::channel();
        let (msgs, notify) = (messages.clone(), arrived.clone());
        let task = tokio::spawn(async move {
            let mut subscribed_tx = Some(subscribed_tx);
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::SubAck(_))) => {
                        if let Some(tx) = subscribed_tx.take() {
                            let _ = tx.send(());
                        }
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        lock(&msgs).push(MqttMessage {
                            topic: String::from_utf8_lossy(&p.topic).into_owned(),
                            payload: p.payload,
                            qos: p.qos as u8,
                            retain: p.retain,
                        });
                        notify.notify_waiters();
                    }
                    Ok(_) => {}
                    // rumqttc reconnects (and resubscribes nothing: clean start) on the next
                    // poll; back off so a dead broker does not spin this task.
                    Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
                }
            }
        });
        match tokio::time::timeout(Duration::from_secs(5), subscribed_rx).await {
            Ok(Ok(())) => Ok(Self {
                messages,
                arrived,
                client,
                task,
            }),
            _ => {
                task.abort();
                Err(BrokerError::SubscribeTimeout {
                    addr: broker.url(),
                    filter,
                })
            }
        }
    }

    /// Everything received so far.
    pub fn messages(&self) -> Vec<MqttMessage> {
        lock(&self.messages).clone()
    }

    /// Waits until at least `n` messages arrived or `timeout` passed; returns what arrived.
    pub async fn wait_for(&self, n: usize, timeout: Duration) -> Vec<MqttMessage> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            // Registered before checking, so a message landing in between still wakes us.
            let notified = self.arrived.notified();
            let now = self.messages();
            if now.len() >= n {
                return now;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return self.messages();
            }
        }
    }

    /// Disconnects and stops the event loop.
    pub async fn close(self) {
        let _ = self.client.disconnect().await;
        self.task.abort();
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Resolves `addr` to a socket address (for callers holding a [`BrokerAddr`] of an external
/// broker that want to put the fault proxy in front of it).
pub fn resolve(addr: &BrokerAddr) -> Option<SocketAddr> {
    (addr.host.as_str(), addr.port)
        .to_socket_addrs()
        .ok()?
        .next()
}

/// Whether a PUBACK with this reason code is a delivery. MQTT 5 (§3.4.2.1): codes below 0x80
/// are successes (0x00 Success, 0x10 No matching subscribers), 0x80 and up are failures (not
/// authorized, quota exceeded, …) after which the broker does not forward the message. The
/// firmware's glue counts it the same way (`reason_code.is_success()`).
pub fn puback_delivers(reason: rumqttc::v5::mqttbytes::v5::PubAckReason) -> bool {
    use rumqttc::v5::mqttbytes::v5::PubAckReason as R;
    match reason {
        R::Success | R::NoMatchingSubscribers => true,
        R::UnspecifiedError
        | R::ImplementationSpecificError
        | R::NotAuthorized
        | R::TopicNameInvalid
        | R::PacketIdentifierInUse
        | R::QuotaExceeded
        | R::PayloadFormatInvalid => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_broker_urls() {
        let a = BrokerAddr::parse("mqtt://10.0.0.2:1884").expect("valid URL");
        assert_eq!((a.host.as_str(), a.port), ("10.0.0.2", 1884));
        let a = BrokerAddr::parse("broker.local").expect("bare host");
        assert_eq!(a.port, 1883);
        assert!(BrokerAddr::parse("mqtt://h:notaport").is_err());
        assert!(BrokerAddr::parse("mqtt://user:pw@h:1").is_err());
    }
}
