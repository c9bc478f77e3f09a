//! The virtual board: the OTA core driven by a host platform.
//!
//! This is the simulator's counterpart of `firmware/src/bin/board.rs`: it
//! executes the core's actions with real clients (reqwest over loopback TCP,
//! an MQTT 5 client) and a simulated flash, and feeds the results back. It
//! decides nothing about updates. Time is virtual: I/O takes no virtual time
//! and the clock jumps to the core's next deadline whenever the core waits,
//! so backoff and blink timings cost nothing and traces are reproducible.

use crate::bootloader::{BootChoice, BootFailure, Bootloader};
use crate::flash::SimFlash;
use firmware::Instant;
use firmware::http::{HttpRequest, ResponseHead, Transport};
use firmware::machine::{Action, BootInfo, Updater};
use firmware::trace::{Event, Purpose};
use futures_util::StreamExt;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::Packet;
use rumqttc::v5::{AsyncClient, Event as MqttEvent, EventLoop, MqttOptions};
use std::net::SocketAddr;
use std::pin::Pin;
use std::time::Duration;

/// Real time an I/O step may take before the virtual clock jumps to the core's next deadline
/// (how a stalled server shows up as a stall without waiting out the real timeout).
const IO_PATIENCE: Duration = Duration::from_millis(1000);
/// Real time the broker's PUBACK may take at least.
const PUBACK_PATIENCE: Duration = Duration::from_secs(2);
/// A boot that has not reached the application after this much virtual time is stuck.
const MAX_BOOT_MS: u64 = 48 * 3600 * 1000;
/// Body bytes handed to the core per call, like one TCP segment.
const PIECE: usize = 1460;

/// One trace line of the board's serial console.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TraceLine {
    /// Boot number (1-based).
    pub boot: u32,
    /// Milliseconds since that boot.
    pub ms: u64,
    /// The event.
    pub event: Event,
}

impl TraceLine {
    /// The line as the board prints it.
    pub fn render(&self) -> String {
        let mut s = String::new();
        // Writing to a String cannot fail.
        let _ = self.event.write_line(self.ms, &mut s);
        s
    }
}

/// A window of virtual time without WiFi.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Outage {
    /// Start, virtual ms since the first boot.
    pub from: u64,
    /// End.
    pub until: u64,
}

/// Power-cut triggers that are not flash operations (those are armed on the flash).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Triggers {
    /// Cut once this many image bytes (over the board's life) reached the core.
    pub at_download_byte: Option<u64>,
    /// Cut right after the `n`-th (1-based, over the board's life) event of this name.
    pub at_events: Vec<(String, u32)>,
    /// After the `n`-th event of this name, cut during the `k`-th flash operation that follows.
    pub op_after_event: Option<(String, u32, u64)>,
    /// Cut when the virtual clock passes this time (ms since the first boot).
    pub at_time_ms: Option<u64>,
    /// WiFi drops once this many image bytes reached the core, for `.1` ms.
    pub wifi_drop_at_byte: Option<(u64, u64)>,
}

/// One GPIO write of the board glue (an `Action::Led` of the core), as a probe on the
/// LED line sees it: observed outside the core's trace events.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LedEdge {
    /// Boot number (1-based).
    pub boot: u32,
    /// Milliseconds since that boot.
    pub ms: u64,
    /// Which LED.
    pub led: firmware::led::Led,
    /// Switched on (true) or off.
    pub on: bool,
}

/// What a boot shows while it runs, for a console that prints as the boot goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Live {
    /// What the bootloader did (`BootChoice::describe`), before the core starts.
    Bootloader(String),
    /// A trace line, as soon as the core emitted it.
    Line(TraceLine),
    /// An LED write of the glue.
    Led(LedEdge),
}

/// Where the board's clients go.
#[derive(Clone, Debug)]
pub struct Wiring {
    /// MQTT broker (usually a fault proxy in front of the embedded broker).
    pub broker: SocketAddr,
}

