//! One scenario (or one recording's replay) on one board: stage the servers, flash the board
//! with espflash, boot it, drive its faults, read its console, LEDs and MQTT log, and judge
//! what happened with the simulator's own expectations ([`sim::scenario::Expect::check`]).

use crate::console::{self, APP_RUNNING, Console, Line};
use crate::flashing::{self, Link, Region};
use crate::power::PowerControl;
use crate::probe::{self, ModemProbe};
use crate::report::{BootRow, CaseReport};
use firmware::trace::Event;
use sim::bootloader::Model;
use sim::chip::{ChipFaults, ChipOptions, ChipState};
use sim::scenario::{Expect, Observed, Scenario, Stage};
use sim::world::BrokerChoice;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Why a case could not run at all (as opposed to running and failing its expectations).
#[derive(Debug, thiserror::Error)]
pub enum HilError {
    /// The scenario's world could not be staged.
    #[error("staging: {0}")]
    Stage(#[from] sim::scenario::ScenarioError),
    /// Flashing failed.
    #[error("flashing: {0}")]
    Flash(#[from] flashing::FlashError),
    /// The console could not be read.
    #[error("console: {0}")]
    Console(#[from] console::ConsoleError),
    /// The virtual chip failed.
    #[error("virtual board: {0}")]
    Chip(#[from] sim::chip::ChipError),
    /// The power backend failed.
    #[error("power: {0}")]
    Power(#[from] crate::power::PowerError),
    /// The pty pair for the virtual board.
    #[error("pty: {0}")]
    Pty(serialport::Error),
    /// The run's folder.
    #[error("{path}: {source}")]
    Io {
        /// The file or folder.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// A fault this board cannot be given.
    #[error("{scenario}: {why}")]
    Unsupported {
        /// The scenario.
        scenario: String,
        /// Why.
        why: String,
    },
    /// A recording that does not replay here.
    #[error("recording {name}: {why}")]
    Recording {
        /// The recording.
        name: String,
        /// Why.
        why: String,
    },
}

/// The board a case runs on.
pub enum Target {
    /// The simulator's virtual ESP32-C3 behind a pty.
    Virtual {
        /// Its bootloader build.
        model: Model,
        /// Real firmware images to flash and publish instead of the simulator's (the virtual
        /// board still runs the core on the host, but flashes, boots and downloads these).
        firmware: Option<Firmware>,
    },
    /// A real ESP32-C3 on USB.
    Board(Box<BoardSetup>),
}

/// The user's own firmware: what gets flashed and published instead of the simulator's images.
pub struct Firmware {
    /// The firmware ELF of the old version (bootloader, partition table and `ota_0` come from
    /// it, as `espflash flash` builds them).
    pub elf: PathBuf,
    /// firmware/partitions.csv.
    pub partitions: PathBuf,
    /// Release images by tag (`FIRMWARE_VERSION=1.1 just firmware` builds them).
    pub images: Vec<(String, Vec<u8>)>,
}

impl Firmware {
    /// The images as the stage takes them: the running image is the ELF's app (what
    /// `espflash flash` writes into `ota_0`), the releases are the images by tag.
    fn user_images(&self) -> Result<sim::scenario::UserImages, HilError> {
        let running = flashing::regions_from_elf(&self.elf, &self.partitions)?
            .into_iter()
            .find(|r| r.name == "ota_0")
            .map(|r| r.data)
            .ok_or_else(|| HilError::Unsupported {
                scenario: self.elf.display().to_string(),
                why: "espflash made no app image of it".into(),
            })?;
        Ok(sim::scenario::UserImages {
            running,
            releases: self.images.clone(),
        })
    }

    /// espflash's ESP-IDF bootloader for the ESP32-C3, as `espflash flash` writes it.
    fn bootloader(&self) -> Result<Region, HilError> {
        flashing::regions_from_elf(&self.elf, &self.partitions)?
            .into_iter()
            .find(|r| r.name == "bootloader")
            .ok_or_else(|| HilError::Unsupported {
                scenario: self.elf.display().to_string(),
                why: "espflash made no bootloader for it".into(),
            })
    }
}

/// A real board and what the harness has around it.
pub struct BoardSetup {
    /// The board's serial port.
    pub port: String,
    /// The firmware.
    pub firmware: Firmware,
    /// Power and reset.
    pub power: Box<dyn PowerControl>,
    /// The LED probe, if wired.
    pub probe: Option<probe::ProbeSpec>,
    /// The user's conf.json: its `wifi` and `leds` go to the board.
    pub user_conf: serde_json::Value,
    /// This host's address as the board reaches it.
    pub host_ip: std::net::IpAddr,
}

/// How long a case may take in real time before it is stopped and judged as it stands.
pub struct Limits {
    /// Virtual board (virtual time runs fast; this is real time).
    pub virtual_case: Duration,
    /// Real board (WiFi joins, downloads at a few hundred kB/s, outages in real time).
    pub board_case: Duration,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            virtual_case: Duration::from_secs(120),
            board_case: Duration::from_secs(20 * 60),
        }
    }
}

/// What a case starts from.
pub enum Start<'a> {
    /// A fresh flash as `just flash` leaves it.
    Fresh,
    /// A recording: the base, then its sectors; the boots count from the boot after the cut.
    Recording(&'a sim::recording::Recording),
}

/// Where `--record` saves the flash state of every power cut of a case, and what it names.
pub struct RecordTo {
    /// The folder; each recording goes into a folder of its own inside it.
    pub dir: PathBuf,
    /// The scenario file's path, as the recording names its source.
    pub scenario_path: String,
    /// The scenario file's text (a recording embeds it).
    pub scenario_text: String,
    /// The command line, for `made_by`.
    pub made_by: String,
}

/// Where and how a case runs.
#[derive(Clone, Copy)]
pub struct RunOptions<'a> {
    /// The broker the board's activity log goes to.
    pub broker: &'a BrokerChoice,
    /// The case's folder (raw console, LED edges).
    pub folder: &'a Path,
    /// Real-time limits.
    pub limits: &'a Limits,
    /// No progress bars.
    pub quiet: bool,
    /// Save every power cut as a recording (virtual board).
    pub record: Option<&'a RecordTo>,
}

/// The note a cut leaves in the console (`console::POWER_CUT` starts it).
const POWER_CUT_NOTE: &str = "power cut";

/// The most boots a case may take (the simulator's bound).
const MAX_BOOTS: u32 = 16;

/// Runs scenario `s` (or a recording's recovery) on `target`; `folder` receives the raw
/// console. Returns the verdict; an error only when the case could not run at all.
pub async fn run_case(
    s: &Scenario,
    expect: &Expect,
    start: Start<'_>,
    target: &mut Target,
    opts: &RunOptions<'_>,
) -> Result<CaseReport, HilError> {
    let RunOptions {
        broker,
        folder,
        limits,
        quiet,
        record,
    } = *opts;
    let started = Instant::now();
    if let (Some(_), Target::Board(setup)) = (record, &*target)
        && setup.power.removes_power()
    {
        return Err(HilError::Unsupported {
            scenario: s.name.clone(),
            why: "recording on a board needs `--power reset`: the chip must stay in reset \
                  until it is put into download mode, and a power backend lets it boot first"
                .into(),
        });
    }
    std::fs::create_dir_all(folder).map_err(|source| HilError::Io {
        path: folder.display().to_string(),
        source,
    })?;
    let model = match target {
        Target::Virtual { model, .. } => *model,
        // espflash flashes ESP-IDF's bootloader built without app rollback.
        Target::Board(_) => Model::Espflash,
    };
    // A replay starts from the cut's flash state with no further faults (as the simulator's
    // replay does), and ends when the application first runs.
    let (triggers, flash_cuts) = match start {
        Start::Fresh => sim::scenario::triggers_of(s, model)?,
        Start::Recording(_) => Default::default(),
    };
    let extra_boots = match start {
        Start::Fresh => s.extra_boots,
        Start::Recording(_) => 0,
    };
    if !flash_cuts.is_empty() && matches!(target, Target::Board(_)) {
        return Err(HilError::Unsupported {
            scenario: s.name.clone(),
            why: "a cut at one exact flash operation cannot be timed from outside a board; \
                  such cuts are replayed from recordings (`hil replay`)"
                .into(),
        });
    }
    let listen = match target {
        Target::Virtual { .. } => std::net::IpAddr::from([127, 0, 0, 1]),
        Target::Board(setup) => setup.host_ip,
    };
    let mut stage = match &start {
        Start::Fresh => Stage::new_on(s, model, broker, listen).await?,
        Start::Recording(_) => {
            let id = format!("hil-replay-{}", std::process::id());
            Stage::without_faults_on(s, model, broker, &id, listen).await?
        }
    };
    // Whose images the board runs and GitHub serves: a recording's own (or the
    // simulator's, for one made without), else the user's firmware when given.
    let firmware = match &*target {
        Target::Virtual { firmware, .. } => firmware.as_ref(),
        Target::Board(setup) => Some(&setup.firmware),
    };
    let images = match (&start, firmware) {
        (Start::Recording(r), _) => r.images.clone(),
        (Start::Fresh, Some(fw)) => Some(fw.user_images()?),
        (Start::Fresh, None) => None,
    };
    if let Start::Recording(r) = &start
        && r.images_are_simulated()
        && matches!(target, Target::Board(_))
    {
        return Err(HilError::Recording {
            name: r.name.clone(),
            why: "its slots hold the simulator's images, which a real ESP32-C3 would boot and \
                  crash in; replay a recording made with your firmware (`sim run … --image \
                  1.0=… --image 1.1=… --record DIR`, or `hil run --virtual --elf … --image … \
                  --record DIR`)"
                .into(),
        });
    }
    if let Some(i) = &images {
        stage = stage.with_images(Some(i.running.clone()), i.releases.clone())?;
    }
    // The bootloader a real board needs (the virtual one's is the simulator's model).
    let bootloader = match firmware {
        Some(fw) if images.is_some() => Some(fw.bootloader()?),
        _ => None,
    };
    if let Start::Recording(r) = &start {
        // GitHub's history up to the cut, so that release and asset ids and dates come out
        // as they did when the recording was made (the resume record is keyed on them).
        for boot in 2..=r.cut.boot {
            stage.before_boot(boot);
        }
    }
    let first_boot = match &start {
        Start::Fresh => 1,
        Start::Recording(r) => r.cut.boot + 1,
    };
    let stage = Arc::new(Mutex::new(stage));
    // What `just flash` writes: bootloader, partition table, the running image in its slot.
    let mut regions = {
        let st = lock(&stage);
        let mut regions: Vec<Region> = bootloader.into_iter().collect();
        regions.push(flashing::table_region());
        regions.push(flashing::slot_region(
            if st.slot == 0 { "ota_0" } else { "ota_1" },
            &st.running,
            "the running image",
        )?);
        regions
    };

    match target {
        Target::Virtual { model, .. } => {
            let (chip, master) = {
                let st = lock(&stage);
                let (master, slave) = serialport::TTYPort::pair().map_err(HilError::Pty)?;
                let mut board = st.board_with(sim::flash::SimFlash::new(st.seed));
                // A replay's boots are numbered on from the cut's, as in the simulator: the
                // core's jitter is seeded by the boot number.
                board.boots = first_boot - 1;
                let chip = sim::chip::spawn(
                    Box::new(slave),
                    board,
                    ChipOptions {
                        seed: st.seed,
                        model: *model,
                        chip_revision: st.chip_revision,
                    },
                )?;
                regions.push(flashing::config_region(st.conf.as_bytes())?);
                (chip, master)
            };
            regions.extend(base_erased_regions(&lock(&stage))?);
            if let Start::Recording(r) = &start {
                regions.extend(recording_regions(r));
            }
            // Power on straight into the ROM's download mode (GPIO9 held low), as a harness
            // with a BOOT line does: nothing on the flash runs before it is written.
            chip.power_on_into_download();
            chip.set_dns(lock(&stage).dns.clone());
            let flash_port = master.try_clone_native().map_err(HilError::Pty)?;
            // The chip asks before each boot; this loop answers with the stage (which stays
            // here: its servers must outlive the chip's last boot).
            let (ask, asked) =
                std::sync::mpsc::channel::<(u32, std::sync::mpsc::Sender<Vec<(u64, u64)>>)>();
            chip.before_boot(Box::new(move |boot| {
                let (reply, answer) = std::sync::mpsc::channel();
                if ask.send((boot, reply)).is_err() {
                    return Vec::new();
                }
                answer.recv().unwrap_or_default()
            }));
            let flashing_started = Instant::now();
            let mut flasher = flashing::connect(Link::Pty(flash_port))?;
            flashing::write(&mut flasher, &regions, quiet)?;
            drop(flasher);
            let flash_secs = flashing_started.elapsed().as_secs_f64();
            // The virtual board's power line is exact: cuts at an event, a byte, a time or
            // one flash operation land where the scenario says, as in the simulator.
            chip.arm(ChipFaults {
                triggers,
                wifi_down: Vec::new(),
                at_flash_op: flash_cuts.at_op,
                in_range: flash_cuts.in_range,
            });
            let console = Console::start(
                console::Source::Open(Box::new(master)),
                &folder.join("console.log"),
            )?;
            // Boots before this one (the blank board's, at power-on) are not the case's.
            let boots_before = chip.boots();
            chip.reset(false);
            let mut watch = Watch::new(extra_boots);
            let deadline = started + limits.virtual_case;
            let mut cuts = 0u32;
            // The flash as each cut left it, for `--record`: (the cut, the whole flash).
            let mut snapshots: Vec<(sim::chip::CutInfo, Vec<u8>)> = Vec::new();
            while !watch.done() && Instant::now() < deadline {
                while let Ok((boot, reply)) = asked.try_recv() {
                    // The chip numbers boots over its life; the stage, over the scenario's.
                    let of_case = boot.saturating_sub(boots_before) + first_boot - 1;
                    let _ = reply.send(lock(&stage).before_boot(of_case));
                }
                match console.lines.recv_timeout(Duration::from_millis(5)) {
                    Ok(line) => {
                        watch.line(&line);
                        if watch.wants_another_boot() {
                            // The scenario's extra boots: power off and on, as the
                            // simulator boots again after the application ran.
                            watch.restarted();
                            chip.power(false);
                            chip.power(true);
                        }
                    }
                    Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                        // An armed cut left the board dark: the power comes back, as in
                        // the simulator, where the next boot follows a cut at once.
                        if chip.state() == ChipState::Dark && !watch.bricked {
                            // The boot's last lines first, then the note that it was cut.
                            while let Ok(line) =
                                console.lines.recv_timeout(Duration::from_millis(50))
                            {
                                watch.line(&line);
                            }
                            // Dark because it bricked or got stuck, not because of a cut.
                            if watch.bricked {
                                break;
                            }
                            console.note(POWER_CUT_NOTE);
                            cuts += 1;
                            watch.cut();
                            if record.is_some()
                                && let Some(cut) = chip.last_cut()?
                            {
                                snapshots.push((cut, chip.flash()?));
                            }
                            chip.power(false);
                            chip.power(true);
                        }
                    }
                    Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
                }
                // The 17th boot's banner: 16 ran, the simulator's bound.
                if watch.boots > MAX_BOOTS {
                    break;
                }
            }
            let edges: Vec<sim::board::LedEdge> = chip
                .led_edges()
                .into_iter()
                .filter(|e| e.boot > boots_before)
                .map(|e| sim::board::LedEdge {
                    boot: e.boot - boots_before,
                    ..e
                })
                .collect();
            write_edges(folder, edges.iter().map(|e| (e.boot, e.ms, e.led, e.on)))?;
            chip.shutdown();
            drop(asked);
            drop(console);
            let probe_leds = sequences_by_boot(&edges);
            let stage = take_stage(stage)?;
            let base = stage.base_flash().contents().to_vec();
            let text = read_log(folder)?;
            let mut report = judge(s, expect, stage, &text, Some(probe_leds), &watch, folder).await;
            report.board = "virtual ESP32-C3 (pty)".into();
            report.seed = Some(s.seed);
            report.led_source = "probe (the glue's GPIO writes, over the side channel)".into();
            report.power = format!(
                "virtual power line, {cuts} cut(s); flashed in {flash_secs:.1} s over the pty"
            );
            if let Some(to) = record {
                let cut_boots: Vec<(sim::chip::CutInfo, Vec<u8>)> = snapshots
                    .into_iter()
                    .map(|(mut cut, flash)| {
                        cut.boot = cut.boot.saturating_sub(boots_before) + first_boot - 1;
                        (cut, flash)
                    })
                    .collect();
                let recorded = Recorded {
                    base: &base,
                    images: images.as_ref(),
                    cuts: cut_boots,
                };
                save_recordings(s, *model, broker, to, recorded, &mut report).await?;
            }
            report.seconds = started.elapsed().as_secs_f64();
            Ok(report)
        }
        Target::Board(setup) => {
            let plan = BoardPlan {
                regions,
                triggers,
                first_boot,
                images,
                started,
            };
            run_on_board(s, expect, start, setup, stage, plan, opts).await
        }
    }
}

/// otadata, otastate and otalog as the stage's base flash has them: erased, but for a board
/// that starts in `ota_1` (otadata then selects it, as after an earlier update).
fn base_erased_regions(stage: &Stage) -> Result<Vec<Region>, HilError> {
    let base = stage.base_flash();
    let mut regions = flashing::erased_regions()?;
    for r in &mut regions {
        let at = r.offset as usize;
        if let Some(bytes) = base.contents().get(at..at + r.data.len()) {
            r.data.copy_from_slice(bytes);
        }
    }
    Ok(regions)
}

/// What a run leaves for its recordings.
struct Recorded<'a> {
    /// The flash as the harness flashed it.
    base: &'a [u8],
    /// The user's images, when the run had them (a recording carries them).
    images: Option<&'a sim::scenario::UserImages>,
    /// Each cut, with the whole flash as it left it.
    cuts: Vec<(sim::chip::CutInfo, Vec<u8>)>,
}

/// Saves one recording per cut of a virtual run. Its `[expect]` is what the simulator's
/// own replay of that state does (an in-process virtual board, not the chip on the pty);
/// for the last cut, that replay must agree with what the chip did after it, boot for boot.
async fn save_recordings(
    s: &Scenario,
    model: Model,
    broker: &BrokerChoice,
    to: &RecordTo,
    recorded: Recorded<'_>,
    report: &mut CaseReport,
) -> Result<(), HilError> {
    let Recorded { base, images, cuts } = recorded;
    use sim::recording::{CutPoint, Recording, ScenarioSource};
    let rec_err = |name: &str, e: sim::recording::RecordingError| HilError::Recording {
        name: name.to_string(),
        why: e.to_string(),
    };
    let last = cuts.len();
    for (i, (cut, flash)) in cuts.into_iter().enumerate() {
        let name = format!("{}-virtual-{model}-boot{}-{}", s.name, cut.boot, cut.phase);
        let mut rec = Recording {
            name: name.clone(),
            description: format!(
                "{}; power cut on the virtual ESP32-C3 at boot {} ({}, {})",
                s.description, cut.boot, cut.phase, cut.what
            ),
            made_by: to.made_by.clone(),
            scenario: ScenarioSource {
                path: to.scenario_path.clone(),
                text: to.scenario_text.clone(),
            },
            model,
            seed: s.seed,
            cut: CutPoint {
                boot: cut.boot,
                what: cut.what,
                phase: cut.phase,
            },
            expect: Expect::default(),
            sectors: sim::recording::diff(base, &flash),
            images: images.cloned(),
        };
        // Its [expect] is what the simulator's own replay of the state does; a recovery
        // that bricks or never reaches the application fails the run.
        let (expect, broken, seen) = sim::recording::observe_recovery(&rec, broker)
            .await
            .map_err(|e| rec_err(&name, e))?;
        for f in broken {
            report
                .failures
                .push(format!("recording {name}: its replay: {f}"));
            report.passed = false;
        }
        rec.expect = expect;
        // The replay has no faults; the run kept the scenario's other faults after its last
        // cut, so only a run with nothing but power cuts must recover as the replay does.
        let only_cuts = s
            .faults
            .iter()
            .all(|f| matches!(f, sim::scenario::FaultSpec::PowerCut { .. }));
        if i + 1 == last && only_cuts {
            // What the chip did after the cut, as the simulator's replay must do it too.
            let after: Vec<&BootRow> = report.boots.iter().skip(rec.cut.boot as usize).collect();
            let chip_outcomes: Vec<String> = after.iter().map(|b| b.outcome.clone()).collect();
            let chip_versions: Vec<String> = after.iter().map(|b| b.version.clone()).collect();
            let chip_leds: Vec<String> = after.iter().map(|b| b.leds.clone()).collect();
            for (what, chip, sim) in [
                ("outcomes", chip_outcomes, seen.outcomes.clone()),
                ("leds", chip_leds, seen.leds.clone()),
                ("versions", chip_versions, seen.versions.clone()),
            ] {
                // The run may go on after the application ran (extra boots).
                if sim.len() > chip.len() || chip[..sim.len()] != sim[..] {
                    report.failures.push(format!(
                        "recording {name}: the simulator replays {what} {sim:?}, the virtual board did {chip:?} after the cut"
                    ));
                    report.passed = false;
                }
            }
        }
        let dir = to.dir.join(&name);
        rec.save(&dir).map_err(|e| rec_err(&name, e))?;
        eprintln!("recorded {} ({} sectors)", dir.display(), rec.sectors.len());
    }
    Ok(())
}

/// The recording's sectors as regions written after the base.
fn recording_regions(r: &sim::recording::Recording) -> Vec<Region> {
    r.sectors
        .iter()
        .map(|s| Region {
            name: format!("recorded sector 0x{:06x}", s.offset),
            offset: s.offset,
            data: s.bytes.clone(),
        })
        .collect()
}

fn lock(stage: &Arc<Mutex<Stage>>) -> std::sync::MutexGuard<'_, Stage> {
    // A panic in a hook leaves plain data behind: keep using it.
    stage.lock().unwrap_or_else(|e| e.into_inner())
}

