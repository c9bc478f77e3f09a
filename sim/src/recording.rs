//! Recorded power cuts: the flash as a cut left it, and the recovery the simulator expects.
//!
//! A power cut timed by a reset line never hits the same flash operation twice, so what is
//! replayed on a board is a *flash state*. A recording is a folder:
//!
//! - `recording.toml`: what it is and how to rebuild its world —
//!   ```toml
//!   format = 1
//!   name = "erase"
//!   description = "…"
//!   made_by = "sim run fixtures/recordings/sources/erase.toml --record fixtures/recordings"
//!   model = "espflash"            # the bootloader model it was made behind
//!   seed = 1                      # the board's (and the scenario's) seed
//!   [scenario]
//!   path = "fixtures/recordings/sources/erase.toml"
//!   text = '''…the whole scenario file…'''   # rebuilds the releases, images and conf
//!   [cut]
//!   boot = 1                      # the boot that lost power
//!   what = "Erase at 0x1f2000 (flash operation 9)"
//!   phase = "erase"               # see `scenario::cut_phase`
//!   [expect]                      # the recovery's boots, as a scenario's [expect]
//!   final_version = "1.1"
//!   outcomes = ["installed", "updated"]
//!   leds = ["Y", "Y..y"]
//!   log = ["installed", "updated"]
//!   versions = ["1.0", "1.1"]
//!   ```
//!   A recording made with the user's own firmware images (`sim run --image TAG=PATH
//!   --record …`) also lists them, each a file of the folder with its SHA-256:
//!   ```toml
//!   [images.running]              # the image in the board's slot before the update
//!   file = "images/running.bin"
//!   sha256 = "…"
//!   [[images.releases]]           # the release assets, by tag
//!   tag = "1.1"
//!   file = "images/1.1.bin"
//!   sha256 = "…"
//!   ```
//!   Without `[images]` (every recording made before them), the slots and assets hold the
//!   images the simulator builds from the scenario: see [`Recording::images_are_simulated`].
//! - `sectors.bin`: the flash as the cut left it, as a sparse diff against the flashed base
//!   (partition table, conf.json, the running image in its slot — the scenario's, or the
//!   user's `images/running.bin`:
//!   [`Stage::base_flash`]). Only the 4 KiB sectors that differ from the base are stored,
//!   torn bytes included. The config partition is never stored: whoever replays writes a
//!   conf.json pointing at its own servers. Layout, all integers little endian:
//!   ```text
//!   0   8   magic "OTAFLSH1"
//!   8   4   sector count N
//!   12  …   N times: offset (u32, a multiple of 4096 inside the 4 MB flash), 4096 bytes
//!   ```
//!
//! The replay ([`replay`]) provisions the base, overlays the sectors, stages the scenario's
//! releases as GitHub had them at the boot after the cut (same images, asset ids and
//! `updated_at`, so a resume record still matches) with no fault at all, boots until the
//! application runs and checks the recovery against `[expect]`.

use crate::board::Triggers;
use crate::bootloader::Model;
use crate::flash::SimFlash;
use crate::scenario::{
    self, Expect, FaultSpec, Report, Scenario, ScenarioError, Stage, UserImages, acked_seqs,
    triggers_of,
};
use crate::world::BrokerChoice;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};

/// The version of the folder's format this code reads and writes.
pub const FORMAT: u32 = 1;
/// Flash sector size: the unit of `sectors.bin`.
pub const SECTOR: usize = 4096;
/// The flash the recordings are for (the ESP32-C3 boards' 4 MB).
pub const FLASH_SIZE: usize = 4 * 1024 * 1024;
/// First bytes of `sectors.bin`.
pub const MAGIC: &[u8; 8] = b"OTAFLSH1";
/// The metadata file of a recording folder.
pub const TOML_FILE: &str = "recording.toml";
/// The sector file of a recording folder.
pub const SECTORS_FILE: &str = "sectors.bin";
/// The folder of a recording's own firmware images.
pub const IMAGES_DIR: &str = "images";
/// The running image's file in [`IMAGES_DIR`].
pub const RUNNING_FILE: &str = "running.bin";

/// The user's images a recording carries: what its slots and release assets hold.
pub type RecordedImages = UserImages;

