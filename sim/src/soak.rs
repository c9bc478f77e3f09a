//! `sim soak`: one virtual board through thousands of boots in a bad environment, and what
//! that costs its flash.
//!
//! Before each boot a seeded RNG decides what the world does during it: most boots nothing
//! new; sometimes a new release (the latest tag goes up), a bad release (its image fails
//! verification, and stays GitHub's latest until the next good one), a wrong digest for one
//! boot, a power cut (at a flash operation, an image byte or a moment), WiFi down (shorter or
//! longer than `update.max_wait_s`), the broker down, a rate limit. Every boot is judged:
//! the independent oracle ([`crate::oracle`]) on the flash at power-on, the boot invariants
//! ([`crate::scenario::check_boot_invariants`]) on what the bootloader and the core did. At
//! the end a few calm boots drain the activity log, and the broker's side is compared with
//! the log's sequence numbers: nothing lost, duplicates counted. The flash's erase counters
//! ([`SimFlash::erase_counts`]) give the wear table.

use crate::board::{BootEnd, Outage, TraceLine, Triggers, VirtualBoard, Wiring};
use crate::bootloader::{Bootloader, Model};
use crate::broker::Collector;
use crate::flash::{SimFlash, SplitMix};
use crate::github::{Asset, Fault, RateLimit, Release};
use crate::image;
use crate::oracle::{Approved, History, Oracle, OracleSpec};
use crate::proxy::ProxyMode;
use crate::scenario::{LogFacts, check_app_started, check_boot_invariants, log_key, wait_for_log};
use crate::world::{BrokerChoice, SimDns, World, WorldError, conf_json};
use firmware::storage::log::LogStore;
use firmware::storage::{Layout, Region};
use firmware::trace::{ErrorCode, Event, Outcome};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::{self, Write as _};
use std::time::{Duration, Instant};

/// Where `conf.json` lives in the default partition table.
const CONFIG_OFFSET: u32 = 0x3d_0000;
/// Erase cycles a NOR flash sector is specified for (ESP32-C3 datasheets' flash: 100,000).
pub const ENDURANCE: f64 = 100_000.0;
/// Boots a day the projection assumes.
pub const BOOTS_PER_DAY: f64 = 10.0;
/// Virtual time between a boot that reached the application and the next power-on: ten
/// boots a day.
const APP_RUNS_MS: u64 = 24 * 3600 * 1000 / 10;
/// Calm boots at the end to deliver the backlog, at most.
const DRAIN_BOOTS: u32 = 6;
/// `update.max_wait_s` of the soak's board (the default): the long WiFi outages exceed it.
const MAX_WAIT_MS: u64 = 120_000;
/// Releases GitHub lists at once (older ones drop off the list, as on a real repository's
/// first page they would stay, but the board only asks for the latest).
const LISTED: usize = 3;

/// What to soak.
#[derive(Clone, Debug)]
pub struct SoakOptions {
    /// Boots of the soak proper (the drain boots come on top).
    pub boots: u32,
    /// Seed of the world's plan, the board's jitter and how cuts tear.
    pub seed: u64,
    /// Size of each release image.
    pub image_size: usize,
    /// The board's bootloader.
    pub bootloader: Model,
}

impl Default for SoakOptions {
    fn default() -> SoakOptions {
        SoakOptions {
            boots: 1000,
            seed: 1,
            image_size: 64 * 1024,
            bootloader: Model::Espflash,
        }
    }
}

/// Where a boot's power cut falls.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CutPlan {
    /// During the n-th flash operation of the boot (1-based).
    Op(u64),
    /// After this many image bytes of the boot's download.
    Byte(u64),
    /// This many virtual ms into the boot.
    Time(u64),
}

/// A rate limit during one boot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RateLimitPlan {
    /// GitHub's primary limit: one API request in this window, then 403 until it resets.
    Primary,
    /// The secondary limit: 429 `retry-after` for this many requests.
    Secondary(u32),
}

/// What the world does during one boot.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BootPlan {
    /// A new good release is published before the boot.
    pub release: bool,
    /// A new release whose image fails verification is published before the boot.
    pub bad_release: bool,
    /// The release's `digest` field is wrong during this boot.
    pub wrong_digest: bool,
    /// Power is cut.
    pub cut: Option<CutPlan>,
    /// WiFi is down from/until these virtual ms after the boot's start.
    pub wifi_down: Option<(u64, u64)>,
    /// The broker refuses connections.
    pub broker_down: bool,
    /// GitHub rate-limits.
    pub rate_limit: Option<RateLimitPlan>,
}

