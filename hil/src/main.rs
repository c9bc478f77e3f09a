//! `hil`: the hardware-in-the-loop harness. `hil --help`.

use clap::{Parser, Subcommand};
use hil::report::{self, CaseReport};
use hil::run::{self, BoardSetup, Limits, Start, Target};
use sim::bootloader::Model;
use sim::scenario::Scenario;
use sim::world::BrokerChoice;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// The scenarios `hil run` takes when none is named: the ones whose faults a board on a
/// desk can be given from outside (power cuts at a moment the console shows, the network
/// and the servers); cuts at one exact flash operation are replayed from recordings.
const HIL_SET: &[&str] = &[
    "01-no-update",
    "02-update",
    "03-power-cut-mid-download",
    "06-power-cut-first-boot",
    "07-network-down-at-boot",
    "08-connection-reset-mid-download",
    "09-broker-down",
    "20-rollback",
    "21-server-errors",
];

#[derive(Parser)]
#[command(
    name = "hil",
    about = "Hardware in the loop: flash an ESP32-C3 (or the virtual one), watch its console, LEDs and MQTT log, cut its power, replay recorded power cuts"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Args, Clone)]
struct BoardArgs {
    /// The board's serial port (`/dev/ttyACM0` for the C3's USB-Serial-JTAG, `/dev/ttyUSB0`
    /// for a USB-UART bridge).
    #[arg(long, conflicts_with = "virtual_board")]
    port: Option<String>,
    /// The simulator's virtual ESP32-C3 behind a pty instead of a board.
    #[arg(long = "virtual")]
    virtual_board: bool,
    /// Virtual board: its bootloader build (espflash, idf-rollback).
    #[arg(long, default_value = "espflash", value_parser = parse_model)]
    bootloader: Model,
    /// Power backend: `reset` (EN through the port's RTS), `reset:/dev/ttyUSB1`,
    /// `uhubctl:LOCATION:PORT`, `cmd:OFF-COMMAND;ON-COMMAND`.
    #[arg(long, default_value = "reset")]
    power: String,
    /// LED probe: a second USB-UART adapter, `PORT[:yellow=cts,green=dsr][:active-high]`.
    #[arg(long)]
    probe: Option<String>,
    /// Firmware ELF of the old version (`FIRMWARE_VERSION=1.0 just firmware`).
    #[arg(
        long,
        default_value = "target/riscv32imc-unknown-none-elf/release/firmware"
    )]
    elf: PathBuf,
    /// A release image: `TAG=PATH` (`FIRMWARE_VERSION=1.1 just firmware` writes
    /// target/firmware-esp32c3-1.1.bin). Repeat for several.
    #[arg(long = "image", value_parser = parse_image)]
    images: Vec<(String, PathBuf)>,
    /// The user's conf.json: its WiFi goes to the board.
    #[arg(long, default_value = "conf.json")]
    conf: PathBuf,
    /// This host's address on the board's network (default: the address the host uses
    /// to reach the internet).
    #[arg(long)]
    host_ip: Option<std::net::IpAddr>,
    /// The partition table.
    #[arg(long, default_value = "firmware/partitions.csv")]
    partitions: PathBuf,
    /// One JSON object per case instead of the table.
    #[arg(long)]
    json: bool,
    /// Also write JUnit XML here.
    #[arg(long)]
    junit: Option<PathBuf>,
    /// Where each case's raw console goes.
    #[arg(long, default_value = "target/hil")]
    out: PathBuf,
    /// No progress bars.
    #[arg(long)]
    quiet: bool,
}

#[derive(Subcommand)]
enum Command {
    /// Run scenarios on a board (when none is named: the HIL set of fixtures/scenarios on a
    /// board, every scenario on the virtual one).
    Run {
        #[command(flatten)]
        board: BoardArgs,
        /// Save the flash as every power cut left it, one recording per cut, in this folder
        /// (virtual board): `sim replay` and `hil replay` replay them.
        #[arg(long)]
        record: Option<PathBuf>,
        /// Scenario files.
        scenarios: Vec<PathBuf>,
    },
    /// `hil run --record DIR`: run scenarios with power cuts and save each cut's flash state
    /// as a recording (virtual board, or a board with `--power reset`).
    Record {
        #[command(flatten)]
        board: BoardArgs,
        /// Where the recordings go (one folder per cut).
        #[arg(long)]
        out_dir: PathBuf,
        /// Scenario files.
        #[arg(required = true)]
        scenarios: Vec<PathBuf>,
    },
    /// Write recorded flash states to a board, boot it, and check it recovers as the
    /// simulator says.
    Replay {
        #[command(flatten)]
        board: BoardArgs,
        /// Recording folders (fixtures/recordings/NAME), or folders of them (fixtures/recordings).
        recordings: Vec<PathBuf>,
    },
    /// Summarise a captured serial console (boots, versions, outcomes, LEDs).
    Console {
        /// The capture.
        file: PathBuf,
    },
}

