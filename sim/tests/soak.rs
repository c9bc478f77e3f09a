//! `sim soak`: a short soak holds its invariants and loses no log record, and its wear table
//! has the sectors an update and a wrapping log must erase; a PUBACK with a failing reason
//! code is no delivery.

use sim::board::{BootEnd, Triggers, VirtualBoard, Wiring};
use sim::soak::{SoakOptions, soak};
use sim::world::{BrokerChoice, SimDns, World, conf_json};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_soak_breaks_nothing_loses_no_record_and_wears_the_expected_sectors() {
    let opts = SoakOptions {
        // Enough for the activity log's ring (16 sectors) to wrap at least once.
        boots: 800,
        seed: 5,
        ..SoakOptions::default()
    };
    let report = soak(&opts, &BrokerChoice::Embedded)
        .await
        .expect("the soak's servers start");
    let text = report.render();
    assert!(report.violations.is_empty(), "{text}");
    assert!(report.records_lost.is_empty(), "{text}");
    assert!(report.passed(), "{text}");
    // Every boot the core finished stored a record; cut boots may not have.
    let boots = u64::from(report.boots + report.drain_boots);
    assert!(
        report.records_produced + u64::from(report.cuts) >= boots,
        "{text}"
    );
    assert_eq!(report.records_delivered, report.records_produced, "{text}");
    assert!(report.installed > 0 && report.cuts > 0, "{text}");
    let wear = |name: &str| {
        report
            .wear
            .iter()
            .find(|p| p.name == name)
            .unwrap_or_else(|| panic!("no {name} row in\n{text}"))
    };
    // Each install switches otadata: an erase of one of its two sectors.
    let otadata: u32 = wear("otadata").sectors.iter().map(|(_, n)| n).sum();
    assert!(otadata >= report.installed, "{text}");
    assert_eq!(wear("otadata").sectors.len(), 2, "{text}");
    // Both slots got images.
    assert!(!wear("ota_0").sectors.is_empty(), "{text}");
    assert!(!wear("ota_1").sectors.is_empty(), "{text}");
    // The ring wrapped: every one of its sectors erased, one of them twice at least.
    let log = wear("otalog");
    assert_eq!(log.sectors.len() as u32, log.region.size / 4096, "{text}");
    assert!(log.sectors.iter().any(|(_, n)| *n >= 2), "{text}");
    let (_, _, most) = report.most_erased().expect("sectors were erased");
    assert!(report.years_to_endurance(most).is_finite(), "{text}");
    assert!(text.contains("most-erased sector"), "{text}");
}

/// A broker that accepts every connection and answers every QoS 1 PUBLISH with a PUBACK
/// carrying `reason`. Counts the PUBLISHes it saw.
async fn tiny_broker(reason: u8) -> (SocketAddr, Arc<AtomicU32>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let publishes = Arc::new(AtomicU32::new(0));
    let seen = publishes.clone();
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            tokio::spawn(serve(socket, reason, seen.clone()));
        }
    });
    (addr, publishes)
}

/// One MQTT 5 connection: CONNACK to CONNECT, PUBACK(reason) to PUBLISH, PINGRESP to PINGREQ.
async fn serve(mut socket: TcpStream, reason: u8, publishes: Arc<AtomicU32>) {
    loop {
        let Ok(first) = socket.read_u8().await else {
            return;
        };
        // Remaining length: a variable byte integer.
        let mut len = 0usize;
        let mut shift = 0;
        loop {
            let Ok(b) = socket.read_u8().await else {
                return;
            };
            len |= usize::from(b & 0x7f) << shift;
            shift += 7;
            if b & 0x80 == 0 {
                break;
            }
        }
        let mut body = vec![0u8; len];
        if socket.read_exact(&mut body).await.is_err() {
            return;
        }
        let answer: Vec<u8> = match first >> 4 {
            // CONNECT → CONNACK: no session, success, no properties.
            1 => vec![0x20, 3, 0, 0, 0],
            // PUBLISH (QoS 1): topic, then the packet identifier.
            3 => {
                publishes.fetch_add(1, Ordering::Relaxed);
                let topic_len = usize::from(u16::from_be_bytes([body[0], body[1]]));
                let pkid = &body[2 + topic_len..4 + topic_len];
                vec![0x40, 4, pkid[0], pkid[1], reason, 0]
            }
            // PINGREQ → PINGRESP.
            12 => vec![0xd0, 0],
            // DISCONNECT, or anything else: done.
            _ => return,
        };
        if socket.write_all(&answer).await.is_err() {
            return;
        }
    }
}

/// One boot of a fresh board whose broker is a [`tiny_broker`] answering `reason`.
async fn boot_against(reason: u8) -> (VirtualBoard, BootEnd, u32) {
    let world = World::start(&BrokerChoice::Embedded, false)
        .await
        .expect("servers start");
    let (broker, publishes) = tiny_broker(reason).await;
    let conf = conf_json(
        &world.api_base(),
        broker,
        "puback-board",
        "puback",
        false,
        false,
        true,
    );
    let running = sim::image::build("1.0", 32 * 1024, 1);
    let flash = sim::image::provision(conf.as_bytes(), &running, 1);
    let mut board = VirtualBoard::new(flash, "puback-board", 1);
    let http = world.http_client(&SimDns::default()).expect("client");
    let end = board
        .boot(&http, &Wiring { broker }, &mut Triggers::default())
        .await;
    (board, end, publishes.load(Ordering::Relaxed))
}

fn published_and_kept(board: &VirtualBoard) -> (usize, usize) {
    use firmware::trace::Event;
    let published = board
        .trace
        .iter()
        .filter(|l| matches!(l.event, Event::Published { .. }))
        .count();
    let kept = board
        .trace
        .iter()
        .filter(|l| matches!(l.event, Event::LogKept { .. }))
        .count();
    (published, kept)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_puback_with_a_failing_reason_code_is_no_delivery() {
    // 0x97: quota exceeded. The broker answered, but will not forward the record.
    let (board, end, publishes) = boot_against(0x97).await;
    assert_eq!(end, BootEnd::App);
    assert_eq!(publishes, 1, "the board published its record once");
    assert_eq!(published_and_kept(&board), (0, 1), "{:#?}", board.trace);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_puback_with_a_success_reason_code_is_a_delivery() {
    // 0x10: no matching subscribers, a success code (below 0x80).
    let (board, end, publishes) = boot_against(0x10).await;
    assert_eq!(end, BootEnd::App);
    assert_eq!(publishes, 1);
    assert_eq!(published_and_kept(&board), (1, 0), "{:#?}", board.trace);
}