/// What the boot before did: where the next boot's cut may fall.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LastBoot {
    /// Flash operations it made.
    pub ops: u64,
    /// Virtual ms it lasted.
    pub ms: u64,
    /// It downloaded image bytes (a bad release is downloaded again at each boot).
    pub downloaded: bool,
}

impl BootPlan {
    /// Draws the plan of a boot. A cut falls inside what the boot is likely to do: the last
    /// boot's flash operations and duration, or a whole image's when a release is published.
    pub fn draw(rng: &mut SplitMix, last: LastBoot, image_size: u64) -> BootPlan {
        let mut plan = BootPlan::default();
        // Per mille: what else happens this boot.
        match rng.below(1000) {
            0..20 => plan.release = true,
            20..23 => plan.bad_release = true,
            23..28 => {
                // A new release whose `digest` is wrong during this boot only: the download
                // fails verification, the next boot installs it.
                plan.release = true;
                plan.wrong_digest = true;
            }
            28..48 => {
                let from = rng.below(30_000);
                // Two in three short; one in three longer than max_wait_s (up to six hours).
                let length = if rng.below(3) < 2 {
                    1 + rng.below(60_000)
                } else {
                    MAX_WAIT_MS + 1 + rng.below(6 * 3600 * 1000)
                };
                plan.wifi_down = Some((from, from + length));
            }
            48..78 => plan.broker_down = true,
            78..88 => {
                plan.rate_limit = Some(if rng.below(2) == 0 {
                    RateLimitPlan::Primary
                } else {
                    RateLimitPlan::Secondary(1 + rng.below(3) as u32)
                })
            }
            _ => {}
        }
        // Power cuts: one boot in twenty, one in three when a download is likely.
        let cut_odds = if plan.release || plan.bad_release {
            333
        } else {
            50
        };
        let downloads = plan.release || plan.bad_release || last.downloaded;
        // Erases and programs of a whole image, and then some.
        let image_ops = image_size / 4096 * 4 + 16;
        let ops_span = if plan.release || plan.bad_release {
            image_ops
        } else {
            last.ops
        };
        if rng.below(1000) < cut_odds {
            plan.cut = Some(match rng.below(10) {
                0..3 if downloads => CutPlan::Byte(1 + rng.below(image_size.max(1))),
                0..7 => CutPlan::Op(1 + rng.below(ops_span.max(2))),
                _ => CutPlan::Time(1 + rng.below(last.ms.max(1000))),
            });
        }
        plan
    }

    /// Nothing happens.
    pub fn is_calm(&self) -> bool {
        *self == BootPlan::default()
    }
}

impl fmt::Display for BootPlan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts: Vec<String> = Vec::new();
        if self.release {
            parts.push("new release".into());
        }
        if self.bad_release {
            parts.push("bad release".into());
        }
        if self.wrong_digest {
            parts.push("wrong digest".into());
        }
        match self.cut {
            Some(CutPlan::Op(n)) => parts.push(format!("cut at flash op {n}")),
            Some(CutPlan::Byte(n)) => parts.push(format!("cut at image byte {n}")),
            Some(CutPlan::Time(ms)) => parts.push(format!("cut at {ms} ms")),
            None => {}
        }
        if let Some((from, until)) = self.wifi_down {
            parts.push(format!("WiFi down {from}..{until} ms"));
        }
        if self.broker_down {
            parts.push("broker down".into());
        }
        match self.rate_limit {
            Some(RateLimitPlan::Primary) => parts.push("primary rate limit".into()),
            Some(RateLimitPlan::Secondary(n)) => parts.push(format!("429 x{n}")),
            None => {}
        }
        if parts.is_empty() {
            f.write_str("calm")
        } else {
            f.write_str(&parts.join(", "))
        }
    }
}

/// One broken invariant.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SoakViolation {
    /// The boot (1-based; the drain boots follow the soak's).
    pub boot: u32,
    /// What the world did during it.
    pub plan: String,
    /// What broke.
    pub what: String,
}

/// Erase counts of one partition's sectors.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PartitionWear {
    /// Partition name (`otadata`, `ota_0`, …, or `other`).
    pub name: String,
    /// Its region.
    pub region: Region,
    /// (sector offset, erases) of every sector erased at least once, in address order.
    pub sectors: Vec<(u32, u32)>,
}

