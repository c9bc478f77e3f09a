//! The power-cut sweep.
//!
//! The exhaustive sweep ([`explore`]) cuts every flash operation of each workload
//! ([`workload`]: update, resumed download, bad release, rollback, log wrap) in every torn
//! shape ([`crate::torn`]), again in the recovery from each cut down to `--depth`, runs each
//! distinct flash state once ([`states`]) and judges it with an oracle that shares no code
//! with the core ([`crate::oracle`]).
//!
//! `--random N --seed S` instead makes N runs, each with one to three cuts at random
//! operations, download bytes or trace events, the RNG deciding how torn each is, and
//! checks the invariants:
//!    - every boot finds a complete image (the bootloader verifies checksum
//!      and appended SHA-256): never bricked, never a mix;
//!    - the slot and version the core reports are those of the image booted;
//!    - otadata never loses its last bootable entry;
//!    - the board ends on the latest release, confirmed;
//!    - the activity log has no gap and every acknowledged record arrived;
//!    - bytes downloaded again after the cut stay within one flash sector
//!      (plus the network piece in flight) beyond what was durable.
//!
//! A failure prints the seed and the cut points that reproduce it.

pub mod explore;
pub mod states;
pub mod workload;

use crate::board::{BootEnd, Triggers, VirtualBoard, Wiring};
use crate::bootloader::{BootChoice, Bootloader, Model};
use crate::broker::Collector;
use crate::flash::SplitMix;
use crate::github::{Asset, Release};
use crate::image;
use crate::scenario::check_invariants;
use crate::world::{BrokerChoice, World, WorldError, conf_json};
use firmware::storage::SECTOR;
use firmware::trace::{Event, Outcome};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Sweep settings.
#[derive(Clone, Debug)]
pub struct SweepOptions {
    /// Size of the release image.
    pub image_size: usize,
    /// Random multi-cut runs instead of the exhaustive sweep: (runs, seed).
    pub random: Option<(u32, u64)>,
    /// Seed of the exhaustive sweep's torn operations.
    pub seed: u64,
    /// Runs in flight at once.
    pub jobs: usize,
    /// The boards' bootloader build.
    pub bootloader: Model,
    /// Workloads the exhaustive sweep cuts.
    pub workloads: Vec<workload::Kind>,
    /// Torn shapes of the exhaustive sweep.
    pub torn: Vec<crate::torn::Torn>,
    /// Cuts per path: 1, 2 (every operation of every recovery), 3 (depth 2, then one
    /// random cut in each recovery of those).
    pub depth: u32,
    /// Only this path of cuts (reproducing one failure).
    pub cut: Option<Vec<(u64, crate::torn::Torn)>>,
    /// Record this path's run for `--html` / `--vcd` (default: the first failure, else a
    /// cut half way through the first workload's operations).
    pub timeline: Option<Vec<(u64, crate::torn::Torn)>>,
    /// Make a timeline at all.
    pub want_timeline: bool,
}

impl Default for SweepOptions {
    fn default() -> SweepOptions {
        SweepOptions {
            image_size: 256 * 1024,
            random: None,
            seed: 1,
            jobs: 4,
            bootloader: Model::Espflash,
            workloads: vec![workload::Kind::Update],
            torn: crate::torn::Torn::ALL.to_vec(),
            depth: 1,
            cut: None,
            timeline: None,
            want_timeline: false,
        }
    }
}

/// What the exhaustive sweep found in one workload.
#[derive(Clone, Debug)]
pub struct WorkloadReport {
    /// Which workload.
    pub kind: workload::Kind,
    /// Its figures.
    pub explored: explore::Explored,
}

/// One failed run.
#[derive(Clone, Debug)]
pub struct Violation {
    /// Seed of the run.
    pub seed: u64,
    /// Cut points (flash operation numbers, or `byte:N` / `event:NAME`).
    pub cuts: Vec<String>,
    /// What broke.
    pub what: Vec<String>,
}

/// The sweep's figures.
#[derive(Clone, Debug, Default)]
pub struct SweepReport {
    /// Flash operations of a clean update.
    pub clean_ops: u64,
    /// Runs done.
    pub runs: u64,
    /// Boots over all runs.
    pub boots: u64,
    /// Failed runs.
    pub violations: Vec<Violation>,
    /// Largest re-download after a single cut, in bytes.
    pub max_redownload: u64,
    /// Total bytes downloaded again over all runs.
    pub redownloaded: u64,
    /// Runs that resumed a download.
    pub resumed_runs: u64,
    /// Wall time.
    pub wall: Duration,
    /// The exhaustive sweep's workloads (empty for random runs).
    pub workloads: Vec<WorkloadReport>,
    /// The recorded run of one path, when asked for.
    pub timeline: Option<crate::report::Timeline>,
}