/// One HTTP exchange as the board performed it (what `sim probe` reports: hosts, redirects,
/// timing). The token itself is never recorded, only whether it was sent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Exchange {
    /// Boot number (1-based).
    pub boot: u32,
    /// The core's request id.
    pub id: u32,
    /// What the request was for.
    pub purpose: Purpose,
    /// The URL requested.
    pub url: String,
    /// First byte asked for with `Range`, if any.
    pub range_from: Option<u32>,
    /// An `Authorization` header (the token) was sent.
    pub authorized: bool,
    /// HTTP status, once the head arrived.
    pub status: Option<u16>,
    /// The `Location` header, if any.
    pub location: Option<String>,
    /// Body bytes received.
    pub body_bytes: u64,
    /// The body of a release check (the release JSON), so a report can quote the server.
    pub check_body: Vec<u8>,
    /// Real time from the start of the boot to the request, the head and the end of the body.
    pub sent_at: Duration,
    /// See `sent_at`.
    pub head_at: Option<Duration>,
    /// See `sent_at`; also set when the request failed or was dropped.
    pub ended_at: Option<Duration>,
    /// Transport error, or `aborted` when the core dropped the request.
    pub error: Option<String>,
}

/// How a boot ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BootEnd {
    /// The application runs.
    App,
    /// The core asked for a reboot.
    Reboot,
    /// Power was cut.
    PowerCut,
    /// The bootloader found nothing to boot (or stopped at a bad partition table).
    Bricked(BootFailure),
    /// The core waits for nothing and issues nothing: a bug.
    Stuck,
}

/// A board: its flash and everything observed on it.
pub struct VirtualBoard {
    /// The flash.
    pub flash: SimFlash,
    /// Virtual ms since the first boot, at the start of the current boot.
    pub clock: u64,
    /// Boots so far.
    pub boots: u32,
    /// Every trace line of every boot.
    pub trace: Vec<TraceLine>,
    /// The board's bootloader (build and chip).
    pub bootloader: Bootloader,
    /// What the bootloader started, by boot number (a boot cut inside the bootloader has none).
    pub boot_choices: Vec<(u32, BootChoice)>,
    /// Image bytes handed to the core, over the board's life.
    pub downloaded: u64,
    /// WiFi outages.
    pub outages: Vec<Outage>,
    /// The MQTT client id (from the scenario's conf.json).
    pub client_id: String,
    /// What each power cut interrupted: (boot, description).
    pub cuts: Vec<(u32, String)>,
    cuts_seen: Option<crate::flash::Cut>,
    /// Record every HTTP exchange in `exchanges` (off by default: sweeps boot thousands of boards).
    pub record_exchanges: bool,
    /// Every HTTP exchange of every boot, when `record_exchanges` is on.
    pub exchanges: Vec<Exchange>,
    /// Real time an I/O step may stay silent before the virtual clock jumps to the core's
    /// next deadline. Loopback servers answer at once; a probe of a real server over the
    /// internet sets the core's stall timeout here so that only a real stall counts.
    pub io_patience: Duration,
    /// The virtual clock in ms since the first boot, for servers that follow it.
    pub clock_handle: std::sync::Arc<std::sync::atomic::AtomicU64>,
    /// Every LED write of every boot (the LED probe of the virtual board).
    pub led_edges: Vec<LedEdge>,
    /// When the application started, by boot: (boot, ms since that boot). A boot that ended
    /// (reboot, power cut) before the application started has no entry.
    pub app_starts: Vec<(u32, u64)>,
    /// How long each boot the core ran in lasted, in virtual ms: (boot, length).
    pub boot_lengths: Vec<(u32, u64)>,
    /// The application's reboot hook (`board/app.rs` on a board): once it runs beside the
    /// routine, it lets a reboot into a new release happen this long after the core asks.
    pub app_holds_reboot_ms: u64,
    /// Receives trace lines, LED writes and the bootloader's choice as they happen.
    pub live: Option<tokio::sync::mpsc::UnboundedSender<Live>>,
    seed: u64,
    event_counts: std::collections::HashMap<&'static str, u32>,
}

type Pending =
    Pin<Box<dyn std::future::Future<Output = reqwest::Result<reqwest::Response>> + Send>>;

