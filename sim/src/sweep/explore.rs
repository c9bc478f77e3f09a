//! The exhaustive sweep: every flash operation of a workload, torn in every shape, and
//! again in the recovery from each of those cuts, down to a depth.
//!
//! 1. The clean run: a freshly flashed board runs the workload to its end while the flash
//!    records every operation.
//! 2. From that record, the flash state every (operation, shape) cut leaves is computed
//!    without running anything, and identified by a digest. A state already judged is
//!    counted as a duplicate and not run again.
//! 3. Each new state is reached by a real run: a copy of the board, the cut armed on its
//!    flash at that operation in that shape. The flash it leaves must have the computed
//!    digest (else the run was not deterministic: a violation). Then the board recovers
//!    with no more cuts, recording its operations, and the result is judged:
//!    - by the oracle ([`crate::oracle`]), which shares no code with the core or the
//!      bootloader model, at every boot and at the end: bootloader and partition table
//!      intact, the slot that boots holds an approved image byte for byte, otadata confirms
//!      it at the end, no downgrade below a confirmed image;
//!    - by the core's own reports checked against the oracle (the slot and version each
//!      boot reports);
//!    - by the boot and log invariants of the scenarios (no bootloader fallback, otadata
//!      keeps an entry, every acknowledged record reached the broker, no gap);
//!    - by the workload's end state (the version it must end on, settled).
//! 4. With depth left, the recovery's own record gives the next cuts (step 2 again).
//!
//! Every tearing is drawn from a seed derived from the sweep's seed and the path of cuts, so
//! `--cut` reproduces one path exactly.

use super::states::{SectorDigests, candidates};
use super::workload::Workload;
use super::{SweepOptions, Violation};
use crate::board::{BootEnd, Triggers, VirtualBoard, Wiring};
use crate::bootloader::Bootloader;
use crate::flash::{OpKind, OpRecord};
use crate::oracle::{History, Oracle, OracleSpec};
use crate::report::{BootTimeline, FlashMark, LedMark, MqttMark, Timeline};
use crate::scenario::{LogFacts, check_boot_invariants};
use crate::torn::Torn;
use crate::world::{World, conf_json};
use firmware::storage::SECTOR;
use firmware::trace::{Event, Outcome};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// Real silence of a loopback server before the virtual clock jumps to the core's stall
/// deadline. No workload stalls a server, and every forked run must repeat its recorded
/// flash history: on a loaded machine a one-second pause must not become a retry (the
/// journal write of a failed check) that no other run of that state makes.
const SWEEP_IO_PATIENCE: std::time::Duration = std::time::Duration::from_secs(10);

/// Where `conf.json` lives in the default partition table (and what digests leave out).
pub(super) const CONFIG: Range<u32> = 0x3d_0000..0x3d_4000;
/// Where otadata lives in the default partition table.
const OTADATA: Range<u32> = 0xd000..0xf000;
/// How long a timeline shows the board dark after a power cut, and between a reboot's boots.
const DARK_MS: u64 = 500;
const REBOOT_MS: u64 = 50;
/// Trial boots a new image gets to confirm itself (DESIGN.md: an image that cannot confirm is
/// rolled back; the README's scenario 20: after three lost trial boots).
const TRIALS: u32 = 3;
/// The client id in every run's conf.json.
const BOARD: &str = "swept";
/// Boots a run may take before it counts as not settling.
const MAX_BOOTS: u32 = 14;

/// One cut of a path: the n-th operation of a run from the previous state, in a shape.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Step {
    /// Operation number, counted from 1 in the run from the previous state.
    pub op: u64,
    /// The shape.
    pub torn: Torn,
    /// Erase or program.
    pub kind: OpKind,
    /// Where.
    pub offset: u32,
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "op{}:{}", self.op, self.torn)
    }
}

/// Parses `--cut`: steps like `op37:erase-early` separated by `/`.
pub fn parse_path(s: &str) -> Result<Vec<(u64, Torn)>, String> {
    s.split('/')
        .map(|step| {
            let (op, torn) = step
                .strip_prefix("op")
                .and_then(|r| r.split_once(':'))
                .ok_or_else(|| format!("`{step}`: a cut is opN:SHAPE, e.g. op37:erase-early"))?;
            let op: u64 = op
                .parse()
                .map_err(|_| format!("`{step}`: `{op}` is no operation number"))?;
            let torn: Torn = torn.parse().map_err(|e| format!("`{step}`: {e}"))?;
            Ok((op, torn))
        })
        .collect()
}

