//! `sim`: runs the OTA core on virtual boards against a mock GitHub and an
//! MQTT broker, with power cuts and network faults.

use clap::{Parser, Subcommand};
use sim::bootloader::Model;
use sim::broker::BrokerAddr;
use sim::scenario::{self, Report, Scenario};
use sim::sweep::{self, SweepOptions, SweepReport};
use sim::world::{BrokerChoice, World};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

#[derive(Parser)]
#[command(name = "sim", about = "Host simulator for the ESP32 OTA updater")]
struct Cli {
    /// Use this MQTT broker (mqtt://host:port) instead of the embedded rumqttd.
    #[arg(long, global = true)]
    broker: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run scenarios (all of fixtures/scenarios when none is named).
    Run {
        /// Scenario files.
        scenarios: Vec<PathBuf>,
        /// Folder of scenarios when none is named.
        #[arg(long, default_value = "fixtures/scenarios")]
        dir: PathBuf,
        /// Print one JSON object per scenario instead of the table.
        #[arg(long)]
        json: bool,
        /// Print each scenario's serial console.
        #[arg(long)]
        trace: bool,
        /// Only behind this bootloader (espflash, idf-rollback); default: every model the
        /// scenario allows.
        #[arg(long, value_parser = parse_model)]
        bootloader: Option<Model>,
        /// Save a recording of every power cut (the flash as it left it and the recovery a
        /// replay shows) in this folder, one sub-folder each.
        #[arg(long)]
        record: Option<PathBuf>,
        /// Your own firmware image for version TAG (TAG=PATH, repeatable), e.g.
        /// 1.1=target/firmware-esp32c3-1.1.bin: the one whose tag is the scenario's
        /// `board.version` runs in the board's slot, the others are the release assets of
        /// their tags. Recordings carry them.
        #[arg(long = "image", value_parser = parse_release)]
        images: Vec<(String, PathBuf)>,
    },
    /// Replay recorded power cuts (recording folders, or folders of them) and check that the
    /// board recovers as recorded.
    Replay {
        /// Recording folders, or folders holding recording folders.
        #[arg(required = true)]
        recordings: Vec<PathBuf>,
        /// Print one JSON object per recording instead of the table.
        #[arg(long)]
        json: bool,
        /// Print each replay's serial console.
        #[arg(long)]
        trace: bool,
    },
    /// Cut power at every flash operation of a workload, in every torn shape, to a depth
    /// (or at random points).
    Sweep(SweepArgs),
    /// One board through N boots with a seeded mix of releases, power cuts, WiFi and broker
    /// outages, bad releases and rate limits: prints the erase count of every sector touched,
    /// the log records lost and duplicated, and the invariant violations.
    Soak {
        /// Boots (a few calm ones that drain the activity log follow).
        #[arg(long, default_value_t = 1000)]
        boots: u32,
        /// Seed of what happens at each boot (and of the board's jitter and torn operations).
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Size of each release image: bytes, or with KiB / MiB.
        #[arg(long, default_value = "64KiB", value_parser = parse_size)]
        image_size: usize,
        /// The board's bootloader: espflash or idf-rollback.
        #[arg(long, default_value = "espflash", value_parser = parse_model)]
        bootloader: Model,
    },
    /// Every scenario behind every bootloader, then sweeps of a small image (every workload,
    /// every torn shape; random multi-cut runs; depth 2 on a 16 KiB image): what `just sim` runs.
    All {
        /// Folder of scenarios.
        #[arg(long, default_value = "fixtures/scenarios")]
        dir: PathBuf,
        /// Image size of the sweep.
        #[arg(long, default_value = "64KiB", value_parser = parse_size)]
        image_size: usize,
    },
    /// Run the mock GitHub and the embedded MQTT broker until Ctrl-C.
    Serve {
        /// Address a board reaches the mock GitHub on (for a real board on WiFi, this host's LAN
        /// address, e.g. 192.168.1.10:0); port 0 picks a free one. The broker listens on the
        /// same IP.
        #[arg(long, default_value = "127.0.0.1:0")]
        addr: SocketAddr,
        /// Shape of the signed URLs downloads redirect to: `release-assets` (GitHub's current
        /// one, ~1 KB) or `objects` (the older S3 one).
        #[arg(long, default_value = "release-assets")]
        asset_url: sim::github::AssetUrl,
        /// Serve this image file as release TAG's `firmware.bin` (TAG=PATH, repeatable; the
        /// last one given is the latest release). Default: a built 256 KiB image of 1.1.
        #[arg(long = "release", value_parser = parse_release)]
        releases: Vec<(String, PathBuf)>,
    },
    /// What a board would do with a repository's latest release, against the real server:
    /// one virtual ESP32-C3 boot (the core, simulated flash, reqwest + rustls), then the
    /// bootloader model starts the result. Exit 0: installs or up to date; 1: a board would
    /// fail; 2: the probe could not run. Without the global --broker the board has no MQTT
    /// broker (the log record stays on its flash).
    Probe {
        /// Repository, owner/name.
        #[arg(long)]
        repo: String,
        /// Release asset name.
        #[arg(long)]
        asset: String,
        /// API base URL (GitHub Enterprise: https://HOST/api/v3).
        #[arg(long, default_value = "https://api.github.com")]
        api_base: String,
        /// Name of the environment variable holding a GitHub token (never printed).
        #[arg(long)]
        token_env: Option<String>,
        /// Version the board runs.
        #[arg(long, default_value = "1.0")]
        from: String,
        /// Retries (network, 5xx, rate limit) before the probe stops; a board would go on.
        #[arg(long, default_value_t = 3)]
        max_retries: u32,
        /// Print one JSON object instead of the summary.
        #[arg(long)]
        json: bool,
        /// Print the board's serial console after the summary.
        #[arg(long)]
        trace: bool,
        /// Seed of the core's retry jitter.
        #[arg(long, default_value_t = 1)]
        seed: u64,
    },
    /// Write a release image (a real ESP32-C3 app image) with this version.
    Image {
        /// Version in esp_app_desc_t.
        #[arg(long)]
        version: String,
        /// Size: bytes, or with KiB / MiB.
        #[arg(long, default_value = "64KiB", value_parser = parse_size)]
        size: usize,
        /// Output file.
        #[arg(short, long)]
        output: PathBuf,
    },
}