enum Flight {
    Connecting {
        id: u32,
        purpose: Purpose,
        fut: Pending,
    },
    Streaming {
        id: u32,
        purpose: Purpose,
        body: Pin<Box<dyn futures_util::Stream<Item = reqwest::Result<bytes::Bytes>> + Send>>,
    },
}

impl Flight {
    fn id(&self) -> u32 {
        match self {
            Flight::Connecting { id, .. } | Flight::Streaming { id, .. } => *id,
        }
    }
}

enum Step {
    Head(reqwest::Response),
    Chunk(bytes::Bytes),
    End,
    Failed(Transport, String),
}

struct Mqtt {
    client: AsyncClient,
    events: EventLoop,
}

impl VirtualBoard {
    /// A board with this flash; `seed` feeds the core's jitter.
    pub fn new(flash: SimFlash, client_id: &str, seed: u64) -> VirtualBoard {
        VirtualBoard {
            flash,
            clock: 0,
            boots: 0,
            trace: Vec::new(),
            bootloader: Bootloader::default(),
            boot_choices: Vec::new(),
            downloaded: 0,
            outages: Vec::new(),
            client_id: client_id.to_string(),
            cuts: Vec::new(),
            record_exchanges: false,
            exchanges: Vec::new(),
            io_patience: IO_PATIENCE,
            cuts_seen: None,
            clock_handle: Default::default(),
            led_edges: Vec::new(),
            app_starts: Vec::new(),
            boot_lengths: Vec::new(),
            app_holds_reboot_ms: 0,
            live: None,
            seed,
            event_counts: Default::default(),
        }
    }

    /// A copy of this board between two boots (flash, history and counters), under another
    /// MQTT client id: the power-cut sweep runs many futures from one past. Nobody watches
    /// the copy's console, and its clock is its own.
    pub fn fork(&self, client_id: &str) -> VirtualBoard {
        VirtualBoard {
            flash: self.flash.clone(),
            clock: self.clock,
            boots: self.boots,
            trace: self.trace.clone(),
            bootloader: self.bootloader,
            boot_choices: self.boot_choices.clone(),
            downloaded: self.downloaded,
            outages: self.outages.clone(),
            client_id: client_id.to_string(),
            cuts: self.cuts.clone(),
            cuts_seen: self.cuts_seen,
            record_exchanges: self.record_exchanges,
            exchanges: self.exchanges.clone(),
            io_patience: self.io_patience,
            clock_handle: std::sync::Arc::new(std::sync::atomic::AtomicU64::new(
                self.clock_handle.load(std::sync::atomic::Ordering::Relaxed),
            )),
            led_edges: self.led_edges.clone(),
            app_starts: self.app_starts.clone(),
            boot_lengths: self.boot_lengths.clone(),
            app_holds_reboot_ms: self.app_holds_reboot_ms,
            live: None,
            seed: self.seed,
            event_counts: self.event_counts.clone(),
        }
    }

    /// How many events of this name the board reported so far.
    pub fn event_count(&self, name: &str) -> u32 {
        self.event_counts.get(name).copied().unwrap_or(0)
    }

