//! Executes one `Action::Publish`: connect, PUBLISH at QoS 1, wait for PUBACK, disconnect.
//!
//! "Delivered" means the broker acknowledged the message (PUBACK). Anything
//! else — no broker, refused CONNECT, no PUBACK in time — is "not delivered",
//! and the core keeps the log for a later attempt. The connection is opened
//! per publish: logs are rare and the board must not hold a socket the update
//! may need.

use embassy_net::Stack;
use embassy_net::dns::DnsQueryType;
use embassy_net::tcp::TcpSocket;
use embassy_time::{Duration, with_timeout};
use firmware::machine::PUBLISH_TIMEOUT_MS;
use heapless::String;
use rust_mqtt::Bytes;
use rust_mqtt::buffer::AllocBuffer;
use rust_mqtt::client::Client;
use rust_mqtt::client::event::Event;
use rust_mqtt::client::options::{
    ConnectOptions, DisconnectOptions, PublicationOptions, TopicReference,
};
use rust_mqtt::types::{MqttBinary, MqttString, TopicName};

use super::http::Buffers;

/// The whole exchange (DNS, TCP, CONNECT, PUBLISH, PUBACK) gets as long as the
/// core waits for the result; after that the core has already kept the log.
const EXCHANGE_TIMEOUT: Duration = Duration::from_millis(PUBLISH_TIMEOUT_MS);

/// Where and as whom to publish (copied from the core's config, so the
/// exchange borrows nothing from the core while the core keeps running).
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

/// Publishes `payload` on `topic`; `true` once the broker acknowledged it.
pub async fn publish(
    stack: Stack<'static>,
    bufs: &mut Buffers,
    broker: &Broker,
    topic: &str,
    payload: &[u8],
) -> bool {
    matches!(
        with_timeout(
            EXCHANGE_TIMEOUT,
            exchange(stack, bufs, broker, topic, payload)
        )
        .await,
        Ok(Ok(()))
    )
}

#[derive(Debug)]
struct Failed;

async fn exchange(
    stack: Stack<'static>,
    bufs: &mut Buffers,
    broker: &Broker,
    topic: &str,
    payload: &[u8],
) -> Result<(), Failed> {
    let addrs = stack
        .dns_query(broker.host.as_str(), DnsQueryType::A)
        .await
        .map_err(|_| Failed)?;
    let addr = *addrs.first().ok_or(Failed)?;
    let mut socket = TcpSocket::new(stack, &mut bufs.tcp_rx, &mut bufs.tcp_tx);
    socket
        .connect((addr, broker.port))
        .await
        .map_err(|_| Failed)?;

    let mut buffer = AllocBuffer;
    let mut client = Client::<'_, '_, _, _, 1, 1, 1, 0, 0, 0, 0>::new(&mut buffer);
    let mut options = ConnectOptions::new().clean_start();
    if let Some(user) = broker.user.as_deref() {
        options = options.user_name(MqttString::try_from(user).map_err(|_| Failed)?);
    }
    if let Some(password) = broker.password.as_deref() {
        options = options.password(MqttBinary::try_from(password).map_err(|_| Failed)?);
    }
    let client_id = MqttString::try_from(broker.client_id.as_str()).map_err(|_| Failed)?;
    client
        .connect(&mut socket, &options, Some(client_id))
        .await
        .map_err(|_| Failed)?;

    let name = TopicName::new(MqttString::try_from(topic).map_err(|_| Failed)?).ok_or(Failed)?;
    let publication = PublicationOptions::new(TopicReference::Name(name)).at_least_once();
    client
        .publish(&publication, Bytes::from(payload))
        .await
        .map_err(|_| Failed)?;
    let acked = loop {
        match client.poll().await {
            // A PUBACK with an error reason (e.g. "not authorized") is not a delivery.
            Ok(Event::PublishAcknowledged(ack)) => break ack.reason_code.is_success(),
            Ok(_) => continue,
            Err(_) => break false,
        }
    };
    let _ = client.disconnect(&DisconnectOptions::new()).await;
    drop(client);
    socket.close();
    let _ = with_timeout(Duration::from_secs(1), socket.flush()).await;
    if acked { Ok(()) } else { Err(Failed) }
}