/// Why a recording cannot be read, written or replayed.
#[derive(Debug, thiserror::Error)]
pub enum RecordingError {
    /// A file cannot be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// `recording.toml` is not a valid recording.
    #[error("{path}: {source}")]
    Toml {
        /// The file.
        path: PathBuf,
        /// The error.
        source: toml::de::Error,
    },
    /// The recording cannot be written as TOML.
    #[error("recording {name}: {source}")]
    Serialize {
        /// The recording.
        name: String,
        /// The error.
        source: toml::ser::Error,
    },
    /// A format this code does not know.
    #[error("{path}: format {found}, this sim reads format {FORMAT}")]
    Format {
        /// The file.
        path: PathBuf,
        /// The format it claims.
        found: u32,
    },
    /// An unknown bootloader model.
    #[error("{path}: unknown bootloader model `{model}`")]
    Model {
        /// The file.
        path: PathBuf,
        /// The model named.
        model: String,
    },
    /// `sectors.bin` does not start with the magic.
    #[error("{path}: not a sector file (it does not start with \"OTAFLSH1\")")]
    BadMagic {
        /// The file.
        path: PathBuf,
    },
    /// `sectors.bin` ends early.
    #[error("{path}: truncated: {what}")]
    Truncated {
        /// The file.
        path: PathBuf,
        /// Where it ends.
        what: String,
    },
    /// `sectors.bin` has bytes after its last sector.
    #[error("{path}: {extra} bytes after the last of its {count} sectors")]
    Trailing {
        /// The file.
        path: PathBuf,
        /// Sectors announced.
        count: u32,
        /// Bytes left over.
        extra: usize,
    },
    /// A sector at an offset that cannot be one.
    #[error("{path}: sector {index} at 0x{offset:x}: {why}")]
    BadSector {
        /// The file.
        path: PathBuf,
        /// Its index in the file.
        index: u32,
        /// Its offset.
        offset: u32,
        /// What is wrong.
        why: &'static str,
    },
    /// An image file's bytes are not those `recording.toml` lists.
    #[error(
        "{path}: SHA-256 {actual}, but recording.toml lists {expected} (the image was changed or replaced)"
    )]
    ImageHash {
        /// The image file.
        path: PathBuf,
        /// The hash `recording.toml` lists.
        expected: String,
        /// The file's.
        actual: String,
    },
    /// An image entry names a file outside the recording's `images/` folder.
    #[error("{path}: image file `{file}` is not a file name inside {IMAGES_DIR}/")]
    ImagePath {
        /// `recording.toml`.
        path: PathBuf,
        /// The file named.
        file: String,
    },
    /// A release tag that cannot name an image file.
    #[error(
        "recording {name}: release tag `{tag}` cannot name a file (letters, digits, `.`, `-`, `_`; not `running`)"
    )]
    ImageTag {
        /// The recording.
        name: String,
        /// The tag.
        tag: String,
    },
    /// The embedded scenario is not valid.
    #[error("embedded scenario: {0}")]
    Scenario(#[from] ScenarioError),
}

/// The scenario a recording was made from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScenarioSource {
    /// Its path when it was recorded (its file stem names it).
    pub path: String,
    /// The whole file.
    pub text: String,
}

/// Where the recorded cut hit.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CutPoint {
    /// The boot that lost power (1-based).
    pub boot: u32,
    /// What it interrupted (`Erase at 0x… (flash operation N)`, `between flash operations`).
    pub what: String,
    /// The update's phase (see [`scenario::cut_phase`]).
    pub phase: String,
}

/// One 4 KiB sector of flash.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sector {
    /// Its offset, a multiple of [`SECTOR`].
    pub offset: u32,
    /// Its [`SECTOR`] bytes.
    pub bytes: Vec<u8>,
}

/// A recorded power cut.
#[derive(Clone, Debug, PartialEq)]
pub struct Recording {
    /// Its name (the folder's name when saved by `--record`).
    pub name: String,
    /// What it shows.
    pub description: String,
    /// The command that made it.
    pub made_by: String,
    /// The scenario it was cut from.
    pub scenario: ScenarioSource,
    /// The bootloader model.
    pub model: Model,
    /// The board's seed.
    pub seed: u64,
    /// Where the cut hit.
    pub cut: CutPoint,
    /// The recovery's boots.
    pub expect: Expect,
    /// The sectors that differ from the flashed base, by offset.
    pub sectors: Vec<Sector>,
    /// The user's firmware images it was made with; `None`: the simulator's, rebuilt from
    /// the scenario.
    pub images: Option<RecordedImages>,
}