/// The soak's figures.
#[derive(Clone, Debug, Default)]
pub struct SoakReport {
    /// The seed.
    pub seed: u64,
    /// Boots of the soak proper.
    pub boots: u32,
    /// Calm boots at the end that drained the log.
    pub drain_boots: u32,
    /// Wear by partition.
    pub wear: Vec<PartitionWear>,
    /// Good releases published.
    pub releases_published: u32,
    /// Bad releases published.
    pub bad_releases: u32,
    /// Boots that confirmed a new image (`updated`).
    pub installed: u32,
    /// Boots that rolled back.
    pub rolled_back: u32,
    /// Boots whose outcome was `failed`.
    pub failed: u32,
    /// Hash mismatches the core reported.
    pub hash_mismatches: u32,
    /// Boots that ended `failed`, by error code.
    pub failures_by_code: BTreeMap<&'static str, u32>,
    /// Power cuts that hit (planned ones that found nothing to cut do not count).
    pub cuts: u32,
    /// WiFi outages, and of those longer than `max_wait_s`.
    pub wifi_outages: (u32, u32),
    /// Boots with the broker down.
    pub broker_outages: u32,
    /// Boots with a rate limit.
    pub rate_limits: u32,
    /// Boots with a wrong digest.
    pub wrong_digests: u32,
    /// Image bytes downloaded over the board's life.
    pub downloaded: u64,
    /// Boots whose application started before the routine ended (`max_wait_s`).
    pub early_app_starts: u32,
    /// Release checks answered 304 Not Modified.
    pub not_modified: u32,
    /// Log records the board's ring holds sequence numbers for (1..next_seq).
    pub records_produced: u64,
    /// Of those, the broker received.
    pub records_delivered: u64,
    /// Produced but never received.
    pub records_lost: Vec<u64>,
    /// Messages that repeated a (board, seq) the broker already had.
    pub records_duplicated: u64,
    /// Records still undelivered in the ring at the end.
    pub records_pending: u32,
    /// Records the ring dropped because it was full of undelivered ones.
    pub log_overflows: u32,
    /// Broken invariants.
    pub violations: Vec<SoakViolation>,
    /// Wall time.
    pub wall: Duration,
}

impl SoakReport {
    /// No violation and no record lost.
    pub fn passed(&self) -> bool {
        self.violations.is_empty() && self.records_lost.is_empty()
    }

    /// The most-erased sector: (partition, sector offset, erases).
    pub fn most_erased(&self) -> Option<(&str, u32, u32)> {
        self.wear
            .iter()
            .flat_map(|p| p.sectors.iter().map(move |&(s, n)| (p.name.as_str(), s, n)))
            .max_by_key(|&(_, s, n)| (n, std::cmp::Reverse(s)))
    }

    /// Erases of the given count per 1,000 boots (the soak's and the drain's).
    pub fn per_thousand_boots(&self, erases: u32) -> f64 {
        f64::from(erases) * 1000.0 / f64::from((self.boots + self.drain_boots).max(1))
    }

    /// Years until a sector erased `erases` times over this soak reaches [`ENDURANCE`] at
    /// [`BOOTS_PER_DAY`].
    pub fn years_to_endurance(&self, erases: u32) -> f64 {
        let per_boot = f64::from(erases) / f64::from((self.boots + self.drain_boots).max(1));
        if per_boot == 0.0 {
            return f64::INFINITY;
        }
        ENDURANCE / (per_boot * BOOTS_PER_DAY * 365.25)
    }