fn take_stage(stage: Arc<Mutex<Stage>>) -> Result<Stage, HilError> {
    // Only this function's caller holds the stage by now (the chip asks for it over a
    // channel, the board loop borrows it).
    match Arc::try_unwrap(stage) {
        Ok(m) => Ok(m.into_inner().unwrap_or_else(|e| e.into_inner())),
        Err(_) => Err(HilError::Unsupported {
            scenario: "stage".into(),
            why: "the servers are still shared when the case ends".into(),
        }),
    }
}

/// The LED probe's edges, kept beside the console: `boot ms led on|off`.
fn write_edges(
    folder: &Path,
    edges: impl Iterator<Item = (u32, u64, firmware::led::Led, bool)>,
) -> Result<(), HilError> {
    let text: String = edges
        .map(|(boot, ms, led, on)| {
            format!(
                "{boot} {ms} {} {}\n",
                led.name(),
                if on { "on" } else { "off" }
            )
        })
        .collect();
    let path = folder.join("leds.txt");
    std::fs::write(&path, text).map_err(|source| HilError::Io {
        path: path.display().to_string(),
        source,
    })
}

fn read_log(folder: &Path) -> Result<String, HilError> {
    let path = folder.join("console.log");
    std::fs::read(&path)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .map_err(|source| HilError::Io {
            path: path.display().to_string(),
            source,
        })
}

