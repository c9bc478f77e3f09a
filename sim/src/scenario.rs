//! Scenario files (`fixtures/scenarios/*.toml`) and their runner.
//!
//! A scenario gives the board's starting state, the releases on the mock
//! GitHub, the faults, and what must come out. It is run by booting the
//! virtual board until the application runs (plus `extra_boots` more), then
//! every expectation is checked. Example:
//!
//! ```toml
//! description = "A newer release is installed, confirmed, and reported"
//! seed = 1
//! [board]
//! version = "1.0"
//! [[releases]]
//! tag = "1.1"
//! size = 65536
//! [[faults]]
//! kind = "power_cut"
//! at_event = "progress"
//! [expect]
//! final_version = "1.1"
//! outcomes = ["cut", "installed", "updated"]
//! leds = ["Y", "Y", "Y..y"]      # Y/y yellow on/off, "." short and "-" long green blink
//! log = ["installed", "updated"] # results of the MQTT activity log, by sequence number
//! errors = []                    # error codes that must appear in the trace
//! ```
//!
//! GitHub can change between boots, and faults can start with a later boot (boots are
//! 1-based; a boot is one power-on, whatever it ends in):
//!
//! ```toml
//! [[releases]]                # build 1 of 1.1, on GitHub during boot 1 only
//! tag = "1.1"
//! digest = false              # `"digest": null`, as for assets uploaded before GitHub had digests
//! until_boot = 1
//! [[releases]]                # re-uploaded: new asset id and updated_at, other bytes
//! tag = "1.1"
//! build = 2
//! from_boot = 2
//! # rebuilt_from_boot = 2     # or: other bytes under the *same* asset (only the ETag changes)
//! [[faults]]
//! kind = "github"
//! fault = "status"            # the API answers 403, no rate limit …
//! status = 403
//! times = 1                   # … once …
//! from_boot = 2               # … armed when boot 2 starts (the new image's first boot)
//! [[faults]]
//! kind = "wifi_down"
//! from_boot = 2               # from_ms / until_ms count from the start of boot 2
//! from_ms = 0
//! until_ms = 2400000
//! [expect]
//! final_version = "1.1"
//! final_build = 2                                  # the last boot runs build 2, byte for byte
//! events = ["trial", "trial_returned", "confirmed"] # in this order, anything between
//! ```
//!
//! Every scenario runs once per bootloader model ([`Model`]: `espflash`, espflash 4.x's
//! bundled bootloader without rollback, and `idf-rollback`, ESP-IDF's with
//! `CONFIG_BOOTLOADER_APP_ROLLBACK_ENABLE`). `bootloaders = ["idf-rollback"]` (or
//! `bootloader = "idf-rollback"`) restricts a scenario to some models. Where the outcome
//! legitimately differs under one model, `[expect_idf_rollback]` (or `[expect_espflash]`)
//! holds only the fields that differ from `[expect]`:
//!
//! ```toml
//! [expect_idf_rollback]
//! outcomes = ["installed", "cut", "installed", "updated"]
//! log = ["installed", "installed", "updated"]
//! ```

use crate::board::{BootEnd, Outage, TraceLine, Triggers, VirtualBoard, Wiring};
use crate::bootloader::{BootChoice, Bootloader, Chip, DEFAULT_REVISION, Model, Selection};
use crate::broker::Collector;
use crate::flash::SimFlash;
use crate::github::{Armed, Asset, Exhausted, Fault, RateLimit, Release, Route};
use crate::image;
use crate::proxy::ProxyMode;
use crate::world::{BrokerChoice, SimDns, World, WorldError, conf_json};
use firmware::trace::Event;
use serde::Deserialize;
use std::net::IpAddr;
use std::path::Path;
use std::time::Duration;

/// A scenario file.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    /// Name (defaults to the file name).
    #[serde(default)]
    pub name: String,
    /// What it shows.
    pub description: String,
    /// Seed of every random choice (jitter, torn operations).
    #[serde(default = "one")]
    pub seed: u64,
    /// The board at the start.
    pub board: BoardSpec,
    /// Releases on the mock GitHub, oldest first.
    #[serde(default)]
    pub releases: Vec<ReleaseSpec>,
    /// Faults.
    #[serde(default)]
    pub faults: Vec<FaultSpec>,
    /// Boots to run after the first one that reached the application.
    #[serde(default)]
    pub extra_boots: u32,
    /// Run under this bootloader model only (shorthand for a one-model `bootloaders`).
    #[serde(default)]
    pub bootloader: Option<Model>,
    /// The bootloader models to run under (default: every model).
    #[serde(default)]
    pub bootloaders: Option<Vec<Model>>,
    /// What must come out.
    pub expect: Expect,
    /// The expectations that differ behind espflash's bootloader.
    #[serde(default)]
    pub expect_espflash: Option<ExpectOverride>,
    /// The expectations that differ behind a rollback-enabled ESP-IDF bootloader.
    #[serde(default)]
    pub expect_idf_rollback: Option<ExpectOverride>,
}

fn yes() -> bool {
    true
}

fn one() -> u64 {
    1
}

/// The board at the start.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BoardSpec {
    /// Version of the image flashed in ota_0.
    pub version: String,
    /// A raw conf.json replacing the generated one (for malformed-config scenarios).
    #[serde(default)]
    pub conf: Option<String>,
    /// `update.allow_prereleases`.
    #[serde(default)]
    pub allow_prereleases: bool,
    /// `update.allow_downgrade`.
    #[serde(default)]
    pub allow_downgrade: bool,
    /// `github.token` set (default): downloads go through the API asset URL; without it,
    /// through `browser_download_url`.
    #[serde(default = "yes")]
    pub token: bool,
    /// The chip's wafer revision, major * 100 + minor (default 4: ESP32-C3 v0.4).
    #[serde(default)]
    pub chip_revision: Option<u16>,
    /// `update.max_wait_s` in the generated conf.json (default: absent, the core's 120 s).
    #[serde(default)]
    pub max_wait_s: Option<u32>,
    /// Once the application runs beside the routine, its reboot hook holds a reboot into a
    /// new release this many seconds (default 0: at once, the hook's default).
    #[serde(default)]
    pub app_holds_reboot_s: u64,
    /// The OTA slot the running image is in (default 0, blank otadata as after `just flash`;
    /// another slot comes with a VALID otadata entry selecting it).
    #[serde(default)]
    pub slot: u8,
}

/// A release.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReleaseSpec {
    /// Tag.
    pub tag: String,
    /// Version in the image's descriptor (defaults to the tag).
    #[serde(default)]
    pub image_version: Option<String>,
    /// Image size in bytes.
    #[serde(default = "default_size")]
    pub size: usize,
    /// Prerelease flag.
    #[serde(default)]
    pub prerelease: bool,
    /// Draft flag.
    #[serde(default)]
    pub draft: bool,
    /// Asset name (the board looks for `firmware.bin`).
    #[serde(default = "default_asset")]
    pub asset: String,
    /// The image header's `min_chip_rev_full` (major * 100 + minor; default 0).
    #[serde(default)]
    pub min_chip_rev: Option<u16>,
    /// The image header's `max_chip_rev_full` (default 199, v1.99).
    #[serde(default)]
    pub max_chip_rev: Option<u16>,
    /// Load address of the image's code segment (default: IRAM, 0x40380000).
    #[serde(default)]
    pub code_load_addr: Option<u32>,
    /// Published on GitHub from this boot on (1-based, default 1: from the start).
    #[serde(default = "one_u32")]
    pub from_boot: u32,
    /// Published up to and including this boot, then taken down (default: never). Followed by
    /// an entry of the same tag with `from_boot` one higher, it models a re-upload: a new asset
    /// id and `updated_at`, other bytes.
    #[serde(default)]
    pub until_boot: Option<u32>,
    /// Whether the asset shows its `digest` (default true); `false` gives `"digest": null`, as
    /// for assets uploaded before GitHub computed digests. Then only the asset's identity and
    /// the `If-Range` ETag keep a resumed download from mixing two builds.
    #[serde(default = "yes")]
    pub digest: bool,
    /// Which build of the tag this is (default 1), for `expect.final_build`. Every
    /// `[[releases]]` entry has its own bytes, whatever its tag.
    #[serde(default = "one_u32")]
    pub build: u32,
    /// From this boot on the asset host serves build `build + 1` (other bytes, same size) under
    /// the same asset: same ids, `updated_at` and `Last-Modified`, only the ETag differs, as if
    /// the file were replaced in storage. (If another release appears or goes at that same
    /// boot, GitHub is republished and every asset gets a new id anyway.)
    #[serde(default)]
    pub rebuilt_from_boot: Option<u32>,
}

fn default_size() -> usize {
    64 * 1024
}

fn default_asset() -> String {
    "firmware.bin".into()
}

