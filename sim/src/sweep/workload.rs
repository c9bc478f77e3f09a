//! What a sweep cuts: an update and the other phases a board lives through.
//!
//! Each workload is a board as `just flash` leaves it, the releases the mock GitHub
//! serves, and the state the board must end in whatever the cuts did. Cutting every
//! flash operation of each one reaches every phase: the download and its resume, the
//! verification of a bad release, the switch, the trial and confirmation, a rollback, and
//! the activity log's ring wrapping over its oldest sector.

use crate::board::Triggers;
use crate::flash::SimFlash;
use crate::github::{Asset, Release};
use crate::image;
use crate::oracle::Approved;
use firmware::storage::Layout;
use firmware::storage::log::LogStore;
use firmware::trace::Outcome;
use std::fmt;
use std::str::FromStr;

/// The workloads a sweep can cut.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    /// A clean update from 1.0 to 1.1: download, verify, switch, trial, confirm.
    Update,
    /// The update with WiFi lost half way through the download: the resumed download.
    Resume,
    /// Release 1.1 whose image fails verification (one byte changed after it was signed
    /// with its SHA-256): the board must keep 1.0.
    BadRelease,
    /// Release 1.1 that never confirms itself (power lost at each of its trial boots): the
    /// rollback to 1.0.
    Rollback,
    /// The update on a board whose activity log is one sector from wrapping: the ring
    /// erases its oldest sector during the update.
    LogWrap,
}

impl Kind {
    /// Every workload, in the order `--workload all` runs them.
    pub const ALL: [Kind; 5] = [
        Kind::Update,
        Kind::Resume,
        Kind::BadRelease,
        Kind::Rollback,
        Kind::LogWrap,
    ];

    /// The name on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Update => "update",
            Kind::Resume => "resume",
            Kind::BadRelease => "bad-release",
            Kind::Rollback => "rollback",
            Kind::LogWrap => "log-wrap",
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A workload name that is none.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("unknown workload `{0}` (update, resume, bad-release, rollback, log-wrap, or all)")]
pub struct UnknownWorkload(pub String);

impl FromStr for Kind {
    type Err = UnknownWorkload;

    fn from_str(s: &str) -> Result<Kind, UnknownWorkload> {
        Kind::ALL
            .into_iter()
            .find(|k| k.name() == s)
            .ok_or_else(|| UnknownWorkload(s.to_string()))
    }
}

/// Parses `--workload`: `all`, or names separated by commas.
pub fn parse_list(s: &str) -> Result<Vec<Kind>, UnknownWorkload> {
    if s == "all" {
        return Ok(Kind::ALL.to_vec());
    }
    s.split(',').map(|p| p.trim().parse()).collect()
}

/// A workload, built for one image size.
#[derive(Clone, Debug)]
pub struct Workload {
    /// Which one.
    pub kind: Kind,
    /// The image the board runs when flashed (slot 0).
    pub running: Vec<u8>,
    /// The releases the mock GitHub serves.
    pub releases: Vec<Release>,
    /// Images the board may ever boot (the oracle's list).
    pub approved: Vec<Approved>,
    /// The version the board must end on.
    pub final_version: String,
    /// The version it ran before: where an image that lost all its trial boots to power
    /// cuts is rolled back to.
    pub previous_version: String,
    /// Outcomes the last boot may report when the board has settled.
    pub settled: &'static [Outcome],
    /// Faults of the workload itself (not the sweep's cuts), over the board's life.
    pub triggers: Triggers,
    /// One cut may cost at most one sector (and a TCP segment) of download again.
    pub redownload_bound: bool,
    /// WiFi drops of the workload itself during the download (each may cost as much).
    pub drops: u64,
    /// Fill the activity log to one sector before its wrap.
    pub log_nearly_full: bool,
}