/// Follows the console as it comes: boots, the application starting, bricks.
struct Watch {
    extra_boots: u32,
    /// Boots seen: a ROM banner of a boot from flash, or the core's first event (the yellow
    /// LED) when the banner was not seen (a USB console reopened too late for it).
    boots: u32,
    /// A banner came and no trace event since: the next yellow LED is that boot's.
    banner_pending: bool,
    apps: u32,
    /// The application runs and the harness has not restarted the board since.
    app_now: bool,
    bricked: bool,
    /// Boots (1-based, of this case) the harness cut.
    cut_boots: Vec<u32>,
    /// Trace events by name so far, for cuts a real board's backend times itself.
    counts: std::collections::HashMap<String, u32>,
    /// The last trace event (name and its count).
    last_event: Option<(String, u32)>,
    /// Bytes of the image the trace reported written.
    progress_bytes: u64,
}

impl Watch {
    fn new(extra_boots: u32) -> Watch {
        Watch {
            extra_boots,
            boots: 0,
            banner_pending: false,
            apps: 0,
            app_now: false,
            bricked: false,
            cut_boots: Vec::new(),
            counts: Default::default(),
            last_event: None,
            progress_bytes: 0,
        }
    }

    fn line(&mut self, line: &Line) {
        let text = line.text.trim_start();
        if text.starts_with("rst:") && !text.contains("DOWNLOAD") {
            self.boots += 1;
            self.banner_pending = true;
        } else if text.starts_with(APP_RUNNING) {
            self.apps += 1;
            self.app_now = true;
        } else if text.starts_with("# bricked") || text.starts_with("# stuck") {
            self.bricked = true;
        } else if let Some(Ok((_, event))) = Event::parse_line(text) {
            let yellow_on = matches!(
                event,
                Event::Led {
                    led: firmware::led::Led::Yellow,
                    on: true
                }
            );
            if yellow_on && !self.banner_pending {
                self.boots += 1;
            }
            self.banner_pending = false;
            let name = event.name().to_string();
            let n = self.counts.entry(name.clone()).or_insert(0);
            *n += 1;
            self.last_event = Some((name, *n));
            if let Event::Progress { written, .. } = event {
                self.progress_bytes = u64::from(written);
            }
        }
    }

