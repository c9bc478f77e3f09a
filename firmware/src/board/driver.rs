//! The driver loop: the only place the glue talks to the core.
//!
//! ```text
//!            ┌──────────────────────────────────────────────────────────────────┐
//!            ▼                                                                  │
//!   handle_boot ─► drain: poll_trace → println   poll_action → execute ────────┤
//!                                                   │                           │
//!     Led ─────────────── set the GPIO at once      │                           │
//!     JoinNetwork ─────── start the WiFi driver if it is not running (a failure │
//!                         → handle_join_error(Board)), then one association     │
//!     StartApplication ── spawn board::app::run; keep driving the core          │
//!     RunApplication ──── spawn it if not yet; close the MQTT session           │
//!     AbortHttp ───────── drop that request (queued or in flight)               │
//!     Http / Publish / Reboot ─► queue ─────────────┘                           │
//!                                                                               │
//!   queue not empty: run the head ──────────────────────────────────────────────┤
//!     Http ──── http::get, raced against the network going down                 │
//!     Publish ─ mqtt::publish on the boot's one MQTT session, raced likewise    │
//!     Reboot ── app running? app::request_reboot, await app::allow_reboot; reset│
//!   queue empty: wait for the first of                                          │
//!     network edge │ failed association │ poll_timeout() ───────────────────────┘
//! ```
//!
//! Every branch either executes an action verbatim or reports what happened
//! (`handle_network`, `handle_join_error`, `handle_response_*`,
//! `handle_transport_error`, `handle_publish_result`, `handle_timeout`). There is no
//! update decision here: no retry, no backoff, no redirect following, no flash layout.
//! When the access point disappears mid-download the exchange is dropped at once (its
//! socket and TLS session with it) and the core hears "network down"; it asks to join
//! again on its own schedule and resumes the download with `Range`.

use embassy_executor::Spawner;
use embassy_futures::select::{Either, Either3, select, select3};
use embassy_net::Stack;
use embassy_time::Timer;
use esp_hal::peripherals::WIFI;
use esp_hal::rng::Trng;
use esp_println::println;
use esp_storage::FlashStorage;
use firmware::Instant;
use firmware::config::Config;
use firmware::http::{HttpRequest, Transport};
use firmware::machine::{Action, Payload, Topic, Updater};
use heapless::{Deque, String};
use static_cell::StaticCell;

use super::app;
use super::http::{self, Buffers, Event, Flow};
use super::leds::Leds;
use super::mqtt::{self, Broker};
use super::net::{self, Station};
use super::tls::TlsContext;

/// What `bin/board.rs` hands over after bringing the chip up.
pub struct Hardware {
    /// The whole SPI flash; the core owns it from here on.
    pub flash: FlashStorage<'static>,
    /// The radio, started on the core's first `JoinNetwork` (again after a failed start).
    pub wifi: WIFI<'static>,
    /// True random numbers for TLS.
    pub trng: Trng,
    /// Seed for the core's jitter and the IP stack.
    pub seed: u64,
}

/// Actions that need the network, run one at a time in the order the core
/// asked for them.
// Inline like the core's own actions: no heap on this path, and the queue holds four.
#[allow(clippy::large_enum_variant)]
enum Queued {
    Http(HttpRequest),
    Publish {
        seq: u32,
        topic: Topic,
        payload: Payload,
    },
    Reboot,
}

type Core = Updater<FlashStorage<'static>>;

/// Everything the executed actions act on.
struct Board {
    spawner: Spawner,
    leds: Leds,
    station: Station,
    seed: u64,
    queue: Deque<Queued, 4>,
    /// The in-flight request the core dropped with `AbortHttp`.
    aborted: Option<u32>,
    app_started: bool,
    /// What the core was last told with `handle_network`.
    net_up: bool,
    /// The MQTT session task runs (started on the first `Publish`).
    mqtt_started: bool,
}

fn now() -> Instant {
    Instant(embassy_time::Instant::now().as_millis())
}

