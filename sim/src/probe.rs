//! `sim probe`: what a board would do with a repository's latest release, against the real
//! server (api.github.com, GitHub Enterprise, or any GitHub-compatible API).
//!
//! One virtual board boots once: the OTA core, the simulated flash and reqwest (rustls, the
//! system's DNS), exactly as in the scenarios, but talking to the server the user names.
//!
//! ```text
//!  board running --from (an image sim::image synthesizes, ESP32-C3, chip id 5)
//!    |-- GET {api_base}/repos/{owner}/{repo}/releases/latest      (token from --token-env, API host only)
//!    |-- GET browser_download_url (or, with a token, the API asset URL) -> 302 -> asset host
//!    |-- stream into ota_1 (Range on a dropped connection), verify on flash, trial record, otadata
//!    '-- reboot: the bootloader model (sim::bootloader) picks the slot and verifies the image
//! ```
//!
//! The verdict comes from the core's own trace (its outcome, error code and detail), the HTTP
//! exchanges the board performed (hosts, redirects and the length of their `Location`), and the
//! bootloader model's choice after the switch. The probe's board has no MQTT broker unless one
//! is given: its address is a loopback port that closes every connection, so the activity
//! record stays on the simulated flash and publishing costs no waiting.
//!
//! Retries (network errors, 5xx, rate limits) skip their backoff on the virtual clock; the
//! probe stops after `max_retries` of them, where a board would go on retrying.

use crate::board::{BootEnd, Exchange, Triggers, VirtualBoard, Wiring};
use crate::bootloader;
use crate::image;
use firmware::config::ConfigParser;
use firmware::machine::STALL_MS;
use firmware::trace::{ErrorCode, Event, Outcome, Purpose};
use firmware::version::Version;
use sha2::{Digest, Sha256};
use std::fmt;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// Chip id in the image header of the board the probe simulates (ESP32-C3).
pub const BOARD_CHIP_ID: u16 = 5;
/// Size of the image the probe's board runs (synthesized with the `--from` version).
const RUNNING_IMAGE_SIZE: usize = 64 * 1024;
/// Longest version an `esp_app_desc_t` holds (32 bytes with the NUL).
const MAX_VERSION_LEN: usize = 31;

/// A GitHub token: kept out of `Debug`, reports and traces.
#[derive(Clone, PartialEq, Eq)]
pub struct Token(String);

impl Token {
    /// Wraps a token.
    pub fn new(token: impl Into<String>) -> Token {
        Token(token.into())
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Token(<redacted>)")
    }
}

/// What to probe.
#[derive(Clone, Debug)]
pub struct ProbeOptions {
    /// `owner/name`.
    pub repository: String,
    /// Release asset name (`firmware-esp32c3.bin`).
    pub asset: String,
    /// API base URL, `https://api.github.com` for GitHub.
    pub api_base: String,
    /// Token for private repositories (sent to the API host only, by the core).
    pub token: Option<Token>,
    /// Version the probe's board runs.
    pub from: String,
    /// Retries allowed before the probe stops (a board would keep retrying).
    pub max_retries: u32,
    /// MQTT broker for the board's activity log; `None`: no broker.
    pub broker: Option<SocketAddr>,
    /// Seed of the core's retry jitter.
    pub seed: u64,
}

impl ProbeOptions {
    /// Options with the defaults of `sim probe`: api.github.com, `--from 1.0`, 3 retries.
    pub fn new(repository: &str, asset: &str) -> ProbeOptions {
        ProbeOptions {
            repository: repository.to_string(),
            asset: asset.to_string(),
            api_base: "https://api.github.com".to_string(),
            token: None,
            from: "1.0".to_string(),
            max_retries: 3,
            broker: None,
            seed: 1,
        }
    }
}

/// Why the probe could not run (not what the board would do: that is the report).
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    /// `--from` is not a version the core can run.
    #[error("--from `{0}` is not a version (X.Y or X.Y.Z, at most 31 bytes)")]
    BadFrom(String),
    /// The repository is not `owner/name`.
    #[error("--repo `{0}` is not owner/name")]
    BadRepository(String),
    /// The API base is not an http(s) URL.
    #[error("--api-base `{0}` is not an http:// or https:// URL")]
    BadApiBase(String),
    /// The board's conf.json, built from the options, is refused by the core's parser.
    #[error("the options do not make a valid conf.json: {0}")]
    Config(String),
    /// The HTTP client could not be built.
    #[error("HTTP client: {0}")]
    Client(String),
    /// The stand-in for a missing broker could not listen.
    #[error("cannot listen on loopback for the board's MQTT port: {0}")]
    Listen(std::io::Error),
}