/// A fault.
#[derive(Clone, Debug, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum FaultSpec {
    /// Power is cut at one point.
    PowerCut {
        /// At flash operation N (1-based, over the board's life).
        #[serde(default)]
        at_flash_op: Option<u64>,
        /// During the `occurrence`-th flash operation on this partition (by label: `otadata`,
        /// `ota_1`, `otastate`, `otalog` …).
        #[serde(default)]
        at_partition: Option<String>,
        /// Once N image bytes reached the core.
        #[serde(default)]
        at_download_byte: Option<u64>,
        /// Right after a trace event of this name …
        #[serde(default)]
        at_event: Option<String>,
        /// … its n-th occurrence (default 1).
        #[serde(default)]
        occurrence: Option<u32>,
        /// With `at_event`: cut during the n-th flash operation after that event instead.
        #[serde(default)]
        then_op: Option<u64>,
        /// When the virtual clock passes T ms.
        #[serde(default)]
        at_time_ms: Option<u64>,
        /// Only behind this bootloader model (default: every model).
        #[serde(default)]
        bootloader: Option<Model>,
    },
    /// No WiFi in a window of virtual time.
    WifiDown {
        /// Start, in ms since the start of boot `from_boot`.
        from_ms: u64,
        /// End, in ms since the start of boot `from_boot`.
        until_ms: u64,
        /// The boot whose start the window counts from (1-based, default 1: the first boot,
        /// so the times are ms of virtual time since the start).
        #[serde(default = "one_u32")]
        from_boot: u32,
    },
    /// WiFi drops mid-download.
    WifiDrop {
        /// After this many image bytes.
        at_download_byte: u64,
        /// For this long.
        for_ms: u64,
    },
    /// A misbehaving GitHub.
    Github {
        /// `no_release`, `server_error` (5xx on the API), `status` (the API answers `status`
        /// with GitHub's JSON error shape and no rate limit: 401 bad credentials, a 403 …),
        /// `download_error`, `truncated_json`, `cut_body_after`, `stall`, `redirect_loop`,
        /// `wrong_size`, `wrong_hash`, `secondary_rate_limit`.
        fault: String,
        /// HTTP status for `server_error`, `status` and `download_error`.
        #[serde(default)]
        status: Option<u16>,
        /// Bytes for `cut_body_after` / `stall`.
        #[serde(default)]
        bytes: Option<u64>,
        /// Seconds for `secondary_rate_limit`.
        #[serde(default)]
        seconds: Option<u64>,
        /// Firings before it disarms (default: always).
        #[serde(default)]
        times: Option<u32>,
        /// Armed at the start of this boot (1-based, default 1: from the start), e.g. to hit
        /// the first boot of a new image only.
        #[serde(default = "one_u32")]
        from_boot: u32,
    },
    /// GitHub's primary rate limit with this many requests an hour.
    RateLimit {
        /// Requests per hour.
        per_hour: u32,
    },
    /// The TCP connection to GitHub is reset after N bytes, `times` times.
    ConnectionReset {
        /// Bytes delivered before the reset.
        after_bytes: u64,
        /// How many connections are reset.
        #[serde(default = "one_u32")]
        times: u32,
    },
    /// The next `lookups` DNS lookups of the GitHub host fail.
    DnsDown {
        /// How many.
        lookups: u32,
    },
    /// The broker refuses connections during these boots (1-based).
    BrokerDown {
        /// Boots.
        boots: Vec<u32>,
    },
}

fn one_u32() -> u32 {
    1
}

/// What must come out.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct Expect {
    /// Version running at the end.
    pub final_version: String,
    /// Outcome of each boot (`cut` for a boot that lost power).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub outcomes: Vec<String>,
    /// LED sequence of each boot.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub leds: Vec<String>,
    /// Results in the MQTT activity log, by sequence number.
    #[serde(default)]
    pub log: Vec<String>,
    /// The version the bootloader started at each boot that reached an image (default: not
    /// checked).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub versions: Vec<String>,
    /// Error codes that must appear in the trace.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<String>,
    /// What each power cut interrupted: `erase`, `write` or `between`, in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cuts: Vec<String>,
    /// Boots at which the bootloader may refuse the image otadata selects and fall back to
    /// another one (a release the core cannot check). Any other fallback is a failure.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fallbacks: Vec<u32>,
    /// Trace events, by name (`trial_returned`, `confirmed`, `resume` …), that must appear in
    /// this order over the whole run; other events may come between.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub events: Vec<String>,
    /// The build (`[[releases]]`' `build`, or `build + 1` for `rebuilt_from_boot`) whose image
    /// the last boot runs, compared byte for byte: a download stitched from two builds is
    /// none of them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub final_build: Option<u32>,
    /// Image bytes each boot received, as its outcome record says (0 for a boot without an
    /// outcome): what a remembered bad release or a 304 saves. Checked by the simulator only.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub image_bytes: Vec<u32>,
    /// How many release checks GitHub answered 304 Not Modified over the run. Checked by
    /// the simulator only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_modified: Option<u32>,
}

/// Fields of [`Expect`] that differ under one bootloader model; the others are `[expect]`'s.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExpectOverride {
    /// See [`Expect::final_version`].
    pub final_version: Option<String>,
    /// See [`Expect::outcomes`].
    pub outcomes: Option<Vec<String>>,
    /// See [`Expect::leds`].
    pub leds: Option<Vec<String>>,
    /// See [`Expect::log`].
    pub log: Option<Vec<String>>,
    /// See [`Expect::versions`].
    pub versions: Option<Vec<String>>,
    /// See [`Expect::errors`].
    pub errors: Option<Vec<String>>,
    /// See [`Expect::cuts`].
    pub cuts: Option<Vec<String>>,
    /// See [`Expect::fallbacks`].
    pub fallbacks: Option<Vec<u32>>,
    /// See [`Expect::events`].
    pub events: Option<Vec<String>>,
    /// See [`Expect::final_build`].
    pub final_build: Option<u32>,
}

impl Expect {
    /// These expectations with `o`'s fields in place of theirs.
    fn overridden(&self, o: &ExpectOverride) -> Expect {
        Expect {
            final_version: o
                .final_version
                .clone()
                .unwrap_or_else(|| self.final_version.clone()),
            outcomes: o.outcomes.clone().unwrap_or_else(|| self.outcomes.clone()),
            leds: o.leds.clone().unwrap_or_else(|| self.leds.clone()),
            log: o.log.clone().unwrap_or_else(|| self.log.clone()),
            versions: o.versions.clone().unwrap_or_else(|| self.versions.clone()),
            errors: o.errors.clone().unwrap_or_else(|| self.errors.clone()),
            cuts: o.cuts.clone().unwrap_or_else(|| self.cuts.clone()),
            fallbacks: o
                .fallbacks
                .clone()
                .unwrap_or_else(|| self.fallbacks.clone()),
            events: o.events.clone().unwrap_or_else(|| self.events.clone()),
            final_build: o.final_build.or(self.final_build),
            image_bytes: self.image_bytes.clone(),
            not_modified: self.not_modified,
        }
    }
}

/// What a run showed, as far as [`Expect::check`] needs it: everything but the flash. The
/// simulator fills it from the virtual board; the HIL harness from a board's serial console.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Observed {
    /// The version the bootloader started at each boot that reached an image.
    pub versions: Vec<String>,
    /// Outcome of each boot (`cut` for a boot that lost power).
    pub outcomes: Vec<String>,
    /// LED sequence of each boot.
    pub leds: Vec<String>,
    /// Results of the MQTT activity log the broker received, by sequence number.
    pub log: Vec<String>,
    /// Every error and retry reason that appeared in the trace, by name.
    pub error_codes_seen: Vec<String>,
    /// Every trace event's name, in order.
    pub event_names: Vec<String>,
    /// What each power cut interrupted (`erase`, `write`, `between`), when known: a board cut
    /// by a reset line cannot tell, and then `cuts` is not checked.
    pub cut_kinds: Option<Vec<String>>,
}

impl Observed {
    /// The version running at the end (empty when no boot reached an image).
    pub fn final_version(&self) -> &str {
        self.versions.last().map_or("", String::as_str)
    }
}

/// One expectation that did not hold.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mismatch {
    /// The `[expect]` field (`final_version`, `outcomes`, `leds`, `log`, `cuts`, `events`,
    /// `errors`).
    pub field: &'static str,
    /// What it expected, on one line.
    pub expected: String,
    /// What came out, on one line.
    pub actual: String,
    /// For a list: both lists, item by item, for the side-by-side table.
    pub items: Option<ListDiff>,
}

/// Two lists compared item by item.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListDiff {
    /// What an item's number is (`boot`, `seq`, `cut`).
    pub key: &'static str,
    /// Expected items.
    pub expected: Vec<String>,
    /// Items that came out.
    pub actual: Vec<String>,
}

impl Mismatch {
    fn list(
        field: &'static str,
        key: &'static str,
        expected: &[String],
        actual: &[String],
    ) -> Self {
        Mismatch {
            field,
            expected: format!("{expected:?}"),
            actual: format!("{actual:?}"),
            items: Some(ListDiff {
                key,
                expected: expected.to_vec(),
                actual: actual.to_vec(),
            }),
        }
    }
}

impl std::fmt::Display for Mismatch {
    /// One line for a single value; for a list, a table with one row per item, the rows that
    /// differ marked:
    ///
    /// ```text
    /// outcomes:
    ///   boot  expected   actual
    ///   1     installed  installed
    ///   2     updated    failed     <-- differs
    /// ```
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let Some(items) = &self.items else {
            return write!(
                f,
                "{}: expected {}, actual {}",
                self.field, self.expected, self.actual
            );
        };
        const NONE: &str = "-";
        let rows = items.expected.len().max(items.actual.len());
        let cell = |list: &[String], i: usize| list.get(i).map_or(NONE, String::as_str).to_string();
        let width = |list: &[String], head: &str| {
            list.iter()
                .map(|s| s.chars().count())
                .chain([head.len(), NONE.len()])
                .max()
                .unwrap_or(0)
        };
        let kw = items.key.len().max(rows.to_string().len());
        let ew = width(&items.expected, "expected");
        let aw = width(&items.actual, "actual");
        write!(f, "{}:", self.field)?;
        let head = format!("{:<kw$}  {:<ew$}  {:<aw$}", items.key, "expected", "actual");
        write!(f, "\n  {}", head.trim_end())?;
        for i in 0..rows {
            let (e, a) = (cell(&items.expected, i), cell(&items.actual, i));
            let mark = if items.expected.get(i) == items.actual.get(i) {
                ""
            } else {
                "  <-- differs"
            };
            let row = format!("{:<kw$}  {e:<ew$}  {a:<aw$}{mark}", i + 1);
            write!(f, "\n  {}", row.trim_end())?;
        }
        Ok(())
    }
}