/// Runs the core forever.
pub async fn run(spawner: Spawner, hw: Hardware) -> ! {
    static BUFFERS: StaticCell<Buffers> = StaticCell::new();
    let bufs = BUFFERS.init(Buffers::new());

    let mut flash = hw.flash;
    let boot = super::boot::read(&mut flash);
    let mut core: Core = Updater::new(flash, hw.seed);
    core.handle_boot(now(), boot);
    let leds = match core.config() {
        Some(c) => {
            let (y, g, a) = led_pins(c);
            Leds::new(y, g, a)
        }
        // conf.json unreadable: the default pins, so the config-error pattern still shows.
        None => Leds::new(
            Some(firmware::config::DEFAULT_LED_YELLOW),
            Some(firmware::config::DEFAULT_LED_GREEN),
            Some(firmware::config::DEFAULT_LED_APP),
        ),
    };
    let mut board = Board {
        spawner,
        leds,
        station: Station::new(hw.wifi),
        seed: hw.seed,
        queue: Deque::new(),
        aborted: None,
        app_started: false,
        net_up: false,
        mqtt_started: false,
    };
    // Execute the boot actions (yellow LED on) before the slower TLS setup.
    drain(&mut core, &mut board);
    let tls = match TlsContext::new(hw.trng) {
        Ok(t) => Some(t),
        Err(e) => {
            println!("# tls: setup failed: {:?}", e);
            None
        }
    };

    loop {
        drain(&mut core, &mut board);

        if let Some(job) = board.queue.pop_front() {
            match job {
                Queued::Http(req) => {
                    run_http(&mut core, &mut board, tls.as_ref(), bufs, &req).await
                }
                Queued::Publish {
                    seq,
                    topic,
                    payload,
                } => run_publish(&mut core, &mut board, seq, topic, payload).await,
                Queued::Reboot => reboot(&board).await,
            }
            continue;
        }

        // Nothing to execute: sleep until the network changes, an association fails or
        // the core's deadline passes.
        let deadline = core.poll_timeout();
        let stack = board.station.stack();
        let net_up = board.net_up;
        let edge = async {
            match stack {
                Some(stack) if net_up => stack.wait_config_down().await,
                Some(stack) => stack.wait_config_up().await,
                None => core::future::pending().await,
            }
        };
        let timer = async {
            match deadline {
                Some(at) => Timer::at(http::to_embassy(at)).await,
                None => core::future::pending().await,
            }
        };
        match select3(edge, net::join_failure(), timer).await {
            Either3::First(()) => {
                board.net_up = stack.is_some_and(|s| s.is_config_up());
                core.handle_network(now(), board.net_up);
            }
            Either3::Second(failure) => {
                core.handle_join_error(now(), failure.kind, failure.what.as_str())
            }
            Either3::Third(()) => core.handle_timeout(now()),
        }
    }
}

/// `Reboot`: when the application runs, tell it and wait until it allows the restart.
async fn reboot(board: &Board) -> ! {
    if board.app_started {
        app::request_reboot();
        println!("# app: reboot pending, waiting for app::allow_reboot");
        app::allow_reboot().await;
    }
    // Let the last trace lines leave the UART/USB FIFO.
    Timer::after_millis(50).await;
    esp_hal::system::software_reset()
}

/// Awaits `fut` unless the network goes down first (`None`: `fut` was dropped, and with
/// it any socket and TLS session it held).
async fn unless_network_drops<F: Future>(stack: Stack<'static>, fut: F) -> Option<F::Output> {
    match select(fut, stack.wait_config_down()).await {
        Either::First(out) => Some(out),
        Either::Second(()) => None,
    }
}

/// Tells the core the network is gone (found while an exchange ran).
fn network_lost(core: &mut Core, board: &mut Board) {
    println!("# net: down during an exchange");
    board.net_up = false;
    core.handle_network(now(), false);
}

/// Prints every pending trace line and executes every pending action; the
/// ones needing I/O are queued.
fn drain(core: &mut Core, board: &mut Board) {
    loop {
        while let Some((at, event)) = core.poll_event() {
            // One line per event, in the core's own format (the HIL parses it).
            let _ = event.write_line(at.0, &mut esp_println::Printer);
            println!();
        }
        let Some(action) = core.poll_action() else {
            return;
        };
        match action {
            Action::Led { led, on } => board.leds.set(led, on),
            Action::JoinNetwork => join(core, board),
            Action::StartApplication | Action::RunApplication => {
                let routine_over = matches!(action, Action::RunApplication);
                if routine_over {
                    // The routine is over: no record follows this boot.
                    mqtt::close();
                }
                if !board.app_started {
                    board.app_started = true;
                    match super::app::run(board.leds.take_app()) {
                        Ok(token) => board.spawner.spawn(token),
                        Err(_) => println!("# app: could not start"),
                    }
                }
                // The HIL harness ends a boot on `# app: running` (the routine is over); an
                // application started early runs beside a routine the harness still watches.
                if routine_over {
                    println!("# app: running");
                } else {
                    println!("# app: started beside the update routine");
                }
            }
            Action::Http(req) => push(board, Queued::Http(req)),
            Action::AbortHttp { id } => {
                let before = board.queue.len();
                for _ in 0..before {
                    if let Some(job) = board.queue.pop_front()
                        && !matches!(&job, Queued::Http(r) if r.id == id)
                    {
                        let _ = board.queue.push_back(job);
                    }
                }
                if board.queue.len() == before {
                    board.aborted = Some(id);
                }
            }
            Action::Publish {
                seq,
                topic,
                payload,
            } => push(
                board,
                Queued::Publish {
                    seq,
                    topic,
                    payload,
                },
            ),
            Action::Reboot => push(board, Queued::Reboot),
        }
    }
}

fn push(board: &mut Board, job: Queued) {
    if let Err(job) = board.queue.push_back(job) {
        // Only if the core queued more than four I/O actions without waiting
        // for one result: keep the newest, which supersedes the oldest.
        let _ = board.queue.pop_front();
        let _ = board.queue.push_back(job);
    }
}