    /// The report as printed.
    pub fn render(&self) -> String {
        let mut s = String::new();
        let total = self.boots + self.drain_boots;
        // Writing to a String cannot fail.
        let _ = writeln!(
            s,
            "soak: seed {}, {} boots + {} drain boots",
            self.seed, self.boots, self.drain_boots
        );
        let _ = writeln!(s, "\nflash wear (erase cycles per 4 KiB sector touched):");
        let _ = writeln!(
            s,
            "  {:<9} {:<23} {:>7} {:>11} {:>11}",
            "partition", "sectors", "count", "erases", "per 1k"
        );
        for p in &self.wear {
            if p.sectors.is_empty() {
                let _ = writeln!(s, "  {:<9} (none erased)", p.name);
            }
            // An OTA slot is one row per contiguous run (its sectors are erased together,
            // a cut making them differ by one or two); the small partitions row by row.
            let slot = p.name.starts_with("ota_");
            for (from, to, (low, high), count) in runs(&p.sectors, slot) {
                let range = if from == to {
                    format!("0x{from:06x}")
                } else {
                    format!("0x{from:06x}..=0x{to:06x}")
                };
                let (erases, per_k) = if low == high {
                    (
                        low.to_string(),
                        format!("{:.1}", self.per_thousand_boots(high)),
                    )
                } else {
                    (
                        format!("{low}..{high}"),
                        format!(
                            "{:.1}..{:.1}",
                            self.per_thousand_boots(low),
                            self.per_thousand_boots(high)
                        ),
                    )
                };
                let _ = writeln!(
                    s,
                    "  {:<9} {:<23} {:>7} {:>11} {:>11}",
                    p.name, range, count, erases, per_k
                );
            }
        }
        if let Some((name, sector, n)) = self.most_erased() {
            let _ = writeln!(
                s,
                "most-erased sector: 0x{sector:06x} ({name}), {n} erases = {:.1} per 1,000 boots; \
                 100,000 cycles reached in {:.0} years at 10 boots a day",
                self.per_thousand_boots(n),
                self.years_to_endurance(n)
            );
        }
        let _ = writeln!(s, "\nactivity log:");
        let _ = writeln!(
            s,
            "  produced {}, delivered {}, lost {}, duplicated {}, still pending {}, dropped by a full ring {}",
            self.records_produced,
            self.records_delivered,
            self.records_lost.len(),
            self.records_duplicated,
            self.records_pending,
            self.log_overflows
        );
        if !self.records_lost.is_empty() {
            let _ = writeln!(s, "  lost seqs: {:?}", self.records_lost);
        }
        let _ = writeln!(s, "\nwhat happened:");
        let _ = writeln!(
            s,
            "  releases published {} (+{} bad), installed {}, rolled back {}, hash mismatches {}",
            self.releases_published,
            self.bad_releases,
            self.installed,
            self.rolled_back,
            self.hash_mismatches
        );
        let by_code: Vec<String> = self
            .failures_by_code
            .iter()
            .map(|(code, n)| format!("{code} {n}"))
            .collect();
        let _ = writeln!(
            s,
            "  boots that ended failed {} ({})",
            self.failed,
            by_code.join(", ")
        );
        let _ = writeln!(
            s,
            "  power cuts {}, WiFi outages {} ({} longer than max_wait_s), broker outages {}, rate limits {}, wrong digests {}",
            self.cuts,
            self.wifi_outages.0,
            self.wifi_outages.1,
            self.broker_outages,
            self.rate_limits,
            self.wrong_digests
        );
        let _ = writeln!(
            s,
            "  image bytes downloaded {} ({:.1} MiB), release checks answered 304: {}",
            self.downloaded,
            self.downloaded as f64 / 1048576.0,
            self.not_modified
        );
        let _ = writeln!(
            s,
            "  boots whose application started before the routine ended (max_wait_s): {}",
            self.early_app_starts
        );
        let _ = writeln!(s, "  invariant violations {}", self.violations.len());
        for v in &self.violations {
            let _ = writeln!(
                s,
                "    boot {} (seed {}; {}): {}",
                v.boot, self.seed, v.plan, v.what
            );
        }
        let secs = self.wall.as_secs_f64();
        let _ = writeln!(
            s,
            "\nwall time {secs:.1} s, {:.1} boots/s",
            f64::from(total) / secs.max(1e-9)
        );
        let _ = writeln!(
            s,
            "{}",
            if self.passed() {
                "PASS".to_string()
            } else {
                format!(
                    "FAIL (reproduce: sim soak --boots {} --seed {})",
                    self.boots, self.seed
                )
            }
        );
        s
    }
}

/// Runs of consecutive sectors: (first, last, (fewest, most erases), sectors). With
/// `merge_counts` a run goes on whatever the counts; without, only while they are equal.
fn runs(sectors: &[(u32, u32)], merge_counts: bool) -> Vec<(u32, u32, (u32, u32), u32)> {
    let mut out: Vec<(u32, u32, (u32, u32), u32)> = Vec::new();
    for &(sector, n) in sectors {
        match out.last_mut() {
            Some((_, last, (low, high), count))
                if *last + firmware::storage::SECTOR == sector
                    && (merge_counts || (*low == n && *high == n)) =>
            {
                *last = sector;
                *low = (*low).min(n);
                *high = (*high).max(n);
                *count += 1;
            }
            _ => out.push((sector, sector, (n, n), 1)),
        }
    }
    out
}

/// The erase counters grouped by the partitions of `layout` (sectors outside them: `other`).
pub fn wear_by_partition(layout: &Layout, erases: &[u32]) -> Vec<PartitionWear> {
    let sector = firmware::storage::SECTOR;
    let mut parts: Vec<(String, Region)> = vec![("otadata".into(), layout.otadata)];
    for (i, slot) in layout.slots.iter().enumerate() {
        parts.push((format!("ota_{i}"), *slot));
    }
    parts.push(("config".into(), layout.config));
    parts.push(("otastate".into(), layout.state));
    parts.push(("otalog".into(), layout.log));
    let mut wear: Vec<PartitionWear> = parts
        .into_iter()
        .map(|(name, region)| PartitionWear {
            name,
            region,
            sectors: Vec::new(),
        })
        .collect();
    let mut other = PartitionWear {
        name: "other".into(),
        region: Region { offset: 0, size: 0 },
        sectors: Vec::new(),
    };
    for (index, &n) in erases.iter().enumerate().filter(|(_, n)| **n > 0) {
        let offset = index as u32 * sector;
        let owner = wear
            .iter_mut()
            .find(|p| (p.region.offset..p.region.offset + p.region.size).contains(&offset));
        owner.unwrap_or(&mut other).sectors.push((offset, n));
    }
    if !other.sectors.is_empty() {
        wear.push(other);
    }
    // The configuration is only ever written by the flashing tool: leave it out when untouched.
    wear.retain(|p| p.name != "config" || !p.sectors.is_empty());
    wear
}