impl Expect {
    /// Every expectation that `observed` does not meet, except `final_build` (which needs the
    /// flash) and the invariants ([`check_invariants`]). Empty: all met.
    pub fn check(&self, observed: &Observed) -> Vec<Mismatch> {
        let mut out = Vec::new();
        if observed.final_version() != self.final_version {
            let shown = |v: &str| {
                if v.is_empty() {
                    "(no image ran)".to_string()
                } else {
                    v.to_string()
                }
            };
            out.push(Mismatch {
                field: "final_version",
                expected: shown(&self.final_version),
                actual: shown(observed.final_version()),
                items: None,
            });
        }
        if !self.outcomes.is_empty() && observed.outcomes != self.outcomes {
            out.push(Mismatch::list(
                "outcomes",
                "boot",
                &self.outcomes,
                &observed.outcomes,
            ));
        }
        if !self.leds.is_empty() && observed.leds != self.leds {
            out.push(Mismatch::list("leds", "boot", &self.leds, &observed.leds));
        }
        if !self.versions.is_empty() && observed.versions != self.versions {
            out.push(Mismatch::list(
                "versions",
                "boot",
                &self.versions,
                &observed.versions,
            ));
        }
        if observed.log != self.log {
            out.push(Mismatch::list("log", "seq", &self.log, &observed.log));
        }
        if let Some(kinds) = &observed.cut_kinds
            && !self.cuts.is_empty()
            && *kinds != self.cuts
        {
            out.push(Mismatch::list("cuts", "cut", &self.cuts, kinds));
        }
        let mut rest = observed.event_names.iter();
        if let Some(wanted) = self.events.iter().find(|w| !rest.any(|n| n == *w)) {
            out.push(Mismatch {
                field: "events",
                expected: format!("{:?} in this order", self.events),
                actual: format!("missing from `{wanted}` on"),
                items: None,
            });
        }
        for code in &self.errors {
            if !observed.error_codes_seen.contains(code) {
                out.push(Mismatch {
                    field: "errors",
                    expected: format!("`{code}` in the trace"),
                    actual: "never appeared".into(),
                    items: None,
                });
            }
        }
        out
    }
}

/// What a run produced.
#[derive(Clone, Debug)]
pub struct Report {
    /// Scenario name.
    pub name: String,
    /// The bootloader model it ran behind.
    pub model: Model,
    /// Seed used.
    pub seed: u64,
    /// Failed expectations and broken invariants (empty: passed).
    pub failures: Vec<String>,
    /// Outcome of each boot.
    pub outcomes: Vec<String>,
    /// LEDs of each boot.
    pub leds: Vec<String>,
    /// Activity-log results received by the broker, by sequence number.
    pub log: Vec<String>,
    /// The log messages as received.
    pub log_payloads: Vec<String>,
    /// Versions booted, one per boot.
    pub versions: Vec<String>,
    /// Virtual time.
    pub virtual_ms: u64,
    /// Wall time.
    pub wall_ms: u128,
    /// Every trace line.
    pub trace: Vec<TraceLine>,
    /// What each power cut interrupted: (boot, description).
    pub cuts: Vec<(u32, String)>,
    /// What the bootloader did at each boot that reached it: (boot, one line).
    pub bootloader: Vec<(u32, String)>,
}

impl Report {
    /// True when nothing failed.
    pub fn passed(&self) -> bool {
        self.failures.is_empty()
    }

    /// `NAME [model]`.
    pub fn label(&self) -> String {
        format!("{} [{}]", self.name, self.model)
    }

    /// The trace as the serial console would show it, boots separated, each boot headed by
    /// what the bootloader did (`# bootloader: …`, not a trace line: the HIL reader skips it).
    pub fn console(&self) -> String {
        let numbers = || {
            self.trace
                .iter()
                .map(|l| l.boot)
                .chain(self.cuts.iter().map(|(b, _)| *b))
                .chain(self.bootloader.iter().map(|(b, _)| *b))
        };
        // A replay's boots start after the recorded cut's.
        let first = numbers().min().unwrap_or(1);
        let boots = numbers().max().unwrap_or(0);
        let mut out = String::new();
        for boot in first..=boots {
            out.push_str(&format!("--- boot {boot} ---\n"));
            if let Some((_, what)) = self.bootloader.iter().find(|(b, _)| *b == boot) {
                out.push_str(&format!("# bootloader: {what}\n"));
            }
            for line in self.trace.iter().filter(|l| l.boot == boot) {
                out.push_str(&line.render());
                out.push('\n');
            }
            if let Some((_, what)) = self.cuts.iter().find(|(b, _)| *b == boot) {
                out.push_str(&format!("--- power cut: {what} ---\n"));
            }
        }
        out
    }
}

/// Why a scenario could not run at all.
#[derive(Debug, thiserror::Error)]
pub enum ScenarioError {
    /// The file cannot be read.
    #[error("{path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// The error.
        source: std::io::Error,
    },
    /// The file is not a valid scenario.
    #[error("{path}: {source}")]
    Parse {
        /// The file.
        path: String,
        /// The error.
        source: toml::de::Error,
    },
    /// `bootloader` and `bootloaders` both given, or no model at all.
    #[error("{path}: {what}")]
    Models {
        /// The file.
        path: String,
        /// What is wrong.
        what: &'static str,
    },
    /// A field's value makes no sense (a boot number 0, a window that ends before it starts …).
    #[error("{path}: {what}")]
    Invalid {
        /// The file.
        path: String,
        /// What is wrong, naming the field.
        what: String,
    },
    /// A fault names something unknown.
    #[error("scenario {name}: unknown GitHub fault `{fault}`")]
    UnknownFault {
        /// Scenario.
        name: String,
        /// The fault.
        fault: String,
    },
    /// The servers.
    #[error(transparent)]
    World(#[from] WorldError),
    /// The collector.
    #[error(transparent)]
    Broker(#[from] crate::broker::BrokerError),
    /// The user's images do not fit the scenario (a release without one, a rebuild).
    #[error("scenario {name}: {why}")]
    Images {
        /// Scenario.
        name: String,
        /// What is missing or cannot be modelled, naming the release.
        why: String,
    },
}

/// The user's own firmware images (`FIRMWARE_VERSION=1.1 just firmware`), staged instead of
/// the images the simulator builds: the one the board runs at the start and the release
/// assets, by tag.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UserImages {
    /// The app image in the board's slot at the start.
    pub running: Vec<u8>,
    /// Release assets by tag (an image may be given for a tag the scenario does not publish).
    pub releases: Vec<(String, Vec<u8>)>,
}

impl Scenario {
    /// Reads a scenario file.
    pub fn load(path: &Path) -> Result<Scenario, ScenarioError> {
        let text = std::fs::read_to_string(path).map_err(|source| ScenarioError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Scenario::parse(&text, path)
    }

    /// A scenario from its text; `path` names it (its file stem is the default name) and
    /// is quoted in errors.
    pub fn parse(text: &str, path: &Path) -> Result<Scenario, ScenarioError> {
        let mut s: Scenario = toml::from_str(text).map_err(|source| ScenarioError::Parse {
            path: path.display().to_string(),
            source,
        })?;
        if s.name.is_empty() {
            s.name = path
                .file_stem()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
        }
        let what = match (&s.bootloader, &s.bootloaders) {
            (Some(_), Some(_)) => Some("give `bootloader` or `bootloaders`, not both"),
            (_, Some(list)) if list.is_empty() => Some("`bootloaders` is empty"),
            _ => None,
        };
        if let Some(what) = what {
            return Err(ScenarioError::Models {
                path: path.display().to_string(),
                what,
            });
        }
        if let Some(what) = s.invalid_field() {
            return Err(ScenarioError::Invalid {
                path: path.display().to_string(),
                what,
            });
        }
        Ok(s)
    }

    /// The first field whose value cannot work, described.
    fn invalid_field(&self) -> Option<String> {
        for (i, r) in self.releases.iter().enumerate() {
            let at = format!("releases[{i}] (tag {})", r.tag);
            if r.from_boot == 0 || r.rebuilt_from_boot == Some(0) {
                return Some(format!("{at}: boots count from 1"));
            }
            if r.until_boot.is_some_and(|until| until < r.from_boot) {
                return Some(format!("{at}: `until_boot` is before `from_boot`"));
            }
        }
        for (i, f) in self.faults.iter().enumerate() {
            let what = match f {
                FaultSpec::Github { from_boot: 0, .. }
                | FaultSpec::WifiDown { from_boot: 0, .. } => "`from_boot`: boots count from 1",
                FaultSpec::WifiDown {
                    from_ms, until_ms, ..
                } if until_ms <= from_ms => "`until_ms` must be after `from_ms`",
                FaultSpec::Github {
                    fault,
                    status: None,
                    ..
                } if fault == "status" => "fault `status` needs `status = N`",
                _ => continue,
            };
            return Some(format!("faults[{i}]: {what}"));
        }
        None
    }

    /// The bootloader models this scenario runs under.
    pub fn models(&self) -> Vec<Model> {
        match (&self.bootloader, &self.bootloaders) {
            (Some(one), _) => vec![*one],
            (None, Some(list)) => list.clone(),
            (None, None) => Model::ALL.to_vec(),
        }
    }

    /// What must come out behind `model`.
    pub fn expect_for(&self, model: Model) -> Expect {
        let o = match model {
            Model::Espflash => self.expect_espflash.as_ref(),
            Model::IdfRollback => self.expect_idf_rollback.as_ref(),
        };
        o.map_or_else(|| self.expect.clone(), |o| self.expect.overridden(o))
    }

    /// Every scenario in a folder, by file name.
    pub fn load_dir(dir: &Path) -> Result<Vec<Scenario>, ScenarioError> {
        let read = |e| ScenarioError::Read {
            path: dir.display().to_string(),
            source: e,
        };
        let mut paths: Vec<_> = std::fs::read_dir(dir)
            .map_err(read)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "toml"))
            .collect();
        paths.sort();
        paths.iter().map(|p| Scenario::load(p)).collect()
    }
}