/// An image file listed in `recording.toml`.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct ImageFile {
    file: String,
    sha256: String,
}

/// A release image listed in `recording.toml`.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct ReleaseImageFile {
    tag: String,
    file: String,
    sha256: String,
}

/// `[images]` of `recording.toml`.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct ImagesToml {
    running: ImageFile,
    #[serde(default)]
    releases: Vec<ReleaseImageFile>,
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// `recording.toml` as written.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct TomlFile {
    format: u32,
    name: String,
    description: String,
    made_by: String,
    model: String,
    seed: u64,
    scenario: ScenarioSource,
    cut: CutPoint,
    expect: Expect,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    images: Option<ImagesToml>,
}

/// Reads image `file` (relative to `dir`, inside its `images/`) and checks its SHA-256.
fn read_image(
    dir: &Path,
    toml_path: &Path,
    file: &str,
    sha256: &str,
) -> Result<Vec<u8>, RecordingError> {
    let inside = file
        .strip_prefix(IMAGES_DIR)
        .and_then(|f| f.strip_prefix('/'))
        .is_some_and(|name| {
            !name.is_empty() && !name.contains(['/', '\\']) && name != "." && name != ".."
        });
    if !inside {
        return Err(RecordingError::ImagePath {
            path: toml_path.to_path_buf(),
            file: file.to_string(),
        });
    }
    let path = dir.join(file);
    let bytes = std::fs::read(&path).map_err(|source| RecordingError::Io {
        path: path.clone(),
        source,
    })?;
    let actual = sha256_hex(&bytes);
    if !actual.eq_ignore_ascii_case(sha256) {
        return Err(RecordingError::ImageHash {
            path,
            expected: sha256.to_string(),
            actual,
        });
    }
    Ok(bytes)
}

/// Whether `tag` can name a file of `images/` by itself.
fn tag_is_file_name(tag: &str) -> bool {
    !tag.is_empty()
        && !tag.starts_with('.')
        && tag != "running"
        && tag
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
}

impl Recording {
    /// Reads the recording in folder `dir`.
    pub fn load(dir: &Path) -> Result<Recording, RecordingError> {
        let path = dir.join(TOML_FILE);
        let text = std::fs::read_to_string(&path).map_err(|source| RecordingError::Io {
            path: path.clone(),
            source,
        })?;
        let file: TomlFile = toml::from_str(&text).map_err(|source| RecordingError::Toml {
            path: path.clone(),
            source,
        })?;
        if file.format != FORMAT {
            return Err(RecordingError::Format {
                path,
                found: file.format,
            });
        }
        let model = Model::parse(&file.model).ok_or_else(|| RecordingError::Model {
            path: path.clone(),
            model: file.model.clone(),
        })?;
        let sectors_path = dir.join(SECTORS_FILE);
        let bytes = std::fs::read(&sectors_path).map_err(|source| RecordingError::Io {
            path: sectors_path.clone(),
            source,
        })?;
        let images = match &file.images {
            None => None,
            Some(listed) => {
                let running = read_image(dir, &path, &listed.running.file, &listed.running.sha256)?;
                let mut releases = Vec::new();
                for r in &listed.releases {
                    releases.push((r.tag.clone(), read_image(dir, &path, &r.file, &r.sha256)?));
                }
                Some(RecordedImages { running, releases })
            }
        };
        Ok(Recording {
            name: file.name,
            description: file.description,
            made_by: file.made_by,
            scenario: file.scenario,
            model,
            seed: file.seed,
            cut: file.cut,
            expect: file.expect,
            sectors: decode_sectors(&bytes, &sectors_path)?,
            images,
        })
    }

    /// Whether its slots and release assets hold the simulator's images (rebuilt from the
    /// scenario), which a real ESP32-C3 cannot run: true when it carries no image of its own.
    pub fn images_are_simulated(&self) -> bool {
        self.images.is_none()
    }