fn parse_model(s: &str) -> Result<Model, String> {
    Model::parse(s).ok_or_else(|| format!("unknown bootloader `{s}` (espflash, idf-rollback)"))
}

fn parse_image(s: &str) -> Result<(String, PathBuf), String> {
    let (tag, path) = s.split_once('=').ok_or_else(|| {
        format!("`{s}`: expected TAG=PATH, e.g. 1.1=target/firmware-esp32c3-1.1.bin")
    })?;
    Ok((tag.to_string(), PathBuf::from(path)))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Console { file } => console(&file),
        Command::Record {
            board,
            out_dir,
            scenarios,
        } => run_scenarios(board, scenarios, Some(out_dir)),
        Command::Run {
            board,
            scenarios,
            record,
        } => run_scenarios(board, scenarios, record),
        Command::Replay { board, recordings } => {
            let Some(mut target) = target(&board, true) else {
                return no_board();
            };
            if recordings.is_empty() {
                eprintln!("hil replay: name recording folders (fixtures/recordings/*)");
                return ExitCode::from(2);
            }
            let mut cases = Vec::new();
            for dir in &recording_dirs(&recordings) {
                match sim::recording::Recording::load(dir) {
                    Ok(r) => match r.scenario() {
                        Ok(s) => cases.push(Case {
                            scenario: s,
                            recording: Some(r),
                            record_to: None,
                        }),
                        Err(e) => {
                            eprintln!("{}: {e}", dir.display());
                            return ExitCode::from(2);
                        }
                    },
                    Err(e) => {
                        eprintln!("{}: {e}", dir.display());
                        return ExitCode::from(2);
                    }
                }
            }
            run_all(&board, &mut target, cases, "hil replay")
        }
    }
}

/// `hil run` and `hil record`: scenarios on a board, each cut saved when `record` is given.
fn run_scenarios(board: BoardArgs, scenarios: Vec<PathBuf>, record: Option<PathBuf>) -> ExitCode {
    let Some(mut target) = target(&board, false) else {
        return no_board();
    };
    let list = match scenario_list(&scenarios, board.virtual_board, !board.images.is_empty()) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    let made_by = std::iter::once("hil".to_string())
        .chain(std::env::args().skip(1))
        .collect::<Vec<_>>()
        .join(" ");
    let cases: Vec<Case> = list
        .into_iter()
        .map(|(path, text, s)| Case {
            scenario: s,
            recording: None,
            record_to: record.as_ref().map(|dir| run::RecordTo {
                dir: dir.clone(),
                scenario_path: path.display().to_string(),
                scenario_text: text,
                made_by: made_by.clone(),
            }),
        })
        .collect();
    run_all(&board, &mut target, cases, "hil run")
}

/// With no board: how to connect one, and the serial ports this machine has.
fn no_board() -> ExitCode {
    eprintln!("hil: no board given.");
    eprintln!();
    eprintln!(
        "Connect an ESP32-C3 board by USB and run `just hil PORT`, e.g. `just hil /dev/ttyACM0`"
    );
    eprintln!(
        "(the C3's own USB port shows up as /dev/ttyACM*, a USB-UART bridge as /dev/ttyUSB*)."
    );
    eprintln!(
        "Wiring, LED pins, the optional LED probe and power backends: README.md, 'Hardware in the loop'."
    );
    eprintln!(
        "Without hardware, `just hil-virtual` runs the same harness against a virtual ESP32-C3."
    );
    let ports = serialport::available_ports().unwrap_or_default();
    if ports.is_empty() {
        eprintln!();
        eprintln!("No serial port found on this machine.");
    } else {
        eprintln!();
        eprintln!("Serial ports found:");
        for p in ports {
            let what = match p.port_type {
                serialport::SerialPortType::UsbPort(u) => format!(
                    "USB {:04x}:{:04x} {}",
                    u.vid,
                    u.pid,
                    u.product.unwrap_or_default()
                ),
                other => format!("{other:?}"),
            };
            eprintln!("  {}  {what}", p.port_name);
        }
    }
    ExitCode::from(2)
}