fn github_fault(name: &str, spec: &FaultSpec) -> Option<Fault> {
    let FaultSpec::Github {
        status,
        bytes,
        seconds,
        ..
    } = spec
    else {
        return None;
    };
    Some(match name {
        "no_release" => Fault::NoRelease,
        "server_error" => Fault::ServerError {
            status: status.unwrap_or(503),
            on: Route::Api,
        },
        "status" => Fault::ServerError {
            status: (*status)?,
            on: Route::Api,
        },
        "download_error" => Fault::ServerError {
            status: status.unwrap_or(503),
            on: Route::Download,
        },
        "truncated_json" => Fault::TruncatedJson,
        "cut_body_after" => Fault::CutBodyAfter {
            bytes: bytes.unwrap_or(10_000),
        },
        "stall" => Fault::Stall {
            after: bytes.unwrap_or(10_000),
            pause: Duration::from_secs(5),
        },
        "redirect_loop" => Fault::RedirectLoop,
        "wrong_size" => Fault::WrongSize { delta: 4096 },
        "wrong_hash" => Fault::WrongHash,
        "secondary_rate_limit" => Fault::SecondaryRateLimit {
            retry_after: seconds.unwrap_or(60),
        },
        _ => return None,
    })
}

/// The LED string of one boot (see [`firmware::trace::led_sequence`]).
pub fn led_string(trace: &[TraceLine], boot: u32) -> String {
    firmware::trace::led_sequence(
        trace
            .iter()
            .filter(|l| l.boot == boot)
            .map(|l| (l.ms, &l.event)),
    )
    .to_string()
}

fn outcome_of(trace: &[TraceLine], boot: u32, end: &BootEnd) -> String {
    if *end == BootEnd::PowerCut {
        return "cut".into();
    }
    trace
        .iter()
        .filter(|l| l.boot == boot)
        .find_map(|l| match &l.event {
            Event::Outcome { result, .. } => Some(result.name().to_string()),
            _ => None,
        })
        .unwrap_or_else(|| format!("{end:?}").to_lowercase())
}

/// What each power cut interrupted, as `[expect] cuts` names it: `erase`, `write` or `between`.
pub fn cut_kinds_of(cuts: &[(u32, String)]) -> Vec<String> {
    cuts.iter()
        .map(|(_, what)| what.split_whitespace().next().unwrap_or("").to_lowercase())
        .collect()
}

impl Observed {
    /// What a virtual board showed: `ends` holds how each of its boots ended, `log` the
    /// activity-log results the broker got, `cut_kinds` what its power cuts interrupted.
    pub fn of_run(
        board: &VirtualBoard,
        ends: &[BootEnd],
        log: Vec<String>,
        cut_kinds: Option<Vec<String>>,
    ) -> Observed {
        let trace = &board.trace;
        // The boots of `ends` are the board's last ones (a replay starts after a cut's boot).
        let first = board.boots + 1 - ends.len() as u32;
        let boots = first..=board.boots;
        Observed {
            versions: board
                .boot_choices
                .iter()
                .map(|(_, c)| c.version.clone())
                .collect(),
            outcomes: boots
                .clone()
                .map(|b| outcome_of(trace, b, &ends[(b - first) as usize]))
                .collect(),
            leds: boots.map(|b| led_string(trace, b)).collect(),
            log,
            error_codes_seen: error_codes_seen(trace),
            event_names: trace.iter().map(|l| l.event.name().to_string()).collect(),
            cut_kinds,
        }
    }
}

/// Every error code and retry reason in the trace, by name, once each, in order of appearance.
pub fn error_codes_seen(trace: &[TraceLine]) -> Vec<String> {
    let mut seen: Vec<String> = Vec::new();
    for l in trace {
        if let Event::Error { code: c, .. } | Event::Retry { reason: c, .. } = &l.event {
            let name = c.name().to_string();
            if !seen.contains(&name) {
                seen.push(name);
            }
        }
    }
    seen
}

/// A `[[releases]]` entry as the runner publishes it.
struct Published {
    /// First boot it is on GitHub.
    from: u32,
    /// Last boot it is on GitHub, if it is taken down.
    until: Option<u32>,
    /// From this boot on, these bytes under the same asset.
    rebuilt: Option<(u32, Vec<u8>)>,
    /// The release with its first build.
    release: Release,
}

impl Published {
    /// Whether it is on GitHub during `boot`.
    fn shown_at(&self, boot: u32) -> bool {
        self.from <= boot && self.until.is_none_or(|until| boot <= until)
    }

    /// The release as GitHub has it during `boot`.
    fn as_at(&self, boot: u32) -> Release {
        let mut release = self.release.clone();
        if let Some((_, bytes)) = self.rebuilt.as_ref().filter(|(from, _)| *from <= boot) {
            release.assets[0].bytes = bytes.clone().into();
        }
        release
    }
}

/// Power cuts a scenario arms on the flash itself (the other triggers are [`Triggers`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FlashCuts {
    /// Cut during this flash operation (1-based, over the board's life).
    pub at_op: Option<u64>,
    /// Cut during the n-th operation inside `[start, end)`: (start, end, n).
    pub in_range: Option<(u32, u32, u32)>,
}

impl FlashCuts {
    /// Arms these cuts on `flash`.
    pub fn arm(&self, flash: &mut SimFlash) {
        if let Some(op) = self.at_op {
            flash.arm_cut(op);
        }
        if let Some((start, end, nth)) = self.in_range {
            flash.arm_cut_in(start, end, nth);
        }
    }

    /// True when no cut is armed.
    pub fn is_empty(&self) -> bool {
        self.at_op.is_none() && self.in_range.is_none()
    }
}

/// The power cuts and the mid-download WiFi drop of scenario `s` behind `model`: the board's
/// [`Triggers`] and the cuts armed on its flash. The simulator hands both to the virtual
/// board; the HIL harness to the virtual chip, or watches for them itself.
pub fn triggers_of(s: &Scenario, model: Model) -> Result<(Triggers, FlashCuts), ScenarioError> {
    let mut triggers = Triggers::default();
    let mut flash = FlashCuts::default();
    for f in &s.faults {
        match f {
            FaultSpec::PowerCut {
                at_flash_op,
                at_partition,
                at_download_byte,
                at_event,
                occurrence,
                then_op,
                at_time_ms,
                bootloader,
            } => {
                if bootloader.is_some_and(|only| only != model) {
                    continue;
                }
                flash.at_op = at_flash_op.or(flash.at_op);
                if let Some(label) = at_partition {
                    let table = firmware::format::partition::default_table();
                    let p = table
                        .by_label(label)
                        .ok_or_else(|| ScenarioError::UnknownFault {
                            name: s.name.clone(),
                            fault: format!("partition `{label}`"),
                        })?;
                    flash.in_range = Some((p.offset, p.end(), occurrence.unwrap_or(1)));
                }
                triggers.at_download_byte = at_download_byte.or(triggers.at_download_byte);
                match (at_event, then_op) {
                    (Some(e), Some(k)) => {
                        triggers.op_after_event = Some((e.clone(), occurrence.unwrap_or(1), *k))
                    }
                    (Some(e), None) => triggers
                        .at_events
                        .push((e.clone(), occurrence.unwrap_or(1))),
                    _ => {}
                }
                triggers.at_time_ms = at_time_ms.or(triggers.at_time_ms);
            }
            FaultSpec::WifiDrop {
                at_download_byte,
                for_ms,
            } => triggers.wifi_drop_at_byte = Some((*at_download_byte, *for_ms)),
            _ => {}
        }
    }
    Ok((triggers, flash))
}

/// The flash as a power cut left it.
#[derive(Clone, Debug)]
pub struct CutSnapshot {
    /// The boot that lost power.
    pub boot: u32,
    /// What the cut interrupted (as in [`Report::cuts`]).
    pub what: String,
    /// The update's phase it hit (see [`cut_phase`]).
    pub phase: String,
    /// The whole flash.
    pub flash: Vec<u8>,
}

/// The phase of an update the power cut of `boot` hit, from the flash operation it
/// interrupted (its partition, erase or write) and the boot's last trace event before it:
/// `bootloader` (no image started), `erase` / `download` (the new image's slot, or between
/// operations while it streams in), `verify` (all bytes written, or the trial record written
/// once they were verified), `otadata` (the slot switch), `trial` (a boot counted on trial),
/// `confirm` (an image on trial made permanent), `log` (the activity log), `idle` (between
/// operations at any other time).
pub fn cut_phase(board: &VirtualBoard, boot: u32) -> &'static str {
    if !board.boot_choices.iter().any(|(b, _)| *b == boot) {
        return "bootloader";
    }
    let events: Vec<&Event> = board
        .trace
        .iter()
        .filter(|l| l.boot == boot)
        .map(|l| &l.event)
        .collect();
    let last = events.last().map(|e| e.name()).unwrap_or("");
    let on_trial = events.iter().any(|e| matches!(e, Event::Trial { .. }));
    let verified = events.iter().any(|e| matches!(e, Event::Verified { .. }));
    let switched = events.iter().any(|e| matches!(e, Event::Switch { .. }));
    let table = firmware::format::partition::default_table();
    let between = board
        .cuts
        .last()
        .is_none_or(|(b, what)| *b != boot || what.starts_with("between"));
    let op = board.flash.last_cut().filter(|_| !between);
    let partition = op.and_then(|c| {
        table
            .partitions()
            .iter()
            .find(|p| p.offset <= c.offset && c.offset < p.end())
            .map(|p| p.label.as_str().to_string())
    });
    match (partition.as_deref(), op.map(|c| c.kind)) {
        (Some(l), Some(kind)) if l.starts_with("ota_") => match kind {
            crate::flash::OpKind::Erase => "erase",
            crate::flash::OpKind::Write => "download",
        },
        (Some("otadata"), _) if verified || switched => "otadata",
        (Some("otadata"), _) if on_trial => "confirm",
        (Some("otadata"), _) => "otadata",
        (Some(firmware::format::partition::LABEL_OTALOG), _) => "log",
        (Some(_), _) if verified && !switched => "verify",
        (Some(_), _) if last == "boot" || last == "trial" => "trial",
        (Some(_), _) => "download",
        (None, _) => match events.last() {
            Some(Event::Progress { written, total }) if written == total => "verify",
            Some(Event::Progress { .. } | Event::Resume { .. } | Event::Response { .. }) => {
                "download"
            }
            Some(Event::Verified { .. }) => "verify",
            Some(Event::Switch { .. }) => "otadata",
            Some(Event::Confirmed { .. }) => "confirm",
            Some(Event::Trial { .. } | Event::TrialReturned { .. }) => "trial",
            Some(Event::Outcome { .. } | Event::Published { .. } | Event::LogKept { .. }) => "log",
            _ => "idle",
        },
    }
}