/// The soak's world and board.
struct Soak {
    world: World,
    board: VirtualBoard,
    http: reqwest::Client,
    wiring: Wiring,
    collector: Collector,
    reference: Vec<u8>,
    approved: Vec<Approved>,
    oracle: Oracle,
    history: History,
    rollback: bool,
    /// Every release ever published, oldest first.
    published: Vec<Release>,
    /// Minor version of the next release (1.N).
    next_minor: u32,
    image_size: usize,
    seed: u64,
    unlimited: RateLimit,
    report: SoakReport,
}

fn setup_error(what: impl fmt::Display) -> WorldError {
    WorldError::Unresolvable(what.to_string())
}

impl Soak {
    async fn start(opts: &SoakOptions, broker: &BrokerChoice) -> Result<Soak, WorldError> {
        let world = World::start(broker, false).await?;
        static SOAKS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let nth = SOAKS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let prefix = format!("soak/{}-{nth}", std::process::id());
        let client_id = "soak-board";
        let conf = conf_json(
            &world.api_base(),
            world.board_broker(),
            client_id,
            &prefix,
            false,
            false,
            true,
        );
        let running = image::build("1.0", 32 * 1024, opts.seed ^ 0xB007);
        let mut flash = image::provision(conf.as_bytes(), &running, opts.seed);
        flash.load(CONFIG_OFFSET, &[0xFF; 0x1000]);
        flash.load(CONFIG_OFFSET, conf.as_bytes());
        let reference = flash.contents().to_vec();
        let approved = vec![Approved {
            version: "1.0".into(),
            image: running,
        }];
        let rollback = opts.bootloader == Model::IdfRollback;
        let oracle = Oracle::new(OracleSpec {
            reference: reference.clone(),
            approved: approved.clone(),
            rollback,
        })
        .map_err(setup_error)?;
        let mut board = VirtualBoard::new(flash, client_id, opts.seed);
        board.bootloader = Bootloader {
            model: opts.bootloader,
            ..Bootloader::default()
        };
        // The rate limiter's windows follow the board's virtual clock.
        let clock = board.clock_handle.clone();
        world.github.set_clock(std::sync::Arc::new(move || {
            1_790_000_000 + clock.load(std::sync::atomic::Ordering::Relaxed) / 1000
        }));
        world.github.set_releases("acme", "thermostat", Vec::new());
        let collector = Collector::connect(&world.broker, &prefix).await?;
        let http = world.http_client(&SimDns::default())?;
        let wiring = Wiring {
            broker: world.board_broker(),
        };
        Ok(Soak {
            world,
            board,
            http,
            wiring,
            collector,
            reference,
            approved,
            oracle,
            history: History::new(),
            rollback,
            published: Vec::new(),
            next_minor: 1,
            image_size: opts.image_size,
            seed: opts.seed,
            unlimited: RateLimit {
                anonymous: u32::MAX,
                authenticated: u32::MAX,
                ..RateLimit::default()
            },
            report: SoakReport {
                seed: opts.seed,
                ..SoakReport::default()
            },
        })
    }

    /// Publishes release 1.N; a bad one has one payload byte changed after it was hashed.
    fn publish(&mut self, good: bool) -> Result<(), WorldError> {
        let version = format!("1.{}", self.next_minor);
        let mut bytes = image::build(
            &version,
            self.image_size,
            self.seed ^ u64::from(self.next_minor),
        );
        let published_at = 1_700_000_000 + u64::from(self.next_minor) * 86_400;
        self.next_minor += 1;
        if good {
            self.approved.push(Approved {
                version: version.clone(),
                image: bytes.clone(),
            });
            self.oracle = Oracle::new(OracleSpec {
                reference: self.reference.clone(),
                approved: self.approved.clone(),
                rollback: self.rollback,
            })
            .map_err(setup_error)?;
            self.report.releases_published += 1;
        } else {
            // Past the header and app descriptor: the image parses, its SHA-256 does not match.
            let at = bytes.len() / 2;
            bytes[at] ^= 0x40;
            self.report.bad_releases += 1;
        }
        self.published.push(
            Release::new(&version, published_at).with_asset(Asset::new("firmware.bin", bytes)),
        );
        let listed = self.published[self.published.len().saturating_sub(LISTED)..].to_vec();
        self.world.github.set_releases("acme", "thermostat", listed);
        Ok(())
    }