    /// Writes the recording into folder `dir` (created if needed).
    pub fn save(&self, dir: &Path) -> Result<(), RecordingError> {
        let io = |path: PathBuf| move |source| RecordingError::Io { path, source };
        std::fs::create_dir_all(dir).map_err(io(dir.to_path_buf()))?;
        let images = match &self.images {
            None => None,
            Some(images) => {
                let images_dir = dir.join(IMAGES_DIR);
                std::fs::create_dir_all(&images_dir).map_err(io(images_dir.clone()))?;
                let write = |name: &str, bytes: &[u8]| {
                    let path = images_dir.join(name);
                    std::fs::write(&path, bytes).map_err(io(path))?;
                    Ok::<_, RecordingError>((format!("{IMAGES_DIR}/{name}"), sha256_hex(bytes)))
                };
                let (file, sha256) = write(RUNNING_FILE, &images.running)?;
                let running = ImageFile { file, sha256 };
                let mut releases = Vec::new();
                for (tag, bytes) in &images.releases {
                    if !tag_is_file_name(tag) {
                        return Err(RecordingError::ImageTag {
                            name: self.name.clone(),
                            tag: tag.clone(),
                        });
                    }
                    let (file, sha256) = write(&format!("{tag}.bin"), bytes)?;
                    releases.push(ReleaseImageFile {
                        tag: tag.clone(),
                        file,
                        sha256,
                    });
                }
                Some(ImagesToml { running, releases })
            }
        };
        let file = TomlFile {
            format: FORMAT,
            name: self.name.clone(),
            description: self.description.clone(),
            made_by: self.made_by.clone(),
            model: self.model.name().to_string(),
            seed: self.seed,
            scenario: self.scenario.clone(),
            cut: self.cut.clone(),
            expect: self.expect.clone(),
            images,
        };
        let text = toml::to_string(&file).map_err(|source| RecordingError::Serialize {
            name: self.name.clone(),
            source,
        })?;
        let path = dir.join(TOML_FILE);
        std::fs::write(&path, text).map_err(io(path.clone()))?;
        let path = dir.join(SECTORS_FILE);
        std::fs::write(&path, encode_sectors(&self.sectors)).map_err(io(path.clone()))
    }

    /// The scenario it was cut from.
    pub fn scenario(&self) -> Result<Scenario, RecordingError> {
        Ok(Scenario::parse(
            &self.scenario.text,
            Path::new(&self.scenario.path),
        )?)
    }

    /// Overlays the recorded sectors on a flashed base.
    pub fn apply(&self, flash: &mut SimFlash) {
        for s in &self.sectors {
            flash.load(s.offset, &s.bytes);
        }
    }

    /// Overlays the recorded sectors on a flash image (grown to cover them if it is shorter).
    pub fn apply_to(&self, image: &mut Vec<u8>) {
        for s in &self.sectors {
            let at = s.offset as usize;
            if image.len() < at + SECTOR {
                image.resize(at + SECTOR, 0xFF);
            }
            image[at..at + SECTOR].copy_from_slice(&s.bytes);
        }
    }
}

/// The config partition, never part of a recording.
fn config_range() -> std::ops::Range<usize> {
    let table = firmware::format::partition::default_table();
    table
        .by_label(firmware::format::partition::LABEL_CONFIG)
        .map_or(0..0, |p| p.offset as usize..p.end() as usize)
}

/// The sectors of `now` that differ from `base`, outside the config partition.
pub fn diff(base: &[u8], now: &[u8]) -> Vec<Sector> {
    let config = config_range();
    let len = base.len().max(now.len());
    let erased = [0xFFu8; SECTOR];
    let sector_of = |flash: &[u8], at: usize| -> Vec<u8> {
        let mut out = erased.to_vec();
        if let Some(have) = flash.get(at..(at + SECTOR).min(flash.len())) {
            out[..have.len()].copy_from_slice(have);
        }
        out
    };
    (0..len)
        .step_by(SECTOR)
        .filter(|at| !config.contains(at))
        .filter_map(|at| {
            let (b, n) = (sector_of(base, at), sector_of(now, at));
            (b != n).then_some(Sector {
                offset: at as u32,
                bytes: n,
            })
        })
        .collect()
}

/// `sectors.bin`'s bytes.
pub fn encode_sectors(sectors: &[Sector]) -> Vec<u8> {
    let mut out = Vec::with_capacity(12 + sectors.len() * (4 + SECTOR));
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&(sectors.len() as u32).to_le_bytes());
    for s in sectors {
        out.extend_from_slice(&s.offset.to_le_bytes());
        out.extend_from_slice(&s.bytes);
    }
    out
}