/// One activity-log record as the broker received it: (sequence number, result, payload).
pub type LogEntry = (u64, String, String);

/// Where a virtual board's servers listen.
const LOOPBACK: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

/// Distinguishes the MQTT topics of stages that run at once in one process.
static STAGES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// The world of one scenario, ready for a board: servers with the scenario's releases, its
/// GitHub, broker and network faults, the board's `conf.json` and first image, and the
/// collector of its activity log. [`run`] boots a virtual board against it; the HIL harness
/// a board behind a serial port.
pub struct Stage {
    /// The servers.
    pub world: World,
    /// The board's MQTT client id.
    pub client_id: String,
    /// The board's MQTT topic prefix.
    pub prefix: String,
    /// The board's `conf.json`.
    pub conf: String,
    /// The image the board runs at the start.
    pub running: Vec<u8>,
    /// The OTA slot it is in.
    pub slot: u8,
    /// The scenario's seed (the board's jitter, the images' bytes, how cuts tear).
    pub seed: u64,
    /// The bootloader model.
    pub model: Model,
    /// The chip's revision.
    /// How long the application's reboot hook holds a reboot (`board.app_holds_reboot_s`).
    pub app_holds_reboot_s: u64,
    pub chip_revision: u16,
    /// Every build a release entry serves: (tag, build, image), for `final_build`.
    pub builds: Vec<(String, u32, Vec<u8>)>,
    /// Subscribed to the board's activity log.
    pub collector: Collector,
    /// The board's DNS (a scenario's `dns_down` fails its lookups).
    pub dns: SimDns,
    /// What went wrong while changing the world between boots.
    pub setup_failures: Vec<String>,
    /// Keep the flash as each power cut leaves it, in `cut_snapshots`.
    pub snapshot_cuts: bool,
    /// The flash after each power cut, when `snapshot_cuts` is on.
    pub cut_snapshots: Vec<CutSnapshot>,
    /// Release assets replaced by the user's images, by tag ([`Stage::with_images`]).
    pub user_releases: Vec<(String, Vec<u8>)>,
    /// Whether `running` is the user's image rather than the simulator's.
    pub user_running: bool,
    releases: Vec<Published>,
    on_github: Vec<usize>,
    /// The scenario's name, for errors.
    scenario_name: String,
    /// The version the board starts with.
    board_version: String,
    /// Whether the board installs lower versions too.
    allow_downgrade: bool,
    /// GitHub faults armed when a boot starts: (boot, fault).
    later_faults: Vec<(u32, Armed)>,
    /// WiFi outages counted from a boot's start: (boot, from ms, until ms).
    later_outages: Vec<(u32, u64, u64)>,
    broker_down: Vec<u32>,
}

impl Stage {
    /// Starts the servers for scenario `s` behind `model`, with all its faults but power cuts
    /// (see [`triggers_of`]).
    pub async fn new(
        s: &Scenario,
        model: Model,
        broker: &BrokerChoice,
    ) -> Result<Stage, ScenarioError> {
        Stage::new_on(s, model, broker, LOOPBACK).await
    }

    /// As [`Stage::new`], with the board-facing listeners (the proxies) on `listen`: the
    /// host's LAN address, for a real board on WiFi. `conf` then names that address
    /// (`http://LISTEN:PORT`, the broker at `LISTEN:PORT`) and, beyond loopback, carries no
    /// token: the core sends one over plain http to loopback only. An unspecified address
    /// (`0.0.0.0`) is refused, as the conf could not name it.
    pub async fn new_on(
        s: &Scenario,
        model: Model,
        broker: &BrokerChoice,
        listen: IpAddr,
    ) -> Result<Stage, ScenarioError> {
        let client_id = format!("{}-{model}", s.name);
        Stage::build(s, model, broker, true, &client_id, listen).await
    }

    /// The same world without any fault: what a recording's replay boots against.
    /// `client_id` names the board (a replay must not take over the id of a run going on).
    pub async fn without_faults(
        s: &Scenario,
        model: Model,
        broker: &BrokerChoice,
        client_id: &str,
    ) -> Result<Stage, ScenarioError> {
        Stage::without_faults_on(s, model, broker, client_id, LOOPBACK).await
    }

    /// As [`Stage::without_faults`], listening on `listen` (see [`Stage::new_on`]).
    pub async fn without_faults_on(
        s: &Scenario,
        model: Model,
        broker: &BrokerChoice,
        client_id: &str,
        listen: IpAddr,
    ) -> Result<Stage, ScenarioError> {
        Stage::build(s, model, broker, false, client_id, listen).await
    }

    async fn build(
        s: &Scenario,
        model: Model,
        broker: &BrokerChoice,
        faults: bool,
        client_id: &str,
        listen: IpAddr,
    ) -> Result<Stage, ScenarioError> {
        if listen.is_unspecified() {
            return Err(WorldError::Unspecified(listen).into());
        }
        let rate_limited = faults
            && s.faults
                .iter()
                .any(|f| matches!(f, FaultSpec::RateLimit { .. }));
        let world = World::start_on(broker, rate_limited, listen).await?;
        let n = STAGES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let prefix = format!("sim/{}-{model}-{}-{n}", s.name, std::process::id());
        let collector = Collector::connect(&world.broker, &prefix).await?;

        let mut releases = Vec::new();
        let mut builds: Vec<(String, u32, Vec<u8>)> = Vec::new();
        for (i, r) in s.releases.iter().enumerate() {
            let version = r.image_version.clone().unwrap_or_else(|| r.tag.clone());
            let options = image::ImageOptions {
                min_chip_rev: r.min_chip_rev,
                max_chip_rev: r.max_chip_rev,
                code_load_addr: r.code_load_addr,
            };
            let bytes = image::build_with(&version, r.size, s.seed ^ i as u64, options);
            let rebuilt = r.rebuilt_from_boot.map(|from| {
                let other =
                    image::build_with(&version, r.size, s.seed ^ i as u64 ^ 0x0B17D, options);
                builds.push((r.tag.clone(), r.build + 1, other.clone()));
                (from, other)
            });
            builds.push((r.tag.clone(), r.build, bytes.clone()));
            let asset = Asset::new(&r.asset, bytes);
            let asset = if r.digest {
                asset
            } else {
                asset.without_digest()
            };
            let mut release =
                Release::new(&r.tag, 1_700_000_000 + i as u64 * 86_400).with_asset(asset);
            release.prerelease = r.prerelease;
            release.draft = r.draft;
            release.body = format!(
                "Release {} of the simulated thermostat.\n\n{}",
                r.tag,
                "- a change\n".repeat(40)
            );
            releases.push(Published {
                from: r.from_boot,
                until: r.until_boot,
                rebuilt,
                release,
            });
        }

        // The MQTT client id must be one MQTT topic level and one the broker accepts.
        let client_id = client_id.replace(|c: char| !c.is_ascii_alphanumeric() && c != '-', "-");
        let conf = match &s.board.conf {
            Some(raw) => raw.clone(),
            None => conf_json(
                &world.api_base(),
                world.board_broker(),
                &client_id,
                &prefix,
                s.board.allow_prereleases,
                s.board.allow_downgrade,
                // The core sends a token over plain http to loopback only (and refuses a conf
                // that would send it further): a board on WiFi downloads without one, through
                // `browser_download_url`.
                s.board.token && listen.is_loopback(),
            ),
        };
        let conf = match s.board.max_wait_s {
            Some(wait) if s.board.conf.is_none() => with_max_wait(&conf, wait),
            _ => conf,
        };
        let mut stage = Stage {
            world,
            client_id,
            prefix,
            conf,
            running: image::build(&s.board.version, 32 * 1024, s.seed ^ 0xB007),
            slot: s.board.slot,
            seed: s.seed,
            model,
            chip_revision: s.board.chip_revision.unwrap_or(DEFAULT_REVISION),
            app_holds_reboot_s: s.board.app_holds_reboot_s,
            builds,
            collector,
            dns: SimDns::default(),
            setup_failures: Vec::new(),
            snapshot_cuts: false,
            cut_snapshots: Vec::new(),
            user_releases: Vec::new(),
            user_running: false,
            releases,
            on_github: Vec::new(),
            scenario_name: s.name.clone(),
            board_version: s.board.version.clone(),
            allow_downgrade: s.board.allow_downgrade,
            later_faults: Vec::new(),
            later_outages: Vec::new(),
            broker_down: Vec::new(),
        };
        stage.on_github = stage.on_github_at(1);
        stage
            .world
            .github
            .set_releases("acme", "thermostat", stage.publish(1));
        if faults {
            stage.arm_faults(s)?;
        }
        Ok(stage)
    }

