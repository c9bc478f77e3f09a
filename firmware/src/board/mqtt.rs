//! Executes `Action::Publish`: MQTT 5 at QoS 1, one connection per boot for the whole backlog.
//!
//! ```text
//!   driver ── publish(seq, topic, payload) ──► session task ─┬─ not connected: DNS, TCP, CONNECT/CONNACK
//!          ◄── delivered? (same seq) ────────                └─ PUBLISH ─► PUBACK with reason < 0x80
//!   driver ── close() (the routine is over) ─► DISCONNECT
//! ```
//!
//! A task owns the connection so that it outlives one publish: it opens it for the first
//! record the core asks for, sends every further record on it, and drops it only after a
//! failure (no broker, refused CONNECT, no PUBACK in time, a PUBACK whose reason code is an
//! error, the broker hanging up) or when the update routine is over. The next record after
//! a failure connects again. "Delivered" means a PUBACK for that very PUBLISH with a
//! success reason code (below 0x80: "no matching subscribers", 0x10, is a delivery, "not
//! authorized", 0x87, is not). rust-mqtt reports the former as
//! `Event::PublishAcknowledged` and the latter as `Event::PublishRejected`.
//!
//! The session has its own small socket buffers, so it never holds the HTTP buffers.

use embassy_futures::select::{Either, select};
use embassy_net::Stack;
use embassy_net::dns::DnsQueryType;
use embassy_net::tcp::TcpSocket;
use embassy_sync::blocking_mutex::raw::CriticalSectionRawMutex;
use embassy_sync::channel::Channel;
use embassy_sync::signal::Signal;
use embassy_time::{Duration, Instant, with_deadline, with_timeout};
use firmware::machine::{PUBLISH_TIMEOUT_MS, Payload, Topic};
use heapless::String;
use rust_mqtt::Bytes;
use rust_mqtt::buffer::AllocBuffer;
use rust_mqtt::client::Client;
use rust_mqtt::client::event::Event;
use rust_mqtt::client::options::{
    ConnectOptions, DisconnectOptions, PublicationOptions, TopicReference,
};
use rust_mqtt::types::{MqttBinary, MqttString, TopicName};
use static_cell::StaticCell;

/// DNS + TCP connect + CONNECT/CONNACK, when a record finds no open connection.
const CONNECT_TIMEOUT_MS: u64 = 4_000;
/// PUBLISH written → its PUBACK read. The core gives up on a record by itself after
/// `PUBLISH_TIMEOUT_MS` (10 s) and keeps it for the next boot; the glue must have given its
/// verdict before that, connect phase included, or a record the broker did take would be
/// counted as not delivered (and sent again next boot). After this timeout the connection is
/// dropped: a PUBACK that arrives later is never mistaken for the next record's.
const PUBACK_TIMEOUT_MS: u64 = 5_000;
const _: () = assert!(CONNECT_TIMEOUT_MS + PUBACK_TIMEOUT_MS < PUBLISH_TIMEOUT_MS);

/// Backstop for the DISCONNECT and the TCP close (the broker may be gone already).
const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);

/// Where and as whom to publish (copied from the core's config, so the session borrows
/// nothing from the core).
pub struct Broker {
    /// Host name or IPv4 address.
    pub host: String<128>,
    /// TCP port (1883).
    pub port: u16,
    /// MQTT client identifier.
    pub client_id: String<64>,
    /// Optional user name.
    pub user: Option<String<64>>,
    /// Optional password.
    pub password: Option<String<128>>,
}

/// Why the session task could not be started.
#[derive(Debug)]
pub enum StartError {
    /// It runs already (a second start in one boot is a driver bug).
    AlreadyRunning,
}

struct Record {
    seq: u32,
    topic: Topic,
    payload: Payload,
}

// One command at a time sits in a static channel: no heap, and its size is fixed.
#[allow(clippy::large_enum_variant)]
enum Command {
    Publish(Record),
    /// The update routine is over: say DISCONNECT and free the socket.
    Close,
}

#[derive(Clone, Copy)]
struct Verdict {
    seq: u32,
    delivered: bool,
}

static COMMANDS: Channel<CriticalSectionRawMutex, Command, 1> = Channel::new();
static VERDICTS: Signal<CriticalSectionRawMutex, Verdict> = Signal::new();

/// The session's TCP buffers. CONNACK and PUBACK are a few bytes; a record is at most
/// `MAX_PAYLOAD` plus its topic, and a larger PUBLISH is simply written in pieces.
struct SocketBuffers {
    rx: [u8; 1024],
    tx: [u8; 1024],
}

/// Starts the session task (once per boot, on the first record).
pub fn start(
    spawner: embassy_executor::Spawner,
    stack: Stack<'static>,
    broker: Broker,
) -> Result<(), StartError> {
    static BUFFERS: StaticCell<SocketBuffers> = StaticCell::new();
    let buffers = BUFFERS
        .try_init(SocketBuffers {
            rx: [0; 1024],
            tx: [0; 1024],
        })
        .ok_or(StartError::AlreadyRunning)?;
    spawner.spawn(session(stack, broker, buffers).map_err(|_| StartError::AlreadyRunning)?);
    Ok(())
}

/// Hands one record to the session; `true` once the broker acknowledged it with a success
/// reason code. Always resolves within `PUBLISH_TIMEOUT_MS`.
pub async fn publish(seq: u32, topic: Topic, payload: Payload) -> bool {
    let exchange = async {
        // A verdict still set from a record the driver stopped waiting for is stale.
        VERDICTS.reset();
        COMMANDS
            .send(Command::Publish(Record {
                seq,
                topic,
                payload,
            }))
            .await;
        loop {
            let verdict = VERDICTS.wait().await;
            if verdict.seq == seq {
                return verdict.delivered;
            }
        }
    };
    // Backstop only: the session answers within CONNECT + PUBACK timeouts.
    with_timeout(Duration::from_millis(PUBLISH_TIMEOUT_MS), exchange)
        .await
        .unwrap_or(false)
}