/// What a board running `from` would do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Downloads, verifies and switches to this version, and the bootloader starts it.
    Installs {
        /// The installed version.
        version: String,
    },
    /// The latest release is not newer.
    UpToDate,
    /// The core ended the routine with an error; the board keeps its firmware.
    Refuses,
    /// The core was still retrying when the probe stopped (network, 5xx, rate limit).
    KeepsRetrying,
    /// The core switched to the new image but the bootloader would not start it.
    DoesNotBoot,
}

impl Decision {
    /// Stable name (`--json`'s `decision`).
    pub fn name(&self) -> &'static str {
        match self {
            Decision::Installs { .. } => "installs",
            Decision::UpToDate => "up_to_date",
            Decision::Refuses => "refuses",
            Decision::KeepsRetrying => "keeps_retrying",
            Decision::DoesNotBoot => "does_not_boot",
        }
    }
}

/// Where in the update a board would fail.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// Reading the board's own state (conf.json, partition table): a probe bug, not the release.
    Setup,
    /// `GET …/releases/latest` and parsing its JSON.
    ReleaseCheck,
    /// Comparing the release with the running version and the slot size.
    Decision,
    /// Fetching the asset (redirects, HTTP status, transfer).
    Download,
    /// Checking what is on flash: size, SHA-256, image structure, chip, version.
    Verify,
    /// Writing the trial record and otadata.
    Switch,
    /// The bootloader starting the new image.
    Boot,
}

impl Step {
    /// Stable name.
    pub fn name(self) -> &'static str {
        match self {
            Step::Setup => "setup",
            Step::ReleaseCheck => "release_check",
            Step::Decision => "decision",
            Step::Download => "download",
            Step::Verify => "verify",
            Step::Switch => "switch",
            Step::Boot => "boot",
        }
    }
}

/// The latest release as the core saw it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReleaseSeen {
    /// Tag.
    pub tag: String,
    /// Asset size (`None` when the release has no asset of the configured name).
    pub size: Option<u32>,
    /// The release JSON carried a `digest` for the asset (so the core checked the SHA-256).
    pub digest: Option<String>,
}

/// One 3xx the board followed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Redirect {
    /// HTTP status.
    pub status: u16,
    /// Host that answered it.
    pub from_host: String,
    /// Host of the `Location`.
    pub to_host: String,
    /// Length of the `Location` header in bytes (the core keeps at most 2,048).
    pub location_len: usize,
}

/// One request of the boot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    /// Check or download.
    pub purpose: Purpose,
    /// Host.
    pub host: String,
    /// Path (the query is left out: signed URLs carry short-lived credentials).
    pub path: String,
    /// `Range` start.
    pub range_from: Option<u32>,
    /// The token was sent (the core sends it to the API host only).
    pub authorized: bool,
    /// Status, or `None` if no head arrived.
    pub status: Option<u16>,
    /// Body bytes.
    pub bytes: u64,
    /// Real time from request to end of body (or failure).
    pub duration: Option<Duration>,
    /// Transport error, if any.
    pub error: Option<String>,
}

/// A retry the core scheduled.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RetrySeen {
    /// Why.
    pub reason: ErrorCode,
    /// The core's detail of the error before it.
    pub detail: String,
    /// Backoff the board would wait.
    pub delay_ms: u32,
}

/// What the bootloader model started after the switch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BootCheck {
    /// Slot started.
    pub slot: u8,
    /// Slot otadata selects.
    pub selected: u8,
    /// Version of the started image.
    pub version: String,
}

/// Everything the probe found.
#[derive(Clone, Debug)]
pub struct ProbeReport {
    /// The verdict.
    pub decision: Decision,
    /// Version the board ran.
    pub from: String,
    /// The asset the board looked for.
    pub asset: String,
    /// The latest release, once the core parsed it.
    pub release: Option<ReleaseSeen>,
    /// The core's error code (`None` when all went well).
    pub error: ErrorCode,
    /// The core's detail of that error.
    pub detail: Option<String>,
    /// Where the board failed.
    pub failed_step: Option<Step>,
    /// Image bytes downloaded.
    pub bytes: u32,
    /// SHA-256 of the image on flash after an install (hex).
    pub image_sha256: Option<String>,
    /// Redirects followed.
    pub redirects: Vec<Redirect>,
    /// Every request.
    pub requests: Vec<Request>,
    /// Retries scheduled.
    pub retries: Vec<RetrySeen>,
    /// The bootloader model's choice after an install.
    pub boot: Option<BootCheck>,
    /// What happened to the activity record.
    pub mqtt: String,
    /// The board's serial console.
    pub console: Vec<String>,
    /// Real time of the whole probe.
    pub wall: Duration,
    /// Real time from the first request of a purpose to the end of its last one.
    pub phase_times: Vec<(Purpose, Duration)>,
}