    fn arm_faults(&mut self, s: &Scenario) -> Result<(), ScenarioError> {
        for f in &s.faults {
            match f {
                FaultSpec::PowerCut { .. } | FaultSpec::WifiDrop { .. } => {}
                FaultSpec::WifiDown {
                    from_ms,
                    until_ms,
                    from_boot,
                } => self.later_outages.push((*from_boot, *from_ms, *until_ms)),
                FaultSpec::Github {
                    fault,
                    times,
                    from_boot,
                    ..
                } => {
                    let armed =
                        github_fault(fault, f).ok_or_else(|| ScenarioError::UnknownFault {
                            name: s.name.clone(),
                            fault: fault.clone(),
                        })?;
                    self.later_faults.push((
                        *from_boot,
                        match times {
                            Some(n) => armed.times(*n),
                            None => armed.always(),
                        },
                    ));
                }
                FaultSpec::RateLimit { per_hour } => self.world.github.set_rate_limit(RateLimit {
                    anonymous: *per_hour,
                    authenticated: *per_hour,
                    window_secs: 3600,
                    exhausted: Exhausted::Forbidden,
                }),
                FaultSpec::ConnectionReset { after_bytes, times } => {
                    self.world.github_proxy.set_mode(ProxyMode::ResetAfter {
                        bytes: *after_bytes,
                    });
                    let proxy = self.world.github_proxy.clone();
                    let times = u64::from(*times);
                    // Back to Pass once `times` connections were reset.
                    tokio::spawn(async move {
                        while proxy.stats().resets < times {
                            tokio::time::sleep(Duration::from_millis(5)).await;
                        }
                        proxy.set_mode(ProxyMode::Pass);
                    });
                }
                FaultSpec::BrokerDown { boots } => self.broker_down.extend(boots.iter().copied()),
                FaultSpec::DnsDown { lookups } => self
                    .dns
                    .failures
                    .store(*lookups, std::sync::atomic::Ordering::Relaxed),
            }
        }
        Ok(())
    }

    /// Stages the user's own images instead of the simulator's: `running` (if given) in the
    /// board's slot ([`Stage::base_flash`]), and each `(tag, image)` as the asset of every
    /// release entry with that tag, now and after every change of GitHub's releases (asset
    /// ids and `updated_at` stay the scenario's, so a recording's replay meets the same
    /// identity). Refused, naming the release: a release the board could install (above its
    /// version, or any other with `allow_downgrade`) without an image (the simulator's would
    /// be served, which a real board boots and crashes in), and a release rebuilt under the
    /// same asset (`rebuilt_from_boot` needs a second build of the tag).
    pub fn with_images(
        mut self,
        running: Option<Vec<u8>>,
        releases: Vec<(String, Vec<u8>)>,
    ) -> Result<Stage, ScenarioError> {
        let refuse = |why: String| ScenarioError::Images {
            name: self.scenario_name.clone(),
            why,
        };
        let board = firmware::version::Version::parse(&self.board_version).ok();
        for p in &self.releases {
            let tag = &p.release.tag_name;
            let given = releases.iter().any(|(t, _)| t == tag);
            let installable = *tag != self.board_version
                && (self.allow_downgrade
                    || match (board, firmware::version::Version::parse(tag).ok()) {
                        (Some(board), Some(v)) => v > board,
                        // A tag the core cannot compare: assume it may be installed.
                        _ => true,
                    });
            if installable && !given {
                return Err(refuse(format!(
                    "the board (version {}) could install release {tag}: give its image \
                     (--image {tag}=PATH)",
                    self.board_version
                )));
            }
            if given && p.rebuilt.is_some() {
                return Err(refuse(format!(
                    "release {tag} is rebuilt under the same asset (rebuilt_from_boot): one \
                     image per tag cannot model a second build"
                )));
            }
        }
        for (tag, bytes) in &releases {
            for p in self
                .releases
                .iter_mut()
                .filter(|p| p.release.tag_name == *tag)
            {
                for asset in &mut p.release.assets {
                    asset.bytes = bytes.clone().into();
                }
            }
            for (_, _, image) in self.builds.iter_mut().filter(|(t, _, _)| t == tag) {
                image.clone_from(bytes);
            }
            // What GitHub shows now: the same entries, other bytes (ids and dates kept).
            for &i in &self.on_github {
                let release = &self.releases[i].release;
                if release.tag_name == *tag {
                    for asset in &release.assets {
                        self.world.github.replace_asset_bytes(
                            "acme",
                            "thermostat",
                            tag,
                            &asset.name,
                            bytes.clone(),
                        );
                    }
                }
            }
        }
        if let Some(running) = running {
            self.running = running;
            self.user_running = true;
        }
        self.user_releases = releases;
        Ok(self)
    }

    /// Which release entries are on GitHub during `boot`.
    fn on_github_at(&self, boot: u32) -> Vec<usize> {
        (0..self.releases.len())
            .filter(|&i| self.releases[i].shown_at(boot))
            .collect()
    }

    /// The releases as GitHub has them during `boot`.
    fn publish(&self, boot: u32) -> Vec<Release> {
        self.on_github_at(boot)
            .into_iter()
            .map(|i| self.releases[i].as_at(boot))
            .collect()
    }

    /// The flash as `just flash` leaves the board: partition table, this stage's
    /// `conf.json`, the running image in its slot.
    pub fn base_flash(&self) -> SimFlash {
        image::provision_in_slot(self.conf.as_bytes(), &self.running, self.slot, self.seed)
    }

    /// A virtual board for this stage with `flash`, its bootloader and chip set, and the mock
    /// GitHub's rate limiter following its virtual clock.
    pub fn board_with(&self, flash: SimFlash) -> VirtualBoard {
        let mut board = VirtualBoard::new(flash, &self.client_id, self.seed);
        board.app_holds_reboot_ms = self.app_holds_reboot_s * 1000;
        board.bootloader = Bootloader {
            model: self.model,
            chip: Chip {
                revision: self.chip_revision,
                ..Chip::default()
            },
        };
        let clock = board.clock_handle.clone();
        self.world.github.set_clock(std::sync::Arc::new(move || {
            1_790_000_000 + clock.load(std::sync::atomic::Ordering::Relaxed) / 1000
        }));
        board
    }

    /// Readies the world for boot `next` (1-based): GitHub's releases as they are during that
    /// boot, the GitHub faults that start with it armed, the broker up or down. Returns the
    /// WiFi outages that count from that boot's start, as (from ms, until ms).
    pub fn before_boot(&mut self, next: u32) -> Vec<(u64, u64)> {
        let now_on_github = self.on_github_at(next);
        if now_on_github != self.on_github {
            self.on_github = now_on_github;
            let releases = self.publish(next);
            self.world
                .github
                .set_releases("acme", "thermostat", releases);
        } else {
            for r in self.releases.iter().filter(|r| r.shown_at(next)) {
                if let Some((_, bytes)) = r.rebuilt.as_ref().filter(|(from, _)| *from == next) {
                    let (tag, asset) = (&r.release.tag_name, &r.release.assets[0].name);
                    let replaced = self.world.github.replace_asset_bytes(
                        "acme",
                        "thermostat",
                        tag,
                        asset,
                        bytes.clone(),
                    );
                    if !replaced {
                        self.setup_failures
                            .push(format!("setup: asset {asset} of {tag} not on GitHub"));
                    }
                }
            }
        }
        for (_, armed) in self.later_faults.iter().filter(|(from, _)| *from == next) {
            self.world.github.arm(armed.clone());
        }
        self.world
            .broker_proxy
            .set_mode(if self.broker_down.contains(&next) {
                ProxyMode::Down
            } else {
                ProxyMode::Pass
            });
        self.later_outages
            .iter()
            .filter(|(b, _, _)| *b == next)
            .map(|(_, from, until)| (*from, *until))
            .collect()
    }

    /// Boots `board` until the application runs, then `extra_boots` more times that reach it
    /// (at most 16 boots). Boots are numbered on from `board.boots` (a replay starts after
    /// the recorded cut's boot). Returns how each boot ended and the invariants it broke
    /// (bricked, stuck, never reached the application). With `snapshot_cuts`, the flash as
    /// each power cut left it lands in `cut_snapshots`.
    pub async fn boot_until_app(
        &mut self,
        board: &mut VirtualBoard,
        triggers: &mut Triggers,
        extra_boots: u32,
    ) -> Result<(Vec<BootEnd>, Vec<String>), ScenarioError> {
        let http = self.world.http_client(&self.dns)?;
        let wiring = Wiring {
            broker: self.world.board_broker(),
        };
        let mut failures = Vec::new();
        let mut ends = Vec::new();
        let mut apps = 0;
        while ends.len() < 16 {
            let next = board.boots + 1;
            for (from, until) in self.before_boot(next) {
                board.outages.push(Outage {
                    from: board.clock + from,
                    until: board.clock + until,
                });
            }
            let end = board.boot(&http, &wiring, triggers).await;
            ends.push(end.clone());
            match end {
                BootEnd::App => {
                    apps += 1;
                    if apps > extra_boots {
                        break;
                    }
                }
                BootEnd::PowerCut if self.snapshot_cuts => self.cut_snapshots.push(CutSnapshot {
                    boot: next,
                    what: board
                        .cuts
                        .last()
                        .map(|(_, w)| w.clone())
                        .unwrap_or_default(),
                    phase: cut_phase(board, next).to_string(),
                    flash: board.flash.contents().to_vec(),
                }),
                BootEnd::Reboot | BootEnd::PowerCut => {}
                BootEnd::Bricked(b) => {
                    failures.push(format!("invariant: boot {next} bricked: {b}"));
                    break;
                }
                BootEnd::Stuck => {
                    failures.push(format!(
                        "invariant: boot {next} stuck (the core waits for nothing)"
                    ));
                    break;
                }
            }
        }
        if ends.len() >= 16 {
            failures.push("invariant: the application never ran within 16 boots".into());
        }
        self.world.broker_proxy.set_mode(ProxyMode::Pass);
        Ok((ends, failures))
    }