    /// Sets the world up for one boot as `plan` says; returns the boot's triggers.
    fn arm(&mut self, plan: &BootPlan) -> Result<Triggers, WorldError> {
        if plan.release {
            self.publish(true)?;
        }
        if plan.bad_release {
            self.publish(false)?;
        }
        if plan.wrong_digest {
            self.world.github.arm(Fault::WrongHash.always());
            self.report.wrong_digests += 1;
        }
        let start = self.board.clock;
        if let Some((from, until)) = plan.wifi_down {
            self.board.outages.push(Outage {
                from: start + from,
                until: start + until,
            });
            self.report.wifi_outages.0 += 1;
            if until - from > MAX_WAIT_MS {
                self.report.wifi_outages.1 += 1;
            }
        }
        if plan.broker_down {
            self.world.broker_proxy.set_mode(ProxyMode::Down);
            self.report.broker_outages += 1;
        }
        match plan.rate_limit {
            Some(RateLimitPlan::Primary) => {
                self.world.github.set_rate_limit(RateLimit {
                    anonymous: 1,
                    authenticated: 1,
                    ..RateLimit::default()
                });
                self.world.github.reset_rate_limit();
                self.report.rate_limits += 1;
            }
            Some(RateLimitPlan::Secondary(n)) => {
                self.world
                    .github
                    .arm(Fault::SecondaryRateLimit { retry_after: 60 }.times(n));
                self.report.rate_limits += 1;
            }
            None => {}
        }
        let mut triggers = Triggers::default();
        match plan.cut {
            Some(CutPlan::Op(n)) => {
                let at = self.board.flash.ops() + n;
                self.board.flash.arm_cut(at);
            }
            Some(CutPlan::Byte(n)) => triggers.at_download_byte = Some(self.board.downloaded + n),
            Some(CutPlan::Time(ms)) => triggers.at_time_ms = Some(start + ms),
            None => {}
        }
        Ok(triggers)
    }

    /// Back to a calm world after a boot.
    fn disarm(&mut self) {
        self.board.flash.disarm();
        self.world.github.clear_faults();
        self.world.github.set_rate_limit(self.unlimited);
        self.world.github.reset_rate_limit();
        self.world.broker_proxy.set_mode(ProxyMode::Pass);
    }

    /// One boot, judged. Returns how it ended and what it did.
    async fn boot(&mut self, plan: &BootPlan) -> Result<(BootEnd, LastBoot), WorldError> {
        let boot = self.board.boots + 1;
        let violation = |what: String| SoakViolation {
            boot,
            plan: plan.to_string(),
            what,
        };
        let mut found = Vec::new();
        // The oracle judges the flash as the power comes on.
        if let Err(findings) = self
            .history
            .boot(&self.oracle, boot, self.board.flash.contents())
        {
            found.extend(findings.iter().map(|f| format!("oracle: {f}")));
        }
        let mut triggers = self.arm(plan)?;
        let trace_from = self.board.trace.len();
        let ops_before = self.board.flash.ops();
        let (clock_before, downloaded_before) = (self.board.clock, self.board.downloaded);
        let cuts_before = self.board.cuts.len();
        let end = self
            .board
            .boot(&self.http, &self.wiring, &mut triggers)
            .await;
        self.disarm();
        let did = LastBoot {
            ops: self.board.flash.ops() - ops_before,
            ms: self.board.clock - clock_before,
            downloaded: self.board.downloaded > downloaded_before,
        };
        match &end {
            BootEnd::Bricked(b) => found.push(format!("invariant: bricked: {b}")),
            BootEnd::Stuck => found.push("invariant: stuck (the core waits for nothing)".into()),
            BootEnd::App | BootEnd::Reboot | BootEnd::PowerCut => {}
        }
        self.report.cuts += (self.board.cuts.len() - cuts_before) as u32;
        // This boot and the one before it: the invariants compare neighbours (otadata).
        let choices = &self.board.boot_choices;
        let recent = &choices[choices.len().saturating_sub(2)..];
        let first_boot = recent.first().map_or(boot, |(b, _)| *b);
        let lines_from = self.board.trace[..trace_from]
            .iter()
            .rposition(|l| l.boot < first_boot)
            .map_or(0, |i| i + 1);
        let mut failures = Vec::new();
        check_boot_invariants(recent, &self.board.trace[lines_from..], &[], &mut failures);
        // The application is never held hostage, whatever this boot met.
        let this_boot = |list: &[(u32, u64)]| -> Vec<(u32, u64)> {
            list.iter().filter(|(b, _)| *b == boot).copied().collect()
        };
        check_app_started(
            &this_boot(&self.board.app_starts),
            &this_boot(&self.board.boot_lengths),
            MAX_WAIT_MS,
            &mut failures,
        );
        // The previous boot was judged already: only this boot's findings are new.
        found.extend(
            failures
                .into_iter()
                .filter(|f| f.contains(&format!("boot {boot}"))),
        );
        count(&mut self.report, &self.board.trace[trace_from..]);
        for what in found {
            let v = violation(what);
            eprintln!(
                "violation at boot {} (seed {}; {}): {}",
                v.boot, self.seed, v.plan, v.what
            );
            self.report.violations.push(v);
        }
        match end {
            BootEnd::App => self.board.clock += APP_RUNS_MS,
            // Power returns within a minute.
            BootEnd::PowerCut => self.board.clock += 1 + (self.board.clock % 60_000),
            _ => {}
        }
        Ok((end, did))
    }