fn target(args: &BoardArgs, replay: bool) -> Option<Target> {
    if args.virtual_board {
        // With --image, the user's firmware on the virtual board: the same regions and
        // images a real board gets.
        let firmware = if args.images.is_empty() {
            None
        } else {
            match firmware(args, true) {
                Ok(f) => Some(f),
                Err(e) => {
                    eprintln!("hil: {e}");
                    std::process::exit(2);
                }
            }
        };
        return Some(Target::Virtual {
            model: args.bootloader,
            firmware,
        });
    }
    let port = args.port.clone()?;
    match board_setup(args, &port, !replay) {
        Ok(setup) => Some(Target::Board(Box::new(setup))),
        Err(e) => {
            eprintln!("hil: {e}");
            std::process::exit(2);
        }
    }
}

/// The user's firmware: the old version's ELF and the release images (a replay takes its
/// images from the recording: there, the ELF gives only the bootloader).
fn firmware(args: &BoardArgs, need_images: bool) -> Result<run::Firmware, String> {
    let mut images = Vec::new();
    for (tag, path) in &args.images {
        let bytes = std::fs::read(path).map_err(|e| format!("image {}: {e}", path.display()))?;
        images.push((tag.clone(), bytes));
    }
    if images.is_empty() && need_images {
        return Err(
            "name the release images: --image 1.1=target/firmware-esp32c3-1.1.bin \
             (`just hil PORT` builds and passes them)"
                .into(),
        );
    }
    if !args.elf.exists() {
        return Err(format!(
            "firmware ELF {} not found: build the old version first (`FIRMWARE_VERSION=1.0 just firmware`)",
            args.elf.display()
        ));
    }
    Ok(run::Firmware {
        elf: args.elf.clone(),
        partitions: args.partitions.clone(),
        images,
    })
}

fn board_setup(args: &BoardArgs, port: &str, need_images: bool) -> Result<BoardSetup, String> {
    let power = hil::power::parse(&args.power, port).map_err(|e| e.to_string())?;
    let probe = args
        .probe
        .as_deref()
        .map(hil::probe::ProbeSpec::parse)
        .transpose()
        .map_err(|e| e.to_string())?;
    let firmware = firmware(args, need_images)?;
    let conf = std::fs::read_to_string(&args.conf).map_err(|e| {
        format!(
            "{}: {e} (the board's WiFi comes from it)",
            args.conf.display()
        )
    })?;
    let v: serde_json::Value =
        serde_json::from_str(&conf).map_err(|e| format!("{}: {e}", args.conf.display()))?;
    if v["wifi"]["ssid"].as_str().is_none_or(str::is_empty) {
        return Err(format!(
            "{}: no wifi.ssid (the board joins that network to reach this host)",
            args.conf.display()
        ));
    }
    let host_ip = match args.host_ip {
        Some(ip) => ip,
        None => default_host_ip()
            .ok_or("cannot tell this host's LAN address; give it with --host-ip".to_string())?,
    };
    Ok(BoardSetup {
        port: port.to_string(),
        firmware,
        power,
        probe,
        user_conf: v,
        host_ip,
    })
}

/// The address this host would use to reach a remote host: the LAN address a board on the
/// same network reaches it at (no packet is sent: connecting a UDP socket only picks a route).
fn default_host_ip() -> Option<std::net::IpAddr> {
    let s = std::net::UdpSocket::bind("0.0.0.0:0").ok()?;
    s.connect("192.0.2.1:9").ok()?;
    s.local_addr().ok().map(|a| a.ip())
}

/// Recording folders: each named folder that holds a `recording.toml`, or else the ones
/// directly inside it (`fixtures/recordings`), in name order.
fn recording_dirs(named: &[PathBuf]) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for dir in named {
        if dir.join(sim::recording::TOML_FILE).exists() {
            out.push(dir.clone());
            continue;
        }
        let mut inside: Vec<PathBuf> = std::fs::read_dir(dir)
            .map(|entries| {
                entries
                    .filter_map(|e| e.ok().map(|e| e.path()))
                    .filter(|p| p.join(sim::recording::TOML_FILE).exists())
                    .collect()
            })
            .unwrap_or_default();
        if inside.is_empty() {
            // Let loading say what is wrong with it.
            out.push(dir.clone());
        }
        inside.sort();
        out.extend(inside);
    }
    out
}

/// One case of a run: a scenario from a fresh flash, or a recording's recovery.
struct Case {
    scenario: Scenario,
    recording: Option<sim::recording::Recording>,
    record_to: Option<run::RecordTo>,
}