    /// Waits for every record the board saw acknowledged (`acked`, by sequence number) to
    /// reach the collector, or 5 s, then closes it and returns the log the broker received:
    /// sorted by sequence number, duplicates (QoS 1 is at-least-once) dropped.
    pub async fn finish(self, acked: &[u64]) -> Vec<LogEntry> {
        self.world.broker_proxy.set_mode(ProxyMode::Pass);
        let expected: std::collections::BTreeSet<(String, u64)> = acked
            .iter()
            .map(|seq| (self.client_id.clone(), *seq))
            .collect();
        let messages = wait_for_log(&self.collector, &expected, Duration::from_secs(5)).await;
        self.collector.close().await;
        let mut log: Vec<LogEntry> = messages
            .iter()
            .filter_map(|m| {
                let text = String::from_utf8_lossy(&m.payload).into_owned();
                let v: serde_json::Value = serde_json::from_str(&text).ok()?;
                Some((v["seq"].as_u64()?, v["result"].as_str()?.to_string(), text))
            })
            .collect();
        log.sort();
        log.dedup_by_key(|e| e.0);
        log
    }
}

/// The sequence numbers of the records the board saw the broker acknowledge.
pub fn acked_seqs(trace: &[TraceLine]) -> Vec<u64> {
    trace
        .iter()
        .filter_map(|l| match l.event {
            Event::Published { seq } => Some(u64::from(seq)),
            _ => None,
        })
        .collect()
}

/// `conf` (generated, valid JSON) with `update.max_wait_s` set.
fn with_max_wait(conf: &str, wait_s: u32) -> String {
    let mut value: serde_json::Value = match serde_json::from_str(conf) {
        Ok(v) => v,
        // conf_json always writes valid JSON; a raw conf is never patched.
        Err(_) => return conf.to_string(),
    };
    value["update"]["max_wait_s"] = wait_s.into();
    serde_json::to_string_pretty(&value).unwrap_or_else(|_| conf.to_string())
}

/// Runs one scenario against fresh servers, behind bootloader `model`.
pub async fn run(
    s: &Scenario,
    model: Model,
    broker: &BrokerChoice,
) -> Result<Report, ScenarioError> {
    run_with(s, model, broker, None).await
}

/// As [`run`], with the user's images instead of the simulator's ([`Stage::with_images`]).
pub async fn run_with(
    s: &Scenario,
    model: Model,
    broker: &BrokerChoice,
    images: Option<&UserImages>,
) -> Result<Report, ScenarioError> {
    let started = std::time::Instant::now();
    let mut stage = Stage::new(s, model, broker).await?;
    if let Some(images) = images {
        stage = stage.with_images(Some(images.running.clone()), images.releases.clone())?;
    }
    let (mut triggers, flash_cuts) = triggers_of(s, model)?;
    let mut board = stage.board_with(stage.base_flash());
    flash_cuts.arm(&mut board.flash);
    let (ends, mut failures) = stage
        .boot_until_app(&mut board, &mut triggers, s.extra_boots)
        .await?;
    failures.append(&mut stage.setup_failures);
    let builds = std::mem::take(&mut stage.builds);
    let log = stage.finish(&acked_seqs(&board.trace)).await;
    let e = &s.expect_for(model);
    let mut report = verdict(s, model, e, board, &ends, log, &builds, failures, 1);
    report.wall_ms = started.elapsed().as_millis();
    Ok(report)
}

/// `[expect] image_bytes` and `not_modified`, from the trace of the boots in `ends`.
fn check_traffic(e: &Expect, board: &VirtualBoard, ends: &[BootEnd]) -> Vec<String> {
    let mut out = Vec::new();
    let first = board.boots + 1 - ends.len() as u32;
    if !e.image_bytes.is_empty() {
        let got: Vec<u32> = (first..=board.boots)
            .map(|b| {
                board
                    .trace
                    .iter()
                    .filter(|l| l.boot == b)
                    .find_map(|l| match l.event {
                        Event::Outcome { bytes, .. } => Some(bytes),
                        _ => None,
                    })
                    .unwrap_or(0)
            })
            .collect();
        if got != e.image_bytes {
            out.push(format!(
                "image_bytes: expected {:?}, the boots received {got:?}",
                e.image_bytes
            ));
        }
    }
    if let Some(want) = e.not_modified {
        let got = board
            .trace
            .iter()
            .filter(|l| matches!(l.event, Event::Response { status: 304, .. }))
            .count() as u32;
        if got != want {
            out.push(format!(
                "not_modified: expected {want} answers 304, GitHub gave {got}"
            ));
        }
    }
    out
}

/// Checks a finished run of `s` against `e` and the invariants: the [`Report`].
#[allow(clippy::too_many_arguments)]
pub(crate) fn verdict(
    s: &Scenario,
    model: Model,
    e: &Expect,
    board: VirtualBoard,
    ends: &[BootEnd],
    log: Vec<LogEntry>,
    builds: &[(String, u32, Vec<u8>)],
    mut failures: Vec<String>,
    log_from: u64,
) -> Report {
    let cut_boots: Vec<u32> = board.cuts.iter().map(|(b, _)| *b).collect();
    let max_wait_s = s
        .board
        .max_wait_s
        .unwrap_or(firmware::config::DEFAULT_MAX_WAIT_S);
    check_app_started(
        &board.app_starts,
        &board.boot_lengths,
        u64::from(max_wait_s) * 1000,
        &mut failures,
    );
    check_invariants_from(
        &board.boot_choices,
        &board.trace,
        &cut_boots,
        &log,
        &e.fallbacks,
        log_from,
        &mut failures,
    );

    let log_results: Vec<String> = log.iter().map(|(_, r, _)| r.clone()).collect();
    let observed = Observed::of_run(
        &board,
        ends,
        log_results.clone(),
        Some(cut_kinds_of(&board.cuts)),
    );
    failures.extend(e.check(&observed).iter().map(Mismatch::to_string));
    failures.extend(check_traffic(e, &board, ends));
    if let Some(build) = e.final_build {
        let ran = board.boot_choices.last().map(|(_, c)| c.offset as usize);
        let flash = board.flash.contents();
        let found = builds.iter().find(|(_, _, image)| {
            ran.and_then(|at| flash.get(at..at + image.len())) == Some(image.as_slice())
        });
        match found {
            Some((_, b, _)) if *b == build => {}
            Some((tag, b, _)) => failures.push(format!(
                "the last boot runs build {b} of {tag}, expected build {build}"
            )),
            None => failures.push(format!(
                "the last boot runs no build of any release (expected build {build}): a mix of two?"
            )),
        }
    }
    for (_, _, payload) in &log {
        for secret in ["sim-wifi-secret", "sim-mqtt-secret", "sim-token"] {
            if payload.contains(secret) {
                failures.push(format!("invariant: the log leaks a secret: {payload}"));
            }
        }
    }
    Report {
        name: s.name.clone(),
        model,
        seed: s.seed,
        failures,
        outcomes: observed.outcomes,
        leds: observed.leds,
        log: log_results,
        log_payloads: log.into_iter().map(|(_, _, p)| p).collect(),
        versions: observed.versions,
        virtual_ms: board.clock,
        wall_ms: 0,
        trace: board.trace,
        cuts: board.cuts,
        bootloader: board
            .boot_choices
            .iter()
            .map(|(b, c)| (*b, c.describe()))
            .collect(),
    }
}

/// The application is never held hostage: in every boot that lasted longer than `max_wait_ms`
/// (the scenario's `update.max_wait_s`; 0 = for ever), the application started by then.
/// Judged from what the glue was told to do (`StartApplication`, `RunApplication`), not from
/// the core's trace.
pub fn check_app_started(
    app_starts: &[(u32, u64)],
    boot_lengths: &[(u32, u64)],
    max_wait_ms: u64,
    failures: &mut Vec<String>,
) {
    if max_wait_ms == 0 {
        return;
    }
    for &(boot, length) in boot_lengths {
        let started = app_starts
            .iter()
            .find(|(b, _)| *b == boot)
            .map(|(_, ms)| *ms);
        match started {
            Some(ms) if ms <= max_wait_ms => {}
            Some(ms) => failures.push(format!(
                "invariant: boot {boot}: the application started after {ms} ms, later than update.max_wait_s ({max_wait_ms} ms)"
            )),
            None if length > max_wait_ms => failures.push(format!(
                "invariant: boot {boot}: ran {length} ms without starting the application (update.max_wait_s is {max_wait_ms} ms)"
            )),
            None => {}
        }
    }
}

/// Checks that hold for every run, whatever the scenario. `allowed_fallbacks`: boots at which
/// the bootloader may refuse the selected image (the scenario's `fallbacks`).
pub fn check_invariants(
    boot_choices: &[(u32, BootChoice)],
    trace: &[TraceLine],
    cut_boots: &[u32],
    log: &[(u64, String, String)],
    allowed_fallbacks: &[u32],
    failures: &mut Vec<String>,
) {
    check_invariants_from(
        boot_choices,
        trace,
        cut_boots,
        log,
        allowed_fallbacks,
        1,
        failures,
    );
}

/// [`check_invariants`] for a board whose broker may have missed the records before
/// sequence number `log_from` (a replay's broker starts with the recovery: what the board
/// delivered before the recorded cut went to another).
pub fn check_invariants_from(
    boot_choices: &[(u32, BootChoice)],
    trace: &[TraceLine],
    cut_boots: &[u32],
    log: &[(u64, String, String)],
    allowed_fallbacks: &[u32],
    log_from: u64,
    failures: &mut Vec<String>,
) {
    check_boot_invariants(boot_choices, trace, allowed_fallbacks, failures);
    let received: std::collections::BTreeSet<u64> = log.iter().map(|e| e.0).collect();
    LogFacts::of(boot_choices, trace, cut_boots).check(&received, log_from, failures);
}