impl SweepReport {
    /// Crash points checked per second of wall time (duplicates included: each was
    /// decided, by its digest).
    pub fn rate(&self) -> f64 {
        self.crash_points() as f64 / self.wall.as_secs_f64().max(1e-9)
    }

    /// Cut points considered: runs of the random mode, or every (operation, shape) pair
    /// of every depth of the exhaustive sweep.
    pub fn crash_points(&self) -> u64 {
        if self.workloads.is_empty() {
            self.runs
        } else {
            self.workloads
                .iter()
                .map(|w| w.explored.cuts_per_depth.iter().sum::<u64>())
                .sum()
        }
    }
}

/// A cut in a run.
#[derive(Clone, Debug)]
enum CutAt {
    /// Flash operation number, counted from the start of this boot's flash life.
    Op(u64),
    /// Image byte.
    Byte(u64),
    /// The n-th event of this name.
    Event(&'static str, u32),
}

impl std::fmt::Display for CutAt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CutAt::Op(n) => write!(f, "op:{n}"),
            CutAt::Byte(n) => write!(f, "byte:{n}"),
            CutAt::Event(e, n) => write!(f, "event:{e}#{n}"),
        }
    }
}

struct Shared {
    world: World,
    template: crate::flash::SimFlash,
    http: reqwest::Client,
    image_size: u64,
    latest: String,
    prefix: String,
    bootloader: Bootloader,
}

/// Where `conf.json` lives in the default partition table.
const CONFIG_OFFSET: u32 = 0x3d_0000;

struct RunResult {
    client_id: String,
    /// What the board saw; the log is checked against the broker once every run is done.
    trace: Vec<crate::board::TraceLine>,
    boot_choices: Vec<(u32, BootChoice)>,
    cut_boots: Vec<u32>,
    boots: u64,
    redownloaded: u64,
    resumed: bool,
    what: Vec<String>,
}

async fn run_one(shared: &Shared, id: u64, seed: u64, cuts: &[CutAt]) -> RunResult {
    let mut flash = shared.template.clone();
    flash.reseed(seed);
    // Each board its own client id, so its log has its own topic.
    let client_id = format!("sweep-{id}");
    let conf = conf_json(
        &shared.world.api_base(),
        shared.world.board_broker(),
        &client_id,
        &shared.prefix,
        false,
        false,
        true,
    );
    flash.load(CONFIG_OFFSET, &[0xFF; 0x1000]);
    flash.load(CONFIG_OFFSET, conf.as_bytes());
    let mut board = VirtualBoard::new(flash, &client_id, seed);
    board.bootloader = shared.bootloader;
    let wiring = Wiring {
        broker: shared.world.board_broker(),
    };
    let mut pending = cuts.iter();
    let mut triggers = Triggers::default();
    let mut what = Vec::new();
    let arm = |board: &mut VirtualBoard, triggers: &mut Triggers, cut: Option<&CutAt>| match cut {
        Some(CutAt::Op(n)) => {
            let base = board.flash.ops();
            board.flash.arm_cut(base + n);
        }
        Some(CutAt::Byte(n)) => triggers.at_download_byte = Some(board.downloaded + n),
        Some(CutAt::Event(e, n)) => triggers
            .at_events
            .push(((*e).to_string(), board.event_count(e) + n)),
        None => {}
    };
    arm(&mut board, &mut triggers, pending.next());
    let mut last_end = BootEnd::Stuck;
    while board.boots < 12 {
        let end = board.boot(&shared.http, &wiring, &mut triggers).await;
        match &end {
            BootEnd::PowerCut => {
                // Event counters restart with each boot's core but the trigger counts over the
                // board's life, so re-arm the next cut relative to now.
                arm(&mut board, &mut triggers, pending.next());
            }
            BootEnd::Bricked(b) => {
                what.push(format!("invariant: bricked at boot {}: {b}", board.boots));
                break;
            }
            BootEnd::Stuck => {
                what.push(format!("invariant: boot {} stuck", board.boots));
                break;
            }
            BootEnd::App => {
                let confirmed_latest = board.trace.iter().rev().find_map(|l| match &l.event {
                    Event::Outcome { result, to, .. } => Some((*result, to.to_string())),
                    _ => None,
                });
                if let Some((Outcome::Updated | Outcome::UpToDate, v)) = &confirmed_latest
                    && *v == shared.latest
                {
                    last_end = end;
                    break;
                }
            }
            BootEnd::Reboot => {}
        }
        last_end = end;
    }
    if last_end != BootEnd::App {
        what.push(format!(
            "invariant: did not end running {} (last boot: {last_end:?})",
            shared.latest
        ));
    }
    let final_version = board
        .boot_choices
        .last()
        .map(|(_, c)| c.version.clone())
        .unwrap_or_default();
    if final_version != shared.latest {
        what.push(format!(
            "invariant: ends on {final_version}, latest is {}",
            shared.latest
        ));
    }
    let resumed = board
        .trace
        .iter()
        .any(|l| matches!(l.event, Event::Resume { .. }));
    let redownloaded = board.downloaded.saturating_sub(shared.image_size);
    if cuts.len() == 1 && redownloaded > u64::from(SECTOR) + 1460 {
        what.push(format!("invariant: {redownloaded} bytes downloaded again after one cut (limit: one sector + one TCP segment)"));
    }
    RunResult {
        client_id: board.client_id.clone(),
        trace: std::mem::take(&mut board.trace),
        boot_choices: std::mem::take(&mut board.boot_choices),
        cut_boots: board.cuts.iter().map(|(b, _)| *b).collect(),
        boots: u64::from(board.boots),
        redownloaded,
        resumed,
        what,
    }
}