/// The named scenarios (path, text, parsed); else the HIL set, but for the virtual board
/// with the simulator's images: every scenario (its power line is exact, and the simulator
/// builds the odd images some scenarios need: oversized, for another chip revision …).
fn scenario_list(
    named: &[PathBuf],
    virtual_board: bool,
    with_firmware: bool,
) -> Result<Vec<(PathBuf, String, Scenario)>, String> {
    let paths: Vec<PathBuf> = if !named.is_empty() {
        named.to_vec()
    } else if virtual_board && !with_firmware {
        let mut all: Vec<PathBuf> = std::fs::read_dir("fixtures/scenarios")
            .map_err(|e| format!("fixtures/scenarios: {e} (run from the repository's root)"))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "toml"))
            .collect();
        all.sort();
        all
    } else {
        HIL_SET
            .iter()
            .map(|n| Path::new("fixtures/scenarios").join(format!("{n}.toml")))
            .collect()
    };
    paths
        .into_iter()
        .map(|p| {
            let text = std::fs::read_to_string(&p).map_err(|e| format!("{}: {e}", p.display()))?;
            let s = Scenario::load(&p).map_err(|e| e.to_string())?;
            Ok((p, text, s))
        })
        .collect()
}

fn run_all(args: &BoardArgs, target: &mut Target, cases: Vec<Case>, suite: &str) -> ExitCode {
    // The case loops block a worker while they read the console: the servers need others,
    // whatever the machine's core count.
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("hil: {e}");
            return ExitCode::FAILURE;
        }
    };
    let limits = Limits::default();
    let run_id = format!(
        "{}-{}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        std::process::id()
    );
    let mut reports: Vec<CaseReport> = Vec::new();
    let mut broken = false;
    for case in &cases {
        let (s, recording) = (&case.scenario, &case.recording);
        let name = recording
            .as_ref()
            .map_or(s.name.clone(), |r| r.name.clone());
        let folder = args.out.join(&run_id).join(&name);
        let model = match target {
            Target::Virtual { model, .. } => *model,
            Target::Board(_) => Model::Espflash,
        };
        let expect = match recording {
            Some(r) => r.expect.clone(),
            None => s.expect_for(model),
        };
        let start = match recording {
            Some(r) => Start::Recording(r),
            None => Start::Fresh,
        };
        if !args.quiet && !args.json {
            eprintln!("== {name}");
        }
        let opts = run::RunOptions {
            broker: &BrokerChoice::Embedded,
            folder: &folder,
            limits: &limits,
            quiet: args.quiet || args.json,
            record: case.record_to.as_ref(),
        };
        let result = runtime.block_on(run::run_case(s, &expect, start, target, &opts));
        match result {
            Ok(mut r) => {
                r.name = name;
                reports.push(r);
            }
            Err(e) => {
                broken = true;
                reports.push(CaseReport {
                    name,
                    board: "-".into(),
                    passed: false,
                    failures: vec![format!("could not run: {e}")],
                    folder: folder.display().to_string(),
                    ..CaseReport::default()
                });
            }
        }
    }
    if args.json {
        print!("{}", report::json(&reports));
    } else {
        print!("{}", report::table(&reports));
    }
    if let Some(path) = &args.junit {
        if let Some(parent) = path.parent() {
            let _ = std::fs::create_dir_all(parent);
        }
        if let Err(e) = std::fs::write(path, report::junit(suite, &reports)) {
            eprintln!("{}: {e}", path.display());
            return ExitCode::FAILURE;
        }
    }
    if broken || reports.iter().any(|r| !r.passed) {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

fn console(path: &Path) -> ExitCode {
    let text = match std::fs::read(path) {
        Ok(t) => String::from_utf8_lossy(&t).into_owned(),
        Err(e) => {
            eprintln!("{}: {e}", path.display());
            return ExitCode::from(2);
        }
    };
    match hil::read_console(&text) {
        Ok(boots) => {
            println!("boot  slot  version    outcome        error                LEDs");
            for (i, b) in boots.iter().enumerate() {
                println!(
                    "{:<5} {:<5} {:<10} {:<14} {:<20} {}",
                    i + 1,
                    b.slot.map_or("?".into(), |s| s.to_string()),
                    b.version,
                    b.outcome.as_deref().unwrap_or("-"),
                    b.error.as_deref().unwrap_or("-"),
                    b.leds
                );
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{}: {e}", path.display());
            ExitCode::FAILURE
        }
    }
}