/// Reads `sectors.bin`'s bytes; `path` is named in errors.
pub fn decode_sectors(bytes: &[u8], path: &Path) -> Result<Vec<Sector>, RecordingError> {
    let path = || path.to_path_buf();
    if bytes.len() < MAGIC.len() || &bytes[..MAGIC.len()] != MAGIC {
        return Err(RecordingError::BadMagic { path: path() });
    }
    let count = bytes
        .get(8..12)
        .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .ok_or_else(|| RecordingError::Truncated {
            path: path(),
            what: format!("{} bytes, no sector count", bytes.len()),
        })?;
    let config = config_range();
    let mut sectors = Vec::new();
    let mut at = 12;
    for index in 0..count {
        let Some(record) = bytes.get(at..at + 4 + SECTOR) else {
            return Err(RecordingError::Truncated {
                path: path(),
                what: format!(
                    "sector {} of {count} has {} of its {} bytes",
                    index + 1,
                    bytes.len() - at,
                    4 + SECTOR
                ),
            });
        };
        let offset = u32::from_le_bytes([record[0], record[1], record[2], record[3]]);
        let why = if !(offset as usize).is_multiple_of(SECTOR) {
            Some("not a multiple of 4096")
        } else if offset as usize + SECTOR > FLASH_SIZE {
            Some("beyond the 4 MB flash")
        } else if config.contains(&(offset as usize)) {
            Some("inside the config partition, which recordings never hold")
        } else if sectors.iter().any(|s: &Sector| s.offset == offset) {
            Some("given twice")
        } else {
            None
        };
        if let Some(why) = why {
            return Err(RecordingError::BadSector {
                path: path(),
                index,
                offset,
                why,
            });
        }
        sectors.push(Sector {
            offset,
            bytes: record[4..].to_vec(),
        });
        at += 4 + SECTOR;
    }
    if at != bytes.len() {
        return Err(RecordingError::Trailing {
            path: path(),
            count,
            extra: bytes.len() - at,
        });
    }
    Ok(sectors)
}

/// Numbers the replays of this process (their MQTT client ids).
static REPLAYS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Replays `rec` in the simulator: its base flash with the recorded sectors over it, the
/// scenario's releases as GitHub had them at the boot after the cut, no fault; boots until
/// the application runs and checks the recovery against the recording's `[expect]`.
pub async fn replay(rec: &Recording, broker: &BrokerChoice) -> Result<Report, RecordingError> {
    let started = std::time::Instant::now();
    let s = rec.scenario()?;
    // Its own MQTT client id: another replay or run may be connected at the same time.
    let n = REPLAYS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let client_id = format!("replay-{}-{n}", std::process::id());
    let mut stage = Stage::without_faults(&s, rec.model, broker, &client_id).await?;
    if let Some(images) = &rec.images {
        stage = stage.with_images(Some(images.running.clone()), images.releases.clone())?;
    }
    // GitHub's history up to the cut: ids and dates come out as they did when it was made.
    for boot in 2..=rec.cut.boot {
        stage.before_boot(boot);
    }
    let mut flash = stage.base_flash();
    rec.apply(&mut flash);
    let mut board = stage.board_with(flash);
    // Boots are numbered on from the cut's: the same jitter seeds and console as the run.
    board.boots = rec.cut.boot;
    let (ends, mut failures) = stage
        .boot_until_app(&mut board, &mut Triggers::default(), 0)
        .await?;
    failures.append(&mut stage.setup_failures);
    let builds = std::mem::take(&mut stage.builds);
    let log = stage.finish(&acked_seqs(&board.trace)).await;
    // Records delivered before the cut went to the recording run's broker.
    let log_from = log.first().map_or(1, |(seq, _, _)| *seq);
    let mut named = s.clone();
    named.name = rec.name.clone();
    let mut report = scenario::verdict(
        &named,
        rec.model,
        &rec.expect,
        board,
        &ends,
        log,
        &builds,
        failures,
        log_from,
    );
    report.wall_ms = started.elapsed().as_millis();
    Ok(report)
}