    fn cut(&mut self) {
        self.cut_boots.push(self.boots);
    }

    /// The application runs, and the scenario wants more boots than have reached it.
    fn wants_another_boot(&self) -> bool {
        self.app_now && self.apps <= self.extra_boots
    }

    fn restarted(&mut self) {
        self.app_now = false;
    }

    fn done(&self) -> bool {
        self.bricked || self.apps > self.extra_boots
    }
}

/// LED sequences per boot from the virtual board's GPIO writes.
fn sequences_by_boot(edges: &[sim::board::LedEdge]) -> Vec<(u32, String)> {
    let mut boots: Vec<u32> = edges.iter().map(|e| e.boot).collect();
    boots.dedup();
    boots
        .into_iter()
        .map(|b| {
            let events: Vec<(u64, Event)> = edges
                .iter()
                .filter(|e| e.boot == b)
                .map(|e| {
                    (
                        e.ms,
                        Event::Led {
                            led: e.led,
                            on: e.on,
                        },
                    )
                })
                .collect();
            (
                b,
                firmware::trace::led_sequence(events.iter().map(|(ms, e)| (*ms, e))).to_string(),
            )
        })
        .collect()
}

/// Reads the console back, collects the MQTT log and judges.
#[allow(clippy::too_many_arguments)]
async fn judge(
    s: &Scenario,
    expect: &Expect,
    stage: Stage,
    console_text: &str,
    probe_leds: Option<Vec<(u32, String)>>,
    watch: &Watch,
    folder: &Path,
) -> CaseReport {
    let mut failures = Vec::new();
    let boots = match crate::read_console(console_text) {
        Ok(b) => b,
        Err(e) => {
            failures.push(format!("console: {e}"));
            Vec::new()
        }
    };
    let acked: Vec<u64> = boots
        .iter()
        .flat_map(|b| &b.events)
        .filter_map(|(_, e)| match e {
            Event::Published { seq } => Some(u64::from(*seq)),
            _ => None,
        })
        .collect();
    let log = stage.finish(&acked).await;
    let log_results: Vec<String> = log.iter().map(|(_, r, _)| r.clone()).collect();
    // A boot the harness cut shows no outcome.
    let rows: Vec<BootRow> = boots
        .iter()
        .map(|b| BootRow {
            version: if b.version.is_empty() {
                "?".into()
            } else {
                b.version.clone()
            },
            // A boot the harness cut is `cut`, whatever it printed before (as the simulator
            // reports it); one that ended without an outcome otherwise, `-`.
            outcome: if b.cut {
                "cut".into()
            } else {
                b.outcome.clone().unwrap_or_else(|| "-".into())
            },
            leds: b.leds.clone(),
            probe_leds: None,
            error: b.error.clone().unwrap_or_else(|| "-".into()),
        })
        .collect();
    let mut rows = rows;
    if let Some(probe) = &probe_leds {
        // The probe's boots are the board's boots, numbered over the chip's life.
        for (boot, seq) in probe {
            if let Some(row) = rows.get_mut((*boot as usize).saturating_sub(1)) {
                row.probe_leds = Some(seq.clone());
            }
        }
        for (i, row) in rows.iter_mut().enumerate() {
            let seen = row.probe_leds.clone().unwrap_or_default();
            // A cut can land between the core's decision (its trace line) and the GPIO write:
            // on a boot that was cut, the LEDs may have done only the start of what the trace
            // says.
            let cut = row.outcome == "cut";
            if seen == row.leds || (cut && row.leds.starts_with(&seen)) {
                continue;
            }
            failures.push(if seen.is_empty() {
                format!(
                    "boot {}: the LED probe saw nothing, the trace says `{}`",
                    i + 1,
                    row.leds
                )
            } else {
                format!(
                    "boot {}: the LEDs did `{seen}` but the trace says `{}`",
                    i + 1,
                    row.leds
                )
            });
        }
    }
    let observed = Observed {
        versions: rows.iter().map(|r| r.version.clone()).collect(),
        outcomes: rows.iter().map(|r| r.outcome.clone()).collect(),
        // The probe when there is one: what the LEDs did, not what the firmware says (but
        // for a boot cut before its LED writes, checked above against the trace).
        leds: rows
            .iter()
            .map(|r| match &r.probe_leds {
                Some(p) if r.outcome != "cut" => p.clone(),
                _ => r.leds.clone(),
            })
            .collect(),
        log: log_results.clone(),
        error_codes_seen: boots
            .iter()
            .flat_map(|b| &b.events)
            .filter_map(|(_, e)| match e {
                Event::Error { code, .. } | Event::Retry { reason: code, .. } => {
                    Some(code.name().to_string())
                }
                _ => None,
            })
            .collect(),
        event_names: boots
            .iter()
            .flat_map(|b| &b.events)
            .map(|(_, e)| e.name().to_string())
            .collect(),
        cut_kinds: None,
    };
    failures.extend(expect.check(&observed).iter().map(|m| m.to_string()));
    if watch.bricked {
        failures.push("invariant: the board bricked (see the console)".into());
    }
    if watch.apps == 0 {
        failures.push("invariant: the application never ran".into());
    }
    CaseReport {
        name: s.name.clone(),
        board: String::new(),
        passed: failures.is_empty(),
        failures,
        boots: rows,
        log: log_results,
        led_source: String::new(),
        power: String::new(),
        folder: folder.display().to_string(),
        seconds: 0.0,
        seed: None,
    }
}