impl ProbeReport {
    /// A board in the field would end well: it installs (and starts) the release, or is up to date.
    pub fn board_succeeds(&self) -> bool {
        matches!(
            self.decision,
            Decision::Installs { .. } | Decision::UpToDate
        )
    }

    /// Hosts contacted, in order of first contact.
    pub fn hosts(&self) -> Vec<String> {
        let mut hosts: Vec<String> = Vec::new();
        for r in &self.requests {
            if !hosts.contains(&r.host) {
                hosts.push(r.host.clone());
            }
        }
        hosts
    }

    /// Retries the board performed (when the probe stops a board that keeps retrying, the
    /// last retry the core scheduled is not performed).
    pub fn retries_performed(&self) -> usize {
        match self.decision {
            Decision::KeepsRetrying => self.retries.len().saturating_sub(1),
            _ => self.retries.len(),
        }
    }

    /// Real time from the first to the last request of `purpose`.
    pub fn time_of(&self, purpose: Purpose) -> Option<Duration> {
        self.phase_times
            .iter()
            .find(|(p, _)| *p == purpose)
            .map(|(_, d)| *d)
    }

    /// The verdict and why, as `sim probe` prints it.
    pub fn summary(&self) -> String {
        let mut out = String::new();
        let tag = self.release.as_ref().map_or("?", |r| r.tag.as_str());
        match &self.decision {
            Decision::Installs { version } => {
                out += &format!(
                    "installs {version} ({} bytes, {}, {})\n",
                    thousands(u64::from(self.bytes)),
                    self.digest_words(),
                    self.redirect_words()
                );
            }
            Decision::UpToDate => {
                out += &format!("up to date (running {}, latest release {tag})\n", self.from);
            }
            Decision::Refuses | Decision::KeepsRetrying | Decision::DoesNotBoot => {
                let verb = match self.decision {
                    Decision::KeepsRetrying => "keeps retrying",
                    Decision::DoesNotBoot => "does not boot",
                    _ => "refuses",
                };
                out += &format!(
                    "{verb}: {}: {}{}\n",
                    self.error.name(),
                    self.detail.as_deref().unwrap_or("-"),
                    self.chip_words()
                );
                if let Some(step) = self.failed_step {
                    out += &format!("failed step: {}{}\n", step.name(), self.step_words());
                }
            }
        }
        if let Some(b) = &self.boot {
            out += &format!(
                "bootloader model: otadata selects ota_{}, starts ota_{} running {}\n",
                b.selected, b.slot, b.version
            );
        }
        out += &format!(
            "board: running {} on an ESP32-C3 (chip id {BOARD_CHIP_ID}); latest release: {}\n",
            self.from,
            self.release
                .as_ref()
                .map_or("none seen".to_string(), |r| format!(
                    "{}{}",
                    r.tag,
                    match (r.size, &r.digest) {
                        (None, _) => format!(" (no asset named {})", self.asset),
                        (Some(size), Some(_)) =>
                            format!(" ({} bytes, with digest)", thousands(u64::from(size))),
                        (Some(size), None) =>
                            format!(" ({} bytes, no digest)", thousands(u64::from(size))),
                    }
                ))
        );
        let timing = [
            ("check", self.time_of(Purpose::Check)),
            ("download", self.time_of(Purpose::Download)),
        ]
        .iter()
        .filter_map(|(n, d)| d.map(|d| format!("{n} {:.2} s", d.as_secs_f64())))
        .collect::<Vec<_>>()
        .join(", ");
        out += &format!(
            "hosts: {}; {}, {}; wall {:.2} s{}\n",
            self.hosts().join(", "),
            plural(self.requests.len(), "request", "requests"),
            plural(self.retries_performed(), "retry", "retries"),
            self.wall.as_secs_f64(),
            if timing.is_empty() {
                String::new()
            } else {
                format!(" ({timing})")
            }
        );
        out += &format!("log: {}\n", self.mqtt);
        out
    }