/// What a recording's state recovers into, observed by replaying it with an expectation only
/// the invariants can fail: the `[expect]` to keep (final version, outcomes, LEDs, log,
/// versions), the invariants the replay broke, and the replay itself.
pub async fn observe_recovery(
    rec: &Recording,
    broker: &BrokerChoice,
) -> Result<(Expect, Vec<String>, Report), RecordingError> {
    let mut probe = rec.clone();
    probe.expect = Expect::default();
    let seen = replay(&probe, broker).await?;
    let broken = seen
        .failures
        .iter()
        .filter(|f| !f.starts_with("final_version") && !f.starts_with("log"))
        .cloned()
        .collect();
    let expect = Expect {
        final_version: seen.versions.last().cloned().unwrap_or_default(),
        outcomes: seen.outcomes.clone(),
        leds: seen.leds.clone(),
        log: seen.log.clone(),
        versions: seen.versions.clone(),
        ..Expect::default()
    };
    Ok((expect, broken, seen))
}

/// What `sim run --record` produced for one scenario and model.
pub struct Recorded {
    /// The run, as `sim run` reports it (with a failure for every recording whose replay
    /// disagrees with what the run saw after its cut).
    pub report: Report,
    /// One recording per power cut, its `[expect]` taken from its replay.
    pub recordings: Vec<Recording>,
}

/// Runs scenario `s` (read from `path`, whose text is `text`) behind `model` like
/// [`scenario::run`], keeping the flash at every power cut as a [`Recording`]. Each
/// recording's expectation is what its replay (no further faults) does; for the run's last
/// cut, when the scenario has no faults but power cuts, the replay must also agree with the
/// boots the run saw after the cut. With `images`, the user's firmware images run in the
/// board's slot and are the release assets ([`Stage::with_images`]); every recording carries
/// them.
pub async fn record_with(
    s: &Scenario,
    path: &str,
    text: &str,
    model: Model,
    broker: &BrokerChoice,
    made_by: &str,
    images: Option<&RecordedImages>,
) -> Result<Recorded, RecordingError> {
    let started = std::time::Instant::now();
    let mut stage = Stage::new(s, model, broker).await?;
    if let Some(images) = images {
        for (tag, _) in &images.releases {
            if !tag_is_file_name(tag) {
                return Err(RecordingError::ImageTag {
                    name: s.name.clone(),
                    tag: tag.clone(),
                });
            }
        }
        stage = stage.with_images(Some(images.running.clone()), images.releases.clone())?;
    }
    stage.snapshot_cuts = true;
    let (mut triggers, flash_cuts) = triggers_of(s, model)?;
    let base = stage.base_flash();
    let base_bytes = base.contents().to_vec();
    let mut board = stage.board_with(base);
    flash_cuts.arm(&mut board.flash);
    let (ends, mut failures) = stage
        .boot_until_app(&mut board, &mut triggers, s.extra_boots)
        .await?;
    failures.append(&mut stage.setup_failures);
    let snapshots = std::mem::take(&mut stage.cut_snapshots);
    let builds = std::mem::take(&mut stage.builds);
    let log = stage.finish(&acked_seqs(&board.trace)).await;
    // What the run saw after each cut, to compare replays with: (boot, version) and outcomes.
    let after = |cut: u32| {
        let versions: Vec<String> = board
            .boot_choices
            .iter()
            .filter(|(b, _)| *b > cut)
            .map(|(_, c)| c.version.clone())
            .collect();
        versions
    };
    let only_cuts = s
        .faults
        .iter()
        .all(|f| matches!(f, FaultSpec::PowerCut { .. }));
    let mut pending = Vec::new();
    for (i, snap) in snapshots.iter().enumerate() {
        let name = format!("{}-{model}-boot{}-{}", s.name, snap.boot, snap.phase);
        let rec = Recording {
            name: name.clone(),
            description: format!(
                "{}; power cut at boot {} ({}, {})",
                s.description, snap.boot, snap.phase, snap.what
            ),
            made_by: made_by.to_string(),
            scenario: ScenarioSource {
                path: path.to_string(),
                text: text.to_string(),
            },
            model,
            seed: s.seed,
            cut: CutPoint {
                boot: snap.boot,
                what: snap.what.clone(),
                phase: snap.phase.clone(),
            },
            expect: Expect::default(),
            sectors: diff(&base_bytes, &snap.flash),
            images: images.cloned(),
        };
        let last = i + 1 == snapshots.len();
        pending.push((rec, last && only_cuts, after(snap.boot)));
    }
    let e = s.expect_for(model);
    let mut report = scenario::verdict(s, model, &e, board, &ends, log, &builds, failures, 1);
    let run_outcomes = report.outcomes.clone();
    let run_leds = report.leds.clone();
    let mut recordings = Vec::new();
    for (mut rec, compare, run_versions) in pending {
        let (expect, broken, seen) = observe_recovery(&rec, broker).await?;
        for f in broken {
            report
                .failures
                .push(format!("recording {}: its replay: {f}", rec.name));
        }
        rec.expect = expect;
        if compare {
            let from = rec.cut.boot as usize; // outcomes[from..] are the boots after the cut
            let ran = |list: &[String]| list.get(from..).unwrap_or_default().to_vec();
            let recovery = |list: &[String]| list.to_vec();
            let checks = [
                ("outcomes", ran(&run_outcomes), recovery(&seen.outcomes)),
                ("leds", ran(&run_leds), recovery(&seen.leds)),
                ("versions", run_versions, recovery(&seen.versions)),
            ];
            for (what, run, replayed) in checks {
                // The run may go on after the application ran (extra boots).
                if replayed.len() > run.len() || run[..replayed.len()] != replayed[..] {
                    report.failures.push(format!(
                        "recording {}: its replay gives {what} {replayed:?}, the run saw {run:?} after the cut",
                        rec.name
                    ));
                }
            }
        }
        recordings.push(rec);
    }
    report.wall_ms = started.elapsed().as_millis();
    Ok(Recorded { report, recordings })
}