    /// Powers the board on and runs one boot to its end.
    pub async fn boot(
        &mut self,
        http: &reqwest::Client,
        wiring: &Wiring,
        triggers: &mut Triggers,
    ) -> BootEnd {
        self.flash.power_on();
        self.boots += 1;
        let boot = self.boots;
        let choice = match self.bootloader.boot(&mut self.flash) {
            Ok(c) => c,
            Err(BootFailure::PowerCut(_)) => {
                self.note_cut(boot);
                return BootEnd::PowerCut;
            }
            Err(b) => return BootEnd::Bricked(b),
        };
        let offset = choice.offset;
        let live = self.live.clone();
        if let Some(live) = &live {
            // A closed receiver only means nobody watches the console.
            let _ = live.send(Live::Bootloader(choice.describe()));
        }
        self.boot_choices.push((boot, choice));
        let seed = self.seed ^ u64::from(boot).wrapping_mul(0x9E37_79B9);
        let start = self.clock;
        let clock_out = self.clock_handle.clone();
        let io_patience = self.io_patience;
        let mut run = Run {
            core: Updater::new(&mut self.flash, seed),
            boot,
            now: 0,
            trace: Vec::new(),
            counts: std::mem::take(&mut self.event_counts),
            downloaded: self.downloaded,
            outages: self.outages.clone(),
            start,
            flight: None,
            join_at: None,
            mqtt: None,
            // As patient with the broker as with the servers: a loaded machine must not turn
            // a slow acknowledgement into an undelivered record (another flash history).
            puback_patience: io_patience.max(PUBACK_PATIENCE),
            silenced: false,
            live,
            wall: std::time::Instant::now(),
            record: self.record_exchanges,
            exchanges: &mut self.exchanges,
            led_edges: &mut self.led_edges,
            app_starts: &mut self.app_starts,
            app_holds_reboot_ms: self.app_holds_reboot_ms,
            triggers,
        };
        // Like the board glue, which reads it from the MMU: the slot the bootloader started.
        run.core.handle_boot(
            Instant(0),
            BootInfo {
                running_offset: offset,
                chip_revision: self.bootloader.chip.revision,
            },
        );
        let end = loop {
            clock_out.store(start + run.now, std::sync::atomic::Ordering::Relaxed);
            run.core.flash_mut().set_clock(start + run.now);
            if run.drain() || run.core.flash_mut().is_dead() {
                run.core.flash_mut().cut_now();
                break BootEnd::PowerCut;
            }
            if let Some(action) = run.core.poll_action() {
                if let Some(end) = run.execute(action, http, wiring, &self.client_id).await {
                    break end;
                }
                continue;
            }
            let deadline = [run.core.poll_timeout().map(|t| t.0), run.join_at]
                .into_iter()
                .flatten()
                .min();
            if run.flight.is_some() {
                run.step_flight(io_patience, deadline).await;
                continue;
            }
            if let Some(end) = run.wait(deadline) {
                break end;
            }
        };
        let now = run.now;
        let (trace, counts, outages, downloaded, mqtt) = run.finish();
        if let Some(m) = mqtt {
            let _ = m.client.disconnect().await;
        }
        if end == BootEnd::PowerCut {
            self.note_cut(boot);
        }
        self.event_counts = counts;
        self.outages = outages;
        self.downloaded = downloaded;
        self.trace.extend(trace);
        self.clock = start + now;
        self.boot_lengths.push((boot, now));
        end
    }
}

/// One boot in progress: the core and everything the glue tracks while it runs.
struct Run<'b> {
    core: Updater<&'b mut SimFlash>,
    boot: u32,
    /// Virtual ms since this boot started.
    now: u64,
    /// Virtual ms since the first boot, at the start of this one.
    start: u64,
    trace: Vec<TraceLine>,
    counts: std::collections::HashMap<&'static str, u32>,
    /// Image bytes handed to the core over the board's life.
    downloaded: u64,
    outages: Vec<Outage>,
    flight: Option<Flight>,
    /// When a pending join succeeds (the end of an outage).
    join_at: Option<u64>,
    mqtt: Option<Mqtt>,
    /// Real time a PUBACK may take before the record counts as not delivered.
    puback_patience: Duration,
    /// The power is gone: the console shows no more of this boot.
    silenced: bool,
    live: Option<tokio::sync::mpsc::UnboundedSender<Live>>,
    wall: std::time::Instant,
    record: bool,
    exchanges: &'b mut Vec<Exchange>,
    led_edges: &'b mut Vec<LedEdge>,
    app_starts: &'b mut Vec<(u32, u64)>,
    app_holds_reboot_ms: u64,
    triggers: &'b mut Triggers,
}

