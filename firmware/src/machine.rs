//! The update state machine, sans-IO.
//!
//! [`Updater`] owns the flash (through the [`NorFlash`] seam) and nothing
//! else: no sockets, no clock, no randomness of its own. A driver (the board
//! glue or the simulator) feeds it inputs with the current time and executes
//! the actions it answers with:
//!
//! ```text
//!            handle_boot / handle_network / handle_response_* /
//!  driver -> handle_transport_error / handle_publish_result / handle_timeout -> Updater
//!  driver <- poll_action (Led, JoinNetwork, Http, AbortHttp, Publish, Reboot, RunApplication)
//!  driver <- poll_event  (the trace: print one line each)
//!  driver <- poll_timeout (call handle_timeout then, or earlier: spurious calls are no-ops)
//! ```
//!
//! After every input, drain `poll_event` and `poll_action`, then wait for the
//! next I/O completion or `poll_timeout`, whichever comes first.
//!
//! One boot, as DESIGN.md §1 describes it:
//!
//! ```text
//! boot: yellow on, read partition table, otadata, running image, conf.json, log ring
//!   |-- running image unconfirmed?  count a trial boot (or roll back after MAX_TRIALS)
//! join network -----------(down: wait, yellow stays on)
//! check latest release ---(network error / 5xx / rate limit: backoff, retry)
//!   |-- first answer on an unconfirmed image: confirm it (otadata state valid)
//!   |-- not newer: outcome up_to_date (or updated, on the boot that confirmed)
//!   |-- refused / bad release: outcome failed
//! download into the inactive slot, sector by sector, marking progress (resumable)
//! verify what is on flash: image structure, checksum, appended hash, size,
//!   release SHA-256, chip, version == tag
//! trial record, then switch otadata (the commit point) -> outcome installed -> reboot
//! outcome: append to the log ring, publish what the broker has not acknowledged,
//!   blink the green pattern, yellow off if all went well, run the application
//! ```

use crate::Instant;
use crate::backoff::{self, Rng};
use crate::config::{Config, ConfigParser, MAX_CONFIG_LEN};
use crate::format::app_image::{
    self, APP_DESC_LEN, AppDesc, HEADER_LEN, ImageError, ImageHeader, ImageVerifier,
    SEGMENT_HEADER_LEN,
};
use crate::format::otadata::{ImageState, OtaData, OtaEntry};
use crate::http::{Accept, HttpRequest, ResponseHead, Transport, Validator};
use crate::led::{Led, Pattern, Player};
use crate::release::{ReleaseError, ReleaseParser, SelectedRelease, Url};
use crate::storage::log::{LogStore, MAX_PAYLOAD, Record};
use crate::storage::memory::{self, CheckMemo, MAX_STREAK, Memory, RefusedRelease, Remembered};
use crate::storage::progress::{self, Progress, Target};
use crate::storage::trial::{MAX_RETURNS, MAX_TRIALS, Trial, TrialRecord};
use crate::storage::{self, FlashError, Layout, Region, SECTOR};
use crate::trace::{self, Detail, ErrorCode, Event, Outcome, Purpose, Short, Value};
use crate::version::Version;
use core::fmt::{self, Write as _};
use embedded_storage::nor_flash::NorFlash;
use heapless::{Deque, String, Vec};

/// Most redirects followed for one request (GitHub needs one).
pub const MAX_REDIRECTS: u8 = 5;
/// Largest release response read (the check's JSON); beyond it the response is refused.
pub const MAX_RELEASE_RESPONSE: u32 = 4 * 1024 * 1024;
/// A request that delivers nothing for this long is abandoned and retried.
pub const STALL_MS: u64 = 30_000;
/// How long an image on trial may take to confirm itself before it reboots (using a trial).
pub const TRIAL_DEADLINE_MS: u64 = 10 * 60 * 1000;
/// How long joining the network may take before the core counts a retry and asks again.
pub const JOIN_TIMEOUT_MS: u64 = 20_000;
/// How long the core waits for the broker to acknowledge one log record.
pub const PUBLISH_TIMEOUT_MS: u64 = 10_000;
/// Most log records published in one boot: a board that was offline for weeks delivers its
/// backlog over several boots instead of holding the broker (and its own routine) for minutes.
pub const MAX_PUBLISHES_PER_BOOT: u32 = 32;
/// Progress is traced every this many bytes.
const PROGRESS_EVERY: u32 = 64 * 1024;

/// A log payload as handed to the driver.
pub type Payload = Vec<u8, MAX_PAYLOAD>;
/// An MQTT topic.
pub type Topic = String<160>;

/// What the platform knows about this boot that the flash cannot tell.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BootInfo {
    /// Flash offset of the app partition the running code is mapped from: the board glue
    /// reads it from the MMU, as ESP-IDF's `esp_ota_get_running_partition` does. Never
    /// derived from otadata: a bootloader may reject the selected image for reasons the
    /// core does not know and boot another slot, and the next update must not erase the
    /// slot that is executing.
    pub running_offset: u32,
    /// The chip's revision, `major * 100 + minor` (eFuse), compared with an image's
    /// `min_chip_rev_full`/`max_chip_rev_full` as the bootloader compares it.
    pub chip_revision: u16,
}