    fn digest_words(&self) -> &'static str {
        match self.release.as_ref().and_then(|r| r.digest.as_ref()) {
            Some(_) => "sha256 ok",
            None => "no digest in the release; image's own SHA-256 ok",
        }
    }

    fn redirect_words(&self) -> String {
        let download: Vec<String> = self
            .redirects
            .iter()
            .map(|r| {
                format!(
                    "{} bytes to {}",
                    thousands(r.location_len as u64),
                    r.to_host
                )
            })
            .collect();
        match download.len() {
            0 => "no redirect".to_string(),
            1 => format!("redirect {}", download[0]),
            _ => format!("redirects {}", download.join(", ")),
        }
    }

    fn chip_words(&self) -> String {
        if self.error != ErrorCode::WrongChip {
            return String::new();
        }
        let theirs = self
            .detail
            .as_deref()
            .and_then(|d| d.strip_prefix("image is for chip id "))
            .and_then(|d| d.split(',').next())
            .and_then(|n| n.parse::<u16>().ok());
        match theirs {
            Some(id) => format!(
                " (the release image is for {}, the probe's board is an ESP32-C3, chip id {BOARD_CHIP_ID})",
                chip_name(id)
            ),
            None => format!(" (the probe's board is an ESP32-C3, chip id {BOARD_CHIP_ID})"),
        }
    }

    fn step_words(&self) -> String {
        match (self.failed_step, &self.decision) {
            (_, Decision::KeepsRetrying) => format!(
                " (the probe stopped after {}; a board would go on retrying with backoff, yellow LED on)",
                plural(self.retries_performed(), "retry", "retries")
            ),
            (Some(Step::Download | Step::Verify), _) => format!(
                " (release {}, {} bytes downloaded)",
                self.release.as_ref().map_or("?", |r| r.tag.as_str()),
                thousands(u64::from(self.bytes))
            ),
            _ => String::new(),
        }
    }

    /// The report as one JSON object (`sim probe --json`).
    pub fn to_json(&self) -> serde_json::Value {
        let ms = |d: Option<Duration>| d.map(|d| d.as_millis() as u64);
        serde_json::json!({
            "decision": self.decision.name(),
            "board_succeeds": self.board_succeeds(),
            "from": self.from,
            "installs": match &self.decision { Decision::Installs { version } => Some(version), _ => None },
            "latest": self.release.as_ref().map(|r| serde_json::json!({
                "tag": r.tag, "size": r.size, "digest": r.digest,
            })),
            "error": self.error.name(),
            "detail": self.detail,
            "failed_step": self.failed_step.map(Step::name),
            "bytes": self.bytes,
            "image_sha256": self.image_sha256,
            "redirects": self.redirects.iter().map(|r| serde_json::json!({
                "status": r.status, "from_host": r.from_host, "to_host": r.to_host,
                "location_bytes": r.location_len,
            })).collect::<Vec<_>>(),
            "hosts": self.hosts(),
            "requests": self.requests.iter().map(|r| serde_json::json!({
                "purpose": r.purpose.name(), "host": r.host, "path": r.path, "range_from": r.range_from,
                "authorized": r.authorized, "status": r.status, "bytes": r.bytes,
                "ms": ms(r.duration), "error": r.error,
            })).collect::<Vec<_>>(),
            "retries": self.retries.iter().map(|r| serde_json::json!({
                "reason": r.reason.name(), "detail": r.detail, "delay_ms": r.delay_ms,
            })).collect::<Vec<_>>(),
            "boot": self.boot.as_ref().map(|b| serde_json::json!({
                "slot": b.slot, "selected": b.selected, "version": b.version,
            })),
            "mqtt": self.mqtt,
            "timing": {
                "wall_ms": self.wall.as_millis() as u64,
                "check_ms": ms(self.time_of(Purpose::Check)),
                "download_ms": ms(self.time_of(Purpose::Download)),
            },
            "console": self.console,
        })
    }
}

/// ESP-IDF's chip ids (`esp_chip_id_t` in `esp_app_format.h`).
pub fn chip_name(id: u16) -> String {
    match id {
        0x0000 => "ESP32 (chip id 0)".into(),
        0x0002 => "ESP32-S2 (chip id 2)".into(),
        0x0005 => "ESP32-C3 (chip id 5)".into(),
        0x0009 => "ESP32-S3 (chip id 9)".into(),
        0x000C => "ESP32-C2 (chip id 12)".into(),
        0x000D => "ESP32-C6 (chip id 13)".into(),
        0x0010 => "ESP32-H2 (chip id 16)".into(),
        other => format!("chip id {other}"),
    }
}