/// What `run_case` prepared for a real board.
struct BoardPlan {
    /// Bootloader, partition table, running image.
    regions: Vec<Region>,
    /// The scenario's power cuts.
    triggers: sim::board::Triggers,
    /// The scenario's number of the first boot.
    first_boot: u32,
    /// The user's images, as the stage has them.
    images: Option<sim::scenario::UserImages>,
    /// When the case started.
    started: Instant,
}

/// The real board: flash over USB, reset into the firmware, follow the console, cut power
/// where the scenario says (as soon as the console shows the moment), restore it.
async fn run_on_board(
    s: &Scenario,
    expect: &Expect,
    start: Start<'_>,
    setup: &mut BoardSetup,
    stage: Arc<Mutex<Stage>>,
    plan: BoardPlan,
    opts: &RunOptions<'_>,
) -> Result<CaseReport, HilError> {
    let BoardPlan {
        mut regions,
        triggers,
        first_boot,
        images,
        started,
    } = plan;
    let RunOptions {
        broker,
        folder,
        limits,
        quiet,
        record,
    } = *opts;
    let dns = s
        .faults
        .iter()
        .any(|f| matches!(f, sim::scenario::FaultSpec::DnsDown { .. }));
    if triggers.op_after_event.is_some() || triggers.wifi_drop_at_byte.is_some() || dns {
        return Err(HilError::Unsupported {
            scenario: s.name.clone(),
            why: "cuts at the n-th flash operation after an event, WiFi drops mid-download and \
                  DNS failures (the board is given this host by address) need the virtual board \
                  or a recording"
                .into(),
        });
    }
    if lock(&stage).slot != 0 {
        return Err(HilError::Unsupported {
            scenario: s.name.clone(),
            why: "the board starts in ota_1; the harness flashes the firmware ELF into ota_0"
                .into(),
        });
    }
    {
        let st = lock(&stage);
        let conf = board_conf(&st, setup);
        // What the board would refuse is better refused before flashing it.
        firmware::config::Config::parse(conf.as_bytes()).map_err(|e| HilError::Unsupported {
            scenario: s.name.clone(),
            why: format!("the board's conf.json would not parse: {e}"),
        })?;
        regions.push(flashing::config_region(conf.as_bytes())?);
    }
    regions.extend(base_erased_regions(&lock(&stage))?);
    if let Start::Recording(r) = &start {
        regions.extend(recording_regions(r));
    }
    let mut flasher = flashing::connect(Link::Usb {
        path: setup.port.clone(),
    })?;
    flashing::write(&mut flasher, &regions, quiet)?;
    // One hard reset starts the firmware. The port stays open from here on, so the first
    // boot's banner is read (a closed tty drops it; the C3's USB console drops what nobody
    // reads).
    let mut connection = flasher.into_connection();
    connection.reset().map_err(flashing::FlashError::from)?;
    let mut port = connection.into_serial();
    let _ = serialport::SerialPort::set_timeout(&mut port, Duration::from_millis(100));
    let probe = match &setup.probe {
        Some(spec) => Some(ModemProbe::start(spec).map_err(|e| HilError::Unsupported {
            scenario: s.name.clone(),
            why: e.to_string(),
        })?),
        None => None,
    };
    let log = folder.join("console.log");
    let mut console = Console::start(
        console::Source::Device {
            path: setup.port.clone(),
            baud: 115_200,
            open: Some(Box::new(port)),
        },
        &log,
    )?;
    // The flash as each cut left it, for `--record`.
    let mut snapshots: Vec<(sim::chip::CutInfo, Vec<u8>)> = Vec::new();
    let base = lock(&stage).base_flash().contents().to_vec();
    let extra_boots = match start {
        Start::Fresh => s.extra_boots,
        Start::Recording(_) => 0,
    };
    let mut watch = Watch::new(extra_boots);
    let deadline = started + limits.board_case;
    let mut pending_events = triggers.at_events.clone();
    let mut at_byte = triggers.at_download_byte;
    let mut cuts = Vec::new();
    let mut seen_boots = 0;
    // `at_time_ms`: real milliseconds since the first boot showed on the console.
    let mut at_time = triggers.at_time_ms;
    let mut first_seen: Option<Instant> = None;
    let mut console_lost = false;
    while !watch.done() && Instant::now() < deadline && watch.boots <= MAX_BOOTS {
        let received = match console.lines.recv_timeout(Duration::from_millis(50)) {
            Ok(line) => Some(line),
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => None,
            // The reader gave up: the device did not come back.
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                console_lost = true;
                break;
            }
        };
        let time_is_up = at_time
            .zip(first_seen)
            .is_some_and(|(t, first)| first.elapsed() >= Duration::from_millis(t));
        let line = match received {
            Some(line) => line,
            None if time_is_up => Line {
                at_ms: 0,
                text: format!("{} ms after the first boot", at_time.unwrap_or_default()),
            },
            None => continue,
        };
        first_seen.get_or_insert_with(Instant::now);
        watch.line(&line);
        if watch.boots > seen_boots {
            seen_boots = watch.boots;
            // The board needs seconds to join WiFi: time enough to change the world.
            let outages = lock(&stage).before_boot(watch.boots + first_boot - 1);
            for (from, until) in outages {
                // No radio to switch off: the board's way to GitHub goes down instead.
                let proxy = lock(&stage).world.github_proxy.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_millis(from)).await;
                    proxy.set_mode(sim::proxy::ProxyMode::Down);
                    tokio::time::sleep(Duration::from_millis(until.saturating_sub(from))).await;
                    proxy.set_mode(sim::proxy::ProxyMode::Pass);
                });
            }
        }
        let hit_event = watch
            .last_event
            .as_ref()
            .and_then(|(name, n)| pending_events.iter().position(|(e, k)| e == name && k == n));
        if watch.wants_another_boot() {
            watch.restarted();
            setup.power.cut()?;
            tokio::time::sleep(Duration::from_millis(500)).await;
            setup.power.restore()?;
            continue;
        }
        let hit_byte = at_byte.is_some_and(|b| watch.progress_bytes >= b);
        if hit_event.is_some() || hit_byte || time_is_up {
            if let Some(i) = hit_event {
                pending_events.remove(i);
            }
            if hit_byte {
                at_byte = None;
            }
            if time_is_up {
                at_time = None;
            }
            let phase = phase_after(watch.last_event.as_ref().map(|(n, _)| n.as_str()));
            watch.last_event = None;
            setup.power.cut()?;
            console.note(POWER_CUT_NOTE);
            watch.cut();
            cuts.push(line.text.clone());
            if record.is_some() {
                // Still in reset: read the flash back through the ROM before the firmware
                // runs again, then one hard reset lets it recover.
                drop(console);
                let (image, port) = read_board_back(setup, &lock(&stage), &base)?;
                // espflash's resets drove EN and BOOT meanwhile; the board may also have
                // re-enumerated: the backend opens its lines afresh.
                setup.power.released();
                snapshots.push((
                    sim::chip::CutInfo {
                        boot: watch.boots + first_boot - 1,
                        what: format!("{} after `{}`", setup.power.name(), line.text.trim()),
                        phase: phase.to_string(),
                    },
                    image,
                ));
                console = Console::start(
                    console::Source::Device {
                        path: setup.port.clone(),
                        baud: 115_200,
                        open: Some(Box::new(port)),
                    },
                    &log,
                )?;
            } else {
                // Long enough for the rails to drop and the USB device to go away.
                tokio::time::sleep(Duration::from_millis(500)).await;
                setup.power.restore()?;
            }
        }
    }
    let edges = probe.as_ref().map(|p| p.edges());
    drop(console);
    drop(probe);
    let probe_leds = edges.map(|e| {
        probe::sequences(&e)
            .into_iter()
            .enumerate()
            .map(|(i, mut s)| {
                // The line drops with the power at a cut: not the firmware's doing.
                if watch.cut_boots.contains(&(i as u32 + 1)) && s.ends_with('y') {
                    s.pop();
                }
                (i as u32 + 1, s)
            })
            .collect()
    });
    let stage = take_stage(stage)?;
    let text = read_log(folder)?;
    let has_probe = probe_leds.is_some();
    let mut report = judge(s, expect, stage, &text, probe_leds, &watch, folder).await;
    if console_lost {
        report.failures.push(format!(
            "console lost: {} did not come back (see console.log)",
            setup.port
        ));
        report.passed = false;
    }
    report.board = format!("ESP32-C3 on {}", setup.port);
    report.led_source = if has_probe {
        "probe (modem lines)".into()
    } else {
        "trace (no LED probe)".into()
    };
    report.power = format!("{}, {} cut(s)", setup.power.name(), cuts.len());
    if let Some(to) = record {
        let recorded = Recorded {
            base: &base,
            images: images.as_ref(),
            cuts: snapshots,
        };
        save_recordings(s, Model::Espflash, broker, to, recorded, &mut report).await?;
    }
    report.seconds = started.elapsed().as_secs_f64();
    Ok(report)
}