/// What the driver must do.
// `Publish` carries its payload inline: the core has no heap, and actions are drained at once.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Switch an LED.
    Led {
        /// Which.
        led: Led,
        /// On or off.
        on: bool,
    },
    /// Bring the network up (join WiFi, get an address); report with `handle_network`.
    JoinNetwork,
    /// Perform a GET; report with `handle_response_head`, `_body`, `_end` or `handle_transport_error`.
    Http(HttpRequest),
    /// Drop request `id`; no further callbacks for it are wanted.
    AbortHttp {
        /// The request.
        id: u32,
    },
    /// Publish an activity-log record with QoS 1; report with `handle_publish_result`.
    Publish {
        /// Record sequence number.
        seq: u32,
        /// Topic (`{prefix}/{client_id}/log`).
        topic: Topic,
        /// JSON payload.
        payload: Payload,
    },
    /// Restart the chip (the bootloader then reads otadata). When the application already
    /// runs (after [`Action::StartApplication`]), the glue reboots when the application
    /// allows it (`board/app.rs`); until then the new image waits, already committed.
    Reboot,
    /// The update routine has waited `update.max_wait_s` without finishing: start the
    /// application now and keep driving the core beside it. The yellow LED stays on; the
    /// routine goes on retrying and ends later with `RunApplication` or `Reboot`.
    StartApplication,
    /// The update routine is over: run the application (if `StartApplication` has not
    /// started it already).
    RunApplication,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Step {
    Check,
    Download,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum After {
    App,
    Reboot,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// `handle_boot` not called yet.
    Created,
    /// Waiting for the network before `Step`.
    WaitingNetwork(Step),
    /// Waiting for the backoff deadline before `Step`.
    Backoff(Step),
    /// A request for `Step` is in flight.
    InFlight(Step),
    /// Outcome decided: playing LEDs and publishing the log.
    Finishing(After),
    /// Reboot or RunApplication was issued.
    Done,
}

/// What the running image says about itself.
#[derive(Clone, Debug, Default)]
struct Running {
    slot: u8,
    version_text: Short,
    version: Option<Version>,
    chip_id: Option<u16>,
    /// The chip's revision (`major * 100 + minor`).
    chip_revision: u16,
    /// The image is on trial (otadata state new / pending_verify).
    on_trial: bool,
    trial: Option<Trial>,
    /// Version of the image before this one (for the `updated` record).
    previous_version: Short,
    /// The otadata entry index of the running slot, when otadata selects it.
    active_entry: Option<usize>,
    /// The bootloader refused the image otadata selected (this version) and started this
    /// one: the board is already back on it, no reboot needed.
    refused_version: Option<Short>,
}

/// What this boot did, for the outcome record.
#[derive(Clone, Debug, Default)]
struct Session {
    retries: u32,
    /// Consecutive failures, for the backoff exponent.
    attempt: u32,
    bytes: u32,
    resumed_from: u32,
    confirmed: bool,
    /// How the last attempt of this boot to reach GitHub failed: `Tls` or `Board` say the
    /// image itself cannot get through (its roots, its clock, its network stack); `Network`
    /// (or nothing) that the network or GitHub was away. Judged at a trial boot's deadline,
    /// the last failure and not any earlier one: a connection reset once mid-handshake must
    /// not count against a good image.
    last_failure: Option<Transport>,
    /// Why the last retry of this boot was needed (network, GitHub's 5xx, rate limit).
    last_retry: Option<ErrorCode>,
    /// CRC of the check URL and the `ETag` of its 200 answer, kept until the outcome says
    /// whether the answer may be remembered.
    check_etag: Option<(u32, Validator)>,
    /// This boot already counted itself as one without GitHub in the memory.
    counted_failed_boot: bool,
    /// CRC of this boot's check URL (what a remembered `ETag` is keyed on).
    check_url_crc: u32,
    /// The release a 304 named (from the memory), for the outcome record.
    remembered_tag: Option<Short>,
}

struct InFlightRequest {
    id: u32,
    /// Where it went (a redirect from it must not downgrade https).
    url: Url,
    redirects: u8,
    range_from: u32,
    status: u16,
    content_length: Option<u32>,
    received: u32,
    body: Body,
}

// The release parser lives inline: no heap, and there is one request at a time.
#[allow(clippy::large_enum_variant)]
enum Body {
    /// The release check: the JSON goes to the parser.
    Release(ReleaseParser),
    /// The image: bytes go to the slot.
    Image,
}

struct Download {
    target: Target,
    slot: Region,
    /// Bytes durable in the slot (whole sectors, or the whole image).
    written: u32,
    buf: [u8; SECTOR as usize],
    filled: usize,
    /// Checks the first bytes of a download from zero (header, app descriptor).
    early: Option<ImageVerifier>,
    /// The asset's ETag, sent as `If-Range` when resuming.
    validator: Option<Validator>,
    /// Bytes already durable that a server ignoring `Range` sends again: compared with the
    /// slot, not rewritten, so neither the slot nor the progress sector is erased again.
    durable_before: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum PublishState {
    Idle,
    InFlight(Record),
    Finished,
}

/// The OTA core: one per boot.
pub struct Updater<F: NorFlash> {
    flash: F,
    rng: Rng,
    now: Instant,
    phase: Phase,
    network_up: bool,
    actions: Deque<Action, 6>,
    events: Deque<(Instant, Event), 32>,
    config: Option<Config>,
    layout: Option<Layout>,
    running: Running,
    session: Session,
    log: Option<LogStore>,
    release: Option<SelectedRelease>,
    request: Option<InFlightRequest>,
    next_request_id: u32,
    download: Option<Download>,
    wake_at: Option<Instant>,
    /// When an image on trial gives up on this boot.
    trial_deadline: Option<Instant>,
    /// The routine ends with a reboot whatever the outcome (a failed trial boot).
    reboot_after_outcome: bool,
    led: Player,
    publish: PublishState,
    publish_deadline: Option<Instant>,
    /// A record whose acknowledgement did not come in time: if it still comes, the record
    /// is delivered after all and is not published again at the next boot.
    late: Option<Record>,
    /// Records published this boot.
    published_this_boot: u32,
    last_published: u32,
    outcome_ok: bool,
    /// When the application starts whether or not the routine has finished (`max_wait_s`).
    app_deadline: Option<Instant>,
    /// `StartApplication` was issued this boot.
    app_started: bool,
    /// The memory journal (absent with a two-sector `otastate`) and what it holds.
    memory: Option<(Memory, Remembered)>,
}

/// A decided failure: code, human detail.
struct Failure(ErrorCode, Detail);

fn fail(code: ErrorCode, args: fmt::Arguments<'_>) -> Failure {
    Failure(code, trace::detail(args))
}

impl From<FlashError> for Failure {
    fn from(e: FlashError) -> Self {
        fail(ErrorCode::Flash, format_args!("{e}"))
    }
}

fn pattern_for(result: Outcome, error: ErrorCode) -> Option<Pattern> {
    use ErrorCode::*;
    Some(match (result, error) {
        (Outcome::Installed | Outcome::RolledBack, _) => return Option::None,
        (Outcome::UpToDate, _) => Pattern::UP_TO_DATE,
        (Outcome::Updated, None) => Pattern::UPDATED,
        (_, NoRelease | BadRelease | BadTag | AssetMissing | NotEligible) => Pattern::NO_RELEASE,
        (_, TooLarge | Downgrade) => Pattern::REFUSED,
        (_, RolledBackRelease | SelfCheck) => Pattern::ROLLED_BACK,
        (_, SizeMismatch | HashMismatch | BadImage | WrongChip | VersionMismatch) => {
            Pattern::VERIFY_FAILED
        }
        (_, Config) => Pattern::CONFIG_ERROR,
        (_, Layout | Flash) => Pattern::FLASH_ERROR,
        (_, HttpStatus | RedirectLoop | RateLimited | Network | None) => Pattern::PROTOCOL_ERROR,
        (_, LogOverflow) => Pattern::FLASH_ERROR,
    })
}

impl<F: NorFlash> Updater<F> {
    /// A core for one boot; `seed` feeds the retry jitter (use a hardware RNG on boards).
    pub fn new(flash: F, seed: u64) -> Self {
        Updater {
            flash,
            rng: Rng::new(seed),
            now: Instant(0),
            phase: Phase::Created,
            network_up: false,
            actions: Deque::new(),
            events: Deque::new(),
            config: None,
            layout: None,
            running: Running::default(),
            session: Session::default(),
            log: None,
            release: None,
            request: None,
            next_request_id: 1,
            download: None,
            wake_at: None,
            trial_deadline: None,
            reboot_after_outcome: false,
            led: Player::default(),
            publish: PublishState::Idle,
            publish_deadline: None,
            late: None,
            published_this_boot: 0,
            last_published: 0,
            outcome_ok: false,
            app_deadline: None,
            app_started: false,
            memory: None,
        }
    }

    // ----- getters -------------------------------------------------------

    /// The configuration, once read (the driver needs WiFi and MQTT settings from it).
    pub fn config(&self) -> Option<&Config> {
        self.config.as_ref()
    }

    /// True once the core issued `Reboot` or `RunApplication`.
    pub fn is_done(&self) -> bool {
        self.phase == Phase::Done
    }

    /// The flash, for drivers that need it back (the simulator after a power cut).
    pub fn into_flash(self) -> F {
        self.flash
    }

    /// The flash, borrowed.
    pub fn flash_mut(&mut self) -> &mut F {
        &mut self.flash
    }

    // ----- outputs -------------------------------------------------------

    /// The next action to execute.
    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// The next trace event and the time it happened.
    pub fn poll_event(&mut self) -> Option<(Instant, Event)> {
        self.events.pop_front()
    }

    /// When `handle_timeout` must be called next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        [
            self.wake_at,
            self.led.deadline(),
            self.publish_deadline,
            self.trial_deadline,
            self.app_deadline,
        ]
        .into_iter()
        .flatten()
        .min()
    }

    // ----- inputs --------------------------------------------------------

    /// The board booted.
    pub fn handle_boot(&mut self, now: Instant, boot: BootInfo) {
        self.now = now;
        if self.phase != Phase::Created {
            return;
        }
        self.set_led(Led::Yellow, true);
        self.running.chip_revision = boot.chip_revision;
        if let Err(Failure(code, detail)) = self.boot(boot.running_offset) {
            self.conclude(Outcome::Failed, code, Some(detail));
        }
    }

    /// The network came up (`true`) or went away.
    pub fn handle_network(&mut self, now: Instant, up: bool) {
        self.now = now;
        if up == self.network_up {
            return;
        }
        self.network_up = up;
        self.event(Event::Network { up });
        match (self.phase, up) {
            (Phase::WaitingNetwork(step), true) => self.start(step),
            // Waiting out a backoff because the network was away: it is back, go now (a
            // rate limit or a 5xx keeps its wait).
            (Phase::Backoff(step), true) if self.session.last_retry == Some(ErrorCode::Network) => {
                self.wake_at = None;
                self.start(step)
            }
            (Phase::InFlight(step), false) => {
                self.abort_request();
                self.wait_for_network(step);
            }
            _ => {}
        }
    }

    /// Bringing the network up failed at once, for a reason of the board's own (`Board`: the
    /// WiFi driver did not start) or of the network's. The join is retried at its timeout as
    /// usual; the kind counts when a trial boot is judged.
    pub fn handle_join_error(&mut self, now: Instant, kind: Transport, what: &str) {
        self.now = now;
        self.session.last_failure = Some(kind);
        self.event(Event::Error {
            code: ErrorCode::Network,
            detail: trace::detail(format_args!("{what}")),
        });
    }

    /// Response headers of request `id` arrived.
    pub fn handle_response_head(&mut self, now: Instant, id: u32, head: &ResponseHead) {
        self.now = now;
        let Some(req) = self.request.as_mut().filter(|r| r.id == id) else {
            return;
        };
        req.status = head.status;
        req.content_length = head.content_length;
        self.event(Event::Response {
            id,
            status: head.status,
        });
        self.wake_at = Some(now.plus_ms(STALL_MS));
        let step = match self.phase {
            Phase::InFlight(step) => step,
            _ => return,
        };
        if let Err(Failure(code, detail)) = self.on_head(step, head) {
            self.final_failure(code, detail);
        }
    }

    /// A piece of the body of request `id`.
    pub fn handle_response_body(&mut self, now: Instant, id: u32, chunk: &[u8]) {
        self.now = now;
        let Some(req) = self.request.as_mut().filter(|r| r.id == id) else {
            return;
        };
        req.received = req.received.saturating_add(chunk.len() as u32);
        self.wake_at = Some(now.plus_ms(STALL_MS));
        let result = match &mut req.body {
            // A release list of 20 with long notes is a few hundred KiB; more is hostile, and
            // would keep the board parsing forever.
            Body::Release(_) if req.received > MAX_RELEASE_RESPONSE => Err(fail(
                ErrorCode::BadRelease,
                format_args!("release response larger than {MAX_RELEASE_RESPONSE} bytes"),
            )),
            Body::Release(parser) => parser.push(chunk).map_err(|e| release_failure(&e)),
            Body::Image => self.image_bytes(chunk),
        };
        if let Err(Failure(code, detail)) = result {
            self.final_failure(code, detail);
        }
    }

    /// The body of request `id` is complete.
    pub fn handle_response_end(&mut self, now: Instant, id: u32) {
        self.now = now;
        if self.request.as_ref().is_none_or(|r| r.id != id) {
            return;
        }
        let Some(req) = self.request.take() else {
            return;
        };
        self.wake_at = None;
        let short = req.content_length.is_some_and(|len| req.received < len);
        let result = match req.body {
            Body::Release(_) if short => {
                let detail = trace::detail(format_args!(
                    "release response cut at byte {}",
                    req.received
                ));
                Err(Retry(ErrorCode::Network, Some(detail)))
            }
            Body::Release(parser) => match parser.finish() {
                Ok(release) => {
                    self.evaluate(release);
                    return;
                }
                // Without Content-Length a cut connection looks like a short document.
                Err(ReleaseError::Syntax(e))
                    if req.content_length.is_none()
                        && e.kind == crate::json::JsonErrorKind::UnexpectedEnd =>
                {
                    let detail = trace::detail(format_args!("release response ended early: {e}"));
                    Err(Retry(ErrorCode::Network, Some(detail)))
                }
                Err(e) => Ok(Err(release_failure(&e))),
            },
            Body::Image => self.image_end().map_err(|f| Retry(f.0, Some(f.1))),
        };
        match result {
            Ok(Ok(())) => {}
            Ok(Err(Failure(code, detail))) => self.final_failure(code, detail),
            Err(Retry(code, detail)) => self.retry(code, detail, None),
        }
    }

    /// Request `id` failed below HTTP (DNS, connect, TLS, reset, timeout); `what` says how.
    pub fn handle_transport_error(&mut self, now: Instant, id: u32, kind: Transport, what: &str) {
        self.now = now;
        if self.request.as_ref().is_none_or(|r| r.id != id) {
            return;
        }
        self.request = None;
        self.session.last_failure = Some(kind);
        self.retry(
            ErrorCode::Network,
            Some(trace::detail(format_args!("{what}"))),
            None,
        );
    }

    /// The broker acknowledged (`true`) or could not take the last `Publish`.
    pub fn handle_publish_result(&mut self, now: Instant, seq: u32, delivered: bool) {
        self.now = now;
        let late = self.late.filter(|r| r.seq == seq && delivered);
        if let Some(record) = late {
            // The broker's PUBACK came after the core's deadline: delivered after all.
            self.late = None;
            if let Some(log) = self.log.as_ref()
                && let Err(e) = log.mark_delivered(&mut self.flash, &record)
            {
                self.flash_error(e);
                return;
            }
            self.event(Event::Published { seq });
            return;
        }
        let PublishState::InFlight(record) = self.publish else {
            return;
        };
        if record.seq != seq {
            return;
        }
        self.publish_deadline = None;
        if delivered {
            if let (Some(log), Some(_)) = (self.log.as_ref(), self.layout.as_ref())
                && let Err(e) = log.mark_delivered(&mut self.flash, &record)
            {
                self.flash_error(e);
                return;
            }
            self.event(Event::Published { seq });
            self.last_published = seq;
            self.publish_next();
        } else {
            self.keep_log();
        }
        self.maybe_finish();
    }

    /// Time passed; call at `poll_timeout` (earlier calls are harmless).
    pub fn handle_timeout(&mut self, now: Instant) {
        self.now = now;
        while let Some(on) = self.led.poll(now) {
            self.set_led(Led::Green, on);
        }
        if self.publish_deadline.is_some_and(|d| now >= d) {
            self.publish_deadline = None;
            if let PublishState::InFlight(record) = self.publish {
                self.late = Some(record);
            }
            self.keep_log();
        }
        if self.app_deadline.is_some_and(|d| now >= d) {
            self.app_deadline = None;
            if self.phase != Phase::Done && !self.app_started {
                // The routine keeps going; the application must not wait for the network.
                self.app_started = true;
                self.event(Event::AppEarly {
                    waited_ms: now.0.min(u64::from(u32::MAX)) as u32,
                });
                self.push_action(Action::StartApplication);
            }
        }
        if self.trial_deadline.is_some_and(|d| now >= d) {
            self.trial_deadline = None;
            if !self.session.confirmed && !matches!(self.phase, Phase::Finishing(_) | Phase::Done) {
                self.trial_deadline_passed();
            }
        }
        if self.wake_at.is_some_and(|d| now >= d) {
            self.wake_at = None;
            match self.phase {
                Phase::Backoff(step) if self.network_up => self.start(step),
                Phase::Backoff(step) => self.wait_for_network(step),
                Phase::WaitingNetwork(_) => {
                    let detail =
                        trace::detail(format_args!("no network after {JOIN_TIMEOUT_MS} ms"));
                    self.retry(ErrorCode::Network, Some(detail), None);
                }
                Phase::InFlight(_) => {
                    self.abort_request();
                    self.retry(
                        ErrorCode::Network,
                        Some(trace::detail(format_args!("no data for {STALL_MS} ms"))),
                        None,
                    );
                }
                _ => {}
            }
        }
        self.maybe_finish();
    }

    // ----- boot ----------------------------------------------------------

    fn boot(&mut self, running_offset: u32) -> Result<(), Failure> {
        let layout = Layout::read(&mut self.flash)
            .map_err(|e| fail(ErrorCode::Layout, format_args!("{e}")))?;
        let mut otadata = layout.read_otadata(&mut self.flash)?;
        let count = layout.slot_count();
        // Without the hardware's answer the core updates nothing (it could erase the running
        // slot), but an image on trial is still judged by what otadata selects: an image whose
        // glue cannot tell where it runs must still use up its trials and be rolled back.
        let known_slot = layout.slot_at(running_offset);
        let slot = known_slot.or(otadata.boot_slot(count)).unwrap_or(0);
        self.running.slot = slot;
        self.read_running_image(&layout, slot)?;
        if let Some(refused) = otadata
            .boot_slot(count)
            .filter(|&selected| known_slot.is_some() && selected != slot)
        {
            otadata = self.bootloader_refused(&layout, &otadata, refused)?;
        }
        let active = otadata
            .bootable()
            .filter(|&i| otadata.entries[i].slot(count) == slot);
        self.running.active_entry = active;
        let state = active.map(|i| otadata.entries[i].image_state());
        self.event(Event::Boot {
            slot,
            version: self.running.version_text.clone(),
            state: trace::short(state.map_or("none", ImageState::name)),
        });
        self.log = Some(LogStore::open(&mut self.flash, layout.log)?);
        let trial_record = TrialRecord::new(layout.state);
        self.running.trial = trial_record.load(&mut self.flash)?;
        self.count_aborted_boot(&trial_record, &otadata, count)?;
        self.layout = Some(layout);
        // A trial boot is counted before anything that could fail (conf.json included), so an
        // image that cannot get through its boot still uses up its trials and is rolled back.
        // A torn state word behind this core's own switch to this image (its trial record
        // names it) is that switch, or the confirmation, cut half way: on trial too, so the
        // image still has to confirm itself, which rewrites the word whole. A torn word with
        // no trial record (the bootloader's first write on a fresh board) is the factory
        // image's, which has nothing to roll back to.
        let switched_here = self
            .running
            .trial
            .as_ref()
            .is_some_and(|t| t.slot == slot && t.version == self.running.version_text);
        let torn =
            switched_here && active.is_some_and(|i| ImageState::is_torn(otadata.entries[i].state));
        if torn || matches!(state, Some(ImageState::New | ImageState::PendingVerify)) {
            self.running.on_trial = true;
            self.running.previous_version = self.previous_version(&otadata);
            self.trial_boot(&otadata)?;
            if self.phase != Phase::Created {
                return Ok(()); // rolled back
            }
            self.trial_deadline = Some(self.now.plus_ms(TRIAL_DEADLINE_MS));
        } else if known_slot.is_some()
            && let Some(i) = active.filter(|&i| ImageState::is_torn(otadata.entries[i].state))
            && let Some(seq) = otadata.entries[i]
                .seq
                .checked_add(u32::from(count))
                .filter(|&s| s != u32::MAX)
            && let Some(layout) = self.layout.clone()
        {
            // The entry of an image that is not on trial (the bootloader's first write on a
            // fresh board, torn): a whole VALID entry for the same slot, one round of sequence
            // numbers higher so that it wins, goes into the *other* sector. In place would
            // erase the only entry first, and a cut then leaves none.
            let entry = OtaEntry::new(seq, ImageState::Valid);
            layout.write_otadata(&mut self.flash, 1 - i, &entry)?;
        } else if let Some(running) = known_slot
            && active.is_none()
            && otadata.bootable().is_none()
            && otadata.entries.iter().any(|e| e.seq != u32::MAX)
            && let Some(layout) = self.layout.clone()
        {
            // Entries were written but none selects anything (a torn first write, then the
            // only other entry aborted): the bootloader started this image by default. Point
            // otadata at it, so that a later update has an entry to fall back on.
            let (sector, entry) = self.rewrite_towards(&otadata, running, count)?;
            layout.write_otadata(&mut self.flash, sector, &entry)?;
        }
        if known_slot.is_none() {
            return Err(fail(
                ErrorCode::Layout,
                format_args!("running from {running_offset:#x}, which is no OTA slot"),
            ));
        }
        match self.read_config() {
            Ok(config) => {
                // Counted from power-on (the boot's `now`): the user's limit is on how long
                // the device sits without its application, whatever the core did first.
                if config.max_wait_s > 0 {
                    self.app_deadline = Some(Instant(u64::from(config.max_wait_s) * 1000));
                }
                self.config = Some(config);
            }
            Err(Failure(code, detail)) if self.running.on_trial => {
                // The self-check fails: this image cannot read the configuration.
                self.event(Event::Error { code, detail });
                return self.roll_back(&otadata);
            }
            Err(failure) => return Err(failure),
        }
        if self.running.refused_version.is_some() {
            // The switch of the last boot did not take: report it as the rollback it is.
            let detail = trace::detail(format_args!(
                "the bootloader refused the image otadata selected and started slot {}",
                self.running.slot
            ));
            self.conclude(Outcome::RolledBack, ErrorCode::BadImage, Some(detail));
            return Ok(());
        }
        let state = self.layout.as_ref().map(|l| l.state);
        if let Some(journal) = state.and_then(Memory::new) {
            let remembered = journal.load(&mut self.flash)?;
            self.memory = Some((journal, remembered));
        }
        let failed_boots = self.memory.as_ref().map_or(0, |(_, m)| m.failed_boots);
        if failed_boots > 0 {
            // The last boots could not reach GitHub: this one goes on with their backoff, so
            // a board rebooting in a loop (brown-outs, a crashing application) does not ask
            // at full rate. The first wait is short: at most BASE · 2^(MAX_STREAK-1).
            self.session.attempt = u32::from(failed_boots);
            let delay = backoff::delay_ms(u32::from(failed_boots) - 1, &mut self.rng);
            self.event(Event::Retry {
                attempt: 0,
                delay_ms: delay.min(u64::from(u32::MAX)) as u32,
                reason: ErrorCode::Network,
            });
            self.phase = Phase::Backoff(Step::Check);
            self.wake_at = Some(self.now.plus_ms(delay));
            return Ok(());
        }
        self.wait_for_network(Step::Check);
        Ok(())
    }

    /// Behind a bootloader with rollback, an image that died before its core ran leaves only
    /// one trace: its otadata entry, marked `aborted` by the bootloader at the next boot. The
    /// image running now counts that boot in the trial record (once per sequence number, and
    /// not when the image's own core counted it), so such an image is not installed again
    /// forever: after [`MAX_TRIALS`] its release is barred like any rolled-back one.
    fn count_aborted_boot(
        &mut self,
        record: &TrialRecord,
        otadata: &OtaData,
        count: u8,
    ) -> Result<(), Failure> {
        let Some(trial) = self.running.trial.clone() else {
            return Ok(());
        };
        let aborted = otadata.entries.iter().find(|e| {
            e.is_valid()
                && e.image_state() == ImageState::Aborted
                && e.slot(count) == trial.slot
                && trial.slot != self.running.slot
        });
        let Some(entry) = aborted else {
            return Ok(());
        };
        if let Some(counted) = record.count_abort(&mut self.flash, &trial, entry.seq)? {
            let detail = trace::detail(format_args!(
                "the bootloader aborted a boot of {} the core never saw: trial {} of {}",
                trial.version, counted.boots, MAX_TRIALS
            ));
            self.event(Event::Error {
                code: ErrorCode::SelfCheck,
                detail,
            });
            self.running.trial = Some(counted);
        }
        Ok(())
    }

    /// otadata selects `refused`, yet the bootloader started another slot: it refused that
    /// image (a check the core does not make, a torn image, a rollback bootloader's own
    /// fallback). Left alone, the board would boot through a fallback forever and install the
    /// same release again at every boot. So the release installed there is barred (its trial
    /// record used up) and otadata is brought back to the running slot, as a rollback would.
    fn bootloader_refused(
        &mut self,
        layout: &Layout,
        otadata: &OtaData,
        refused: u8,
    ) -> Result<OtaData, Failure> {
        let count = layout.slot_count();
        let record = TrialRecord::new(layout.state);
        if let Some(trial) = record.load(&mut self.flash)?.filter(|t| t.slot == refused) {
            record.exhaust(&mut self.flash, &trial)?;
        }
        self.running.refused_version = Some(
            match read_app_desc(&mut self.flash, layout.slots[usize::from(refused)]) {
                Ok((Some(desc), _)) => trace::short(&desc.version),
                _ => trace::short("unknown"),
            },
        );
        let (sector, entry) = self.rewrite_towards(otadata, self.running.slot, count)?;
        layout.write_otadata(&mut self.flash, sector, &entry)?;
        let mut now = *otadata;
        now.entries[sector] = entry;
        self.event(Event::Switch {
            slot: self.running.slot,
            seq: now.bootable().map_or(entry.seq, |i| now.entries[i].seq),
        });
        Ok(now)
    }

    /// The otadata rewrite that makes `slot` boot instead of the active entry's slot: with an
    /// entry for `slot` still bootable in the other sector, the active entry is marked invalid
    /// where it stands, as ESP-IDF does (a cut mid-rewrite leaves that other entry, which is
    /// where we are going); otherwise a new entry for `slot` goes into the other sector.
    fn rewrite_towards(
        &self,
        otadata: &OtaData,
        slot: u8,
        count: u8,
    ) -> Result<(usize, OtaEntry), Failure> {
        let other_selects_slot = otadata.active().is_some_and(|active| {
            let other = otadata.entries[1 - active];
            other.is_bootable() && other.slot(count) == slot
        });
        match otadata.invalidate().filter(|_| other_selects_slot) {
            Some(rewrite) => Ok(rewrite),
            None => select(otadata, slot, count, ImageState::Valid),
        }
    }

    fn read_running_image(&mut self, layout: &Layout, slot: u8) -> Result<(), Failure> {
        let (version, chip) = read_app_desc(&mut self.flash, layout.slots[usize::from(slot)])?;
        self.running.chip_id = chip;
        match version {
            Some(desc) => {
                self.running.version_text = trace::short(&desc.version);
                self.running.version = Version::parse(&desc.version).ok();
                if self.running.version.is_none() {
                    let detail = trace::detail(format_args!(
                        "running version `{}` is not X.Y[.Z]",
                        desc.version
                    ));
                    self.event(Event::Error {
                        code: ErrorCode::BadTag,
                        detail,
                    });
                }
            }
            None => self.running.version_text = trace::short("unknown"),
        }
        Ok(())
    }

    fn previous_version(&mut self, otadata: &OtaData) -> Short {
        let Some(layout) = self.layout.as_ref() else {
            return Short::new();
        };
        let count = layout.slot_count();
        let other = otadata
            .entries
            .iter()
            .filter(|e| e.is_valid() && e.slot(count) != self.running.slot)
            .max_by_key(|e| e.seq);
        let slot = other.map_or((self.running.slot + count - 1) % count, |e| e.slot(count));
        match read_app_desc(&mut self.flash, layout.slots[usize::from(slot)]) {
            Ok((Some(desc), _)) => trace::short(&desc.version),
            _ => trace::short("unknown"),
        }
    }

    fn read_config(&mut self) -> Result<Config, Failure> {
        let Some(region) = self.layout.as_ref().map(|l| l.config) else {
            return Err(fail(ErrorCode::Layout, format_args!("no layout")));
        };
        let mut parser = ConfigParser::new();
        let mut chunk = [0u8; 256];
        let mut at = 0;
        let limit = region.size.min(MAX_CONFIG_LEN as u32 + 256);
        'read: while at < limit {
            storage::read(&mut self.flash, region.offset + at, &mut chunk)?;
            // conf.json ends at the first erased (FF) or NUL byte.
            let end = chunk
                .iter()
                .position(|&b| b == 0xFF || b == 0)
                .unwrap_or(chunk.len());
            parser
                .push(&chunk[..end])
                .map_err(|e| fail(ErrorCode::Config, format_args!("{e}")))?;
            if end < chunk.len() {
                break 'read;
            }
            at += chunk.len() as u32;
        }
        parser
            .finish()
            .map_err(|e| fail(ErrorCode::Config, format_args!("{e}")))
    }

    fn trial_boot(&mut self, otadata: &OtaData) -> Result<(), Failure> {
        let Some(layout) = self.layout.as_ref() else {
            return Ok(());
        };
        let record = TrialRecord::new(layout.state);
        let slot = self.running.slot;
        let matches = self
            .running
            .trial
            .as_ref()
            .is_some_and(|t| t.slot == slot && t.version == self.running.version_text);
        if !matches {
            // Installed by another tool: put it on trial all the same.
            record.begin(&mut self.flash, slot, &self.running.version_text)?;
            self.running.trial = record.load(&mut self.flash)?;
        }
        let Some(trial) = self.running.trial.clone() else {
            return Ok(());
        };
        if trial.boots >= MAX_TRIALS {
            return self.roll_back(otadata);
        }
        let seq = self
            .running
            .active_entry
            .map_or(0, |i| otadata.entries[i].seq);
        let counted = record.count_boot(&mut self.flash, &trial, seq)?;
        self.event(Event::Trial {
            boot: counted.boots,
            of: MAX_TRIALS,
        });
        self.running.trial = Some(counted);
        Ok(())
    }

    fn roll_back(&mut self, otadata: &OtaData) -> Result<(), Failure> {
        let Some(layout) = self.layout.clone() else {
            return Ok(());
        };
        let count = layout.slot_count();
        if let Some(trial) = self.running.trial.as_ref() {
            TrialRecord::new(layout.state).exhaust(&mut self.flash, trial)?;
        }
        let previous = otadata
            .entries
            .iter()
            .filter(|e| e.is_valid() && e.slot(count) != self.running.slot)
            .max_by_key(|e| e.seq)
            .map_or((self.running.slot + count - 1) % count, |e| e.slot(count));
        let (sector, entry) = self.rewrite_towards(otadata, previous, count)?;
        layout.write_otadata(&mut self.flash, sector, &entry)?;
        let mut now = *otadata;
        now.entries[sector] = entry;
        self.event(Event::Switch {
            slot: previous,
            seq: now.bootable().map_or(entry.seq, |i| now.entries[i].seq),
        });
        let detail = trace::detail(format_args!(
            "version {} did not confirm itself in {MAX_TRIALS} boots; back to slot {previous}",
            self.running.version_text
        ));
        self.conclude(Outcome::RolledBack, ErrorCode::SelfCheck, Some(detail));
        Ok(())
    }

    /// The self-check passed: conf.json was read and a release response was parsed into a
    /// usable release, so this image can update itself. Only then is it made permanent: an
    /// image that merely got *an* HTTP status (a 403 from broken credentials, a 5xx) might
    /// never update again, and confirming it would strand the board on it.
    fn confirm(&mut self) -> Result<(), Failure> {
        if !self.running.on_trial || self.session.confirmed {
            return Ok(());
        }
        let Some(layout) = self.layout.clone() else {
            return Ok(());
        };
        let otadata = layout.read_otadata(&mut self.flash)?;
        if self.running.active_entry.is_some()
            && let Some((sector, entry)) = otadata.confirm()
        {
            layout.write_otadata(&mut self.flash, sector, &entry)?;
        }
        self.trial_deadline = None;
        self.session.confirmed = true;
        self.event(Event::Confirmed {
            version: self.running.version_text.clone(),
        });
        Ok(())
    }

    /// An image on trial could not confirm itself in time.
    ///
    /// When its last attempt failed for a reason of its own (a TLS handshake failure, a network
    /// stack that did not start), or it has given back [`MAX_RETURNS`] boots already, the boot
    /// ends with a reboot and the trial stays used: three such boots roll the image back. When
    /// it only lacked the network (no WiFi, no answer, GitHub's 5xx or rate limit), the trial
    /// counted at boot is given back and the boot goes on retrying like any other: an outage
    /// after an update must not roll a good image back, and the image confirms itself as soon
    /// as a release comes through.
    fn trial_deadline_passed(&mut self) {
        let seconds = TRIAL_DEADLINE_MS / 1000;
        let returned = self.running.trial.as_ref().map_or(0, |t| t.returned);
        let own_fault = matches!(
            self.session.last_failure,
            Some(Transport::Tls | Transport::Board)
        );
        if own_fault || returned >= MAX_RETURNS {
            self.abort_request();
            self.reboot_after_outcome = true;
            let detail = if own_fault {
                trace::detail(format_args!(
                    "no release within {seconds} s of a trial boot: this image cannot connect"
                ))
            } else {
                trace::detail(format_args!(
                    "no release within {seconds} s of a trial boot, {returned} boots given back"
                ))
            };
            self.conclude(Outcome::Failed, ErrorCode::SelfCheck, Some(detail));
            return;
        }
        // Say what kept GitHub away: the network, or GitHub itself.
        let (code, what) = match self.session.last_retry {
            Some(ErrorCode::RateLimited) => (ErrorCode::RateLimited, "GitHub's rate limit"),
            Some(ErrorCode::HttpStatus) => (ErrorCode::HttpStatus, "GitHub unavailable"),
            _ => (ErrorCode::Network, "network away"),
        };
        self.give_trial_back(
            code,
            format_args!("{what} {seconds} s into a trial boot: trial given back, still trying"),
        );
    }

    /// Gives back the trial counted at this boot, which proved nothing about the image.
    fn give_trial_back(&mut self, code: ErrorCode, why: fmt::Arguments<'_>) {
        let given_back = match (self.layout.as_ref(), self.running.trial.as_ref()) {
            (Some(layout), Some(trial)) if trial.returned < MAX_RETURNS => {
                TrialRecord::new(layout.state).give_back(&mut self.flash, trial)
            }
            _ => return,
        };
        match given_back {
            Ok(trial) => {
                self.event(Event::TrialReturned {
                    boots: trial.boots,
                    of: MAX_TRIALS,
                });
                self.running.trial = Some(trial);
                self.event(Event::Error {
                    code,
                    detail: trace::detail(why),
                });
            }
            Err(e) => self.flash_error(e),
        }
    }

    // ----- requests ------------------------------------------------------

    fn wait_for_network(&mut self, step: Step) {
        self.phase = Phase::WaitingNetwork(step);
        if self.network_up {
            self.start(step);
        } else {
            self.wake_at = Some(self.now.plus_ms(JOIN_TIMEOUT_MS));
            self.push_action(Action::JoinNetwork);
        }
    }

    fn start(&mut self, step: Step) {
        let result = match step {
            Step::Check => self.start_check(),
            Step::Download => self.start_download(),
        };
        if let Err(Failure(code, detail)) = result {
            self.final_failure(code, detail);
        }
    }

    fn start_check(&mut self) -> Result<(), Failure> {
        let Some(config) = self.config.as_ref() else {
            return Ok(());
        };
        let mut url = Url::new();
        let list = config.allow_prereleases;
        write!(
            url,
            "{}/repos/{}/{}/releases{}",
            config.api_base,
            config.owner,
            config.repo,
            if list { "?per_page=20" } else { "/latest" }
        )
        .map_err(|_| {
            fail(
                ErrorCode::Config,
                format_args!("API URL longer than {} bytes", url.capacity()),
            )
        })?;
        let body = Body::Release(ReleaseParser::new(&config.asset, config.allow_prereleases));
        let authorize = config.token.is_some();
        // The asset name is part of the key: a 304 says the release is unchanged, not that
        // a refusal of another asset applies.
        self.session.check_url_crc = memory::check_key(&url, &config.asset);
        self.session.check_etag = None;
        let if_none_match = self
            .usable_memo(self.session.check_url_crc)
            .map(|(memo, _)| memo.etag.clone());
        self.send(Step::Check, url, 0, authorize, body, 0, if_none_match);
        Ok(())
    }

    /// The remembered answer to this check URL, when a 304 to it can be acted on: it named
    /// the running version (up to date) or the release refused here.
    /// The answer is the memo's; with the code a refused release was refused with (`None`:
    /// up to date).
    fn usable_memo(&self, url_crc: u32) -> Option<(&CheckMemo, Option<ErrorCode>)> {
        let (_, remembered) = self.memory.as_ref()?;
        let memo = remembered
            .check
            .as_ref()
            .filter(|memo| memo.url_crc == url_crc)?;
        let running = self.running.version;
        if running.is_some() && Version::parse(&memo.tag).ok() == running {
            return Some((memo, None));
        }
        let refused = remembered
            .refused
            .as_ref()
            .filter(|r| r.target.tag == memo.tag)?;
        Some((memo, Some(refused.code)))
    }

    /// `tag` failed verification here as `code` and has not changed: refused without a download.
    fn refuse_remembered(&mut self, tag: &str, code: ErrorCode) {
        let detail = trace::detail(format_args!(
            "release {tag} unchanged since it failed verification ({}): not fetched again",
            code.name()
        ));
        self.final_failure(code, detail);
    }

    /// Updates the memory journal. A flash error here costs only what the memory saves
    /// (a 304, a download refused without fetching it), so the routine goes on.
    fn remember(&mut self, change: impl FnOnce(&mut Remembered)) {
        let Some((journal, remembered)) = self.memory.as_mut() else {
            return;
        };
        let mut next = remembered.clone();
        change(&mut next);
        if next != *remembered && journal.store(&mut self.flash, &next).is_ok() {
            *remembered = next;
        }
    }

    /// Keeps this boot's release answer (its `ETag`) as naming `tag`.
    fn remember_answer(&mut self, tag: &str, size: u32) {
        let Some((url_crc, etag)) = self.session.check_etag.clone() else {
            return;
        };
        let tag = trace::short(tag);
        self.remember(|m| {
            m.check = Some(CheckMemo {
                url_crc,
                etag,
                tag,
                size,
            })
        });
    }

    /// GitHub answered 304 to `If-None-Match`: the release is the one remembered.
    fn not_modified(&mut self) {
        self.abort_request();
        let Some((memo, refused)) = self
            .usable_memo(self.session.check_url_crc)
            .map(|(memo, refused)| (memo.clone(), refused))
        else {
            let detail = trace::detail(format_args!("HTTP 304 to a request that had no ETag"));
            return self.final_failure(ErrorCode::HttpStatus, detail);
        };
        self.event(Event::Release {
            tag: memo.tag.clone(),
            size: memo.size,
        });
        self.session.remembered_tag = Some(memo.tag.clone());
        self.answered();
        if let Err(Failure(code, detail)) = self.confirm() {
            return self.final_failure(code, detail);
        }
        match refused {
            Some(code) => self.refuse_remembered(&memo.tag, code),
            None => self.conclude(Outcome::UpToDate, ErrorCode::None, None),
        }
    }

    /// GitHub answered the check: the backoff of earlier boots is over.
    fn answered(&mut self) {
        self.session.attempt = 0;
        self.remember(|m| m.failed_boots = 0);
    }

    #[allow(clippy::too_many_arguments)]
    fn send(
        &mut self,
        step: Step,
        url: Url,
        range_from: u32,
        authorize: bool,
        body: Body,
        redirects: u8,
        if_none_match: Option<Validator>,
    ) {
        let accept = match step {
            Step::Check => Accept::Json,
            Step::Download => Accept::OctetStream,
        };
        let id = self.next_request_id;
        self.next_request_id += 1;
        let purpose = match step {
            Step::Check => Purpose::Check,
            Step::Download => Purpose::Download,
        };
        self.event(Event::Request {
            id,
            purpose,
            from: range_from,
        });
        self.request = Some(InFlightRequest {
            id,
            url: url.clone(),
            redirects,
            range_from,
            status: 0,
            content_length: None,
            received: 0,
            body,
        });
        self.phase = Phase::InFlight(step);
        self.wake_at = Some(self.now.plus_ms(STALL_MS));
        let range_from = (range_from > 0).then_some(range_from);
        let if_range = match (step, range_from) {
            (Step::Download, Some(_)) => self.download.as_ref().and_then(|d| d.validator.clone()),
            _ => None,
        };
        self.push_action(Action::Http(HttpRequest {
            id,
            purpose,
            url,
            range_from,
            if_range,
            if_none_match,
            accept,
            authorize,
        }));
    }

    fn abort_request(&mut self) {
        if let Some(req) = self.request.take() {
            self.push_action(Action::AbortHttp { id: req.id });
        }
        self.wake_at = None;
    }

    fn on_head(&mut self, step: Step, head: &ResponseHead) -> Result<(), Failure> {
        // An HTTP answer: TLS and the network stack work.
        self.session.last_failure = Some(Transport::Network);
        if (300..400).contains(&head.status) && head.status != 304 {
            return self.redirect(step, head);
        }
        if let Some(wait) = head.rate_limit_wait_ms() {
            self.abort_request();
            let detail = trace::detail(format_args!(
                "GitHub rate limit: HTTP {}, waiting {} s",
                head.status,
                wait / 1000
            ));
            self.retry(
                ErrorCode::RateLimited,
                Some(detail),
                Some(wait.min(backoff::RATE_LIMIT_CAP_MS)),
            );
            return Ok(());
        }
        if head.status >= 500 {
            self.abort_request();
            self.retry(
                ErrorCode::HttpStatus,
                Some(trace::detail(format_args!("HTTP {}", head.status))),
                None,
            );
            return Ok(());
        }
        match (step, head.status) {
            (Step::Check, 200) => {
                let crc = self.session.check_url_crc;
                self.session.check_etag = head.etag.clone().map(|etag| (crc, etag));
                Ok(())
            }
            (Step::Check, 304) => {
                self.not_modified();
                Ok(())
            }
            (Step::Check, 404) => Err(fail(
                ErrorCode::NoRelease,
                format_args!("repository has no release (HTTP 404)"),
            )),
            (Step::Download, 200 | 206) => self.download_head(head),
            (Step::Download, 404 | 410) => Err(fail(
                ErrorCode::AssetMissing,
                format_args!("asset download answered HTTP {}", head.status),
            )),
            (Step::Download, 416) => {
                // Our durable prefix does not fit the server's idea of the asset: start over.
                self.abort_request();
                if let Some(layout) = self.layout.as_ref() {
                    Progress::new(layout.state).clear(&mut self.flash)?;
                }
                self.retry(
                    ErrorCode::Network,
                    Some(trace::detail(format_args!("HTTP 416 on resume"))),
                    None,
                );
                Ok(())
            }
            (_, status) => Err(fail(
                ErrorCode::HttpStatus,
                format_args!("unexpected HTTP {status}"),
            )),
        }
    }

    fn redirect(&mut self, step: Step, head: &ResponseHead) -> Result<(), Failure> {
        let Some(req) = self.request.take() else {
            return Ok(());
        };
        self.push_action(Action::AbortHttp { id: req.id });
        if head.location_too_long {
            return Err(fail(
                ErrorCode::RedirectLoop,
                format_args!(
                    "redirect target longer than {} bytes",
                    crate::release::MAX_URL_LEN
                ),
            ));
        }
        let Some(location) = head.location.clone() else {
            return Err(fail(
                ErrorCode::HttpStatus,
                format_args!("HTTP {} without Location", head.status),
            ));
        };
        if crate::http::is_downgrade(&req.url, &location) {
            return Err(fail(
                ErrorCode::HttpStatus,
                format_args!("redirect from https to plain http refused"),
            ));
        }
        if req.redirects >= MAX_REDIRECTS {
            return Err(fail(
                ErrorCode::RedirectLoop,
                format_args!("more than {MAX_REDIRECTS} redirects"),
            ));
        }
        // The token is for the API host only; the asset host must not see it.
        self.send(
            step,
            location,
            req.range_from,
            false,
            req.body,
            req.redirects + 1,
            None,
        );
        Ok(())
    }

    fn retry(&mut self, code: ErrorCode, detail: Option<Detail>, delay: Option<u64>) {
        let step = match self.phase {
            Phase::InFlight(step) | Phase::Backoff(step) | Phase::WaitingNetwork(step) => step,
            _ => return,
        };
        if let Some(detail) = detail {
            self.event(Event::Error { code, detail });
        }
        // Never less than the backoff: a `retry-after: 0` or a reset already past must not spin.
        let backoff = backoff::delay_ms(self.session.attempt, &mut self.rng);
        let delay = delay.map_or(backoff, |wait| wait.max(backoff));
        self.session.attempt += 1;
        self.session.last_retry = Some(code);
        if step == Step::Check && !self.session.counted_failed_boot {
            self.session.counted_failed_boot = true;
            self.remember(|m| m.failed_boots = (m.failed_boots + 1).min(MAX_STREAK));
        }
        self.session.retries += 1;
        self.event(Event::Retry {
            attempt: self.session.retries,
            delay_ms: delay.min(u64::from(u32::MAX)) as u32,
            reason: code,
        });
        self.phase = Phase::Backoff(step);
        self.wake_at = Some(self.now.plus_ms(delay));
    }

    // ----- the decision --------------------------------------------------

    fn evaluate(&mut self, release: SelectedRelease) {
        self.event(Event::Release {
            tag: trace::short(&release.tag),
            size: release.asset.size,
        });
        self.answered();
        if let Err(Failure(code, detail)) = self.confirm() {
            self.release = Some(release);
            self.final_failure(code, detail);
            return;
        }
        match self.decide(&release) {
            Ok(true) => {
                let refused = self
                    .memory
                    .as_ref()
                    .and_then(|(_, m)| m.refused.clone())
                    .filter(|r| r.is(&self.target_of(&release)));
                if let Some(RefusedRelease { code, .. }) = refused {
                    // The same asset failed verification here: the bytes would be the same.
                    self.remember_answer(&release.tag, release.asset.size);
                    let tag = trace::short(&release.tag);
                    self.release = Some(release);
                    self.refuse_remembered(&tag, code);
                    return;
                }
                self.release = Some(release);
                self.start(Step::Download);
            }
            Ok(false) => {
                self.remember_answer(&release.tag, release.asset.size);
                self.release = Some(release);
                self.conclude(Outcome::UpToDate, ErrorCode::None, None);
            }
            Err(Failure(code, detail)) => {
                self.release = Some(release);
                self.final_failure(code, detail);
            }
        }
    }

    /// Whether to install `release`.
    fn decide(&mut self, release: &SelectedRelease) -> Result<bool, Failure> {
        let Some(config) = self.config.as_ref() else {
            return Ok(false);
        };
        if let Some(trial) = &self.running.trial {
            let failed_before = trial.boots >= MAX_TRIALS
                && Version::parse(&trial.version).ok() == Some(release.version);
            if failed_before && self.running.version != Some(release.version) {
                return Err(fail(
                    ErrorCode::RolledBackRelease,
                    format_args!(
                        "release {} was rolled back on this board; waiting for a newer one",
                        release.tag
                    ),
                ));
            }
        }
        let install = match self.running.version {
            None => true,
            Some(running) if release.version > running => true,
            Some(running) if release.version == running => false,
            Some(_) if config.allow_downgrade => true,
            Some(running) => {
                return Err(fail(
                    ErrorCode::Downgrade,
                    format_args!("release {} is older than running {running}", release.tag),
                ));
            }
        };
        if install {
            let slot = self.inactive_slot();
            if release.asset.size > slot.size {
                return Err(fail(
                    ErrorCode::TooLarge,
                    format_args!(
                        "image of {} bytes does not fit the {}-byte slot",
                        release.asset.size, slot.size
                    ),
                ));
            }
            if release.asset.size.div_ceil(SECTOR) > progress::MAX_SECTORS {
                return Err(fail(
                    ErrorCode::TooLarge,
                    format_args!("image of {} bytes is too large", release.asset.size),
                ));
            }
        }
        Ok(install)
    }

    /// What identifies `release`'s asset, going to the inactive slot.
    fn target_of(&self, release: &SelectedRelease) -> Target {
        let count = self.layout.as_ref().map_or(2, Layout::slot_count).max(1);
        Target {
            slot: (self.running.slot + 1) % count,
            size: release.asset.size,
            sha256: release.asset.sha256,
            tag: trace::short(&release.tag),
            asset_id: release.asset.id,
            updated_at: release.asset.updated_at.clone(),
        }
    }

    fn inactive_slot(&self) -> Region {
        match self.layout.as_ref() {
            Some(l) => l.slots[usize::from((self.running.slot + 1) % l.slot_count())],
            None => Region { offset: 0, size: 0 },
        }
    }

    // ----- download ------------------------------------------------------

    fn start_download(&mut self) -> Result<(), Failure> {
        let (Some(release), Some(layout)) = (self.release.as_ref(), self.layout.as_ref()) else {
            return Ok(());
        };
        let count = layout.slot_count();
        let slot_index = (self.running.slot + 1) % count;
        let target = self.target_of(release);
        let progress = Progress::new(layout.state);
        let slot = layout.slots[usize::from(slot_index)];
        // With a token, the API asset URL (private repositories need it); the token goes to the
        // API host only and is dropped on the redirect to the asset host.
        // The token goes to the configured API host only: an `assets[].url` on any other host
        // (a hostile or misconfigured server) is not given it.
        let use_api = self.config.as_ref().is_some_and(|c| {
            c.token.is_some() && crate::http::same_origin(&release.asset.api_url, &c.api_base)
        });
        let url = if use_api {
            release.asset.api_url.clone()
        } else {
            release.asset.download_url.clone()
        };
        let target_size = target.size;
        let written = match progress.durable_sectors(&mut self.flash, &target)? {
            Some(sectors) if sectors > 0 => (sectors * SECTOR).min(target.size),
            // From byte 0, a fresh record: an ETag kept by an attempt that made nothing
            // durable must not outlive it (the file may have changed since).
            _ => {
                progress.start(&mut self.flash, &target)?;
                0
            }
        };
        if written > 0 {
            self.event(Event::Resume { from: written });
            if self.session.resumed_from == 0 {
                self.session.resumed_from = written;
            }
        }
        let early = (written == 0).then(|| ImageVerifier::new(slot.size));
        let validator = if written > 0 {
            progress.validator(&mut self.flash)?
        } else {
            None
        };
        self.download = Some(Download {
            target,
            slot,
            written,
            buf: [0xFF; SECTOR as usize],
            filled: 0,
            early,
            validator,
            durable_before: 0,
        });
        if written >= target_size {
            // Everything is on flash already (a cut after the last sector).
            return self.finish_image();
        }
        self.send(Step::Download, url, written, use_api, Body::Image, 0, None);
        Ok(())
    }

    fn download_head(&mut self, head: &ResponseHead) -> Result<(), Failure> {
        let Some(dl) = self.download.as_mut() else {
            return Ok(());
        };
        let from = if head.status == 206 {
            head.range_start.unwrap_or(u32::MAX)
        } else {
            0
        };
        if from != dl.written {
            if from != 0 || head.status != 200 {
                return Err(fail(
                    ErrorCode::HttpStatus,
                    format_args!("server sent bytes from {from}, asked for {}", dl.written),
                ));
            }
            // The server ignored our Range, or the file no longer has the ETag we sent in
            // If-Range: take the whole image from the start.
            let same_file = dl.validator.is_some() && head.strong_etag() == dl.validator.as_ref();
            self.session.resumed_from = 0;
            dl.filled = 0;
            dl.early = Some(ImageVerifier::new(dl.slot.size));
            if same_file {
                // Range ignored, same file (its strong ETag): what is durable stays durable.
                // Those sectors are compared as they come again, not erased and rewritten,
                // and the progress record is kept: a server that always ignores Range
                // costs bandwidth at every retry, but no flash.
                dl.durable_before = dl.durable_before.max(dl.written);
            } else {
                dl.durable_before = 0;
                dl.validator = None;
                if let Some(layout) = self.layout.as_ref() {
                    Progress::new(layout.state).start(&mut self.flash, &dl.target)?;
                }
            }
            dl.written = 0;
        }
        if head.status == 206 && head.range_total != Some(dl.target.size) {
            // The file behind the URL is not the size the release says: it was replaced.
            // Stitching its tail onto what we have would make a mix of two files.
            let total = head.range_total;
            let size = dl.target.size;
            self.abort_request();
            if let Some(layout) = self.layout.as_ref() {
                Progress::new(layout.state).clear(&mut self.flash)?;
            }
            self.download = None;
            let detail = match total {
                Some(total) => trace::detail(format_args!(
                    "asset on the server is {total} bytes, release says {size}: starting again"
                )),
                None => trace::detail(format_args!("206 without a Content-Range total")),
            };
            self.retry(ErrorCode::Network, Some(detail), None);
            return Ok(());
        }
        if head.status == 200
            && dl.written == 0
            && dl.durable_before == 0
            && let (Some(etag), Some(layout)) = (head.strong_etag(), self.layout.as_ref())
        {
            Progress::new(layout.state).set_validator(&mut self.flash, etag)?;
            dl.validator = Some(etag.clone());
        }
        let expected = dl.target.size - dl.written;
        if let Some(len) = head.content_length
            && len != expected
        {
            return Err(fail(
                ErrorCode::SizeMismatch,
                format_args!(
                    "asset is {len} bytes from offset {}, release says {expected}",
                    dl.written
                ),
            ));
        }
        Ok(())
    }

    fn image_bytes(&mut self, mut chunk: &[u8]) -> Result<(), Failure> {
        let Some(dl) = self.download.as_mut() else {
            return Ok(());
        };
        let position = dl.written + dl.filled as u32;
        if u64::from(position) + chunk.len() as u64 > u64::from(dl.target.size) {
            return Err(fail(
                ErrorCode::SizeMismatch,
                format_args!(
                    "asset is longer than the {} bytes the release says",
                    dl.target.size
                ),
            ));
        }
        if let Some(early) = dl.early.as_mut() {
            let want = (HEADER_LEN + SEGMENT_HEADER_LEN + APP_DESC_LEN)
                .saturating_sub(early.consumed() as usize);
            let take = want.min(chunk.len());
            early
                .update(&chunk[..take])
                .map_err(|e| fail(ErrorCode::BadImage, format_args!("{e}")))?;
            if let (Some(header), Some(desc)) = (early.header().copied(), early.app_desc().cloned())
            {
                dl.early = None;
                self.check_identity(&header, &desc.version)?;
            }
        }
        self.session.bytes = self.session.bytes.saturating_add(chunk.len() as u32);
        while !chunk.is_empty() {
            let Some(dl) = self.download.as_mut() else {
                return Ok(());
            };
            let take = (SECTOR as usize - dl.filled).min(chunk.len());
            dl.buf[dl.filled..dl.filled + take].copy_from_slice(&chunk[..take]);
            dl.filled += take;
            chunk = &chunk[take..];
            if dl.filled == SECTOR as usize {
                self.commit_sector()?;
            }
        }
        Ok(())
    }

    /// The release's image must be for this chip, allow its revision, and carry the tag's
    /// version. The bootloader refuses an image outside its chip-revision window
    /// (`bootloader_common_check_chip_validity`) and boots another slot; catching it here
    /// keeps the board from switching to an image that will never start.
    fn check_identity(&self, header: &ImageHeader, version: &str) -> Result<(), Failure> {
        let chip_id = header.chip_id;
        let revision = self.running.chip_revision;
        let (min, max) = (header.min_chip_rev_full, header.max_chip_rev_full);
        // ESP-IDF's IS_MAX_REV_SET: a maximum of 0 or 0xFFFF means "no maximum".
        let max_set = max != 0 && max != 0xFFFF;
        if revision < min || (max_set && revision > max) {
            return Err(fail(
                ErrorCode::WrongChip,
                format_args!(
                    "image needs chip revision v{}.{} to v{}.{}, this board is v{}.{}",
                    min / 100,
                    min % 100,
                    max / 100,
                    max % 100,
                    revision / 100,
                    revision % 100
                ),
            ));
        }
        if let Some(running_chip) = self.running.chip_id
            && chip_id != running_chip
        {
            return Err(fail(
                ErrorCode::WrongChip,
                format_args!("image is for chip id {chip_id}, this board is {running_chip}"),
            ));
        }
        if let Some(release) = self.release.as_ref()
            && Version::parse(version).ok() != Some(release.version)
        {
            return Err(fail(
                ErrorCode::VersionMismatch,
                format_args!(
                    "image says version `{version}`, release tag is {}",
                    release.tag
                ),
            ));
        }
        Ok(())
    }

    /// Erase the next slot sector, program it, then mark it durable.
    fn commit_sector(&mut self) -> Result<(), Failure> {
        let Some(dl) = self.download.as_mut() else {
            return Ok(());
        };
        let Some(layout) = self.layout.as_ref() else {
            return Ok(());
        };
        let index = dl.written / SECTOR;
        let at = dl.slot.offset + dl.written;
        // Programming needs 4-byte multiples; the tail of a short last sector stays FF.
        let len = (dl.filled + 3) & !3;
        dl.buf[dl.filled..len].fill(0xFF);
        let durable =
            dl.written < dl.durable_before && slot_holds(&mut self.flash, at, &dl.buf[..len])?;
        if !durable {
            storage::erase(&mut self.flash, at, at + SECTOR)?;
            storage::write(&mut self.flash, at, &dl.buf[..len])?;
            Progress::new(layout.state).mark(&mut self.flash, index)?;
        }
        let before = dl.written;
        dl.written += dl.filled as u32;
        dl.filled = 0;
        let (written, total) = (dl.written, dl.target.size);
        if written / PROGRESS_EVERY != before / PROGRESS_EVERY || written == total {
            self.event(Event::Progress { written, total });
        }
        Ok(())
    }

    /// The body ended: finish the last sector and verify, or report a short body.
    fn image_end(&mut self) -> Result<Result<(), Failure>, Failure> {
        let Some(dl) = self.download.as_ref() else {
            return Ok(Ok(()));
        };
        if dl.written + dl.filled as u32 != dl.target.size {
            let got = dl.written + dl.filled as u32;
            // A cut connection: what is durable stays, the rest is fetched again.
            return Err(fail(
                ErrorCode::Network,
                format_args!("download ended at byte {got} of {}", dl.target.size),
            ));
        }
        if dl.filled > 0
            && let Err(e) = self.commit_sector()
        {
            return Ok(Err(e));
        }
        Ok(self.finish_image())
    }

    /// Verify the slot's contents, then commit: trial record, then otadata.
    fn finish_image(&mut self) -> Result<(), Failure> {
        let (Some(dl), Some(layout)) = (self.download.as_ref(), self.layout.clone()) else {
            return Ok(());
        };
        let target = dl.target.clone();
        let slot = dl.slot;
        match self.verify_slot(slot, &target) {
            Ok(version) => {
                self.event(Event::Verified {
                    version: trace::short(&version),
                });
                TrialRecord::new(layout.state).begin(&mut self.flash, target.slot, &version)?;
                let otadata = layout.read_otadata(&mut self.flash)?;
                let (sector, entry) =
                    select(&otadata, target.slot, layout.slot_count(), ImageState::New)?;
                layout.write_otadata(&mut self.flash, sector, &entry)?;
                self.event(Event::Switch {
                    slot: target.slot,
                    seq: entry.seq,
                });
                self.download = None;
                self.conclude(Outcome::Installed, ErrorCode::None, None);
                Ok(())
            }
            Err(failure) => {
                // What is on flash is wrong: the next attempt starts from zero.
                Progress::new(layout.state).clear(&mut self.flash)?;
                self.final_failure(failure.0, failure.1);
                self.download = None;
                Ok(())
            }
        }
    }

    /// Reads the whole image back from flash and checks it.
    fn verify_slot(&mut self, slot: Region, target: &Target) -> Result<String<32>, Failure> {
        let mut verifier = ImageVerifier::new(slot.size);
        let mut chunk = [0u8; 256];
        let mut at = 0;
        let rounded = (target.size + 3) & !3;
        while at < rounded {
            let n = (rounded - at).min(chunk.len() as u32) as usize;
            storage::read(&mut self.flash, slot.offset + at, &mut chunk[..n])?;
            let useful = (target.size - at).min(n as u32) as usize;
            verifier.update(&chunk[..useful]).map_err(image_failure)?;
            at += n as u32;
        }
        let info = verifier.finish().map_err(image_failure)?;
        if info.length != target.size {
            return Err(fail(
                ErrorCode::SizeMismatch,
                format_args!(
                    "image is {} bytes, release says {}",
                    info.length, target.size
                ),
            ));
        }
        if let Some(expected) = target.sha256
            && info.file_sha256 != expected
        {
            return Err(fail(
                ErrorCode::HashMismatch,
                format_args!("SHA-256 differs from the release digest"),
            ));
        }
        self.check_identity(&info.header, &info.app_desc.version)?;
        Ok(info.app_desc.version)
    }

    // ----- the end of the routine ----------------------------------------

    fn final_failure(&mut self, code: ErrorCode, detail: Detail) {
        self.abort_request();
        use ErrorCode::{BadImage, HashMismatch, SizeMismatch, VersionMismatch, WrongChip};
        let verification = matches!(
            code,
            SizeMismatch | HashMismatch | BadImage | WrongChip | VersionMismatch
        );
        if let Some(target) = self.download.as_ref().map(|d| d.target.clone())
            && verification
        {
            // Not again at every boot: the same asset would fail the same way.
            self.remember_answer(&target.tag, target.size);
            self.remember(|m| m.refused = Some(RefusedRelease { target, code }));
        }
        self.conclude(Outcome::Failed, code, Some(detail));
    }

    fn flash_error(&mut self, e: FlashError) {
        // Flash is unreliable now: no log record, just the pattern and the application.
        let detail = trace::detail(format_args!("{e}"));
        self.event(Event::Error {
            code: ErrorCode::Flash,
            detail,
        });
        self.abort_request();
        self.log = None;
        self.publish = PublishState::Finished;
        self.publish_deadline = None;
        self.outcome_ok = false;
        self.led.start(Pattern::FLASH_ERROR, self.now);
        // After an install or a rollback the slot choice is already made: reboot into it.
        self.phase = match self.phase {
            Phase::Finishing(after) => Phase::Finishing(after),
            _ => Phase::Finishing(After::App),
        };
        self.handle_timeout(self.now);
    }

    fn conclude(&mut self, result: Outcome, error: ErrorCode, detail: Option<Detail>) {
        if matches!(self.phase, Phase::Finishing(_) | Phase::Done) {
            return;
        }
        use ErrorCode::{AssetMissing, BadRelease, BadTag, NoRelease, NotEligible};
        let release_side = matches!(
            error,
            NoRelease | BadRelease | BadTag | AssetMissing | NotEligible
        );
        if self.running.on_trial && !self.session.confirmed && release_side {
            // The release GitHub offers is unusable (no release, bad JSON, missing asset): the
            // old image would see the same. That proves nothing about this image.
            self.give_trial_back(
                error,
                format_args!("no usable release on GitHub: this trial boot is given back"),
            );
        }
        self.wake_at = None;
        if let Some(detail) = detail {
            self.event(Event::Error {
                code: error,
                detail,
            });
        }
        let result = if result == Outcome::UpToDate && self.session.confirmed {
            Outcome::Updated
        } else {
            result
        };
        let back_in_place = self.running.refused_version.is_some();
        let pattern = match result {
            // Already running the old image: show the rollback instead of rebooting.
            Outcome::RolledBack if back_in_place => Some(Pattern::ROLLED_BACK),
            _ => pattern_for(result, error),
        };
        let running = self.running.version_text.clone();
        let release_tag = self
            .release
            .as_ref()
            .map(|r| trace::short(&r.tag))
            .or_else(|| self.session.remembered_tag.clone());
        let (from, to) = match result {
            Outcome::Updated => (self.running.previous_version.clone(), running),
            Outcome::RolledBack => match self.running.refused_version.clone() {
                Some(refused) => (refused, running),
                None => (running, self.running.previous_version.clone()),
            },
            Outcome::UpToDate => (running.clone(), running),
            Outcome::Installed | Outcome::Failed => {
                (running.clone(), release_tag.unwrap_or(running))
            }
        };
        let event = Event::Outcome {
            result,
            from,
            to,
            bytes: self.session.bytes,
            resumed_from: self.session.resumed_from,
            retries: self.session.retries,
            error,
            pattern: trace::short(pattern.map_or("", Pattern::code)),
        };
        self.event(event.clone());
        self.outcome_ok = error == ErrorCode::None;
        let after = if self.reboot_after_outcome
            || result == Outcome::Installed
            || (result == Outcome::RolledBack && !back_in_place)
        {
            After::Reboot
        } else {
            After::App
        };
        self.phase = Phase::Finishing(after);
        if let Err(e) = self.store_record(&event) {
            self.flash_error(e);
            return;
        }
        if let Some(pattern) = pattern {
            self.led.start(pattern, self.now);
            self.handle_timeout(self.now);
        }
        self.publish_next();
        self.maybe_finish();
    }

    fn store_record(&mut self, event: &Event) -> Result<(), FlashError> {
        let Some(log) = self.log.as_mut() else {
            return Ok(());
        };
        let mut payload = String::<MAX_PAYLOAD>::new();
        let board = self
            .config
            .as_ref()
            .map_or("", |c| c.mqtt_client_id.as_str());
        let extra = [
            ("seq", Value::Num(u64::from(log.next_seq()))),
            ("board", Value::Text(board)),
        ];
        // Outcome records are far below MAX_PAYLOAD; a cut-off record would still parse up to the cut.
        let _ = event.write_json(&extra, &mut payload);
        let (_, dropped) = log.append(&mut self.flash, payload.as_bytes())?;
        if dropped > 0 {
            // The ring was full of undelivered records: the oldest sector had to go.
            let detail = trace::detail(format_args!(
                "activity log full: {dropped} undelivered records dropped"
            ));
            self.event(Event::Error {
                code: ErrorCode::LogOverflow,
                detail,
            });
        }
        Ok(())
    }

    fn publish_next(&mut self) {
        let (Some(log), Some(config)) = (self.log.as_ref(), self.config.as_ref()) else {
            self.keep_log();
            return;
        };
        let topic = config.log_topic();
        if self.published_this_boot >= MAX_PUBLISHES_PER_BOOT {
            return self.keep_log();
        }
        let record = match log.next_undelivered(&mut self.flash, self.last_published) {
            Ok(Some(record)) => record,
            Ok(None) => {
                self.publish = PublishState::Finished;
                return;
            }
            Err(e) => return self.flash_error(e),
        };
        let mut buf = [0u8; MAX_PAYLOAD];
        let len = match log.payload(&mut self.flash, &record, &mut buf) {
            Ok(len) => len,
            Err(e) => return self.flash_error(e),
        };
        let mut payload = Payload::new();
        // `len` is at most MAX_PAYLOAD, the capacity.
        let _ = payload.extend_from_slice(&buf[..len]);
        self.publish = PublishState::InFlight(record);
        self.published_this_boot += 1;
        self.publish_deadline = Some(self.now.plus_ms(PUBLISH_TIMEOUT_MS));
        self.push_action(Action::Publish {
            seq: record.seq,
            topic,
            payload,
        });
    }

    fn keep_log(&mut self) {
        if self.publish == PublishState::Finished {
            return;
        }
        self.publish = PublishState::Finished;
        self.publish_deadline = None;
        let pending = match self.log.as_ref() {
            Some(log) => log.undelivered(&mut self.flash).unwrap_or(0),
            None => 0,
        };
        if pending > 0 {
            self.event(Event::LogKept { pending });
        }
    }

    fn maybe_finish(&mut self) {
        let Phase::Finishing(after) = self.phase else {
            return;
        };
        if !self.led.finished() || self.publish != PublishState::Finished {
            return;
        }
        self.phase = Phase::Done;
        match after {
            After::Reboot => {
                self.event(Event::Reboot);
                self.push_action(Action::Reboot);
            }
            After::App => {
                if self.outcome_ok {
                    self.set_led(Led::Yellow, false);
                }
                self.event(Event::App);
                self.app_started = true;
                self.app_deadline = None;
                self.push_action(Action::RunApplication);
            }
        }
    }

    // ----- helpers -------------------------------------------------------

    fn set_led(&mut self, led: Led, on: bool) {
        self.event(Event::Led { led, on });
        self.push_action(Action::Led { led, on });
    }

    fn push_action(&mut self, action: Action) {
        if self.actions.is_full() {
            // The driver drains actions after every input; more than the queue holds
            // means it did not. Keep the newest: it reflects the current state.
            self.actions.pop_front();
        }
        let _ = self.actions.push_back(action);
    }

    fn event(&mut self, event: Event) {
        if self.events.is_full() {
            self.events.pop_front();
        }
        let _ = self.events.push_back((self.now, event));
    }
}