impl Run<'_> {
    /// Moves the core's events into the trace; true when an event trigger cut the power.
    fn drain(&mut self) -> bool {
        drain(
            &mut self.core,
            &mut self.trace,
            &mut self.counts,
            self.triggers,
            self.boot,
            (&self.live, &mut self.silenced),
        )
    }

    /// Executes one action of the core; `Some` when it ends the boot.
    async fn execute(
        &mut self,
        action: Action,
        http: &reqwest::Client,
        wiring: &Wiring,
        client_id: &str,
    ) -> Option<BootEnd> {
        let (boot, now) = (self.boot, self.now);
        match action {
            Action::Led { led, on } => {
                let edge = LedEdge {
                    boot,
                    ms: now,
                    led,
                    on,
                };
                self.led_edges.push(edge);
                if let Some(live) = &self.live {
                    let _ = live.send(Live::Led(edge));
                }
            }
            Action::JoinNetwork => {
                let up = wifi_up_at(&self.outages, self.start + now);
                if up <= self.start + now {
                    self.core.handle_network(Instant(now), true);
                } else {
                    self.join_at = Some(up - self.start);
                }
            }
            Action::Http(req) => {
                let token = self.core.config().and_then(|c| c.token.clone());
                if self.record {
                    self.exchanges.push(Exchange {
                        boot,
                        id: req.id,
                        purpose: req.purpose,
                        url: req.url.to_string(),
                        range_from: req.range_from,
                        authorized: req.authorize && token.is_some(),
                        status: None,
                        location: None,
                        body_bytes: 0,
                        check_body: Vec::new(),
                        sent_at: self.wall.elapsed(),
                        head_at: None,
                        ended_at: None,
                        error: None,
                    });
                }
                self.flight = Some(start_request(http, &req, token.as_deref()));
            }
            Action::AbortHttp { id } => {
                if self.flight.as_ref().is_some_and(|f| f.id() == id) {
                    self.flight = None;
                    if let Some(x) = exchange(self.exchanges, boot, id) {
                        x.ended_at.get_or_insert(self.wall.elapsed());
                        // Dropping a redirect after its head is the normal course.
                        if x.status.is_none_or(|s| !(300..400).contains(&s)) {
                            x.error.get_or_insert_with(|| "aborted".into());
                        }
                    }
                }
            }
            Action::Publish {
                seq,
                topic,
                payload,
            } => {
                let delivered = publish(
                    &mut self.mqtt,
                    (wiring, self.puback_patience),
                    client_id,
                    &topic,
                    &payload,
                )
                .await;
                self.core
                    .handle_publish_result(Instant(now), seq, delivered);
            }
            Action::Reboot => {
                let app_runs = self.app_starts.last().is_some_and(|(b, _)| *b == boot);
                if app_runs && self.app_holds_reboot_ms > 0 {
                    // The application finishes its work first; the new image is committed
                    // already, so a power cut meanwhile boots it just the same.
                    self.now += self.app_holds_reboot_ms;
                }
                return Some(BootEnd::Reboot);
            }
            Action::StartApplication => {
                // The application runs beside the routine from now on.
                self.app_starts.push((boot, now));
            }
            Action::RunApplication => {
                if self.app_starts.last().is_none_or(|(b, _)| *b != boot) {
                    self.app_starts.push((boot, now));
                }
                return Some(BootEnd::App);
            }
        }
        None
    }

    /// Waits for the request in flight to make progress (real I/O) and hands it to the core;
    /// a server silent for `io_patience` lets the virtual clock jump to `deadline`.
    async fn step_flight(&mut self, io_patience: Duration, deadline: Option<u64>) {
        let Some(f) = self.flight.as_mut() else {
            return;
        };
        let step = tokio::time::timeout(io_patience, next_step(f)).await;
        let id = f.id();
        let purpose = match f {
            Flight::Connecting { purpose, .. } | Flight::Streaming { purpose, .. } => *purpose,
        };
        let streaming = matches!(f, Flight::Streaming { .. });
        if let Ok(step) = &step {
            self.note_exchange(id, step);
        }
        let now = Instant(self.now);
        match step {
            Ok(Step::Head(resp)) => {
                let mut head = ResponseHead::new(resp.status().as_u16());
                for (name, value) in resp.headers() {
                    if let Ok(v) = value.to_str() {
                        head.header(name.as_str(), v);
                    }
                }
                self.flight = Some(Flight::Streaming {
                    id,
                    purpose,
                    body: Box::pin(resp.bytes_stream()),
                });
                self.core.handle_response_head(now, id, &head);
            }
            Ok(Step::Chunk(bytes)) => {
                let is_image = streaming && purpose == Purpose::Download;
                self.deliver(id, &bytes, is_image);
            }
            Ok(Step::End) => {
                self.flight = None;
                self.core.handle_response_end(now, id);
            }
            Ok(Step::Failed(kind, what)) => {
                self.flight = None;
                self.core.handle_transport_error(now, id, kind, &what);
            }
            Err(_) => {
                if let Some(d) = deadline {
                    self.now = self.now.max(d);
                    self.core.handle_timeout(Instant(self.now));
                }
            }
        }
    }

    /// Records what a step of request `id` showed, when exchanges are recorded.
    fn note_exchange(&mut self, id: u32, step: &Step) {
        let at = self.wall.elapsed();
        let Some(x) = exchange(self.exchanges, self.boot, id) else {
            return;
        };
        match step {
            Step::Head(resp) => {
                x.status = Some(resp.status().as_u16());
                x.location = resp
                    .headers()
                    .get("location")
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_string);
                x.head_at = Some(at);
            }
            Step::Chunk(bytes) => {
                x.body_bytes += bytes.len() as u64;
                if x.purpose == Purpose::Check {
                    x.check_body.extend_from_slice(bytes);
                }
            }
            Step::End => x.ended_at = Some(at),
            Step::Failed(_, what) => {
                x.ended_at = Some(at);
                x.error = Some(what.clone());
            }
        }
    }

    /// Hands body bytes to the core one TCP segment at a time, firing the download-byte
    /// triggers (power cut, WiFi drop) exactly at their byte.
    fn deliver(&mut self, id: u32, bytes: &[u8], is_image: bool) {
        let now = Instant(self.now);
        for piece in bytes.chunks(PIECE) {
            let mut piece = piece;
            if is_image {
                let downloaded = self.downloaded;
                if let Some(at) = self
                    .triggers
                    .at_download_byte
                    .filter(|&at| downloaded + piece.len() as u64 >= at)
                {
                    piece = &piece[..(at - downloaded) as usize];
                    self.triggers.at_download_byte = None;
                    self.core.handle_response_body(now, id, piece);
                    self.downloaded += piece.len() as u64;
                    self.core.flash_mut().cut_now();
                    return;
                }
                if let Some((at, length)) = self
                    .triggers
                    .wifi_drop_at_byte
                    .filter(|(at, _)| downloaded + piece.len() as u64 >= *at)
                {
                    self.triggers.wifi_drop_at_byte = None;
                    // Exactly the bytes before the drop arrive, whatever the network's
                    // chunking: runs of one state stay identical.
                    let before = &piece[..(at - downloaded) as usize];
                    if !before.is_empty() {
                        self.core.handle_response_body(now, id, before);
                        self.downloaded += before.len() as u64;
                    }
                    self.outages.push(Outage {
                        from: self.start + self.now,
                        until: self.start + self.now + length,
                    });
                    self.core.handle_network(now, false);
                    return;
                }
                self.downloaded += piece.len() as u64;
            }
            self.core.handle_response_body(now, id, piece);
            // Triggers on events count per piece, whatever the network's chunking.
            if self.drain() {
                self.core.flash_mut().cut_now();
                return;
            }
            if self.core.flash_mut().is_dead() || self.flight.as_ref().is_none_or(|f| f.id() != id)
            {
                return;
            }
        }
    }

    /// Nothing in flight: the virtual clock jumps to the next deadline; `Some` ends the boot.
    fn wait(&mut self, deadline: Option<u64>) -> Option<BootEnd> {
        let Some(d) = deadline else {
            return Some(BootEnd::Stuck);
        };
        if self.now > MAX_BOOT_MS {
            return Some(BootEnd::Stuck);
        }
        self.now = self.now.max(d);
        let now = self.now;
        if self
            .triggers
            .at_time_ms
            .is_some_and(|t| self.start + now >= t)
        {
            self.triggers.at_time_ms = None;
            self.core.flash_mut().cut_now();
            return Some(BootEnd::PowerCut);
        }
        if self.join_at.is_some_and(|j| j <= now) {
            self.join_at = None;
            self.core.handle_network(Instant(now), true);
        }
        self.core.handle_timeout(Instant(now));
        None
    }

    /// The boot is over: its last events join the trace; what the board keeps comes back.
    #[allow(clippy::type_complexity)]
    fn finish(
        mut self,
    ) -> (
        Vec<TraceLine>,
        std::collections::HashMap<&'static str, u32>,
        Vec<Outage>,
        u64,
        Option<Mqtt>,
    ) {
        while let Some((t, event)) = self.core.poll_event() {
            let line = TraceLine {
                boot: self.boot,
                ms: t.0,
                event,
            };
            if let Some(live) = &self.live {
                let _ = live.send(Live::Line(line.clone()));
            }
            self.trace.push(line);
        }
        (
            self.trace,
            self.counts,
            self.outages,
            self.downloaded,
            self.mqtt,
        )
    }
}