/// The seed a cut tears with: a function of its parent's seed, operation and shape only.
fn child_seed(parent: u64, op: u64, torn: Torn) -> u64 {
    let mut z = parent ^ op.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ ((torn as u64 + 1) << 56);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A board between two boots from which runs start, with the operations of its uncut run.
struct Parent {
    board: VirtualBoard,
    triggers: Triggers,
    history: Watch,
    path: Vec<Step>,
    seed: u64,
    digests: SectorDigests,
    ops: Vec<OpRecord>,
    /// The runs (their topics) that delivered this state's earlier log records: the parts
    /// before each cut of its path.
    lineage: Vec<String>,
}

struct Node {
    parent: Arc<Parent>,
    step: Step,
    seed: u64,
    digest: u128,
}

/// What one workload's exploration found.
#[derive(Clone, Debug, Default)]
pub struct Explored {
    /// Operations of the clean run.
    pub clean_ops: u64,
    /// Cut points considered per depth (index 0: depth 1), duplicates included.
    pub cuts_per_depth: Vec<u64>,
    /// States run and judged.
    pub distinct: u64,
    /// Cut points whose state was already judged.
    pub duplicates: u64,
    /// (operation, shape) pairs where the shape does not fit the operation.
    pub not_applicable: u64,
    /// Cut points per partition the cut operation touched.
    pub phases: BTreeMap<String, u64>,
    /// Boots over all runs.
    pub boots: u64,
    /// Failed paths.
    pub violations: Vec<Violation>,
    /// Largest download again after a single cut.
    pub max_redownload: u64,
    /// Runs that resumed a download.
    pub resumed_runs: u64,
    /// Runs whose new image lost all its trial boots to cuts and was rolled back, as the
    /// product promises (accepted as an end instead of the new version).
    pub rolled_back: u64,
    /// A cut half way through the clean run, in a shape that fits its operation: the run a
    /// report's timeline shows when nothing failed.
    pub sample: Option<(u64, Torn)>,
}

/// A judged run waiting for the broker's side of its log.
struct Judged {
    /// Every run whose topic carries this board's records: its lineage and its own.
    topics: Vec<String>,
    path: Vec<Step>,
    seed: u64,
    facts: LogFacts,
}

pub(super) struct Engine {
    api_base: String,
    broker: std::net::SocketAddr,
    http: reqwest::Client,
    prefix: String,
    workload: Workload,
    oracle: Oracle,
    bootloader: Bootloader,
    shapes: Vec<Torn>,
    max_depth: u32,
    /// Only this path (and its prefixes) when reproducing one.
    only: Option<Vec<(u64, Torn)>>,
    regions: Vec<(Range<u32>, String)>,
    image_size: u64,
    /// The first record the broker can see (a prepared log's older ones were delivered).
    log_from: u64,
    seen: Mutex<HashMap<u128, u32>>,
    found: Mutex<Explored>,
    judged: Mutex<Vec<Judged>>,
    ids: AtomicU64,
    sweep_seed: u64,
}

enum RunEnd {
    /// The armed cut happened.
    Cut,
    /// The board settled in the workload's end state.
    Settled,
    /// Something else (described in the run's failures).
    Failed,
}

impl Engine {
    pub(super) fn new(
        world: &World,
        prefix: String,
        workload: Workload,
        template: &crate::flash::SimFlash,
        image_size: u64,
        log_from: u64,
        opts: &SweepOptions,
    ) -> Result<Engine, String> {
        let http = world
            .http_client(&crate::world::SimDns::default())
            .map_err(|e| e.to_string())?;
        let oracle = Oracle::new(OracleSpec {
            reference: template.contents().to_vec(),
            approved: workload.approved.clone(),
            rollback: opts.bootloader == crate::bootloader::Model::IdfRollback,
        })
        .map_err(|e| format!("oracle: {e}"))?;
        let table = firmware::storage::Layout::read(&mut template.clone())
            .map_err(|e| format!("partition table: {e:?}"))?;
        let mut regions = vec![(OTADATA, "otadata".to_string())];
        for (i, s) in table.slots.iter().enumerate() {
            regions.push((s.offset..s.end(), format!("ota_{i}")));
        }
        regions.push((table.state.offset..table.state.end(), "otastate".into()));
        regions.push((table.log.offset..table.log.end(), "otalog".into()));
        Ok(Engine {
            api_base: world.api_base(),
            broker: world.board_broker(),
            http,
            prefix,
            workload,
            oracle,
            bootloader: Bootloader {
                model: opts.bootloader,
                ..Bootloader::default()
            },
            shapes: opts.torn.clone(),
            max_depth: opts.depth.max(1),
            only: opts.cut.clone(),
            regions,
            image_size,
            log_from,
            seen: Mutex::new(HashMap::new()),
            found: Mutex::new(Explored::default()),
            judged: Mutex::new(Vec::new()),
            ids: AtomicU64::new(0),
            sweep_seed: opts.seed,
        })
    }

    /// The releases the workload publishes (what the mock GitHub must serve for a rerun).
    pub(super) fn releases(&self) -> Vec<crate::github::Release> {
        self.workload.releases.clone()
    }

    fn region(&self, offset: u32) -> String {
        self.regions
            .iter()
            .find(|(r, _)| r.contains(&offset))
            .map_or_else(|| format!("0x{offset:x}"), |(_, n)| n.clone())
    }

    fn wiring(&self) -> Wiring {
        Wiring {
            broker: self.broker,
        }
    }

    /// Gives `board` a run id of its own: MQTT client id and log topic (conf.json).
    fn retopic(&self, board: &mut VirtualBoard) {
        let id = self.ids.fetch_add(1, Ordering::Relaxed);
        let run = format!("{}-{id}", self.workload.kind);
        let conf = conf_json(
            &self.api_base,
            self.broker,
            BOARD,
            &format!("{}/{run}", self.prefix),
            false,
            false,
            true,
        );
        board.client_id = run;
        board.flash.load(CONFIG.start, &[0xFF; SECTOR as usize]);
        board.flash.load(CONFIG.start, conf.as_bytes());
    }

    /// A copy of `board` with its own MQTT connection and log topic. The conf.json's client
    /// id stays the same for every run: it is part of each log record on flash, and runs of
    /// one state must write the same bytes. The run is told apart by its topic prefix.
    fn fork(&self, board: &VirtualBoard) -> VirtualBoard {
        let mut copy = board.fork("");
        self.retopic(&mut copy);
        copy
    }

    /// Boots `board` until the armed cut at operation `cut_at` (when given) or until it
    /// settles, judging every boot with the oracle.
    async fn run(
        &self,
        board: &mut VirtualBoard,
        triggers: &mut Triggers,
        history: &mut Watch,
        cut_at: Option<u64>,
        what: &mut Vec<String>,
        mut on_boot: impl FnMut(&VirtualBoard, u64, &BootEnd),
    ) -> RunEnd {
        let wiring = self.wiring();
        for _ in 0..MAX_BOOTS {
            let boot = board.boots + 1;
            let view = history
                .oracle
                .boot(&self.oracle, boot, board.flash.contents());
            let start = board.clock;
            let end = board.boot(&self.http, &wiring, triggers).await;
            on_boot(board, start, &end);
            self.found.lock().map(|mut f| f.boots += 1).ok();
            // The core's report of this boot against the oracle's reading of the flash.
            if let Ok(view) = &view {
                let reported = board.trace.iter().find_map(|l| match &l.event {
                    Event::Boot { slot, version, .. } if l.boot == boot => {
                        Some((*slot, version.to_string()))
                    }
                    _ => None,
                });
                if let Some((slot, version)) = reported
                    && (usize::from(slot) != view.slot || version != view.version)
                {
                    what.push(format!(
                        "core-vs-oracle: boot {boot}: the core reports ota_{slot} {version}, the flash boots ota_{} {}",
                        view.slot, view.version
                    ));
                }
            }
            // A cut boot of the new image, not yet confirmed: a trial it may have lost.
            if end == BootEnd::PowerCut
                && let Ok(view) = &view
                && !view.confirmed
                && view.version == self.workload.final_version
            {
                history.lost_trials += 1;
            }
            match end {
                BootEnd::PowerCut => {
                    if cut_at.is_some() && board.flash.last_cut().map(|c| c.op) == cut_at {
                        return RunEnd::Cut;
                    }
                }
                BootEnd::Bricked(b) => {
                    what.push(format!("bricked: boot {boot}: {b}"));
                    return RunEnd::Failed;
                }
                BootEnd::Stuck => {
                    what.push(format!("stuck: boot {boot} waits for nothing"));
                    return RunEnd::Failed;
                }
                BootEnd::App => {
                    check_leds(board, boot, what);
                    let running = board
                        .boot_choices
                        .last()
                        .filter(|(b, _)| *b == boot)
                        .map(|(_, c)| c.version.clone());
                    let outcome = board.trace.iter().rev().find_map(|l| match &l.event {
                        Event::Outcome { result, .. } if l.boot == boot => Some(*result),
                        _ => None,
                    });
                    let settled = running.as_deref() == Some(self.workload.final_version.as_str())
                        && outcome.is_some_and(|o| self.workload.settled.contains(&o));
                    // The product's rule: an image that did not confirm itself in three trial
                    // boots is rolled back. Enough cuts on its trial boots make that the end.
                    let rolled_back = history.lost_trials >= TRIALS
                        && running.as_deref() == Some(self.workload.previous_version.as_str())
                        && matches!(outcome, Some(Outcome::RolledBack | Outcome::Failed));
                    if rolled_back && cut_at.is_none() {
                        history.ended_rolled_back = true;
                        if let Ok(mut f) = self.found.lock() {
                            f.rolled_back += 1;
                        }
                    }
                    let settled = settled || rolled_back;
                    if settled && cut_at.is_none() {
                        return RunEnd::Settled;
                    }
                }
                BootEnd::Reboot => {}
            }
        }
        what.push(match cut_at {
            Some(op) => format!(
                "nondeterministic: the run never reached flash operation {op}, where the recorded run cut"
            ),
            None => format!(
                "settle: not running {} settled after {MAX_BOOTS} boots",
                self.workload.final_version
            ),
        });
        RunEnd::Failed
    }

    /// Boots `board` until it settles, with no cut armed.
    async fn settle(
        &self,
        board: &mut VirtualBoard,
        triggers: &mut Triggers,
        history: &mut Watch,
        what: &mut Vec<String>,
    ) -> RunEnd {
        self.run(board, triggers, history, None, what, |_, _, _| {})
            .await
    }

    /// Judges a settled (or failed) run's end, and queues its log for the broker check.
    fn judge(
        &self,
        board: &VirtualBoard,
        history: &Watch,
        path: &[Step],
        seed: u64,
        topics: Vec<String>,
        what: &mut Vec<String>,
    ) {
        let findings = history.oracle.findings();
        for f in &findings[history.reported.min(findings.len())..] {
            what.push(format!("oracle: {f}"));
        }
        for f in self.oracle.judge_end(
            board.flash.contents(),
            if history.ended_rolled_back {
                &self.workload.previous_version
            } else {
                &self.workload.final_version
            },
        ) {
            what.push(format!("oracle: {f}"));
        }
        let mut boot_failures = Vec::new();
        check_boot_invariants(&board.boot_choices, &board.trace, &[], &mut boot_failures);
        what.extend(boot_failures);
        if path.len() == 1 && self.workload.redownload_bound {
            // Each interruption (the cut, and the workload's own WiFi drops) may cost what was
            // not yet durable: at most one sector and the network piece in flight.
            let again = board.downloaded.saturating_sub(self.image_size);
            let limit = (1 + self.workload.drops) * (u64::from(SECTOR) + 1460);
            if again > limit {
                what.push(format!(
                    "redownload: {again} bytes downloaded again after one cut (limit: {limit}, a sector and a TCP segment per interruption)"
                ));
            }
            if let Ok(mut f) = self.found.lock() {
                f.max_redownload = f.max_redownload.max(again);
            }
        }
        let cut_boots: Vec<u32> = board.cuts.iter().map(|(b, _)| *b).collect();
        let facts = LogFacts::of(&board.boot_choices, &board.trace, &cut_boots);
        if let Ok(mut j) = self.judged.lock() {
            j.push(Judged {
                topics,
                path: path.to_vec(),
                seed,
                facts,
            });
        }
    }

    fn violation(&self, path: &[Step], seed: u64, what: Vec<String>) {
        if let Ok(mut f) = self.found.lock() {
            f.violations.push(Violation {
                seed,
                cuts: path.iter().map(|s| s.to_string()).collect(),
                what,
            });
        }
    }

    /// The clean run from the freshly flashed board: judged, and the root of every cut.
    async fn root(&self, template: crate::flash::SimFlash) -> Option<Arc<Parent>> {
        let mut fresh = VirtualBoard::new(template, "root", self.sweep_seed);
        fresh.bootloader = self.bootloader;
        fresh.io_patience = SWEEP_IO_PATIENCE;
        let snapshot = self.fork(&fresh);
        let mut board = self.fork(&fresh);
        let mut triggers = self.workload.triggers.clone();
        let mut history = Watch::default();
        let mut what = Vec::new();
        board.flash.record_ops(true);
        let end = self
            .settle(&mut board, &mut triggers, &mut history, &mut what)
            .await;
        let ops = board.flash.take_ops();
        if let Ok(mut f) = self.found.lock() {
            f.clean_ops = ops.len() as u64;
        }

        self.judge(
            &board,
            &history,
            &[],
            self.sweep_seed,
            vec![board.client_id.clone()],
            &mut what,
        );
        if !matches!(end, RunEnd::Settled) || !what.is_empty() {
            what.insert(0, "the clean run (no cut) already fails".into());
            self.violation(&[], self.sweep_seed, what);
            return None;
        }
        Some(Arc::new(Parent {
            digests: SectorDigests::of(snapshot.flash.contents(), CONFIG),
            board: snapshot,
            triggers: self.workload.triggers.clone(),
            history: Watch::default(),
            path: Vec::new(),
            seed: self.sweep_seed,
            ops,
            lineage: Vec::new(),
        }))
    }

    /// The cuts of a parent's run that are worth running, de-duplicated.
    fn children(&self, parent: &Arc<Parent>) -> Vec<Node> {
        let depth = parent.path.len() as u32 + 1;
        let wanted = self
            .only
            .as_ref()
            .map(|only| only.get(parent.path.len()).copied());
        if wanted == Some(None) {
            return Vec::new();
        }
        let (mut cands, not_applicable) = candidates(
            parent.board.flash.contents(),
            &parent.digests,
            &parent.ops,
            &self.shapes,
            &OTADATA,
            |index, torn| child_seed(parent.seed, index as u64 + 1, torn),
        );
        if let Some(Some((op, torn))) = wanted {
            cands.retain(|c| c.index as u64 + 1 == op && c.torn == torn);
            if cands.is_empty() {
                self.violation(
                    &parent.path,
                    parent.seed,
                    vec![format!(
                        "cut: operation {op} in shape {torn} does not exist or does not apply (the run has {} operations)",
                        parent.ops.len()
                    )],
                );
            }
        } else if depth == 1
            && let Some(c) = cands.iter().find(|c| c.index >= parent.ops.len() / 2)
            && let Ok(mut f) = self.found.lock()
        {
            f.sample = Some((c.index as u64 + 1, c.torn));
        }
        if wanted.is_none() && depth == 3 && self.max_depth == 3 && !cands.is_empty() {
            // Depth 3 is sampled: one cut per depth-2 state, drawn from its seed.
            let pick =
                (child_seed(parent.seed, 0, Torn::ProgramLanded) % cands.len() as u64) as usize;
            cands = vec![cands.swap_remove(pick)];
        }
        let remaining = self.max_depth - depth;
        let mut out = Vec::new();
        let mut dups = 0;
        {
            // What else decides a state's future: the workload's faults still to come and
            // the trial boots already lost. Two states are one only when those agree too.
            let context = context_digest(&parent.triggers, parent.history.lost_trials);
            let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
            for c in cands {
                let key = c.digest ^ context;
                let new =
                    !matches!(seen.get(&key), Some(&r) if r >= remaining && self.only.is_none());
                if !new {
                    dups += 1;
                    continue;
                }
                seen.insert(key, remaining);
                let op = &parent.ops[c.index];
                out.push(Node {
                    parent: parent.clone(),
                    step: Step {
                        op: c.index as u64 + 1,
                        torn: c.torn,
                        kind: op.kind,
                        offset: op.offset,
                    },
                    seed: c.seed,
                    digest: c.digest,
                });
            }
        }
        if let Ok(mut f) = self.found.lock() {
            let d = depth as usize - 1;
            if f.cuts_per_depth.len() <= d {
                f.cuts_per_depth.resize(d + 1, 0);
            }
            f.cuts_per_depth[d] += (out.len() + dups) as u64;
            f.duplicates += dups as u64;
            f.not_applicable += not_applicable;
            for n in &out {
                *f.phases.entry(self.region(n.step.offset)).or_default() += 1;
            }
        }
        // Last pushed is run first: the newest parent's cuts, so few parents live at once.
        out.reverse();
        out
    }

    /// Runs one cut and its recovery; returns the new state as a parent when depth is left.
    async fn process(&self, node: Node) -> Option<Arc<Parent>> {
        let parent = &node.parent;
        let mut path = parent.path.clone();
        path.push(node.step.clone());
        let mut board = self.fork(&parent.board);
        board.flash.clear_dirty();
        let mut triggers = parent.triggers.clone();
        let mut history = parent.history.clone();
        // What the oracle found before this state was judged with its ancestors.
        history.reported = history.oracle.findings().len();
        let mut what = Vec::new();
        let cut_at = board.flash.ops() + node.step.op;
        board.flash.arm_cut_torn(cut_at, node.step.torn, node.seed);
        let end = self
            .run(
                &mut board,
                &mut triggers,
                &mut history,
                Some(cut_at),
                &mut what,
                |_, _, _| {},
            )
            .await;
        if !matches!(end, RunEnd::Cut) {
            self.violation(&path, node.seed, what);
            return None;
        }
        if let Ok(mut f) = self.found.lock() {
            f.distinct += 1;
        }
        // Only sectors this run changed can differ from the parent's flash.
        let real = parent.digests.after_in(
            parent.board.flash.contents(),
            board.flash.contents(),
            board.flash.dirty_sectors(),
        );
        if real != node.digest {
            what.push(format!(
                "nondeterministic: the flash after the real cut at {} differs from the state computed from the recorded run{}",
                node.step,
                divergence(parent, &node.step, node.seed, &board)
            ));
        }
        // The recovery publishes under a topic of its own: what the run delivered before the
        // cut stays apart, for the states forked from here.
        let mut lineage = parent.lineage.clone();
        lineage.push(board.client_id.clone());
        self.retopic(&mut board);
        let deeper = (path.len() as u32) < self.max_depth
            && self
                .only
                .as_ref()
                .is_none_or(|only| only.len() > path.len());
        let snapshot = deeper.then(|| (board.fork("snapshot"), triggers.clone(), history.clone()));
        board.flash.record_ops(deeper);
        let end = self
            .settle(&mut board, &mut triggers, &mut history, &mut what)
            .await;
        let ops = board.flash.take_ops();
        if board
            .trace
            .iter()
            .any(|l| matches!(l.event, Event::Resume { .. }))
            && let Ok(mut f) = self.found.lock()
        {
            f.resumed_runs += 1;
        }
        self.judge(
            &board,
            &history,
            &path,
            node.seed,
            {
                let mut topics = lineage.clone();
                topics.push(board.client_id.clone());
                topics
            },
            &mut what,
        );
        let failed = !matches!(end, RunEnd::Settled) || !what.is_empty();
        if failed {
            self.violation(&path, node.seed, what);
        }
        let (snap, snap_triggers, snap_history) = snapshot?;
        if failed {
            return None;
        }
        Some(Arc::new(Parent {
            digests: SectorDigests::of(snap.flash.contents(), CONFIG),
            board: snap,
            triggers: snap_triggers,
            history: snap_history,
            path,
            seed: node.seed,
            ops,
            lineage,
        }))
    }

    /// Explores every path from the clean run with `jobs` runs in flight.
    pub(super) async fn explore(
        self: Arc<Self>,
        template: crate::flash::SimFlash,
        jobs: usize,
    ) -> Explored {
        let engine = self;
        let Some(root) = engine.root(template).await else {
            return engine.take_found();
        };
        let stack = Arc::new(Mutex::new((engine.children(&root), 0usize)));
        drop(root);
        let notify = Arc::new(tokio::sync::Notify::new());
        let mut workers = Vec::new();
        for _ in 0..jobs.max(1) {
            let (engine, stack, notify) = (engine.clone(), stack.clone(), notify.clone());
            workers.push(tokio::spawn(async move {
                loop {
                    let next = {
                        let mut s = stack.lock().unwrap_or_else(|e| e.into_inner());
                        let n = s.0.pop();
                        if n.is_some() {
                            s.1 += 1;
                        } else if s.1 == 0 {
                            return;
                        }
                        n
                    };
                    let Some(node) = next else {
                        // Others are running and may push cuts; look again shortly.
                        let _ = tokio::time::timeout(
                            std::time::Duration::from_millis(5),
                            notify.notified(),
                        )
                        .await;
                        continue;
                    };
                    let parent = engine.process(node).await;
                    let children = parent.map(|p| engine.children(&p)).unwrap_or_default();
                    let mut s = stack.lock().unwrap_or_else(|e| e.into_inner());
                    s.0.extend(children);
                    s.1 -= 1;
                    notify.notify_waiters();
                }
            }));
        }
        for w in workers {
            if let Err(e) = w.await {
                engine.violation(
                    &[],
                    engine.sweep_seed,
                    vec![format!("panic: a run panicked: {e}")],
                );
            }
        }
        engine.take_found()
    }

    fn take_found(&self) -> Explored {
        std::mem::take(&mut *self.found.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// The broker's side of every judged run's log: what arrived on its topic, plus what
    /// its ancestors delivered before its state was forked.
    pub(super) fn check_logs(
        &self,
        received: &HashMap<String, BTreeSet<u64>>,
        found: &mut Explored,
    ) {
        let judged = std::mem::take(&mut *self.judged.lock().unwrap_or_else(|e| e.into_inner()));
        for j in judged {
            let got = delivered(received, &j.topics);
            let mut what = Vec::new();
            j.facts.check(&got, self.log_from, &mut what);
            if !what.is_empty() {
                found.violations.push(Violation {
                    seed: j.seed,
                    cuts: j.path.iter().map(|s| s.to_string()).collect(),
                    what: what.into_iter().map(|w| format!("log: {w}")).collect(),
                });
            }
        }
    }

    /// True once every record each judged run saw acknowledged has reached the broker.
    pub(super) fn log_complete(&self, received: &HashMap<String, BTreeSet<u64>>) -> bool {
        let judged = self.judged.lock().unwrap_or_else(|e| e.into_inner());
        judged.iter().all(|j| {
            let got = delivered(received, &j.topics);
            j.facts.acked.is_subset(&got)
        })
    }

    /// Runs one path again, recording everything, for the HTML page and the VCD file.
    ///
    /// The virtual clock only moves when the core waits (loopback servers answer at once), so
    /// the boots are laid end to end for display: each lasts until its last mark, a power cut
    /// keeps the board dark for [`DARK_MS`] and a reboot for [`REBOOT_MS`].
    pub(super) async fn timeline(
        &self,
        template: crate::flash::SimFlash,
        path: &[(u64, Torn)],
    ) -> Timeline {
        let mut fresh = VirtualBoard::new(template, "root", self.sweep_seed);
        fresh.bootloader = self.bootloader;
        fresh.io_patience = SWEEP_IO_PATIENCE;
        let mut board = self.fork(&fresh);
        let mut triggers = self.workload.triggers.clone();
        let mut history = Watch::default();
        let mut what = Vec::new();
        let mut seed = self.sweep_seed;
        // (boot, virtual start, how it ended, what the bootloader did, last operation number)
        let mut ends: Vec<(u32, u64, String, String, u64)> = Vec::new();
        let mut torn_ops: Vec<(u64, Torn)> = Vec::new();
        let mut ops_seen: Vec<OpRecord> = Vec::new();
        board.flash.record_ops(true);
        let steps = path.iter().map(Some).chain(std::iter::once(None));
        for step in steps {
            let cut_at = step.map(|(op, torn)| {
                seed = child_seed(seed, *op, *torn);
                let at = board.flash.ops() + op;
                board.flash.arm_cut_torn(at, *torn, seed);
                torn_ops.push((at, *torn));
                at
            });
            let end = self
                .run(
                    &mut board,
                    &mut triggers,
                    &mut history,
                    cut_at,
                    &mut what,
                    |b, start, end| {
                        let choice = b
                            .boot_choices
                            .last()
                            .filter(|(n, _)| *n == b.boots)
                            .map(|(_, c)| c.describe())
                            .unwrap_or_else(|| "nothing started".into());
                        let end = match end {
                            BootEnd::App => "app".to_string(),
                            BootEnd::Reboot => "reboot".into(),
                            BootEnd::PowerCut => "power cut".into(),
                            BootEnd::Bricked(x) => format!("bricked: {x}"),
                            BootEnd::Stuck => "stuck".into(),
                        };
                        ends.push((b.boots, start, end, choice, b.flash.ops()));
                    },
                )
                .await;
            ops_seen.extend(board.flash.take_ops());
            if !matches!(end, RunEnd::Cut) {
                break;
            }
        }
        let mut boots = Vec::new();
        let mut cursor = 0u64;
        let mut first_op = 1u64;
        for (boot, virtual_start, end, bootloader, last_op) in ends {
            let mut b = BootTimeline {
                boot,
                end,
                bootloader,
                ..BootTimeline::default()
            };
            b.leds = board
                .led_edges
                .iter()
                .filter(|e| e.boot == boot)
                .map(|e| LedMark {
                    ms: e.ms,
                    led: format!("{:?}", e.led).to_lowercase(),
                    on: e.on,
                })
                .collect();
            for l in board.trace.iter().filter(|l| l.boot == boot) {
                b.trace.push((l.ms, l.render()));
                match &l.event {
                    Event::Progress { written, total } => b.progress.push((l.ms, *written, *total)),
                    Event::Published { seq } => b.mqtt.push(MqttMark {
                        ms: l.ms,
                        seq: u64::from(*seq),
                        delivered: true,
                        summary: format!("record {seq} acknowledged"),
                    }),
                    _ => {}
                }
            }
            b.flash_ops = ops_seen
                .iter()
                .filter(|o| (first_op..=last_op).contains(&o.op))
                .map(|o| FlashMark {
                    ms: o.ms.saturating_sub(virtual_start),
                    op: o.op,
                    kind: match o.kind {
                        OpKind::Erase => "erase".into(),
                        OpKind::Write => "write".into(),
                    },
                    offset: o.offset,
                    len: o.len,
                    region: self.region(o.offset),
                    torn: torn_ops
                        .iter()
                        .find(|(at, _)| *at == o.op)
                        .map(|(_, t)| t.to_string()),
                })
                .collect();
            first_op = last_op + 1;
            let last_mark = b
                .leds
                .iter()
                .map(|m| m.ms)
                .chain(b.trace.iter().map(|t| t.0))
                .chain(b.flash_ops.iter().map(|f| f.ms))
                .max()
                .unwrap_or(0);
            b.start_ms = cursor;
            b.end_ms = cursor + last_mark + 1;
            cursor = b.end_ms
                + if b.end.starts_with("power cut") {
                    DARK_MS
                } else {
                    REBOOT_MS
                };
            boots.push(b);
        }
        let mut title = format!("{}/{}", self.workload.kind, path_id_of(path));
        if !what.is_empty() {
            title.push_str(&format!(" — {}", what.join("; ")));
        }
        Timeline { title, boots }
    }
}

/// The LEDs of a boot that reached the application, as the GPIO writes show them (not the
/// core's trace), against the product's promise (DESIGN.md): yellow on at power-on, off
/// before the application when the update routine ended well (updated, up to date) and left
/// on when it did not; green blinks twice after an update and once when there was none.
fn check_leds(board: &VirtualBoard, boot: u32, what: &mut Vec<String>) {
    use firmware::led::Led;
    let edges: Vec<_> = board.led_edges.iter().filter(|e| e.boot == boot).collect();
    let yellow: Vec<bool> = edges
        .iter()
        .filter(|e| e.led == Led::Yellow)
        .map(|e| e.on)
        .collect();
    let blinks = edges.iter().filter(|e| e.led == Led::Green && e.on).count();
    let outcome = board.trace.iter().rev().find_map(|l| match &l.event {
        Event::Outcome { result, .. } if l.boot == boot => Some(*result),
        _ => None,
    });
    let ended_well = matches!(outcome, Some(Outcome::Updated | Outcome::UpToDate));
    if yellow.first() != Some(&true) || yellow.last() != Some(&!ended_well) {
        what.push(format!(
            "leds: boot {boot}: yellow should light at power-on and {} before the application ({}), it went {yellow:?}",
            if ended_well { "go off" } else { "stay on" },
            outcome.map_or("no outcome", |o| o.name())
        ));
    }
    let expected = match outcome {
        Some(Outcome::Updated) => Some(2),
        Some(Outcome::UpToDate) => Some(1),
        _ => None,
    };
    if let Some(n) = expected
        && blinks != n
    {
        what.push(format!(
            "leds: boot {boot}: {} should blink green {n} times, it blinked {blinks}",
            outcome.map_or("?", |o| o.name())
        ));
    }
}

/// What a run's judges carry from boot to boot, across forks: the oracle's history and the
/// trial boots of the new image that power cuts took.
#[derive(Clone, Debug, Default)]
struct Watch {
    oracle: History,
    /// Oracle findings already reported (with an ancestor of this state).
    reported: usize,
    lost_trials: u32,
    ended_rolled_back: bool,
}

/// A digest of what besides the flash decides a state's future.
fn context_digest(triggers: &Triggers, lost_trials: u32) -> u128 {
    use sha2::{Digest, Sha256};
    let d = Sha256::digest(format!("{triggers:?}|{lost_trials}").as_bytes());
    let mut first = [0u8; 16];
    first.copy_from_slice(&d[..16]);
    u128::from_le_bytes(first)
}

/// Where a real cut's flash differs from the computed one, for the report.
fn divergence(parent: &Parent, step: &Step, seed: u64, board: &VirtualBoard) -> String {
    let index = step.op as usize - 1;
    let predicted = super::states::state_at(
        parent.board.flash.contents(),
        &parent.ops,
        index,
        step.torn,
        seed,
    );
    let real = board.flash.contents();
    let Some(at) = real
        .iter()
        .zip(&predicted)
        .enumerate()
        .position(|(i, (a, b))| a != b && !CONFIG.contains(&(i as u32)))
    else {
        return String::new();
    };
    let recorded = parent.ops[..(index + 1).min(parent.ops.len())]
        .iter()
        .rev()
        .find(|o| (o.offset..o.offset + o.len).contains(&(at as u32)))
        .map(|o| {
            format!(
                "; the recorded run's last operation there: {} {:?} at 0x{:x} ({} bytes) {}",
                o.op,
                o.kind,
                o.offset,
                o.len,
                String::from_utf8_lossy(&o.data[..o.data.len().min(160)])
            )
        })
        .unwrap_or_default();
    let end = (at + 200).min(real.len());
    format!(
        " (first difference at 0x{at:x}: real {}, computed {}{recorded})",
        String::from_utf8_lossy(&real[at..end]),
        String::from_utf8_lossy(&predicted[at..end])
    )
}

/// Sequence numbers the broker received on any of these runs' topics.
fn delivered(received: &HashMap<String, BTreeSet<u64>>, topics: &[String]) -> BTreeSet<u64> {
    topics
        .iter()
        .filter_map(|t| received.get(t))
        .flatten()
        .copied()
        .collect()
}

/// The id of a path given as (operation, shape) pairs.
pub fn path_id_of(path: &[(u64, Torn)]) -> String {
    path.iter()
        .map(|(op, t)| format!("op{op}:{t}"))
        .collect::<Vec<_>>()
        .join("/")
}