/// Runs the sweep: the exhaustive one, or random multi-cut runs with `random`.
pub async fn sweep(opts: &SweepOptions, broker: &BrokerChoice) -> Result<SweepReport, WorldError> {
    if opts.random.is_some() {
        return random_sweep(opts, broker).await;
    }
    let workloads = opts
        .workloads
        .iter()
        .map(|&kind| workload::Workload::build(kind, opts.image_size))
        .collect();
    sweep_workloads(opts, workloads, broker).await
}

/// The exhaustive sweep of these workloads (`opts.workloads` is ignored): every operation,
/// every shape, to the depth asked. Tests hand it workloads with planted mistakes.
pub async fn sweep_workloads(
    opts: &SweepOptions,
    workloads: Vec<workload::Workload>,
    broker: &BrokerChoice,
) -> Result<SweepReport, WorldError> {
    let started = Instant::now();
    let world = World::start(broker, false).await?;
    let (prefix, conf) = topics_and_conf(&world, opts.bootloader);
    let collector = Collector::connect(&world.broker, &prefix).await?;
    let mut report = SweepReport::default();
    let mut engines = Vec::new();
    let mut first_failure: Option<(usize, Vec<(u64, crate::torn::Torn)>)> = None;
    for (index, work) in workloads.into_iter().enumerate() {
        let kind = work.kind;
        let image_size = work
            .releases
            .first()
            .and_then(|r| r.assets.first())
            .map_or(0, |a| a.bytes.len() as u64);
        world
            .github
            .set_releases("acme", "thermostat", work.releases.clone());
        let mut template = image::provision(conf.as_bytes(), &work.running, opts.seed);
        let log_from = work
            .prepare(&mut template)
            .map_err(WorldError::Unresolvable)?;
        let engine = Arc::new(
            explore::Engine::new(
                &world,
                prefix.clone(),
                work,
                &template,
                image_size,
                log_from,
                opts,
            )
            .map_err(WorldError::Unresolvable)?,
        );
        let explored = engine.clone().explore(template.clone(), opts.jobs).await;
        if first_failure.is_none()
            && let Some(v) = explored.violations.first()
        {
            // No cut: the clean run itself failed, and is the run to show.
            let path = if v.cuts.is_empty() {
                Some(Vec::new())
            } else {
                explore::parse_path(&v.cuts.join("/")).ok()
            };
            if let Some(path) = path {
                first_failure = Some((index, path));
            }
        }
        report.workloads.push(WorkloadReport { kind, explored });
        engines.push((engine, template));
    }
    // The broker's side of every run's log.
    // Topics are PREFIX/RUN/CLIENT/log: the run is the third level from the end.
    let by_run = |messages: &[crate::broker::MqttMessage]| {
        let mut received: std::collections::HashMap<String, std::collections::BTreeSet<u64>> =
            Default::default();
        for m in messages {
            let run = m.topic.rsplit('/').nth(2);
            let seq = serde_json::from_slice::<serde_json::Value>(&m.payload)
                .ok()
                .and_then(|v| v["seq"].as_u64());
            if let (Some(run), Some(seq)) = (run, seq) {
                received.entry(run.to_string()).or_default().insert(seq);
            }
        }
        received
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    let received = loop {
        let received = by_run(&collector.messages());
        let complete = engines.iter().all(|(e, _)| e.log_complete(&received));
        if complete || Instant::now() >= deadline {
            break received;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    collector.close().await;
    for ((engine, _), w) in engines.iter().zip(report.workloads.iter_mut()) {
        engine.check_logs(&received, &mut w.explored);
    }
    for w in &report.workloads {
        report.boots += w.explored.boots;
        report.runs += w.explored.distinct;
        report.resumed_runs += w.explored.resumed_runs;
        report.max_redownload = report.max_redownload.max(w.explored.max_redownload);
        report.clean_ops += w.explored.clean_ops;
        report
            .violations
            .extend(w.explored.violations.iter().map(|v| {
                Violation {
                    seed: v.seed,
                    cuts: std::iter::once(w.kind.to_string())
                        .chain(v.cuts.iter().cloned())
                        .collect(),
                    what: v.what.clone(),
                }
            }));
    }
    report.wall = started.elapsed();
    if opts.want_timeline {
        let chosen = match (&opts.timeline, first_failure) {
            (Some(path), _) => Some((0, path.clone())),
            (None, Some(f)) => Some(f),
            (None, None) => report
                .workloads
                .first()
                .and_then(|w| w.explored.sample)
                .map(|cut| (0, vec![cut])),
        };
        if let Some((index, path)) = chosen
            && let Some((engine, template)) = engines.get(index)
        {
            world
                .github
                .set_releases("acme", "thermostat", engine.releases());
            report.timeline = Some(engine.timeline(template.clone(), &path).await);
        }
    }
    Ok(report)
}

/// The topic prefix of one sweep and the conf.json of its freshly flashed board. Each sweep
/// gets its own topics (one counter for both kinds): boards of two sweeps in one process
/// share client ids, and an external broker keeps them all.
fn topics_and_conf(world: &World, bootloader: Model) -> (String, String) {
    static SWEEPS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let nth = SWEEPS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let prefix = format!("sweep/{}-{bootloader}-{nth}", std::process::id());
    let conf = conf_json(
        &world.api_base(),
        world.board_broker(),
        "sweep",
        &prefix,
        false,
        false,
        true,
    );
    (prefix, conf)
}

/// `--random`: runs with one to three cuts each at random points.
async fn random_sweep(
    opts: &SweepOptions,
    broker: &BrokerChoice,
) -> Result<SweepReport, WorldError> {
    let started = Instant::now();
    let (shared, collector) = random_sweep_world(opts, broker).await?;
    let clean = clean_update_ops(&shared, opts.seed).await;
    let plans = random_plans(opts, clean, shared.image_size);
    let mut report = SweepReport {
        clean_ops: clean,
        ..Default::default()
    };
    let results = run_plans(&shared, plans, opts.jobs, &mut report).await?;
    let mut by_board = received_logs(&collector, &results).await;
    collector.close().await;
    for (seed, cuts, mut result) in results {
        let mut log = by_board.remove(&result.client_id).unwrap_or_default();
        log.sort();
        log.dedup_by_key(|e| e.0);
        check_invariants(
            &result.boot_choices,
            &result.trace,
            &result.cut_boots,
            &log,
            &[],
            &mut result.what,
        );
        report.runs += 1;
        report.boots += result.boots;
        report.redownloaded += result.redownloaded;
        report.resumed_runs += u64::from(result.resumed);
        if cuts.len() == 1 {
            report.max_redownload = report.max_redownload.max(result.redownloaded);
        }
        if !result.what.is_empty() {
            report.violations.push(Violation {
                seed,
                cuts: cuts.iter().map(|c| c.to_string()).collect(),
                what: result.what,
            });
        }
    }
    report.wall = started.elapsed();
    Ok(report)
}

/// One run of [`random_sweep`]: its seed, its cuts and what the board did.
type PlanResult = (u64, Vec<CutAt>, RunResult);

/// The world of a random sweep, serving release 1.1, and the collector of its boards' logs.
async fn random_sweep_world(
    opts: &SweepOptions,
    broker: &BrokerChoice,
) -> Result<(Arc<Shared>, Collector), WorldError> {
    let world = World::start(broker, false).await?;
    let image = image::build("1.1", opts.image_size, 11);
    let image_size = image.len() as u64;
    world.github.set_releases(
        "acme",
        "thermostat",
        vec![Release::new("1.1", 1_700_000_000).with_asset(Asset::new("firmware.bin", image))],
    );
    let (prefix, conf) = topics_and_conf(&world, opts.bootloader);
    let running = image::build("1.0", 32 * 1024, 10);
    let template = image::provision(conf.as_bytes(), &running, opts.seed);
    let collector = Collector::connect(&world.broker, &prefix).await?;
    let http = world.http_client(&crate::world::SimDns::default())?;
    let shared = Arc::new(Shared {
        world,
        template,
        http,
        image_size,
        latest: "1.1".into(),
        prefix,
        bootloader: Bootloader {
            model: opts.bootloader,
            ..Bootloader::default()
        },
    });
    Ok((shared, collector))
}

/// The flash operations of a clean update: until the new image confirmed itself and the
/// application runs.
async fn clean_update_ops(shared: &Shared, seed: u64) -> u64 {
    let mut board = VirtualBoard::new(shared.template.clone(), "sweep-clean", seed);
    board.bootloader = shared.bootloader;
    let wiring = Wiring {
        broker: shared.world.board_broker(),
    };
    let mut triggers = Triggers::default();
    while board.boots < 4 && board.boot(&shared.http, &wiring, &mut triggers).await != BootEnd::App
    {
    }
    board.flash.ops()
}

/// The runs: each a seed and one to three cuts (at an operation, a download byte or a trace
/// event) drawn from it; without `--random`, one cut at each operation of the clean update.
fn random_plans(opts: &SweepOptions, clean: u64, image_size: u64) -> Vec<(u64, Vec<CutAt>)> {
    match &opts.random {
        None => (1..=clean)
            .map(|n| (opts.seed ^ n, vec![CutAt::Op(n)]))
            .collect(),
        Some((runs, seed)) => (0..u64::from(*runs))
            .map(|i| {
                let run_seed = seed.wrapping_add(i);
                let mut rng = SplitMix(run_seed);
                let cuts = (0..1 + rng.below(3))
                    .map(|_| match rng.below(4) {
                        0 => CutAt::Byte(1 + rng.below(image_size)),
                        1 => CutAt::Event(
                            ["progress", "switch", "confirmed", "trial", "published"]
                                [rng.below(5) as usize],
                            1,
                        ),
                        _ => CutAt::Op(1 + rng.below(clean + clean / 5)),
                    })
                    .collect();
                (run_seed, cuts)
            })
            .collect(),
    }
}

/// Runs every plan, `jobs` at once. A run that panicked is a violation in `report` (and
/// counted as a run); the others are returned for the log check.
async fn run_plans(
    shared: &Arc<Shared>,
    plans: Vec<(u64, Vec<CutAt>)>,
    jobs: usize,
    report: &mut SweepReport,
) -> Result<Vec<PlanResult>, WorldError> {
    let semaphore = Arc::new(tokio::sync::Semaphore::new(jobs.max(1)));
    let mut tasks = Vec::new();
    for (id, (seed, cuts)) in plans.into_iter().enumerate() {
        let shared = shared.clone();
        let permit = semaphore
            .clone()
            .acquire_owned()
            .await
            .map_err(|e| WorldError::Unresolvable(e.to_string()))?;
        let plan = (seed, cuts.clone());
        tasks.push((
            plan,
            tokio::spawn(async move {
                let result = run_one(&shared, id as u64, seed, &cuts).await;
                drop(permit);
                (seed, cuts, result)
            }),
        ));
    }
    let mut results = Vec::new();
    for ((seed, cuts), task) in tasks {
        match task.await {
            Ok(done) => results.push(done),
            // A panic in the core or the driver is the worst violation, not a run to skip.
            Err(e) => report.violations.push(Violation {
                seed,
                cuts: cuts.iter().map(|c| c.to_string()).collect(),
                what: vec![format!("invariant: the run panicked: {e}")],
            }),
        }
    }
    report.runs += report.violations.len() as u64;
    Ok(results)
}

/// The activity log as the broker received it, per board (the topic names the board): waits
/// until every record the runs published has arrived, or 10 s.
async fn received_logs(
    collector: &Collector,
    results: &[PlanResult],
) -> std::collections::HashMap<String, Vec<(u64, String, String)>> {
    let expected: std::collections::BTreeSet<(String, u64)> = results
        .iter()
        .flat_map(|(_, _, r)| {
            r.trace.iter().filter_map(|l| match l.event {
                Event::Published { seq } => Some((r.client_id.clone(), u64::from(seq))),
                _ => None,
            })
        })
        .collect();
    let messages =
        crate::scenario::wait_for_log(collector, &expected, Duration::from_secs(10)).await;
    let mut by_board: std::collections::HashMap<String, Vec<(u64, String, String)>> =
        Default::default();
    for m in messages {
        if let Some((board, seq)) = crate::scenario::log_key(&m) {
            let payload = String::from_utf8_lossy(&m.payload).into_owned();
            by_board
                .entry(board)
                .or_default()
                .push((seq, String::new(), payload));
        }
    }
    by_board
}