    /// The board's log ring at the end: (next sequence number, undelivered records).
    fn ring(&self) -> Result<(u32, u32), WorldError> {
        // The core's log code reads the ring (it may repair a torn tail): on a copy.
        let mut flash: SimFlash = self.board.flash.clone();
        flash.power_on();
        let layout = Layout::read(&mut flash).map_err(|e| setup_error(format!("{e:?}")))?;
        let log =
            LogStore::open(&mut flash, layout.log).map_err(|e| setup_error(format!("{e:?}")))?;
        let pending = log
            .undelivered(&mut flash)
            .map_err(|e| setup_error(format!("{e:?}")))?;
        Ok((log.next_seq(), pending))
    }
}

/// Counts what a boot's trace lines report.
fn count(report: &mut SoakReport, lines: &[TraceLine]) {
    for l in lines {
        match &l.event {
            Event::Outcome { result, error, .. } => match result {
                Outcome::Updated => report.installed += 1,
                Outcome::RolledBack => report.rolled_back += 1,
                Outcome::Failed => {
                    report.failed += 1;
                    *report.failures_by_code.entry(error.name()).or_insert(0) += 1;
                }
                Outcome::UpToDate | Outcome::Installed => {}
            },
            Event::Error {
                code: ErrorCode::HashMismatch,
                ..
            } => report.hash_mismatches += 1,
            Event::Error {
                code: ErrorCode::LogOverflow,
                ..
            } => report.log_overflows += 1,
            Event::AppEarly { .. } => report.early_app_starts += 1,
            Event::Response { status: 304, .. } => report.not_modified += 1,
            _ => {}
        }
    }
}

/// Runs the soak.
pub async fn soak(opts: &SoakOptions, broker: &BrokerChoice) -> Result<SoakReport, WorldError> {
    let started = Instant::now();
    let mut soak = Soak::start(opts, broker).await?;
    let mut rng = SplitMix(opts.seed);
    let mut last = LastBoot {
        ops: 16,
        ms: 10_000,
        downloaded: false,
    };
    for _ in 0..opts.boots {
        let plan = BootPlan::draw(&mut rng, last, opts.image_size as u64);
        last = soak.boot(&plan).await?.1;
    }
    soak.report.boots = soak.board.boots;
    // Calm boots until the application runs and the ring holds nothing undelivered.
    let calm = BootPlan::default();
    for _ in 0..DRAIN_BOOTS {
        let (end, _) = soak.boot(&calm).await?;
        soak.report.drain_boots += 1;
        if end == BootEnd::App && soak.ring()?.1 == 0 {
            break;
        }
    }
    judge_log(&mut soak).await?;
    let Soak {
        collector,
        board,
        reference,
        mut report,
        ..
    } = soak;
    collector.close().await;
    let layout = {
        let mut flash = SimFlash::new(0);
        flash.load(0, &reference);
        Layout::read(&mut flash).map_err(|e| setup_error(format!("{e:?}")))?
    };
    report.wear = wear_by_partition(&layout, board.flash.erase_counts());
    report.downloaded = board.downloaded;
    report.wall = started.elapsed();
    Ok(report)
}