/// `1 retry`, `2 retries`.
fn plural(n: usize, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

/// `1075888` as `1,075,888`.
pub fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// The board's `conf.json` for these options (the token, if any, is in it: the core reads it
/// from there, as on a board).
fn conf_json(opts: &ProbeOptions, broker: SocketAddr) -> String {
    let s = |v: &str| serde_json::Value::from(v).to_string();
    let token = opts
        .token
        .as_ref()
        .map_or(String::new(), |t| format!(", \"token\": {}", s(&t.0)));
    format!(
        r#"{{
  "wifi": {{ "ssid": "probe", "password": "probe-wifi" }},
  "github": {{ "repository": {}, "api_base": {}, "asset": {}{token} }},
  "mqtt": {{ "host": "{}", "port": {}, "client_id": "probe" }}
}}"#,
        s(&opts.repository),
        s(opts.api_base.trim_end_matches('/')),
        s(&opts.asset),
        broker.ip(),
        broker.port()
    )
}

fn check_options(opts: &ProbeOptions) -> Result<(), ProbeError> {
    if opts.from.len() > MAX_VERSION_LEN || Version::parse(&opts.from).is_err() {
        return Err(ProbeError::BadFrom(opts.from.clone()));
    }
    let parts: Vec<&str> = opts.repository.split('/').collect();
    if parts.len() != 2 || parts.iter().any(|p| p.is_empty()) {
        return Err(ProbeError::BadRepository(opts.repository.clone()));
    }
    match reqwest::Url::parse(&opts.api_base) {
        Ok(u) if matches!(u.scheme(), "http" | "https") && u.host_str().is_some() => Ok(()),
        _ => Err(ProbeError::BadApiBase(opts.api_base.clone())),
    }
}

/// A loopback port that accepts MQTT connections and closes them at once: the board's
/// publish fails immediately, as with a broker that is down, and the record stays on flash.
async fn no_broker() -> Result<(SocketAddr, tokio::task::JoinHandle<()>), ProbeError> {
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0))
        .await
        .map_err(ProbeError::Listen)?;
    let addr = listener.local_addr().map_err(ProbeError::Listen)?;
    let task = tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            drop(stream);
        }
    });
    Ok((addr, task))
}

/// Runs the probe: one boot of a board running `opts.from` against `opts.api_base`.
pub async fn probe(opts: &ProbeOptions) -> Result<ProbeReport, ProbeError> {
    check_options(opts)?;
    let started = Instant::now();
    let (broker, closer) = match opts.broker {
        Some(addr) => (addr, None),
        None => {
            let (addr, task) = no_broker().await?;
            (addr, Some(task))
        }
    };
    let conf = conf_json(opts, broker);
    let mut parser = ConfigParser::new();
    parser
        .push(conf.as_bytes())
        .and_then(|()| parser.finish().map(|_| ()))
        .map_err(|e| ProbeError::Config(e.to_string()))?;

    let running = image::build(&opts.from, RUNNING_IMAGE_SIZE, opts.seed);
    let mut board = VirtualBoard::new(
        image::provision(conf.as_bytes(), &running, opts.seed),
        "probe",
        opts.seed,
    );
    board.record_exchanges = true;
    // Real servers over a real network pause; only the core's own stall timeout is a stall.
    board.io_patience = Duration::from_millis(STALL_MS);
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .pool_max_idle_per_host(0)
        .build()
        .map_err(|e| ProbeError::Client(e.to_string()))?;
    let mut triggers = Triggers {
        // Stop right after the retry beyond the allowance: a board would wait and go on.
        at_events: vec![("retry".to_string(), opts.max_retries + 1)],
        ..Triggers::default()
    };
    let end = board.boot(&http, &Wiring { broker }, &mut triggers).await;
    if let Some(task) = closer {
        task.abort();
    }
    Ok(judge(opts, &mut board, &end, started.elapsed()))
}