/// Which cuts of a sweep [`record_sweep`] keeps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Keep {
    /// The first cut of each phase reached.
    Phases,
    /// Every n-th flash operation (1, 1 + n, …).
    Every(u64),
}

/// What [`record_sweep`] made.
pub struct SweepRecorded {
    /// The recordings kept, in flash-operation order.
    pub recordings: Vec<Recording>,
    /// Flash operations cut.
    pub runs: u64,
    /// Broken invariants (of a run or of a replay), prefixed with the operation.
    pub violations: Vec<String>,
}

/// The scenario a sweep cuts at flash operation `op`: a `size`-byte update from 1.0 to 1.1
/// behind `model`.
pub fn sweep_scenario(size: usize, seed: u64, model: Model, op: u64) -> String {
    format!(
        "name = \"sweep-op{op}\"\n\
         description = \"Sweep: power cut at flash operation {op} of a {size}-byte update\"\n\
         seed = {seed}\n\
         bootloader = \"{model}\"\n\
         [board]\nversion = \"1.0\"\n\
         [[releases]]\ntag = \"1.1\"\nsize = {size}\n\
         [[faults]]\nkind = \"power_cut\"\nat_flash_op = {op}\n\
         [expect]\nfinal_version = \"1.1\"\n"
    )
}

/// Cuts power at flash operation 1, 2, … of a `size`-byte update (until an operation lies
/// beyond the whole run) and keeps recordings as `keep` says. Each kept recording's scenario
/// is [`sweep_scenario`] for its operation, so it rebuilds on its own.
pub async fn record_sweep(
    size: usize,
    seed: u64,
    model: Model,
    keep: Keep,
    broker: &BrokerChoice,
    made_by: &str,
) -> Result<SweepRecorded, RecordingError> {
    let mut out = SweepRecorded {
        recordings: Vec::new(),
        runs: 0,
        violations: Vec::new(),
    };
    let mut phases: Vec<String> = Vec::new();
    let mut op = 1;
    loop {
        let wanted = match keep {
            Keep::Phases => true,
            Keep::Every(n) => (op - 1) % n.max(1) == 0,
        };
        if wanted {
            let text = sweep_scenario(size, seed, model, op);
            let s = Scenario::parse(&text, Path::new(&format!("sweep-op{op}.toml")))?;
            let made = record_with(
                &s,
                &format!("sweep-op{op}.toml"),
                &text,
                model,
                broker,
                made_by,
                None,
            )
            .await?;
            out.runs += 1;
            // A sweep has no expectations of its own: only invariants count.
            out.violations.extend(
                made.report
                    .failures
                    .iter()
                    .filter(|f| f.starts_with("invariant") || f.starts_with("recording"))
                    .map(|f| format!("op {op}: {f}")),
            );
            let Some(rec) = made.recordings.into_iter().next() else {
                break; // the run ended before operation `op`: the sweep is complete
            };
            let new_phase = !phases.contains(&rec.cut.phase);
            if keep != Keep::Phases || new_phase {
                phases.push(rec.cut.phase.clone());
                out.recordings.push(rec);
            }
        }
        op += 1;
        if op > 100_000 {
            break;
        }
    }
    Ok(out)
}