/// The invariants of the boots themselves: no bootloader fallback, otadata keeps a bootable
/// entry, every boot reports what the bootloader started, only the running image confirms.
pub fn check_boot_invariants(
    boot_choices: &[(u32, BootChoice)],
    trace: &[TraceLine],
    allowed_fallbacks: &[u32],
    failures: &mut Vec<String>,
) {
    // The core only ever switches to an image the bootloader accepts: no fallback.
    let fallbacks: Vec<&(u32, BootChoice)> = boot_choices
        .iter()
        .filter(|(boot, choice)| choice.fell_back() && !allowed_fallbacks.contains(boot))
        .collect();
    if let Some((boot, choice)) = fallbacks.first() {
        let refused: Vec<String> = choice
            .refused
            .iter()
            .map(|(p, why)| format!("{p} ({why})"))
            .collect();
        let again = match fallbacks.len() - 1 {
            0 => String::new(),
            n => format!(" (and again at {n} later boots)"),
        };
        failures.push(format!(
            "invariant: boot {boot}: the bootloader refused {} and fell back to {}{again}",
            refused.join(", "),
            choice.booted
        ));
    }
    // Once otadata held a bootable entry, every write must leave one: ESP-IDF's own updater
    // writes the sector of the entry that is *not* active, so a torn write cannot take both.
    if let Some((first, _)) = boot_choices.iter().find(|(_, c)| c.had_entry()) {
        for (boot, choice) in boot_choices.iter().filter(|(b, _)| b > first) {
            let what = match choice.selection {
                Selection::NoEntry => "both entries erased or aborted/invalid",
                Selection::NoValidEntry => "no entry with a valid CRC",
                _ => continue,
            };
            failures.push(format!(
                "invariant: boot {boot}: otadata selects nothing any more ({what}; boot {first} found an entry), the bootloader boots {} by default",
                choice.booted
            ));
        }
    }
    for (boot, choice) in boot_choices {
        let boot = *boot;
        let mut boot_events = trace.iter().filter_map(|l| match &l.event {
            Event::Boot { slot, version, .. } if l.boot == boot => {
                Some((*slot, version.to_string()))
            }
            _ => None,
        });
        // Every boot the core ran reports what it booted, and it is what the bootloader started.
        match boot_events.next() {
            None => failures.push(format!("invariant: boot {boot} has no boot event")),
            Some((slot, version)) => {
                if Some(slot) != choice.slot() {
                    failures.push(format!(
                        "invariant: boot {boot} reports slot {slot}, the bootloader started {}",
                        choice.booted
                    ));
                }
                if !choice.version.is_empty() && version != choice.version {
                    failures.push(format!(
                        "invariant: boot {boot} reports version {version}, booted image is {}",
                        choice.version
                    ));
                }
            }
        }
        // Only the image that runs can confirm itself.
        for l in trace.iter().filter(|l| l.boot == boot) {
            if let Event::Confirmed { version } = &l.event
                && version.as_str() != choice.version
            {
                failures.push(format!(
                    "invariant: boot {boot} confirms version {version}, but the bootloader started {} ({})",
                    choice.booted, choice.version
                ));
            }
        }
    }
}

/// What a board's trace says about its activity log, to check against what a broker received.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LogFacts {
    /// Sequence numbers the board saw acknowledged.
    pub acked: std::collections::BTreeSet<u64>,
    /// Boots that were not cut and so stored a record.
    pub stored: usize,
    /// The last boot delivered the whole backlog (it published and kept nothing).
    pub last_delivered: bool,
}

impl LogFacts {
    /// The facts of a trace.
    pub fn of(
        boot_choices: &[(u32, BootChoice)],
        trace: &[TraceLine],
        cut_boots: &[u32],
    ) -> LogFacts {
        let last = boot_choices.last().map_or(0, |(b, _)| *b);
        let last_delivered = trace
            .iter()
            .filter(|l| l.boot == last)
            .any(|l| matches!(l.event, Event::Published { .. }))
            && !trace
                .iter()
                .any(|l| l.boot == last && matches!(l.event, Event::LogKept { .. }));
        let stored = trace
            .iter()
            .filter(|l| !cut_boots.contains(&l.boot) && matches!(l.event, Event::Outcome { .. }))
            .count();
        let acked = trace
            .iter()
            .filter_map(|l| match l.event {
                Event::Published { seq } => Some(u64::from(seq)),
                _ => None,
            })
            .collect();
        LogFacts {
            acked,
            stored,
            last_delivered,
        }
    }

    /// Records of boots that were not cut were stored; once a boot delivered the whole log
    /// (no `log_kept` in the last boot), every one of them must have reached the broker.
    /// Every record the board saw acknowledged reached it; sequence numbers from `log_from`
    /// on have no gaps.
    pub fn check(
        &self,
        received: &std::collections::BTreeSet<u64>,
        log_from: u64,
        failures: &mut Vec<String>,
    ) {
        if self.last_delivered && received.len() < self.stored {
            failures.push(format!(
                "invariant: {} boots stored a log record but the broker got {}",
                self.stored,
                received.len()
            ));
        }
        if let Some(missing) = self.acked.difference(received).next() {
            failures.push(format!(
                "invariant: record {missing} was acknowledged but the collector never got it"
            ));
        }
        if let Some(&max) = received.iter().max()
            && let Some(gap) = (log_from..=max).find(|s| !received.contains(s))
        {
            failures.push(format!(
                "invariant: activity log lost record {gap} (received up to {max})"
            ));
        }
    }
}

/// The (board, sequence number) of a log message: the topic's next-to-last level names the board.
pub fn log_key(m: &crate::broker::MqttMessage) -> Option<(String, u64)> {
    let board = m.topic.rsplit('/').nth(1)?.to_string();
    let v: serde_json::Value = serde_json::from_slice(&m.payload).ok()?;
    Some((board, v["seq"].as_u64()?))
}

/// Waits until every record a board saw acknowledged has reached the collector (or the time is
/// up), then returns what arrived. Counting messages would not do: a record published again
/// after a power cut arrives twice, and one acknowledged just before a cut never shows as
/// acknowledged on the board.
pub async fn wait_for_log(
    collector: &Collector,
    expected: &std::collections::BTreeSet<(String, u64)>,
    timeout: Duration,
) -> Vec<crate::broker::MqttMessage> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let messages = collector.messages();
        let got: std::collections::BTreeSet<(String, u64)> =
            messages.iter().filter_map(log_key).collect();
        if expected.is_subset(&got) || tokio::time::Instant::now() >= deadline {
            return messages;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn an_application_held_past_max_wait_is_a_violation() {
        let judge = |starts: &[(u32, u64)], lengths: &[(u32, u64)], wait: u64| {
            let mut failures = Vec::new();
            check_app_started(starts, lengths, wait, &mut failures);
            failures
        };
        // Started at the limit; a boot that ended before the limit needs no start.
        assert!(judge(&[(1, 120_000)], &[(1, 900_000), (2, 5_000)], 120_000).is_empty());
        let late = judge(&[(1, 120_001)], &[(1, 900_000)], 120_000);
        assert!(
            late[0].contains("boot 1") && late[0].contains("after 120001 ms"),
            "{late:?}"
        );
        let never = judge(&[], &[(3, 200_000)], 120_000);
        assert!(
            never[0].contains("boot 3") && never[0].contains("without starting"),
            "{never:?}"
        );
        // 0 waits for ever, as the original updater did.
        assert!(judge(&[], &[(1, 9_000_000)], 0).is_empty());
    }

    fn observed() -> Observed {
        Observed {
            versions: strings(&["1.0", "1.1"]),
            outcomes: strings(&["installed", "updated"]),
            leds: strings(&["Y", "Y..y"]),
            log: strings(&["installed", "updated"]),
            error_codes_seen: strings(&["network"]),
            event_names: strings(&["boot", "trial", "confirmed", "app"]),
            cut_kinds: None,
        }
    }

    fn expect() -> Expect {
        Expect {
            final_version: "1.1".into(),
            outcomes: strings(&["installed", "updated"]),
            leds: strings(&["Y", "Y..y"]),
            log: strings(&["installed", "updated"]),
            errors: strings(&["network"]),
            cuts: strings(&["erase"]),
            events: strings(&["trial", "confirmed"]),
            ..Expect::default()
        }
    }

    #[test]
    fn met_expectations_give_no_mismatch_and_unknown_cuts_are_not_checked() {
        assert_eq!(expect().check(&observed()), vec![]);
    }

    #[test]
    fn a_wrong_outcome_is_shown_boot_by_boot_with_the_differing_rows_marked() {
        let mut o = observed();
        o.outcomes = strings(&["installed", "failed", "updated"]);
        let found = expect().check(&o);
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(
            found[0].to_string(),
            "outcomes:\n  boot  expected   actual\n  1     installed  installed\n  2     updated    failed     <-- differs\n  3     -          updated    <-- differs"
        );
    }

    #[test]
    fn every_field_that_differs_is_reported_by_name() {
        let o = Observed {
            versions: vec![],
            outcomes: strings(&["cut"]),
            leds: strings(&["Y"]),
            log: vec![],
            error_codes_seen: vec![],
            event_names: strings(&["confirmed", "trial"]),
            cut_kinds: Some(strings(&["write"])),
        };
        let found = expect().check(&o);
        let fields: Vec<&str> = found.iter().map(|m| m.field).collect();
        assert_eq!(
            fields,
            [
                "final_version",
                "outcomes",
                "leds",
                "log",
                "cuts",
                "events",
                "errors"
            ]
        );
        assert_eq!(
            found[0].to_string(),
            "final_version: expected 1.1, actual (no image ran)"
        );
        assert_eq!(
            found[5].to_string(),
            "events: expected [\"trial\", \"confirmed\"] in this order, actual missing from `confirmed` on"
        );
        assert!(
            found[3].to_string().starts_with("log:\n  seq"),
            "{}",
            found[3]
        );
    }
}