/// Reads the verdict from the board's trace, exchanges and flash.
fn judge(
    opts: &ProbeOptions,
    board: &mut VirtualBoard,
    end: &BootEnd,
    wall: Duration,
) -> ProbeReport {
    let seen = TraceSeen::read(board.trace.iter().map(|l| &l.event));
    let release = release_seen(seen.release.clone(), &board.exchanges, &opts.asset);
    let requests: Vec<Request> = board.exchanges.iter().map(request_of).collect();
    let redirects = redirects_of(&board.exchanges);
    let bytes = seen
        .outcome
        .map_or_else(|| bytes_downloaded(&board.exchanges), |(_, _, b)| b);
    let verdict = verdict(board, &seen, release.as_ref(), end);
    let mqtt = match (opts.broker, seen.published) {
        (None, _) => {
            "no broker: the board's MQTT port closes every connection; the record stays on the simulated flash".to_string()
        }
        (Some(addr), true) => format!("published to the broker at {addr}"),
        (Some(addr), false) => {
            format!("broker at {addr} did not acknowledge; the record stays on the simulated flash")
        }
    };
    ProbeReport {
        decision: verdict.decision,
        from: opts.from.clone(),
        asset: opts.asset.clone(),
        release,
        error: verdict.error,
        detail: verdict.detail,
        failed_step: verdict.failed_step,
        bytes,
        image_sha256: verdict.image_sha256,
        redirects,
        requests,
        retries: seen.retries,
        boot: verdict.boot,
        mqtt,
        console: board.trace.iter().map(|l| l.render()).collect(),
        wall,
        phase_times: phase_times(&board.exchanges),
    }
}

/// What the board's trace says about its boot.
#[derive(Default)]
struct TraceSeen {
    /// The release the core chose (tag and size; the digest comes from the JSON).
    release: Option<ReleaseSeen>,
    /// The boot's outcome: result, error code, bytes downloaded.
    outcome: Option<(Outcome, ErrorCode, u32)>,
    /// The last error reported, with its detail.
    last_error: Option<(ErrorCode, String)>,
    /// Every retry, with the detail of the error behind it.
    retries: Vec<RetrySeen>,
    /// The core switched the boot slot.
    switched: bool,
    /// The log record reached the broker.
    published: bool,
}

impl TraceSeen {
    fn read<'a>(events: impl Iterator<Item = &'a Event>) -> Self {
        let mut seen = Self::default();
        for event in events {
            match event {
                Event::Release { tag, size } => {
                    seen.release = Some(ReleaseSeen {
                        tag: tag.to_string(),
                        size: Some(*size),
                        digest: None,
                    })
                }
                Event::Error { code, detail } => {
                    seen.last_error = Some((*code, detail.to_string()))
                }
                Event::Retry {
                    reason, delay_ms, ..
                } => seen.retries.push(RetrySeen {
                    reason: *reason,
                    detail: seen
                        .last_error
                        .as_ref()
                        .filter(|(c, _)| c == reason)
                        .map_or(String::new(), |(_, d)| d.clone()),
                    delay_ms: *delay_ms,
                }),
                Event::Switch { .. } => seen.switched = true,
                Event::Outcome {
                    result,
                    error,
                    bytes,
                    ..
                } => seen.outcome = Some((*result, *error, *bytes)),
                Event::Published { .. } => seen.published = true,
                _ => {}
            }
        }
        seen
    }

    /// The detail of the last error, when its code is `code`.
    fn detail_of(&self, code: ErrorCode) -> Option<String> {
        self.last_error
            .as_ref()
            .filter(|(c, _)| *c == code)
            .map(|(_, d)| d.clone())
    }
}

/// The release as the trace and the release JSON show it: the asset's digest from the JSON
/// and, for a release the core refused before choosing its asset, tag and size too.
fn release_seen(
    traced: Option<ReleaseSeen>,
    exchanges: &[Exchange],
    asset: &str,
) -> Option<ReleaseSeen> {
    let json = release_json(exchanges);
    let asset_json = json.as_ref().and_then(|j| asset_of(j, asset));
    let digest = asset_json
        .and_then(|a| a.get("digest"))
        .and_then(|d| d.as_str())
        .map(str::to_string);
    match traced {
        Some(r) => Some(ReleaseSeen { digest, ..r }),
        // The core reports a release once it has chosen its asset; for a release it refused
        // earlier (asset missing, bad tag …) the tag comes from the JSON the board received.
        None => json
            .as_ref()
            .and_then(|j| j.get("tag_name"))
            .and_then(|t| t.as_str())
            .map(|tag| ReleaseSeen {
                tag: tag.to_string(),
                size: asset_json
                    .and_then(|a| a.get("size"))
                    .and_then(|s| s.as_u64())
                    .and_then(|s| u32::try_from(s).ok()),
                digest,
            }),
    }
}

/// The redirects the board followed.
fn redirects_of(exchanges: &[Exchange]) -> Vec<Redirect> {
    exchanges
        .iter()
        .filter_map(|x| {
            let status = x.status.filter(|s| (300..400).contains(s))?;
            let location = x.location.as_deref()?;
            Some(Redirect {
                status,
                from_host: host_of(&x.url),
                to_host: host_of(location),
                location_len: location.len(),
            })
        })
        .collect()
}