/// The exchange of request `id` in this boot.
fn exchange(exchanges: &mut [Exchange], boot: u32, id: u32) -> Option<&mut Exchange> {
    exchanges
        .iter_mut()
        .rev()
        .find(|x| x.boot == boot && x.id == id)
}

impl VirtualBoard {
    /// Records what the power cut of this boot interrupted.
    fn note_cut(&mut self, boot: u32) {
        let what = match self.flash.last_cut() {
            Some(c) if Some(c) != self.cuts_seen => format!(
                "{:?} at 0x{:x} (flash operation {})",
                c.kind, c.offset, c.op
            ),
            _ => "between flash operations".to_string(),
        };
        self.cuts_seen = self.flash.last_cut();
        self.cuts.push((boot, what));
    }
}

/// Moves the core's events into the trace and fires event triggers; true when power is cut.
fn drain(
    core: &mut Updater<&mut SimFlash>,
    trace: &mut Vec<TraceLine>,
    counts: &mut std::collections::HashMap<&'static str, u32>,
    triggers: &mut Triggers,
    boot: u32,
    (live, silenced): (&Option<tokio::sync::mpsc::UnboundedSender<Live>>, &mut bool),
) -> bool {
    let mut cut = false;
    while let Some((t, event)) = core.poll_event() {
        let name = event.name();
        let n = counts.entry(name).or_insert(0);
        *n += 1;
        if let Some(i) = triggers
            .at_events
            .iter()
            .position(|(e, k)| e == name && *k == *n)
        {
            triggers.at_events.remove(i);
            cut = true;
        }
        if triggers
            .op_after_event
            .as_ref()
            .is_some_and(|(e, k, _)| e == name && *k == *n)
            && let Some((_, _, ops)) = triggers.op_after_event.take()
        {
            let at = core.flash_mut().ops() + ops;
            core.flash_mut().arm_cut(at);
        }
        let line = TraceLine {
            boot,
            ms: t.0,
            event,
        };
        // A board without power prints nothing: what the core reports about the flash
        // operation the cut interrupted (its flash error, and all after it) stays in the
        // simulator's trace but never reaches a console. What it reported before that
        // operation was printed before the cut.
        if core.flash_mut().is_dead()
            && matches!(
                line.event,
                Event::Error {
                    code: firmware::trace::ErrorCode::Flash,
                    ..
                }
            )
        {
            *silenced = true;
        }
        if let Some(live) = live.as_ref().filter(|_| !*silenced) {
            // A closed receiver only means nobody watches the console.
            let _ = live.send(Live::Line(line.clone()));
        }
        trace.push(line);
    }
    cut
}