/// Compares the ring's sequence numbers and the board's trace with what the broker got.
async fn judge_log(soak: &mut Soak) -> Result<(), WorldError> {
    let (next_seq, pending) = soak.ring()?;
    let produced: BTreeSet<u64> = (1..u64::from(next_seq)).collect();
    let board = soak.board.client_id.clone();
    let expected: BTreeSet<(String, u64)> = produced.iter().map(|s| (board.clone(), *s)).collect();
    let messages = wait_for_log(&soak.collector, &expected, Duration::from_secs(10)).await;
    let mut copies: BTreeMap<u64, u64> = BTreeMap::new();
    for (_, seq) in messages
        .iter()
        .filter_map(log_key)
        .filter(|(b, _)| *b == board)
    {
        *copies.entry(seq).or_insert(0) += 1;
    }
    let received: BTreeSet<u64> = copies.keys().copied().collect();
    let report = &mut soak.report;
    report.records_produced = produced.len() as u64;
    report.records_delivered = received.intersection(&produced).count() as u64;
    report.records_lost = produced.difference(&received).copied().collect();
    report.records_duplicated = copies.values().map(|n| n - 1).sum();
    report.records_pending = pending;
    // The facts of the board's own trace against the broker (acknowledged ⊆ received, no gaps,
    // every record of an uncut boot delivered once the last boot emptied the ring).
    let cut_boots: Vec<u32> = soak.board.cuts.iter().map(|(b, _)| *b).collect();
    let mut failures = Vec::new();
    LogFacts::of(&soak.board.boot_choices, &soak.board.trace, &cut_boots).check(
        &received,
        1,
        &mut failures,
    );
    if pending > 0 {
        failures.push(format!(
            "log: {pending} records still undelivered after {} calm boots",
            report.drain_boots
        ));
    }
    let last = soak.board.boots;
    for what in failures {
        eprintln!("violation at the end (seed {}): {what}", report.seed);
        report.violations.push(SoakViolation {
            boot: last,
            plan: "end of soak".into(),
            what,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plans_are_a_function_of_the_seed_and_mostly_calm() {
        let draw = |seed| {
            let mut rng = SplitMix(seed);
            let last = LastBoot {
                ops: 40,
                ms: 5000,
                downloaded: false,
            };
            (0..2000)
                .map(|_| BootPlan::draw(&mut rng, last, 65536))
                .collect::<Vec<_>>()
        };
        let plans = draw(7);
        assert_eq!(plans, draw(7));
        assert_ne!(plans, draw(8));
        let calm = plans.iter().filter(|p| p.is_calm()).count();
        assert!(calm > 1500, "{calm} calm boots of 2000");
        assert!(plans.iter().any(|p| p.release));
        assert!(plans.iter().any(|p| p.broker_down));
        assert!(plans.iter().any(|p| matches!(p.cut, Some(CutPlan::Op(_)))));
        assert!(
            plans
                .iter()
                .any(|p| p.wifi_down.is_some_and(|(f, u)| u - f > MAX_WAIT_MS))
        );
    }

    #[test]
    fn wear_is_grouped_by_partition_and_runs_of_equal_counts_merge() {
        let flash = image::provision(b"{}", &image::build("1.0", 8192, 1), 1);
        let mut flash = flash;
        let layout = Layout::read(&mut flash).unwrap();
        let mut erases = vec![0u32; crate::flash::FLASH_SIZE / 4096];
        let sector = |offset: u32| (offset / 4096) as usize;
        erases[sector(layout.otadata.offset)] = 3;
        erases[sector(layout.slots[1].offset)] = 2;
        erases[sector(layout.slots[1].offset) + 1] = 2;
        erases[sector(layout.log.offset) + 2] = 1;
        erases[0] = 1;
        let wear = wear_by_partition(&layout, &erases);
        let names: Vec<&str> = wear.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(
            names,
            ["otadata", "ota_0", "ota_1", "otastate", "otalog", "other"]
        );
        let slot = layout.slots[1].offset;
        assert_eq!(
            runs(&wear[2].sectors, false),
            vec![(slot, slot + 4096, (2, 2), 2)]
        );
        let uneven = [(slot, 5), (slot + 4096, 4), (slot + 3 * 4096, 4)];
        assert_eq!(
            runs(&uneven, true),
            vec![
                (slot, slot + 4096, (4, 5), 2),
                (slot + 3 * 4096, slot + 3 * 4096, (4, 4), 1)
            ]
        );
        assert_eq!(runs(&uneven, false).len(), 3);
        let report = SoakReport {
            boots: 1000,
            wear,
            ..SoakReport::default()
        };
        assert_eq!(
            report.most_erased(),
            Some(("otadata", layout.otadata.offset, 3))
        );
        // 3 erases per 1,000 boots at 10 boots a day: 100,000 / (0.003 * 10 * 365.25) years.
        let years = report.years_to_endurance(3);
        assert!((years - 9126.7).abs() < 1.0, "{years}");
    }
}