/// Bytes of image the successful downloads carried (when the trace has no outcome).
fn bytes_downloaded(exchanges: &[Exchange]) -> u32 {
    exchanges
        .iter()
        .filter(|x| x.purpose == Purpose::Download && x.status.is_some_and(|s| s < 300))
        .map(|x| x.body_bytes as u32)
        .sum()
}

/// How long the release check and the download took, each from its first request to the
/// end of its last.
fn phase_times(exchanges: &[Exchange]) -> Vec<(Purpose, Duration)> {
    let mut phase_times = Vec::new();
    for purpose in [Purpose::Check, Purpose::Download] {
        let of: Vec<&Exchange> = exchanges.iter().filter(|x| x.purpose == purpose).collect();
        if let (Some(first), Some(last)) = (of.first(), of.last()) {
            let end = last.ended_at.or(last.head_at).unwrap_or(last.sent_at);
            phase_times.push((purpose, end.saturating_sub(first.sent_at)));
        }
    }
    phase_times
}

/// The probe's decision, and what the bootloader model found when the board installed.
struct Verdict {
    decision: Decision,
    error: ErrorCode,
    detail: Option<String>,
    failed_step: Option<Step>,
    boot: Option<BootCheck>,
    image_sha256: Option<String>,
}

impl Verdict {
    /// A verdict without a boot check.
    fn of(
        decision: Decision,
        error: ErrorCode,
        detail: Option<String>,
        failed_step: Option<Step>,
    ) -> Self {
        Self {
            decision,
            error,
            detail,
            failed_step,
            boot: None,
            image_sha256: None,
        }
    }
}

/// The decision from the boot's outcome (or how it ended without one).
fn verdict(
    board: &mut VirtualBoard,
    seen: &TraceSeen,
    release: Option<&ReleaseSeen>,
    end: &BootEnd,
) -> Verdict {
    let last_purpose = board.exchanges.last().map(|x| x.purpose);
    match (seen.outcome, end) {
        (Some((Outcome::Installed, _, _)), _) => boot_installed(board, release),
        (Some((Outcome::UpToDate, _, _)), _) => {
            Verdict::of(Decision::UpToDate, ErrorCode::None, None, None)
        }
        (Some((_, code, _)), _) => Verdict::of(
            Decision::Refuses,
            code,
            seen.detail_of(code),
            Some(step_of(code, last_purpose, seen.switched)),
        ),
        (None, BootEnd::PowerCut) if !seen.retries.is_empty() => {
            let last = seen.retries.last().cloned();
            let step = match last_purpose {
                Some(Purpose::Download) => Step::Download,
                _ => Step::ReleaseCheck,
            };
            Verdict::of(
                Decision::KeepsRetrying,
                last.as_ref().map_or(ErrorCode::Network, |r| r.reason),
                last.map(|r| r.detail),
                Some(step),
            )
        }
        (None, other) => Verdict::of(
            Decision::Refuses,
            ErrorCode::None,
            Some(format!("the boot ended without an outcome: {other:?}")),
            Some(Step::Setup),
        ),
    }
}

/// The board installed `release`: the bootloader model starts it, and the verdict is
/// whether it started the new image from the slot otadata selects.
fn boot_installed(board: &mut VirtualBoard, release: Option<&ReleaseSeen>) -> Verdict {
    let tag = release.map_or(String::new(), |r| r.tag.clone());
    let bootloader = board.bootloader;
    let choice = match bootloader.boot(&mut board.flash) {
        Ok(choice) => choice,
        Err(bricked) => {
            return Verdict::of(
                Decision::DoesNotBoot,
                ErrorCode::None,
                Some(format!("bootloader model: {bricked}")),
                Some(Step::Boot),
            );
        }
    };
    let selected = match choice.selection {
        bootloader::Selection::Entry { slot, .. } => slot,
        _ => 0,
    };
    let slot = choice.slot().unwrap_or(u8::MAX);
    let ok = !choice.fell_back()
        && slot == selected
        && Version::parse(&choice.version).ok() == Version::parse(&tag).ok();
    let image_sha256 = release
        .and_then(|r| r.size)
        .and_then(|size| slot_sha256(&board.flash, choice.offset, size));
    let started = format!("bootloader model: {}", choice.describe());
    let boot = Some(BootCheck {
        slot,
        selected,
        version: choice.version.clone(),
    });
    let verdict = if ok {
        Verdict::of(
            Decision::Installs {
                version: choice.version,
            },
            ErrorCode::None,
            None,
            None,
        )
    } else {
        Verdict::of(
            Decision::DoesNotBoot,
            ErrorCode::None,
            Some(started),
            Some(Step::Boot),
        )
    };
    Verdict {
        boot,
        image_sha256,
        ..verdict
    }
}