/// The update's phase a cut right after this trace event hits (the simulator's names).
fn phase_after(event: Option<&str>) -> &'static str {
    match event {
        Some("progress" | "resume" | "response" | "request") => "download",
        Some("verified") => "verify",
        Some("switch") => "otadata",
        Some("trial" | "trial_returned" | "boot") => "trial",
        Some("confirmed") => "confirm",
        Some("outcome" | "published" | "log_kept") => "log",
        _ => "idle",
    }
}

/// Reads a board held in reset back through its ROM: the partitions the core writes, by MD5
/// against what was flashed and the release images in either slot, reading what matches
/// none. Returns the whole flash as the cut left it and the port, after a hard reset.
fn read_board_back(
    setup: &BoardSetup,
    stage: &Stage,
    base: &[u8],
) -> Result<(Vec<u8>, espflash::connection::Port), HilError> {
    let table = firmware::format::partition::default_table();
    let mut candidates = Vec::new();
    for (_, bytes) in &stage.user_releases {
        for slot in ["ota_0", "ota_1"] {
            if let Some(p) = table.by_label(slot) {
                let at = p.offset as usize;
                let mut c = base.to_vec();
                if let Some(dst) = c.get_mut(at..at + bytes.len()) {
                    dst.copy_from_slice(bytes);
                    candidates.push(c);
                }
            }
        }
    }
    let ranges: Vec<(u32, u32)> = ["otadata", "ota_0", "ota_1", "otastate", "otalog"]
        .iter()
        .filter_map(|l| table.by_label(l).map(|p| (p.offset, p.end())))
        .collect();
    // espflash's reset into the loader releases EN with GPIO9 low: the ROM, not the firmware.
    let mut flasher = flashing::connect_rom(Link::Usb {
        path: setup.port.clone(),
    })?;
    let mut image = base.to_vec();
    flashing::read_back(&mut flasher, &mut image, &candidates, &ranges)?;
    let mut connection = flasher.into_connection();
    connection.reset().map_err(flashing::FlashError::from)?;
    let mut port = connection.into_serial();
    let _ = serialport::SerialPort::set_timeout(&mut port, Duration::from_millis(100));
    Ok((image, port))
}