impl Workload {
    /// The workload with a release image of `image_size` bytes.
    pub fn build(kind: Kind, image_size: usize) -> Workload {
        let running = image::build("1.0", 32 * 1024, 10);
        let new = image::build("1.1", image_size, 11);
        let approved_both = vec![
            Approved {
                version: "1.0".into(),
                image: running.clone(),
            },
            Approved {
                version: "1.1".into(),
                image: new.clone(),
            },
        ];
        let release = |bytes: Vec<u8>| {
            vec![Release::new("1.1", 1_700_000_000).with_asset(Asset::new("firmware.bin", bytes))]
        };
        let update = Workload {
            kind,
            running: running.clone(),
            releases: release(new.clone()),
            approved: approved_both.clone(),
            final_version: "1.1".into(),
            previous_version: "1.0".into(),
            settled: &[Outcome::Updated, Outcome::UpToDate],
            triggers: Triggers::default(),
            redownload_bound: true,
            drops: 0,
            log_nearly_full: false,
        };
        match kind {
            Kind::Update => update,
            Kind::Resume => Workload {
                triggers: Triggers {
                    // Two seconds without WiFi half way through: the core resumes with a Range.
                    wifi_drop_at_byte: Some((new.len() as u64 / 2, 2_000)),
                    ..Triggers::default()
                },
                drops: 1,
                ..update
            },
            Kind::LogWrap => Workload {
                log_nearly_full: true,
                ..update
            },
            Kind::BadRelease => {
                let mut bad = new.clone();
                // A byte of the payload, past the header and app descriptor: the image
                // parses, its appended SHA-256 no longer matches.
                let at = bad.len() / 2;
                bad[at] ^= 0x40;
                Workload {
                    releases: release(bad),
                    approved: approved_both[..1].to_vec(),
                    final_version: "1.0".into(),
                    settled: &[Outcome::Failed],
                    redownload_bound: false,
                    ..update
                }
            }
            Kind::Rollback => Workload {
                final_version: "1.0".into(),
                settled: &[Outcome::RolledBack, Outcome::Failed],
                triggers: Triggers {
                    at_events: (1..=3).map(|n| ("trial".to_string(), n)).collect(),
                    ..Triggers::default()
                },
                redownload_bound: false,
                ..update
            },
        }
    }

    /// Prepares a freshly provisioned flash for the workload; returns the sequence number
    /// of the first record the broker will see (records before it were delivered earlier).
    pub fn prepare(&self, flash: &mut SimFlash) -> Result<u64, String> {
        if self.log_nearly_full {
            return fill_log(flash);
        }
        Ok(1)
    }
}

/// Payload of the records that fill the log: delivered long ago.
const FILLER: &[u8] = br#"{"seq":0,"event":"filler","note":"a record delivered before the sweep, to bring the ring to its wrap"}"#;

/// Appends delivered records until the ring's last sector is all but full, so the next
/// boots' records erase the oldest sector. Written with the core's own log code: this is
/// the board's past, not a judgement.
fn fill_log(flash: &mut SimFlash) -> Result<u64, String> {
    let layout = Layout::read(flash).map_err(|e| format!("partition table: {e:?}"))?;
    let mut log = LogStore::open(flash, layout.log).map_err(|e| format!("log: {e:?}"))?;
    let record = 16 + ((FILLER.len() as u32 + 3) & !3);
    let per_sector = firmware::storage::SECTOR / record;
    let sectors = layout.log.size / firmware::storage::SECTOR;
    // Every sector full, the last one with room for about two records more.
    let total = per_sector * sectors - 2;
    for _ in 0..total {
        let (seq, dropped) = log
            .append(flash, FILLER)
            .map_err(|e| format!("log append: {e:?}"))?;
        if dropped > 0 {
            return Err(format!(
                "filling the log dropped {dropped} records at {seq}"
            ));
        }
        if let Some(r) = log
            .next_undelivered(flash, seq - 1)
            .map_err(|e| format!("log read: {e:?}"))?
        {
            log.mark_delivered(flash, &r)
                .map_err(|e| format!("log mark: {e:?}"))?;
        }
    }
    Ok(u64::from(log.next_seq()))
}