/// The routine is over: close the connection (if the queue has room; else the session is
/// busy with a record and the connection goes with the next failure or the reboot).
pub fn close() {
    let _ = COMMANDS.try_send(Command::Close);
}

type MqttClient<'c, 's, 'b> =
    Client<'static, 'c, &'s mut TcpSocket<'b>, AllocBuffer, 1, 1, 1, 0, 0, 0, 0>;

#[embassy_executor::task]
async fn session(stack: Stack<'static>, broker: Broker, buffers: &'static mut SocketBuffers) {
    loop {
        // Connect only when there is something to publish.
        let Command::Publish(first) = COMMANDS.receive().await else {
            continue;
        };
        let mut socket = TcpSocket::new(stack, &mut buffers.rx, &mut buffers.tx);
        let deadline = Instant::now() + Duration::from_millis(CONNECT_TIMEOUT_MS);
        let opened = matches!(
            with_deadline(deadline, open(stack, &broker, &mut socket)).await,
            Ok(true)
        );
        let mut alloc = AllocBuffer;
        let mut client: MqttClient<'_, '_, '_> = Client::new(&mut alloc);
        let connected = opened
            && matches!(
                with_deadline(deadline, handshake(&mut client, &mut socket, &broker)).await,
                Ok(true)
            );
        if connected {
            serve(&mut client, first).await;
        } else {
            VERDICTS.signal(Verdict {
                seq: first.seq,
                delivered: false,
            });
        }
        drop(client);
        socket.abort();
        let _ = with_timeout(CLOSE_TIMEOUT, socket.flush()).await;
    }
}

/// DNS and TCP connect.
async fn open(stack: Stack<'static>, broker: &Broker, socket: &mut TcpSocket<'_>) -> bool {
    let Ok(addrs) = stack.dns_query(broker.host.as_str(), DnsQueryType::A).await else {
        return false;
    };
    let Some(&addr) = addrs.first() else {
        return false;
    };
    socket.connect((addr, broker.port)).await.is_ok()
}

/// CONNECT and a successful CONNACK.
async fn handshake<'c, 's, 'b>(
    client: &mut MqttClient<'c, 's, 'b>,
    socket: &'s mut TcpSocket<'b>,
    broker: &Broker,
) -> bool {
    let mut options = ConnectOptions::new().clean_start();
    if let Some(user) = broker.user.as_deref() {
        let Ok(user) = MqttString::try_from(user) else {
            return false;
        };
        options = options.user_name(user);
    }
    if let Some(password) = broker.password.as_deref() {
        let Ok(password) = MqttBinary::try_from(password) else {
            return false;
        };
        options = options.password(password);
    }
    let Ok(client_id) = MqttString::try_from(broker.client_id.as_str()) else {
        return false;
    };
    client
        .connect(socket, &options, Some(client_id))
        .await
        .is_ok()
}

/// Publishes `first` and every further record on this connection until one fails or the
/// driver closes the session.
async fn serve(client: &mut MqttClient<'_, '_, '_>, first: Record) {
    let mut next = Some(first);
    loop {
        let record = match next.take() {
            Some(record) => record,
            // Idle between records: the next command, or the broker hanging up (then the
            // next record connects afresh instead of failing on a dead connection).
            None => match select(COMMANDS.receive(), client.poll_header()).await {
                Either::First(Command::Publish(record)) => record,
                Either::First(Command::Close) => {
                    let _ =
                        with_timeout(CLOSE_TIMEOUT, client.disconnect(&DisconnectOptions::new()))
                            .await;
                    return;
                }
                // Something unasked (a PUBACK that came after its timeout): read and drop it.
                Either::Second(Ok(header)) => {
                    let read = with_timeout(
                        Duration::from_millis(PUBACK_TIMEOUT_MS),
                        client.poll_body(header),
                    )
                    .await;
                    if matches!(read, Ok(Ok(_))) {
                        continue;
                    }
                    return;
                }
                Either::Second(Err(_)) => return,
            },
        };
        let delivered = matches!(
            with_timeout(
                Duration::from_millis(PUBACK_TIMEOUT_MS),
                publish_one(client, &record)
            )
            .await,
            Ok(true)
        );
        VERDICTS.signal(Verdict {
            seq: record.seq,
            delivered,
        });
        if !delivered {
            return;
        }
    }
}

/// One PUBLISH at QoS 1 and its PUBACK.
async fn publish_one(client: &mut MqttClient<'_, '_, '_>, record: &Record) -> bool {
    let Ok(topic) = MqttString::try_from(record.topic.as_str()) else {
        return false;
    };
    let Some(name) = TopicName::new(topic) else {
        return false;
    };
    let publication = PublicationOptions::new(TopicReference::Name(name)).at_least_once();
    let Ok(Some(id)) = client
        .publish(&publication, Bytes::from(&record.payload[..]))
        .await
    else {
        return false;
    };
    loop {
        match client.poll().await {
            // rust-mqtt emits this only for a success reason code (< 0x80); checked again
            // here because it is what "delivered" means to the core.
            Ok(Event::PublishAcknowledged(ack)) if ack.packet_identifier == id => {
                return ack.reason_code.is_success();
            }
            // A PUBACK with an error reason code (e.g. 0x87 not authorized).
            Ok(Event::PublishRejected(rejected)) if rejected.packet_identifier == id => {
                return false;
            }
            Ok(_) => continue,
            Err(_) => return false,
        }
    }
}