/// `JoinNetwork`: start the WiFi driver and the IP stack if they do not run yet, then
/// one association attempt. A driver that fails to start is reported and started again at
/// the core's next `JoinNetwork`.
fn join(core: &mut Core, board: &mut Board) {
    let Some(config) = core.config() else {
        return;
    };
    if let Err(e) = board.station.join(board.spawner, config, board.seed) {
        let mut what: String<96> = String::new();
        // Cut at 96 bytes: the trace line's detail is bounded anyway.
        let _ = core::fmt::write(&mut what, format_args!("{e}"));
        println!("# wifi: {}", what);
        // The radio of this image did not start: its own fault, not the network's.
        core.handle_join_error(now(), Transport::Board, &what);
    }
}

/// `Http`: one exchange; body chunks go straight into the core.
async fn run_http(
    core: &mut Core,
    board: &mut Board,
    tls: Option<&TlsContext>,
    bufs: &mut Buffers,
    req: &HttpRequest,
) {
    let id = req.id;
    let (Some(stack), Some(tls)) = (board.station.stack(), tls) else {
        // No network stack or no TLS context on this board: the image's own fault.
        core.handle_transport_error(now(), id, Transport::Board, "no network stack or TLS");
        return;
    };
    let mut token_buf: String<128> = String::new();
    if let Some(t) = core.config().and_then(github_token) {
        let _ = token_buf.push_str(t);
    }
    let cx = http::Context {
        stack,
        tls,
        token: (!token_buf.is_empty()).then_some(token_buf.as_str()),
    };
    board.aborted = None;
    let deadline = core.poll_timeout();
    let mut on_event = |event: Event<'_>| -> Flow {
        match event {
            Event::Head(head) => core.handle_response_head(now(), id, head),
            Event::Body(chunk) => core.handle_response_body(now(), id, chunk),
            Event::End => core.handle_response_end(now(), id),
            Event::Deadline => core.handle_timeout(now()),
        }
        drain(core, board);
        let reboot = board.queue.iter().any(|q| matches!(q, Queued::Reboot));
        if board.aborted == Some(id) || reboot {
            Flow::Abort
        } else {
            Flow::Continue(core.poll_timeout())
        }
    };
    let result =
        unless_network_drops(stack, http::get(&cx, bufs, req, deadline, &mut on_event)).await;
    match result {
        Some(Err(e)) if board.aborted != Some(id) => {
            core.handle_transport_error(now(), id, e.kind(), e.name());
        }
        Some(_) => {}
        // The core drops the request itself on "network down" and resumes it later.
        None => network_lost(core, board),
    }
    board.aborted = None;
}

/// `Publish`: one record on the boot's MQTT session; the core's timers keep running meanwhile.
async fn run_publish(core: &mut Core, board: &mut Board, seq: u32, topic: Topic, payload: Payload) {
    let (Some(stack), Some(broker)) = (board.station.stack(), core.config().map(broker)) else {
        core.handle_publish_result(now(), seq, false);
        return;
    };
    if !board.mqtt_started {
        match mqtt::start(board.spawner, stack, broker) {
            Ok(()) => board.mqtt_started = true,
            Err(e) => {
                println!("# mqtt: {:?}", e);
                core.handle_publish_result(now(), seq, false);
                return;
            }
        }
    }
    let mut deadline = core.poll_timeout();
    let mut on_event = |_: Event<'_>| -> Flow {
        core.handle_timeout(now());
        drain(core, board);
        let reboot = board.queue.iter().any(|q| matches!(q, Queued::Reboot));
        if reboot {
            Flow::Abort
        } else {
            Flow::Continue(core.poll_timeout())
        }
    };
    let publish = http::serviced(
        mqtt::publish(seq, topic, payload),
        &mut deadline,
        &mut on_event,
    );
    match unless_network_drops(stack, publish).await {
        Some(delivered) => core.handle_publish_result(now(), seq, delivered.unwrap_or(false)),
        None => {
            network_lost(core, board);
            core.handle_publish_result(now(), seq, false);
        }
    }
}

// ---- The few config fields the glue needs (broker, LEDs, token; WiFi: net.rs). ----

fn led_pins(c: &Config) -> (Option<u8>, Option<u8>, Option<u8>) {
    (Some(c.led_yellow), Some(c.led_green), Some(c.led_app))
}

fn broker(c: &Config) -> Broker {
    fn copy<const N: usize>(s: &str) -> String<N> {
        let mut out = String::new();
        let _ = out.push_str(s);
        out
    }
    Broker {
        host: copy(c.mqtt_host.as_str()),
        port: c.mqtt_port,
        client_id: copy(c.mqtt_client_id.as_str()),
        user: c.mqtt_user.as_deref().map(copy),
        password: c.mqtt_password.as_deref().map(copy),
    }
}

fn github_token(c: &Config) -> Option<&str> {
    c.token.as_deref()
}