// The options of `sim sweep` (its help text is the doc comment of `Command::Sweep`).
#[derive(clap::Args)]
struct SweepArgs {
    /// Release image size: bytes, or with KiB / MiB.
    #[arg(long, default_value = "256KiB", value_parser = parse_size)]
    image_size: usize,
    /// Random runs with one to three cuts each instead of the exhaustive sweep.
    #[arg(long)]
    random: Option<u32>,
    /// Seed (of the random runs, or of how cuts tear operations).
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Runs in flight at once.
    #[arg(long, default_value_t = 4)]
    jobs: usize,
    /// Workloads: update, resume, bad-release, rollback, log-wrap (comma-separated), or all.
    #[arg(long, default_value = "update", value_parser = parse_workloads)]
    workload: ::std::vec::Vec<sim::sweep::workload::Kind>,
    /// Torn shapes: erase-early, erase-late, erase-half, erase-almost, program-bits,
    /// program-prefix, program-landed, otadata-state (comma-separated), or all.
    #[arg(long, default_value = "all", value_parser = parse_torn)]
    torn: ::std::vec::Vec<sim::torn::Torn>,
    /// Cuts per path: 1; 2 cuts again at every operation of each recovery; 3 adds one
    /// random cut in each recovery of those.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=3))]
    depth: u32,
    /// Run only this path of cuts, e.g. op37:erase-early/op12:program-prefix (what a
    /// violation's reproduce line gives; one workload).
    #[arg(long, value_parser = parse_cut_path)]
    cut: Option<::std::vec::Vec<(u64, sim::torn::Torn)>>,
    /// Write a JUnit XML report here.
    #[arg(long)]
    junit: Option<PathBuf>,
    /// Write a SARIF 2.1.0 report here (one result per failing path).
    #[arg(long)]
    sarif: Option<PathBuf>,
    /// Write an HTML page here: figures, failing paths, and a timeline of one run.
    #[arg(long)]
    html: Option<PathBuf>,
    /// Write the LED and power waveforms of one run here (VCD).
    #[arg(long)]
    vcd: Option<PathBuf>,
    /// The path whose run --html and --vcd show (default: the first failure, else a cut
    /// half way through the first workload).
    #[arg(long, value_parser = parse_cut_path)]
    timeline: Option<::std::vec::Vec<(u64, sim::torn::Torn)>>,
    /// The boards' bootloader: espflash or idf-rollback.
    #[arg(long, default_value = "espflash", value_parser = parse_model)]
    bootloader: Model,
    /// Instead of the sweep's statistics, save recordings of its cuts in this folder: the
    /// first cut of each phase reached (erase, download, verify, otadata, confirm, log …).
    #[arg(long, conflicts_with_all = ["random", "cut"])]
    record: Option<PathBuf>,
    /// With --record: every N-th flash operation instead of one per phase.
    #[arg(long, requires = "record")]
    every: Option<u64>,
}

fn parse_size(text: &str) -> Result<usize, String> {
    let t = text.trim();
    let (number, unit) = match t.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => t.split_at(i),
        None => (t, ""),
    };
    let n: usize = number
        .parse()
        .map_err(|_| format!("`{text}` is not a size (e.g. 65536, 64KiB, 1MiB)"))?;
    let unit = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kib" | "kb" => 1024,
        "m" | "mib" | "mb" => 1024 * 1024,
        other => return Err(format!("unknown size unit `{other}` (use KiB or MiB)")),
    };
    Ok(n * unit)
}

fn parse_release(text: &str) -> Result<(String, PathBuf), String> {
    match text.split_once('=') {
        Some((tag, path)) if !tag.trim().is_empty() && !path.is_empty() => {
            Ok((tag.trim().to_string(), PathBuf::from(path)))
        }
        _ => Err(format!(
            "`{text}` is not TAG=PATH (e.g. 1.1=target/firmware-esp32c3-1.1.bin)"
        )),
    }
}

fn parse_model(text: &str) -> Result<Model, String> {
    Model::parse(text).ok_or_else(|| {
        let names: Vec<&str> = Model::ALL.iter().map(|m| m.name()).collect();
        format!("unknown bootloader `{text}` (one of: {})", names.join(", "))
    })
}