/// conf.json for a real board: the stage's (this host's mock GitHub and broker, on the
/// address the board reaches), with the user's WiFi and LED pins.
fn board_conf(stage: &Stage, setup: &BoardSetup) -> String {
    let mut conf: serde_json::Value = match serde_json::from_str(&stage.conf) {
        Ok(v) => v,
        // The stage writes its conf with serde-compatible JSON; keep it as it is otherwise.
        Err(_) => return stage.conf.clone(),
    };
    for key in ["wifi", "leds"] {
        if let Some(v) = setup.user_conf.get(key) {
            conf[key] = v.clone();
        }
    }
    serde_json::to_string_pretty(&conf).unwrap_or_else(|_| stage.conf.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed(watch: &mut Watch, lines: &[&str]) {
        for (i, text) in lines.iter().enumerate() {
            watch.line(&Line {
                at_ms: i as u64,
                text: text.to_string(),
            });
        }
    }

    #[test]
    fn boots_are_counted_by_banner_or_by_the_first_yellow_led_when_the_banner_was_missed() {
        let mut w = Watch::new(0);
        feed(
            &mut w,
            &[
                // The first boot's banner was lost (the console opened late).
                "OTA 0 led led=yellow on=true",
                "OTA 0 boot slot=0 version=1.0 state=valid",
                "OTA 10 reboot",
                "ESP-ROM:esp32c3-api1-20210207",
                "rst:0xc (RTC_SW_CPU_RST),boot:0xc (SPI_FAST_FLASH_BOOT)",
                "OTA 0 led led=yellow on=true",
                "OTA 0 boot slot=1 version=1.1 state=new",
                "# app: running",
            ],
        );
        assert_eq!((w.boots, w.apps), (2, 1));
        assert!(w.done());
        assert_eq!(w.counts.get("boot"), Some(&2));
    }

    #[test]
    fn extra_boots_are_asked_for_once_per_application_start() {
        let mut w = Watch::new(1);
        feed(
            &mut w,
            &[
                "rst:0x1 (POWERON)",
                "OTA 0 led led=yellow on=true",
                "# app: running 1.0",
            ],
        );
        assert!(w.wants_another_boot() && !w.done());
        w.restarted();
        assert!(!w.wants_another_boot());
        feed(
            &mut w,
            &[
                "rst:0x1 (POWERON)",
                "OTA 0 led led=yellow on=true",
                "# app: running 1.0",
            ],
        );
        assert!(w.done() && !w.wants_another_boot());
        // A download-mode banner is no boot.
        feed(
            &mut w,
            &["rst:0x1 (POWERON),boot:0x4 (DOWNLOAD(USB/UART0/1))"],
        );
        assert_eq!(w.boots, 2);
    }
}
