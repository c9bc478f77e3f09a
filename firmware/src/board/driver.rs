//! The driver loop: the only place the glue talks to the core.
//!
//! ```text
//!            ┌────────────────────────────────────────────────────────────┐
//!            ▼                                                            │
//!   handle_boot ─► drain: poll_trace → println   poll_action → execute ──┤
//!                                                   │                     │
//!        Led ───────── set the GPIO at once         │                     │
//!        JoinNetwork ─ start WiFi + DHCP (once)     │                     │
//!        RunApplication ─ spawn board::app::run     │                     │
//!        AbortHttp ── drop that request (queued or in flight)          │
//!        Http / Publish / Reboot ─► queue ──────────┘                     │
//!                                                                         │
//!   queue not empty: run the head (http::get / mqtt::publish / reset) ────┤
//!   queue empty: wait for the first of  network edge │ poll_timeout() ────┘
//! ```
//!
//! Every branch either executes an action verbatim or reports what happened
//! (`handle_network`, `handle_response_*`, `handle_transport_error`,
//! `handle_publish_result`, `handle_timeout`). There is no update decision
//! here: no retry, no backoff, no redirect following, no flash layout.

use embassy_executor::Spawner;
use embassy_futures::select::{Either, select};
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

use super::http::{self, Buffers, Event, Flow};
use super::leds::Leds;
use super::mqtt::{self, Broker};
use super::net;
use super::tls::TlsContext;

/// What `bin/board.rs` hands over after bringing the chip up.
pub struct Hardware {
    /// The whole SPI flash; the core owns it from here on.
    pub flash: FlashStorage<'static>,
    /// The radio, started on the core's `JoinNetwork`.
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
    wifi: Option<WIFI<'static>>,
    stack: Option<Stack<'static>>,
    seed: u64,
    queue: Deque<Queued, 4>,
    /// The in-flight request the core dropped with `AbortHttp`.
    aborted: Option<u32>,
    app_started: bool,
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
        wifi: Some(hw.wifi),
        stack: None,
        seed: hw.seed,
        queue: Deque::new(),
        aborted: None,
        app_started: false,
    };
    let mut net_up = false;
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
                } => run_publish(&mut core, &mut board, bufs, seq, &topic, &payload).await,
                Queued::Reboot => {
                    // Let the last trace lines leave the UART/USB FIFO.
                    Timer::after_millis(50).await;
                    esp_hal::system::software_reset();
                }
            }
            continue;
        }

        // Nothing to execute: sleep until the network changes or the core's deadline.
        let deadline = core.poll_timeout();
        let edge = async {
            match board.stack {
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
        match select(edge, timer).await {
            Either::First(()) => {
                net_up = board.stack.is_some_and(|s| s.is_config_up());
                core.handle_network(now(), net_up);
            }
            Either::Second(()) => core.handle_timeout(now()),
        }
    }
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
                if !board.app_started {
                    board.app_started = true;
                    match super::app::run(board.leds.take_app()) {
                        Ok(token) => {
                            board.spawner.spawn(token);
                            // The HIL harness ends a boot on this line (the trace has no event for it).
                            println!("# app: running");
                        }
                        Err(_) => println!("# app: could not start"),
                    }
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

/// `JoinNetwork`: bring up WiFi and DHCP once; later requests are no-ops
/// because the station reassociates by itself.
fn join(core: &mut Core, board: &mut Board) {
    let (Some(wifi), Some(config)) = (board.wifi.take(), core.config()) else {
        return;
    };
    let (ssid, password) = wifi_credentials(config);
    match net::start(board.spawner, wifi, ssid, password, board.seed) {
        Ok(stack) => board.stack = Some(stack),
        Err(e) => {
            println!("# wifi: {:?}", e);
            // The radio of this image did not start: its own fault, not the network's.
            core.handle_join_error(now(), Transport::Board, "WiFi driver did not start");
        }
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
    let (Some(stack), Some(tls)) = (board.stack, tls) else {
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
    let result = http::get(&cx, bufs, req, deadline, &mut on_event).await;
    if let Err(e) = result
        && board.aborted != Some(id)
    {
        core.handle_transport_error(now(), id, e.kind(), e.name());
    }
    board.aborted = None;
}

/// `Publish`: one QoS 1 publish; the core's timers keep running meanwhile.
async fn run_publish(
    core: &mut Core,
    board: &mut Board,
    bufs: &mut Buffers,
    seq: u32,
    topic: &str,
    payload: &[u8],
) {
    let (Some(stack), Some(broker)) = (board.stack, core.config().map(broker)) else {
        core.handle_publish_result(now(), seq, false);
        return;
    };
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
    let publish = mqtt::publish(stack, bufs, &broker, topic, payload);
    let delivered = http::serviced(publish, &mut deadline, &mut on_event)
        .await
        .unwrap_or(false);
    core.handle_publish_result(now(), seq, delivered);
}

// ---- The few config fields the glue needs (WiFi, broker, LEDs, token). ----

fn wifi_credentials(c: &Config) -> (&str, &str) {
    (c.wifi_ssid.as_str(), c.wifi_password.as_str())
}

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