fn broker_choice(url: &Option<String>) -> Result<BrokerChoice, String> {
    match url {
        None => Ok(BrokerChoice::Embedded),
        Some(u) => BrokerAddr::parse(u)
            .map(BrokerChoice::External)
            .map_err(|e| e.to_string()),
    }
}

fn print_table(reports: &[Report]) {
    println!(
        "{:<48} {:<6} {:<34} {:<30} {:<16} {:>9} {:>7}",
        "scenario [bootloader]", "result", "outcomes", "LEDs", "versions", "virtual", "wall"
    );
    for r in reports {
        let versions = {
            let mut v = r.versions.clone();
            v.dedup();
            v.join(">")
        };
        println!(
            "{:<48} {:<6} {:<34} {:<30} {:<16} {:>8}s {:>5}ms",
            r.label(),
            if r.passed() { "ok" } else { "FAIL" },
            r.outcomes.join(","),
            r.leds.join(" "),
            versions,
            r.virtual_ms / 1000,
            r.wall_ms
        );
    }
    for r in reports.iter().filter(|r| !r.passed()) {
        println!("\n{} FAILED (seed {}):", r.label(), r.seed);
        for f in &r.failures {
            // A list's diff spans several lines: keep them under their dash.
            println!("  - {}", f.replace('\n', "\n    "));
        }
        println!(
            "  console:\n{}",
            r.console()
                .lines()
                .map(|l| format!("    {l}"))
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
}

/// Prints one report as `--json` and `--trace` ask (the table comes after all of them).
fn show_report(r: &Report, json: bool, trace: bool) {
    if json {
        println!("{}", report_json(r));
    }
    if trace {
        println!("=== {} ===\n{}", r.label(), r.console());
    }
}

/// Prints `WHAT: N passed, M failed`; true when none failed.
fn print_tally(what: &str, reports: &[Report]) -> bool {
    let failed = reports.iter().filter(|r| !r.passed()).count();
    println!(
        "{what}: {} passed, {} failed",
        reports.len() - failed,
        failed
    );
    failed == 0
}

/// The command line that made a recording, as the recording stores it.
fn made_by() -> String {
    std::iter::once("sim".to_string())
        .chain(std::env::args().skip(1))
        .collect::<Vec<_>>()
        .join(" ")
}

fn report_json(r: &Report) -> serde_json::Value {
    serde_json::json!({
        "scenario": r.name, "bootloader": r.model.name(), "passed": r.passed(), "seed": r.seed,
        "failures": r.failures,
        "outcomes": r.outcomes, "leds": r.leds, "log": r.log, "versions": r.versions,
        "virtual_ms": r.virtual_ms, "wall_ms": r.wall_ms,
    })
}

/// The files of `--image TAG=PATH`, read, each checked for the version its tag says.
fn read_images(files: &[(String, PathBuf)]) -> Result<Vec<(String, Vec<u8>)>, String> {
    let mut images: Vec<(String, Vec<u8>)> = Vec::new();
    for (tag, path) in files {
        if images.iter().any(|(t, _)| t == tag) {
            return Err(format!("--image {tag}=…: given twice"));
        }
        let bytes =
            std::fs::read(path).map_err(|e| format!("--image {tag}={}: {e}", path.display()))?;
        warn_unless_image_of(tag, path, &bytes);
        images.push((tag.clone(), bytes));
    }
    Ok(images)
}

/// Warns when `bytes` is not an app image a board accepts as version `tag`.
fn warn_unless_image_of(tag: &str, path: &Path, bytes: &[u8]) {
    match firmware::format::app_image::inspect(bytes) {
        Ok(info) if info.app_desc.version.as_str() != tag => eprintln!(
            "warning: {} carries version {}, given as {tag}",
            path.display(),
            info.app_desc.version
        ),
        Ok(_) => {}
        Err(e) => eprintln!(
            "warning: {} is not an ESP32 app image a board accepts ({e:?})",
            path.display()
        ),
    }
}

/// The user's images for scenario `s`: its `board.version`'s runs, those of the tags it
/// publishes are the release assets.
fn images_for(
    s: &Scenario,
    images: &[(String, Vec<u8>)],
) -> Result<Option<scenario::UserImages>, String> {
    if images.is_empty() {
        return Ok(None);
    }
    let running = images
        .iter()
        .find(|(tag, _)| *tag == s.board.version)
        .map(|(_, bytes)| bytes.clone())
        .ok_or_else(|| {
            format!(
                "scenario {}: the board starts at version {1}: give its image with --image {1}=PATH",
                s.name,
                s.board.version
            )
        })?;
    // Only the tags it publishes: a recording stores each release image.
    let releases = images
        .iter()
        .filter(|(tag, _)| s.releases.iter().any(|r| r.tag == *tag))
        .cloned()
        .collect();
    Ok(Some(scenario::UserImages { running, releases }))
}

async fn run_scenarios(
    paths: &[PathBuf],
    dir: &Path,
    json: bool,
    trace: bool,
    only: Option<Model>,
    images: &[(String, Vec<u8>)],
    broker: &BrokerChoice,
) -> Result<bool, String> {
    let scenarios: Vec<Scenario> = if paths.is_empty() {
        Scenario::load_dir(dir).map_err(|e| e.to_string())?
    } else {
        paths
            .iter()
            .map(|p| Scenario::load(p))
            .collect::<Result<_, _>>()
            .map_err(|e| e.to_string())?
    };
    if scenarios.is_empty() {
        return Err(format!("no scenarios in {}", dir.display()));
    }
    let mut reports = Vec::new();
    for s in &scenarios {
        // The models of one scenario run side by side: separate servers, separate topics.
        let models: Vec<Model> = s
            .models()
            .into_iter()
            .filter(|m| only.is_none_or(|o| o == *m))
            .collect();
        let user = images_for(s, images)?;
        let runs = models
            .iter()
            .map(|&model| scenario::run_with(s, model, broker, user.as_ref()));
        for (model, result) in models
            .iter()
            .zip(futures_util::future::join_all(runs).await)
        {
            let r = result.map_err(|e| format!("{} [{model}]: {e}", s.name))?;
            show_report(&r, json, trace);
            reports.push(r);
        }
    }
    if !json {
        print_table(&reports);
    }
    Ok(print_tally("scenarios", &reports))
}

/// The scenario files to run: those named, or every `.toml` in `dir`.
fn scenario_paths(paths: &[PathBuf], dir: &Path) -> Result<Vec<PathBuf>, String> {
    if !paths.is_empty() {
        return Ok(paths.to_vec());
    }
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| format!("{}: {e}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    found.sort();
    Ok(found)
}

/// `sim run --record OUT`: runs the scenarios, saving a recording per power cut.
async fn record_scenarios(
    paths: &[PathBuf],
    dir: &Path,
    only: Option<Model>,
    out: &Path,
    images: &[(String, Vec<u8>)],
    broker: &BrokerChoice,
) -> Result<bool, String> {
    let made_by = made_by();
    let mut reports = Vec::new();
    for path in scenario_paths(paths, dir)? {
        let text =
            std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        let s = Scenario::load(&path).map_err(|e| e.to_string())?;
        let user = images_for(&s, images)?;
        for model in s
            .models()
            .into_iter()
            .filter(|m| only.is_none_or(|o| o == *m))
        {
            let shown = path.display().to_string();
            let recorded = sim::recording::record_with(
                &s,
                &shown,
                &text,
                model,
                broker,
                &made_by,
                user.as_ref(),
            )
            .await
            .map_err(|e| format!("{} [{model}]: {e}", s.name))?;
            for rec in &recorded.recordings {
                let to = out.join(&rec.name);
                rec.save(&to).map_err(|e| e.to_string())?;
                println!(
                    "recorded {}: cut at boot {} in phase {} ({}), {} sectors, recovery {}, {} images",
                    to.display(),
                    rec.cut.boot,
                    rec.cut.phase,
                    rec.cut.what,
                    rec.sectors.len(),
                    rec.expect.outcomes.join(","),
                    if rec.images_are_simulated() {
                        "simulated"
                    } else {
                        "your"
                    }
                );
            }
            reports.push(recorded.report);
        }
    }
    print_table(&reports);
    Ok(print_tally("scenarios", &reports))
}

/// `sim sweep --record OUT`.
async fn record_sweep(
    size: usize,
    seed: u64,
    model: Model,
    keep: sim::recording::Keep,
    out: &Path,
    broker: &BrokerChoice,
) -> Result<bool, String> {
    let made_by = made_by();
    let made = sim::recording::record_sweep(size, seed, model, keep, broker, &made_by)
        .await
        .map_err(|e| e.to_string())?;
    for rec in &made.recordings {
        let to = out.join(&rec.name);
        rec.save(&to).map_err(|e| e.to_string())?;
        println!(
            "recorded {}: phase {} ({}), {} sectors, recovery {}",
            to.display(),
            rec.cut.phase,
            rec.cut.what,
            rec.sectors.len(),
            rec.expect.outcomes.join(",")
        );
    }
    println!(
        "sweep: {} flash operations cut, {} recordings, {} invariant violations",
        made.runs,
        made.recordings.len(),
        made.violations.len()
    );
    for v in &made.violations {
        println!("  VIOLATION {v}");
    }
    Ok(made.violations.is_empty())
}

/// The recording folders in `paths`: each path is one, or holds some.
fn recording_dirs(paths: &[PathBuf]) -> Result<Vec<PathBuf>, String> {
    let mut dirs = Vec::new();
    for p in paths {
        if p.join(sim::recording::TOML_FILE).is_file() {
            dirs.push(p.clone());
            continue;
        }
        let mut inside: Vec<PathBuf> = std::fs::read_dir(p)
            .map_err(|e| format!("{}: {e}", p.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|d| d.join(sim::recording::TOML_FILE).is_file())
            .collect();
        if inside.is_empty() {
            return Err(format!(
                "{}: no {} in it or in its folders",
                p.display(),
                sim::recording::TOML_FILE
            ));
        }
        inside.sort();
        dirs.extend(inside);
    }
    Ok(dirs)
}

/// `sim replay DIR…`.
async fn replay_recordings(
    paths: &[PathBuf],
    json: bool,
    trace: bool,
    broker: &BrokerChoice,
) -> Result<bool, String> {
    let mut reports = Vec::new();
    for dir in recording_dirs(paths)? {
        let rec = sim::recording::Recording::load(&dir).map_err(|e| e.to_string())?;
        let r = sim::recording::replay(&rec, broker)
            .await
            .map_err(|e| format!("{}: {e}", dir.display()))?;
        show_report(&r, json, trace);
        reports.push(r);
    }
    if !json {
        print_table(&reports);
    }
    Ok(print_tally("recordings", &reports))
}

/// Image size of `sim all`'s depth-2 sweeps (every workload, every shape, twice).
const DEEP_SWEEP_IMAGE: usize = 16 * 1024;

/// Where `sim sweep` writes its reports.
#[derive(Default)]
struct ReportFiles {
    junit: Option<PathBuf>,
    sarif: Option<PathBuf>,
    html: Option<PathBuf>,
    vcd: Option<PathBuf>,
}

fn parse_workloads(s: &str) -> Result<Vec<sim::sweep::workload::Kind>, String> {
    sim::sweep::workload::parse_list(s).map_err(|e| e.to_string())
}

fn parse_torn(s: &str) -> Result<Vec<sim::torn::Torn>, String> {
    sim::torn::parse_list(s).map_err(|e| e.to_string())
}

fn parse_cut_path(s: &str) -> Result<Vec<(u64, sim::torn::Torn)>, String> {
    sim::sweep::explore::parse_path(s)
}

/// The command that reproduces one path of the exhaustive sweep.
fn reproduce(opts: &SweepOptions, workload: &str, cuts: &[String], seed: u64) -> String {
    match opts.random {
        Some(_) => format!(
            "sim sweep --image-size {} --bootloader {} --random 1 --seed {seed}",
            opts.image_size, opts.bootloader
        ),
        None if cuts.is_empty() => format!(
            "sim sweep --workload {workload} --image-size {} --bootloader {} --seed {} --torn {}",
            opts.image_size,
            opts.bootloader,
            opts.seed,
            opts.torn
                .iter()
                .map(|t| t.name())
                .collect::<Vec<_>>()
                .join(",")
        ),
        None => format!(
            "sim sweep --workload {workload} --image-size {} --bootloader {} --seed {} --cut {}",
            opts.image_size,
            opts.bootloader,
            opts.seed,
            cuts.join("/")
        ),
    }
}

/// The short id of the rule a violation broke: the text before its first colon.
fn rule_of(what: &[String]) -> String {
    what.first()
        .and_then(|w| w.split_once(':'))
        .map_or("invariant", |(r, _)| r)
        .trim()
        .replace(' ', "-")
}

fn write_reports(opts: &SweepOptions, r: &SweepReport, files: &ReportFiles) -> Result<(), String> {
    use sim::report;
    let command = std::env::args().collect::<Vec<_>>().join(" ");
    let mut phases: std::collections::BTreeMap<String, u64> = Default::default();
    let mut cuts_per_depth: Vec<u64> = Vec::new();
    let (mut distinct, mut duplicates, mut not_applicable) = (0, 0, 0);
    for w in &r.workloads {
        for (p, n) in &w.explored.phases {
            *phases.entry(format!("{}/{p}", w.kind)).or_default() += n;
        }
        for (d, n) in w.explored.cuts_per_depth.iter().enumerate() {
            if cuts_per_depth.len() <= d {
                cuts_per_depth.resize(d + 1, 0);
            }
            cuts_per_depth[d] += n;
        }
        distinct += w.explored.distinct;
        duplicates += w.explored.duplicates;
        not_applicable += w.explored.not_applicable;
    }
    let summary = report::Summary {
        title: format!(
            "power-cut sweep: {} KiB image, bootloader {}",
            opts.image_size / 1024,
            opts.bootloader
        ),
        command,
        image_size: opts.image_size as u64,
        bootloader: opts.bootloader.to_string(),
        workloads: opts.workloads.iter().map(|k| k.to_string()).collect(),
        seed: opts.seed,
        depth: opts.depth,
        torn: opts.torn.iter().map(|t| t.to_string()).collect(),
        cuts_per_depth,
        distinct_states: distinct,
        duplicates,
        not_applicable,
        boots: r.boots,
        phases: phases.into_iter().collect(),
        wall_ms: r.wall.as_millis() as u64,
        rate: r.rate(),
        violations: r.violations.len() as u64,
    };
    let failures: Vec<report::Failure> = r
        .violations
        .iter()
        .map(|v| {
            let (workload, cuts) = match v.cuts.split_first() {
                Some((w, rest)) if opts.random.is_none() => (w.clone(), rest.to_vec()),
                _ => ("random".to_string(), v.cuts.clone()),
            };
            report::Failure {
                id: std::iter::once(workload.clone())
                    .chain(cuts.iter().cloned())
                    .collect::<Vec<_>>()
                    .join("/"),
                reproduce: reproduce(opts, &workload, &cuts, v.seed),
                workload,
                cuts,
                rule: rule_of(&v.what),
                what: v.what.clone(),
                seed: v.seed,
            }
        })
        .collect();
    let write = |path: &PathBuf, text: String| {
        std::fs::write(path, text).map_err(|e| format!("{}: {e}", path.display()))
    };
    if let Some(p) = &files.junit {
        write(p, report::junit::render(&summary, &failures))?;
    }
    if let Some(p) = &files.sarif {
        write(p, report::sarif::render(&summary, &failures))?;
    }
    if let Some(p) = &files.html {
        write(
            p,
            report::html::render(&summary, &failures, r.timeline.as_ref()),
        )?;
    }
    if let Some(p) = &files.vcd {
        match &r.timeline {
            Some(t) => write(p, report::vcd::render(t))?,
            None => return Err("--vcd: no run was recorded for a timeline".into()),
        }
    }
    Ok(())
}

fn print_sweep(opts: &SweepOptions, r: &SweepReport) {
    if opts.random.is_none() {
        print_exhaustive(opts, r);
        return;
    }
    let kind = match opts.random {
        Some((n, seed)) => format!("random: {n} runs, seed {seed}"),
        None => format!("every flash operation, seed {}", opts.seed),
    };
    println!(
        "sweep: image {} bytes, {kind}, bootloader {}",
        opts.image_size, opts.bootloader
    );
    println!("  flash operations in a clean update: {}", r.clean_ops);
    println!("  crash points run:                   {}", r.runs);
    println!("  boots:                              {}", r.boots);
    println!("  runs that resumed a download:       {}", r.resumed_runs);
    println!("  bytes downloaded again (all runs):  {}", r.redownloaded);
    print_redownload_and_violations(r);
    println!(
        "  wall time:                          {:.2} s ({:.0} crash points/s)",
        r.wall.as_secs_f64(),
        r.rate()
    );
    for v in r.violations.iter().take(10) {
        println!("  VIOLATION seed {} cuts [{}]:", v.seed, v.cuts.join(", "));
        for w in &v.what {
            println!("    - {w}");
        }
        let ops: Vec<&str> = v
            .cuts
            .iter()
            .filter_map(|c| c.strip_prefix("op:"))
            .collect();
        if opts.random.is_none() && !ops.is_empty() {
            println!(
                "    reproduce: sim sweep --image-size {} --bootloader {} --seed {} --op {}",
                opts.image_size,
                opts.bootloader,
                opts.seed,
                ops.join(" --op ")
            );
        } else if let Some((_, _)) = opts.random {
            println!(
                "    reproduce: sim sweep --image-size {} --bootloader {} --random 1 --seed {}",
                opts.image_size, opts.bootloader, v.seed
            );
        }
    }
}

/// The two figures every sweep ends on: the most downloaded again after one cut, and the
/// invariant violations.
fn print_redownload_and_violations(r: &SweepReport) {
    println!(
        "  most downloaded again after a cut:  {} bytes (one sector is 4096)",
        r.max_redownload
    );
    println!(
        "  invariant violations:               {}",
        r.violations.len()
    );
}

fn print_exhaustive(opts: &SweepOptions, r: &SweepReport) {
    println!(
        "sweep: image {} bytes, depth {}, torn {}, seed {}, bootloader {}",
        opts.image_size,
        opts.depth,
        if opts.torn.len() == sim::torn::Torn::ALL.len() {
            "all".to_string()
        } else {
            opts.torn
                .iter()
                .map(|t| t.name())
                .collect::<Vec<_>>()
                .join(",")
        },
        opts.seed,
        opts.bootloader
    );
    for w in &r.workloads {
        let e = &w.explored;
        let per_depth: Vec<String> = e
            .cuts_per_depth
            .iter()
            .enumerate()
            .map(|(d, n)| format!("depth {}: {n}", d + 1))
            .collect();
        let phases: Vec<String> = e.phases.iter().map(|(p, n)| format!("{p} {n}")).collect();
        println!(
            "  {:<12} {:>5} ops  cuts {:<36} distinct {:>6}  duplicates {:>6}  violations {}",
            w.kind.name(),
            e.clean_ops,
            per_depth.join(", "),
            e.distinct,
            e.duplicates,
            e.violations.len()
        );
        println!(
            "  {:<12} phases of the distinct cuts: {}",
            "",
            phases.join(", ")
        );
    }
    let distinct: u64 = r.workloads.iter().map(|w| w.explored.distinct).sum();
    println!("  crash points:                       {}", r.crash_points());
    println!("  distinct flash states run:          {distinct}");
    println!("  boots:                              {}", r.boots);
    println!("  runs that resumed a download:       {}", r.resumed_runs);
    println!(
        "  rolled back (3 trial boots cut):    {}",
        r.workloads
            .iter()
            .map(|w| w.explored.rolled_back)
            .sum::<u64>()
    );
    print_redownload_and_violations(r);
    println!(
        "  wall time:                          {:.2} s ({:.0} crash points/s, {:.0} distinct states run/s)",
        r.wall.as_secs_f64(),
        r.rate(),
        distinct as f64 / r.wall.as_secs_f64().max(1e-9)
    );
    for v in r.violations.iter().take(10) {
        let (workload, cuts) = v
            .cuts
            .split_first()
            .map_or(("update", &[][..]), |(w, c)| (w.as_str(), c));
        println!(
            "  VIOLATION {workload}/{} (seed {}):",
            cuts.join("/"),
            v.seed
        );
        for w in &v.what {
            println!("    - {w}");
        }
        println!("    reproduce: {}", reproduce(opts, workload, cuts, v.seed));
    }
    if r.violations.len() > 10 {
        println!("  ... and {} more", r.violations.len() - 10);
    }
}

async fn run_sweep(opts: SweepOptions, broker: &BrokerChoice) -> Result<bool, String> {
    run_sweep_with(opts, broker, &ReportFiles::default()).await
}

async fn run_sweep_with(
    opts: SweepOptions,
    broker: &BrokerChoice,
    files: &ReportFiles,
) -> Result<bool, String> {
    let report = sweep::sweep(&opts, broker)
        .await
        .map_err(|e| e.to_string())?;
    print_sweep(&opts, &report);
    write_reports(&opts, &report, files)?;
    Ok(report.violations.is_empty())
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let started = Instant::now();
    let broker = match broker_choice(&cli.broker) {
        Ok(b) => b,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    if let Command::Probe {
        repo,
        asset,
        api_base,
        token_env,
        from,
        max_retries,
        json,
        trace,
        seed,
    } = cli.command
    {
        let mut opts = sim::probe::ProbeOptions::new(&repo, &asset);
        opts.api_base = api_base;
        opts.from = from;
        opts.max_retries = max_retries;
        opts.seed = seed;
        return run_probe(opts, token_env, cli.broker, json, trace).await;
    }
    let result = run_command(cli.command, &broker).await;
    println!("wall time: {:.2} s", started.elapsed().as_secs_f64());
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
    }
}

/// Runs one subcommand (all but `probe`): true when everything it checked passed.
async fn run_command(command: Command, broker: &BrokerChoice) -> Result<bool, String> {
    match command {
        Command::Run {
            scenarios,
            dir,
            json,
            trace,
            bootloader,
            record,
            images,
        } => {
            let images = read_images(&images)?;
            match record {
                None => {
                    run_scenarios(&scenarios, &dir, json, trace, bootloader, &images, broker).await
                }
                Some(out) => {
                    record_scenarios(&scenarios, &dir, bootloader, &out, &images, broker).await
                }
            }
        }
        Command::Replay {
            recordings,
            json,
            trace,
        } => replay_recordings(&recordings, json, trace, broker).await,
        Command::Sweep(args) => sweep_command(args, broker).await,
        Command::Soak {
            boots,
            seed,
            image_size,
            bootloader,
        } => {
            let opts = sim::soak::SoakOptions {
                boots,
                seed,
                image_size,
                bootloader,
            };
            soak_command(&opts, broker).await
        }
        Command::All { dir, image_size } => run_all(&dir, image_size, broker).await,
        Command::Serve {
            addr,
            asset_url,
            releases,
        } => serve(addr, asset_url, &releases).await,
        // Handled in `main`: the probe has its own exit codes and output.
        Command::Probe { .. } => Ok(true),
        Command::Image {
            version,
            size,
            output,
        } => write_image(&version, size, &output),
    }
}

/// `sim sweep`: records its cuts with `--record`, else sweeps and writes the reports asked for.
async fn sweep_command(args: SweepArgs, broker: &BrokerChoice) -> Result<bool, String> {
    if let Some(out) = args.record {
        let keep = args
            .every
            .map_or(sim::recording::Keep::Phases, sim::recording::Keep::Every);
        return record_sweep(
            args.image_size,
            args.seed,
            args.bootloader,
            keep,
            &out,
            broker,
        )
        .await;
    }
    if args.cut.is_some() && args.workload.len() != 1 {
        return Err("--cut reproduces a path of one workload: give one --workload".to_string());
    }
    let opts = SweepOptions {
        image_size: args.image_size,
        random: args.random.map(|n| (n, args.seed)),
        seed: args.seed,
        jobs: args.jobs,
        bootloader: args.bootloader,
        workloads: args.workload,
        torn: args.torn,
        depth: args.depth,
        want_timeline: args.html.is_some() || args.vcd.is_some(),
        timeline: args.timeline.or_else(|| args.cut.clone()),
        cut: args.cut,
    };
    let files = ReportFiles {
        junit: args.junit,
        sarif: args.sarif,
        html: args.html,
        vcd: args.vcd,
    };
    run_sweep_with(opts, broker, &files).await
}

/// `sim soak`: one board through many boots; prints the wear table and what went wrong.
async fn soak_command(
    opts: &sim::soak::SoakOptions,
    broker: &BrokerChoice,
) -> Result<bool, String> {
    println!(
        "soak: {} boots, seed {}, {}-byte releases, {}",
        opts.boots, opts.seed, opts.image_size, opts.bootloader
    );
    let report = sim::soak::soak(opts, broker)
        .await
        .map_err(|e| e.to_string())?;
    print!("{}", report.render());
    Ok(report.passed())
}

/// `sim all`: every scenario behind every bootloader, then the sweeps `just sim` runs.
async fn run_all(dir: &Path, image_size: usize, broker: &BrokerChoice) -> Result<bool, String> {
    let mut results = vec![run_scenarios(&[], dir, false, false, None, &[], broker).await];
    // Behind each bootloader: every workload's flash operations in every torn shape,
    // random multi-cut runs, then every workload cut twice (a smaller image: depth 2
    // runs every operation of every recovery).
    let sweeps = Model::ALL.into_iter().flat_map(|m| {
        [
            (None, 1, m, 1, image_size),
            (Some((50, 7)), 7, m, 1, image_size),
            (None, 1, m, 2, DEEP_SWEEP_IMAGE),
        ]
    });
    for (random, seed, bootloader, depth, image_size) in sweeps {
        let opts = SweepOptions {
            image_size,
            random,
            seed,
            bootloader,
            depth,
            workloads: sim::sweep::workload::Kind::ALL.to_vec(),
            ..SweepOptions::default()
        };
        results.push(run_sweep(opts, broker).await);
    }
    results
        .into_iter()
        .try_fold(true, |all, r| r.map(|ok| all && ok))
}

/// `sim image`: writes a release image of `version`, `size` bytes, to `output`.
fn write_image(version: &str, size: usize, output: &Path) -> Result<bool, String> {
    let bytes = sim::image::build(version, size, 1);
    std::fs::write(output, &bytes).map_err(|e| format!("{}: {e}", output.display()))?;
    println!(
        "wrote {} ({} bytes, version {version})",
        output.display(),
        bytes.len()
    );
    Ok(true)
}

/// `sim probe`: exit 0 when the board would succeed, 1 when it would fail, 2 when the probe
/// could not run.
async fn run_probe(
    mut opts: sim::probe::ProbeOptions,
    token_env: Option<String>,
    broker: Option<String>,
    json: bool,
    trace: bool,
) -> ExitCode {
    let setup = || -> Result<(), String> {
        if let Some(var) = token_env {
            match std::env::var(&var) {
                Ok(t) if !t.is_empty() => opts.token = Some(sim::probe::Token::new(t)),
                _ => {
                    return Err(format!(
                        "--token-env {var}: that environment variable is not set"
                    ));
                }
            }
        }
        if let Some(url) = broker {
            let addr = BrokerAddr::parse(&url).map_err(|e| e.to_string())?;
            opts.broker = Some(
                sim::broker::resolve(&addr)
                    .ok_or_else(|| format!("broker {} does not resolve", addr.url()))?,
            );
        }
        Ok(())
    };
    if let Err(e) = setup() {
        eprintln!("error: {e}");
        return ExitCode::from(2);
    }
    let report = match sim::probe::probe(&opts).await {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    if json {
        println!("{}", report.to_json());
    } else {
        print!("{}", report.summary());
        if trace {
            println!("console:");
            for line in &report.console {
                println!("  {line}");
            }
        }
    }
    if report.board_succeeds() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// The releases `sim serve` publishes, oldest first: the user's files, or a built 1.1.
fn served_releases(files: &[(String, PathBuf)]) -> Result<Vec<sim::github::Release>, String> {
    if files.is_empty() {
        let image = sim::image::build("1.1", 256 * 1024, 1);
        return Ok(vec![
            sim::github::Release::new("1.1", 1_700_000_000)
                .with_asset(sim::github::Asset::new("firmware.bin", image)),
        ]);
    }
    let mut releases = Vec::new();
    for (i, (tag, path)) in files.iter().enumerate() {
        let bytes =
            std::fs::read(path).map_err(|e| format!("--release {tag}={}: {e}", path.display()))?;
        // The board refuses an image whose descriptor does not carry the tag's version: say so
        // now rather than after a download.
        warn_unless_image_of(tag, path, &bytes);
        // One day apart, in the order given: the last one is the latest.
        releases.push(
            sim::github::Release::new(tag, 1_700_000_000 + i as u64 * 86_400)
                .with_asset(sim::github::Asset::new("firmware.bin", bytes)),
        );
    }
    Ok(releases)
}

async fn serve(
    addr: SocketAddr,
    asset_url: sim::github::AssetUrl,
    files: &[(String, PathBuf)],
) -> Result<bool, String> {
    let releases = served_releases(files)?;
    // The same servers a HIL run stages: the board-facing proxies on `addr`, the mock GitHub
    // and the broker on loopback behind them. The mock writes its URLs from the request's
    // `Host`, so a board given this host's address downloads from it too.
    let world = World::start_at(&BrokerChoice::Embedded, true, addr)
        .await
        .map_err(|e| e.to_string())?;
    world.github.set_asset_url(asset_url);
    // MQTT 3.1.1 clients (mosquitto_sub's default) get the broker's v4 listener, proxied too.
    let v4 = sim::world::embedded_broker().map_err(|e| e.to_string())?;
    let v4_proxy = sim::proxy::Proxy::start_on(SocketAddr::new(addr.ip(), 0), v4.v4_addr)
        .await
        .map_err(|e| e.to_string())?;
    let described: Vec<String> = releases
        .iter()
        .map(|r| format!("{} ({} bytes)", r.tag_name, r.assets[0].bytes.len()))
        .collect();
    world.github.set_releases("acme", "thermostat", releases);
    println!(
        "github http://{}  (acme/thermostat releases with firmware.bin: {}; the last is the latest)",
        world.github_proxy.addr(),
        described.join(", ")
    );
    println!("mqtt mqtt://{}", world.board_broker());
    println!("mqtt-v4 mqtt://{}", v4_proxy.addr());
    if addr.ip().is_unspecified() {
        println!(
            "note: listening on every interface; give a board this host's address with these ports"
        );
    }
    tokio::signal::ctrl_c()
        .await
        .map_err(|e| format!("cannot wait for Ctrl-C: {e}"))?;
    world.github.shutdown();
    Ok(true)
}