/// The step an error code belongs to.
fn step_of(code: ErrorCode, last_purpose: Option<Purpose>, switched: bool) -> Step {
    use ErrorCode::*;
    match code {
        Config | Layout | LogOverflow | SelfCheck | None => Step::Setup,
        NoRelease | BadRelease | BadTag | NotEligible => Step::ReleaseCheck,
        Downgrade | TooLarge | RolledBackRelease => Step::Decision,
        SizeMismatch | HashMismatch | BadImage | WrongChip | VersionMismatch => Step::Verify,
        Flash if switched => Step::Switch,
        Flash => Step::Download,
        AssetMissing | HttpStatus | RedirectLoop | RateLimited | Network => match last_purpose {
            Some(Purpose::Download) => Step::Download,
            _ => Step::ReleaseCheck,
        },
    }
}

fn request_of(x: &Exchange) -> Request {
    let (host, path) = match reqwest::Url::parse(&x.url) {
        Ok(u) => (host_of(&x.url), u.path().to_string()),
        Err(_) => (String::from("?"), x.url.clone()),
    };
    Request {
        purpose: x.purpose,
        host,
        path,
        range_from: x.range_from,
        authorized: x.authorized,
        status: x.status,
        bytes: x.body_bytes,
        duration: x.ended_at.map(|e| e.saturating_sub(x.sent_at)),
        error: x.error.clone(),
    }
}

/// `host[:port]` of a URL.
fn host_of(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(u) => match (u.host_str(), u.port()) {
            (Some(h), Some(p)) => format!("{h}:{p}"),
            (Some(h), None) => h.to_string(),
            _ => "?".into(),
        },
        Err(_) => "?".into(),
    }
}

/// The last release JSON the board received, for the report only (the core parsed and
/// judged it itself, with its own parser).
fn release_json(exchanges: &[Exchange]) -> Option<serde_json::Value> {
    let body = exchanges
        .iter()
        .rev()
        .find(|x| x.purpose == Purpose::Check && x.status == Some(200))?;
    serde_json::from_slice(&body.check_body).ok()
}

/// The asset of this name in a release JSON.
fn asset_of<'a>(release: &'a serde_json::Value, asset: &str) -> Option<&'a serde_json::Value> {
    release
        .get("assets")?
        .as_array()?
        .iter()
        .find(|a| a.get("name").and_then(|n| n.as_str()) == Some(asset))
}

/// SHA-256 of the first `size` bytes of the slot at `offset`.
fn slot_sha256(flash: &crate::flash::SimFlash, offset: u32, size: u32) -> Option<String> {
    let bytes = flash
        .contents()
        .get(offset as usize..offset as usize + size as usize)?;
    Some(hex::encode(Sha256::digest(bytes)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thousands_separators() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1_012), "1,012");
        assert_eq!(thousands(1_075_888), "1,075,888");
    }

    #[test]
    fn tokens_stay_out_of_debug_output() {
        let mut opts = ProbeOptions::new("acme/thermostat", "firmware-esp32c3.bin");
        opts.token = Some(Token::new("ghp_secret123"));
        assert!(!format!("{opts:?}").contains("ghp_secret123"));
    }

    #[tokio::test]
    async fn options_the_core_cannot_keep_are_refused_naming_the_field() {
        let opts = ProbeOptions::new("acme/thermostat", &"f".repeat(200));
        match probe(&opts).await {
            Err(ProbeError::Config(e)) => assert!(e.contains("github.asset"), "{e}"),
            other => panic!("expected a conf.json error, got {other:?}"),
        }
    }

    #[test]
    fn bad_options_are_named() {
        let mut opts = ProbeOptions::new("acme", "fw.bin");
        assert!(matches!(
            check_options(&opts),
            Err(ProbeError::BadRepository(_))
        ));
        opts.repository = "acme/thermostat".into();
        opts.from = "one".into();
        assert!(matches!(check_options(&opts), Err(ProbeError::BadFrom(_))));
        opts.from = "1.0".into();
        opts.api_base = "ftp://example.com".into();
        assert!(matches!(
            check_options(&opts),
            Err(ProbeError::BadApiBase(_))
        ));
    }
}