/// The first time at or after `t` that is in no outage.
fn wifi_up_at(outages: &[Outage], t: u64) -> u64 {
    let mut t = t;
    // Outages may touch each other: walk until a time that is in none.
    while let Some(o) = outages.iter().find(|o| o.from <= t && t < o.until) {
        t = o.until;
    }
    t
}

fn start_request(http: &reqwest::Client, req: &HttpRequest, token: Option<&str>) -> Flight {
    let mut builder = http
        .get(req.url.as_str())
        .header("accept", req.accept.header_value())
        .header("user-agent", "esp-ota-sim");
    if let Some(from) = req.range_from {
        builder = builder.header("range", format!("bytes={from}-"));
        if let Some(validator) = req.if_range.as_deref() {
            builder = builder.header("if-range", validator);
        }
    }
    if let Some(etag) = req.if_none_match.as_deref() {
        builder = builder.header("if-none-match", etag);
    }
    if let (true, Some(token)) = (req.authorize, token) {
        builder = builder.header("authorization", format!("Bearer {token}"));
    }
    Flight::Connecting {
        id: req.id,
        purpose: req.purpose,
        fut: Box::pin(builder.send()),
    }
}

async fn next_step(flight: &mut Flight) -> Step {
    match flight {
        Flight::Connecting { fut, .. } => match fut.await {
            Ok(resp) => Step::Head(resp),
            Err(e) => Step::Failed(transport_kind(&e), describe(&e)),
        },
        Flight::Streaming { body, .. } => match body.next().await {
            Some(Ok(bytes)) => Step::Chunk(bytes),
            Some(Err(e)) => Step::Failed(transport_kind(&e), describe(&e)),
            None => Step::End,
        },
    }
}