/// Whether flash at `at` already holds `bytes` (a durable sector sent again).
fn slot_holds<F: NorFlash>(flash: &mut F, at: u32, bytes: &[u8]) -> Result<bool, FlashError> {
    let mut on_flash = [0u8; 256];
    for (i, want) in bytes.chunks(on_flash.len()).enumerate() {
        let got = &mut on_flash[..want.len()];
        storage::read(flash, at + (i * 256) as u32, got)?;
        if got != want {
            return Ok(false);
        }
    }
    Ok(true)
}

struct Retry(ErrorCode, Option<Detail>);

impl From<Failure> for Retry {
    fn from(f: Failure) -> Self {
        Retry(f.0, Some(f.1))
    }
}

/// [`OtaData::select`], or the error that no sequence number is left to switch with.
fn select(
    otadata: &OtaData,
    slot: u8,
    count: u8,
    state: ImageState,
) -> Result<(usize, OtaEntry), Failure> {
    otadata.select(slot, count, state).ok_or_else(|| {
        fail(
            ErrorCode::Flash,
            format_args!("otadata has no sequence number left to select slot {slot}"),
        )
    })
}

fn release_failure(e: &ReleaseError) -> Failure {
    let code = match e {
        ReleaseError::BadTag { .. } => ErrorCode::BadTag,
        ReleaseError::AssetMissing { .. } => ErrorCode::AssetMissing,
        ReleaseError::NotEligible | ReleaseError::NoEligibleRelease => ErrorCode::NotEligible,
        _ => ErrorCode::BadRelease,
    };
    fail(code, format_args!("{e}"))
}

fn image_failure(e: ImageError) -> Failure {
    fail(ErrorCode::BadImage, format_args!("{e}"))
}

/// Reads the app descriptor and chip id of the image at the start of `slot`.
fn read_app_desc<F: NorFlash>(
    flash: &mut F,
    slot: Region,
) -> Result<(Option<AppDesc>, Option<u16>), FlashError> {
    let mut head = [0u8; HEADER_LEN + SEGMENT_HEADER_LEN];
    storage::read(flash, slot.offset, &mut head)?;
    if head[0] != app_image::IMAGE_MAGIC {
        return Ok((None, None));
    }
    let chip = u16::from_le_bytes([head[12], head[13]]);
    let mut desc = [0u8; APP_DESC_LEN];
    storage::read(
        flash,
        slot.offset + (HEADER_LEN + SEGMENT_HEADER_LEN) as u32,
        &mut desc,
    )?;
    Ok((AppDesc::from_bytes(&desc), Some(chip)))
}
