//! The exhaustive power-cut sweep end to end: real runs on the embedded servers, judged by the
//! oracle. Small images keep it quick; `sim all` and the README's figures run the big ones.

use sim::sweep::workload::{Kind, Workload};
use sim::sweep::{SweepOptions, sweep, sweep_workloads};
use sim::torn::Torn;
use sim::world::BrokerChoice;

fn opts(kinds: &[Kind], depth: u32) -> SweepOptions {
    SweepOptions {
        image_size: 8 * 1024,
        workloads: kinds.to_vec(),
        depth,
        ..SweepOptions::default()
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn every_workload_survives_every_torn_cut_and_identical_states_run_once() {
    let rt = runtime();
    let report = rt
        .block_on(sweep(&opts(&Kind::ALL, 1), &BrokerChoice::Embedded))
        .unwrap();
    assert!(
        report.violations.is_empty(),
        "{:#?}",
        &report.violations[..report.violations.len().min(5)]
    );
    assert_eq!(report.workloads.len(), Kind::ALL.len());
    for w in &report.workloads {
        let e = &w.explored;
        assert!(e.clean_ops > 10, "{}: {} operations", w.kind, e.clean_ops);
        // Every (operation, shape) pair is either a cut point or does not apply.
        assert_eq!(
            e.cuts_per_depth[0] + e.not_applicable,
            e.clean_ops * Torn::ALL.len() as u64,
            "{}",
            w.kind
        );
        assert_eq!(e.cuts_per_depth[0], e.distinct + e.duplicates, "{}", w.kind);
        // Shapes of one operation often leave the same flash (an erase of an erased sector).
        assert!(e.duplicates > 0, "{}: no duplicates", w.kind);
        assert!(
            e.phases.contains_key("otadata"),
            "{}: {:?}",
            w.kind,
            e.phases
        );
    }
    let wrap = report
        .workloads
        .iter()
        .find(|w| w.kind == Kind::LogWrap)
        .unwrap();
    let plain = report
        .workloads
        .iter()
        .find(|w| w.kind == Kind::Update)
        .unwrap();
    assert!(
        wrap.explored.phases["otalog"] > plain.explored.phases["otalog"],
        "the log ring's wrap adds erases of the log to cut"
    );
}

#[test]
fn depth_two_cuts_every_recovery_and_a_path_reproduces_alone() {
    let rt = runtime();
    let mut o = opts(&[Kind::Update], 2);
    o.torn = vec![Torn::EraseEarly, Torn::ProgramPrefix, Torn::OtadataState];
    let report = rt.block_on(sweep(&o, &BrokerChoice::Embedded)).unwrap();
    assert!(report.violations.is_empty(), "{:#?}", report.violations);
    let e = &report.workloads[0].explored;
    assert_eq!(e.cuts_per_depth.len(), 2);
    assert!(
        e.cuts_per_depth[1] > e.cuts_per_depth[0] * 5,
        "{:?}",
        e.cuts_per_depth
    );

    // One path of depth 2, alone: one cut per depth, nothing else run.
    o.cut = Some(vec![(7, Torn::ProgramPrefix), (1, Torn::EraseEarly)]);
    let one = rt.block_on(sweep(&o, &BrokerChoice::Embedded)).unwrap();
    assert!(one.violations.is_empty(), "{:#?}", one.violations);
    assert_eq!(one.workloads[0].explored.distinct, 2);
    assert_eq!(one.workloads[0].explored.cuts_per_depth, vec![1, 1]);

    // A path that does not exist is an error that names it, not a silent pass.
    o.cut = Some(vec![(100_000, Torn::ProgramPrefix)]);
    let missing = rt.block_on(sweep(&o, &BrokerChoice::Embedded)).unwrap();
    assert!(
        missing.violations[0].what[0].contains("operation 100000"),
        "{:?}",
        missing.violations
    );
}

#[test]
fn the_judges_catch_a_planted_mistake() {
    let rt = runtime();
    let o = opts(&[Kind::Update], 1);
    // The board really ends on 1.1: expecting 1.0 must fail the clean run already.
    let mut wrong_end = Workload::build(Kind::Update, o.image_size);
    wrong_end.final_version = "1.0".into();
    let report = rt
        .block_on(sweep_workloads(
            &o,
            vec![wrong_end],
            &BrokerChoice::Embedded,
        ))
        .unwrap();
    assert!(
        report.violations[0].what[0].contains("clean run"),
        "{:?}",
        report.violations
    );

    // 1.1 not approved: the oracle must refuse every boot of it.
    let mut unapproved = Workload::build(Kind::Update, o.image_size);
    unapproved.approved.retain(|a| a.version != "1.1");
    let report = rt
        .block_on(sweep_workloads(
            &o,
            vec![unapproved],
            &BrokerChoice::Embedded,
        ))
        .unwrap();
    let text = format!("{:?}", report.violations);
    assert!(
        text.contains("oracle:") && text.contains("no approved image"),
        "{text}"
    );
}

/// `sim sweep` as a user runs it: the figures it prints and the four report files.
#[test]
fn the_command_prints_its_figures_and_writes_every_report() {
    let dir = std::env::temp_dir().join(format!("sim-sweep-reports-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = |name: &str| dir.join(name);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_sim"))
        .args([
            "sweep",
            "--image-size",
            "8KiB",
            "--workload",
            "update,log-wrap",
        ])
        .arg("--junit")
        .arg(file("sweep.xml"))
        .arg("--sarif")
        .arg(file("sweep.sarif"))
        .arg("--html")
        .arg(file("sweep.html"))
        .arg("--vcd")
        .arg(file("sweep.vcd"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for needle in [
        "depth 1, torn all",
        "distinct flash states run:",
        "invariant violations:               0",
        "crash points/s",
        "log-wrap",
    ] {
        assert!(
            stdout.contains(needle),
            "`{needle}` missing from:\n{stdout}"
        );
    }
    let junit = std::fs::read_to_string(file("sweep.xml")).unwrap();
    assert!(
        junit.contains("<testsuite") && !junit.contains("<failure"),
        "{junit}"
    );
    let sarif: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(file("sweep.sarif")).unwrap()).unwrap();
    assert_eq!(sarif["version"], "2.1.0");
    assert_eq!(sarif["runs"][0]["results"].as_array().unwrap().len(), 0);
    let html = std::fs::read_to_string(file("sweep.html")).unwrap();
    // Without a failure the timeline shows a cut half way through the update.
    assert!(
        html.contains("<svg") && html.contains("update/op"),
        "no timeline"
    );
    let vcd = std::fs::read_to_string(file("sweep.vcd")).unwrap();
    assert!(vcd.contains("$timescale") && vcd.contains("power"), "{vcd}");
    // The run the timeline shows was cut: power goes low once at least.
    assert!(vcd.lines().any(|l| l.trim() == "0p"), "{vcd}");

    // A violation's reproduce line is a command that runs: a path that does not exist fails
    // with a message that names it and exit status 1.
    let bad = std::process::Command::new(env!("CARGO_BIN_EXE_sim"))
        .args([
            "sweep",
            "--image-size",
            "8KiB",
            "--cut",
            "op99999:erase-half",
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&bad.stdout);
    assert_eq!(bad.status.code(), Some(1), "{text}");
    assert!(text.contains("operation 99999"), "{text}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Three cuts on the new image's trial boots: the product promises a rollback to 1.0, and the
/// sweep accepts that end only when the cuts really took the three trials.
#[test]
fn three_cuts_on_trial_boots_end_in_the_promised_rollback() {
    let rt = runtime();
    let mut o = opts(&[Kind::Update], 3);
    o.image_size = 16 * 1024;
    o.cut = Some(vec![
        (24, Torn::ProgramLanded),
        (1, Torn::ProgramPrefix),
        (3, Torn::ProgramBits),
    ]);
    let report = rt.block_on(sweep(&o, &BrokerChoice::Embedded)).unwrap();
    assert!(report.violations.is_empty(), "{:#?}", report.violations);
    assert_eq!(report.workloads[0].explored.rolled_back, 1);
    // Two cuts cannot take three trials: no path of depth 2 may end rolled back.
    o.depth = 2;
    o.cut = None;
    o.torn = vec![Torn::ProgramPrefix];
    let report = rt.block_on(sweep(&o, &BrokerChoice::Embedded)).unwrap();
    assert!(report.violations.is_empty(), "{:#?}", report.violations);
    assert_eq!(report.workloads[0].explored.rolled_back, 0);
}