/// Whose doing a transport error is: a failed TLS handshake is the image's (its roots, its
/// clock), anything else the network's. rustls's error sits inside an `io::Error`, whose
/// `source()` skips it, so each `io::Error` is opened.
fn transport_kind(e: &reqwest::Error) -> Transport {
    let mut next: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = next {
        let inner = err
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
            .map(|i| i as &(dyn std::error::Error + 'static));
        if err.is::<rustls::Error>() || inner.is_some_and(|i| i.is::<rustls::Error>()) {
            return Transport::Tls;
        }
        next = inner.or_else(|| err.source());
    }
    Transport::Network
}

/// A transport error as one short line: what failed and the root cause (no URL: it
/// carries the run's ephemeral port and would make traces differ between runs).
fn describe(e: &reqwest::Error) -> String {
    let what = if e.is_connect() {
        "connect"
    } else if e.is_timeout() {
        "timeout"
    } else if e.is_body() || e.is_decode() {
        "body"
    } else {
        "request"
    };
    let mut root: &dyn std::error::Error = e;
    while let Some(next) = root.source() {
        root = next;
    }
    format!("{what}: {root}")
}

/// Publishes with QoS 1 and waits for the broker's PUBACK.
async fn publish(
    mqtt: &mut Option<Mqtt>,
    (wiring, patience): (&Wiring, Duration),
    client_id: &str,
    topic: &str,
    payload: &[u8],
) -> bool {
    if mqtt.is_none() {
        let mut opts = MqttOptions::new(
            client_id.to_string(),
            wiring.broker.ip().to_string(),
            wiring.broker.port(),
        );
        opts.set_keep_alive(Duration::from_secs(30));
        opts.set_clean_start(true);
        // One record in flight at a time; the default sizes its state for 65535.
        opts.set_outgoing_inflight_upper_limit(8);
        let (client, events) = AsyncClient::new(opts, 8);
        *mqtt = Some(Mqtt { client, events });
    }
    let Some(m) = mqtt.as_mut() else { return false };
    if m.client
        .publish(topic.to_string(), QoS::AtLeastOnce, false, payload.to_vec())
        .await
        .is_err()
    {
        *mqtt = None;
        return false;
    }
    let acked = tokio::time::timeout(patience, async {
        loop {
            match m.events.poll().await {
                // As the firmware's glue: a PUBACK with a failing reason code (0x80 and up,
                // e.g. quota exceeded) is no delivery.
                Ok(MqttEvent::Incoming(Packet::PubAck(ack))) => {
                    return crate::broker::puback_delivers(ack.reason);
                }
                Ok(_) => {}
                Err(_) => return false,
            }
        }
    })
    .await
    .unwrap_or(false);
    if !acked {
        *mqtt = None;
    }
    acked
}
