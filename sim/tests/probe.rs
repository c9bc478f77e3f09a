//! `sim probe` against a server that is not ours: `fixtures/tools/plain_github.py`, a
//! stdlib-Python GitHub written independently of the simulator's mock (its own release JSON,
//! a signed ~1.2 KB redirect to another host name, Range/206, a private-repository mode).

use firmware::trace::{ErrorCode, Purpose};
use sha2::{Digest, Sha256};
use sim::probe::{Decision, ProbeOptions, ProbeReport, Step, Token, probe};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

const REPO: &str = "acme/thermostat";
const ASSET: &str = "firmware-esp32c3.bin";
const TOKEN: &str = "github_pat_probe_test_0123456789";

/// The Python server, killed when dropped.
struct PlainGithub {
    child: Child,
    base: String,
}

impl PlainGithub {
    /// Serves `image` as release 1.2 with these extra command-line flags.
    fn start(image: &Path, flags: &[&str]) -> PlainGithub {
        let script =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/tools/plain_github.py");
        let mut child = Command::new("python3")
            .arg(script)
            .arg(image)
            .args(["--repo", REPO, "--tag", "1.2", "--asset", ASSET])
            .args(flags)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("python3 runs plain_github.py");
        let mut line = String::new();
        let stdout = child.stdout.take().expect("piped stdout");
        BufReader::new(stdout)
            .read_line(&mut line)
            .expect("the server prints its URL");
        let base = line.trim().to_string();
        assert!(
            base.starts_with("http://127.0.0.1:"),
            "server said {base:?}"
        );
        PlainGithub { child, base }
    }

    fn options(&self, from: &str) -> ProbeOptions {
        let mut opts = ProbeOptions::new(REPO, ASSET);
        opts.api_base = self.base.clone();
        opts.from = from.to_string();
        opts
    }
}

impl Drop for PlainGithub {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Writes `bytes` under the test's temporary folder.
fn write(name: &str, bytes: &[u8]) -> PathBuf {
    let path = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("probe-{name}"));
    std::fs::write(&path, bytes).expect("temporary file");
    path
}

/// A real ESP32-C3 app image of version 1.2 (what `sim image --version 1.2 --size 200KiB` writes).
fn release_image() -> Vec<u8> {
    sim::image::build("1.2", 200 * 1024, 1)
}

async fn run(opts: &ProbeOptions) -> ProbeReport {
    let report = probe(opts).await.expect("the probe runs");
    eprintln!("{}", report.summary());
    report
}

#[tokio::test]
async fn installs_through_a_long_signed_redirect_and_the_flash_boots_it() {
    let image = release_image();
    let server = PlainGithub::start(&write("installs.bin", &image), &[]);
    let report = run(&server.options("1.0")).await;

    assert_eq!(
        report.decision,
        Decision::Installs {
            version: "1.2".into()
        }
    );
    assert!(report.board_succeeds());
    assert_eq!(report.bytes as usize, image.len());
    // One redirect, to another host, through a Location as long as GitHub's signed ones.
    assert_eq!(report.redirects.len(), 1, "{:?}", report.redirects);
    let redirect = &report.redirects[0];
    assert_eq!(redirect.status, 302);
    assert!(redirect.from_host.starts_with("127.0.0.1:"));
    assert!(redirect.to_host.starts_with("localhost:"));
    assert!(
        redirect.location_len >= 1000,
        "Location of {} bytes",
        redirect.location_len
    );
    // What the bootloader model starts after the switch: the new image, from the slot
    // otadata selects, no fallback.
    let boot = report.boot.as_ref().expect("the bootloader model ran");
    assert_eq!((boot.slot, boot.selected), (1, 1));
    assert_eq!(boot.version, "1.2");
    assert_eq!(
        report.image_sha256.as_deref(),
        Some(hex::encode(Sha256::digest(&image)).as_str()),
        "the slot holds the served bytes"
    );
    let digest = report.release.as_ref().and_then(|r| r.digest.as_deref());
    assert_eq!(
        digest,
        Some(format!("sha256:{}", hex::encode(Sha256::digest(&image))).as_str())
    );
    let summary = report.summary();
    assert!(
        summary.starts_with(&format!(
            "installs 1.2 (204,800 bytes, sha256 ok, redirect {} bytes to localhost:",
            sim::probe::thousands(redirect.location_len as u64)
        )),
        "{summary}"
    );
    // No token configured: nothing authorized anywhere.
    assert!(report.requests.iter().all(|r| !r.authorized));
    assert_eq!(report.hosts().len(), 2);
}

#[tokio::test]
async fn a_wrong_digest_is_refused_as_hash_mismatch() {
    let server = PlainGithub::start(&write("digest.bin", &release_image()), &["--wrong-digest"]);
    let report = run(&server.options("1.0")).await;

    assert_eq!(report.decision, Decision::Refuses);
    assert!(!report.board_succeeds());
    assert_eq!(report.error, ErrorCode::HashMismatch);
    assert_eq!(report.failed_step, Some(Step::Verify));
    assert!(report.boot.is_none(), "nothing was switched to");
    assert!(report.summary().starts_with(
        "refuses: hash_mismatch: SHA-256 differs from the release digest\nfailed step: verify"
    ));
}

#[tokio::test]
async fn a_board_already_on_the_release_is_up_to_date() {
    let server = PlainGithub::start(&write("uptodate.bin", &release_image()), &[]);
    let report = run(&server.options("1.2")).await;

    assert_eq!(report.decision, Decision::UpToDate);
    assert!(report.board_succeeds());
    assert_eq!(report.requests.len(), 1, "only the release check");
    assert_eq!(report.requests[0].purpose, Purpose::Check);
    assert_eq!(report.bytes, 0);
    assert!(
        report
            .summary()
            .starts_with("up to date (running 1.2, latest release 1.2)")
    );
}

#[tokio::test]
async fn an_image_for_another_chip_is_refused_as_wrong_chip() {
    let mut image = release_image();
    // esp_image_header_t.chip_id (bytes 12..14): 0 is the classic ESP32.
    image[12..14].copy_from_slice(&0u16.to_le_bytes());
    let server = PlainGithub::start(&write("chip.bin", &image), &[]);
    let report = run(&server.options("1.0")).await;

    assert_eq!(report.decision, Decision::Refuses);
    assert_eq!(report.error, ErrorCode::WrongChip);
    let summary = report.summary();
    assert!(
        summary.contains("the release image is for ESP32 (chip id 0)")
            && summary.contains("ESP32-C3, chip id 5"),
        "{summary}"
    );
}

#[tokio::test]
async fn a_private_repository_sends_the_token_to_the_api_host_only() {
    let server = PlainGithub::start(&write("private.bin", &release_image()), &["--token", TOKEN]);
    let mut opts = server.options("1.0");
    opts.token = Some(Token::new(TOKEN));
    let report = run(&opts).await;

    // The server answers 401 without the token on the API and 400 with any token on the
    // asset host: an install proves both.
    assert_eq!(
        report.decision,
        Decision::Installs {
            version: "1.2".into()
        }
    );
    let authorized: Vec<(bool, &str)> = report
        .requests
        .iter()
        .map(|r| (r.authorized, r.host.split(':').next().unwrap_or("")))
        .collect();
    assert_eq!(
        authorized,
        [
            (true, "127.0.0.1"),
            (true, "127.0.0.1"),
            (false, "localhost")
        ]
    );
    assert!(report.requests[1].path.contains("/releases/assets/"));
    let json = report.to_json().to_string();
    assert!(!json.contains(TOKEN), "the token leaked into the report");
}

#[tokio::test]
async fn an_unreachable_api_keeps_the_board_retrying_and_the_probe_stops() {
    // A port that accepts and closes at once: every request fails below HTTP.
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0))
        .await
        .expect("bind");
    let port = listener.local_addr().expect("address").port();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            drop(stream);
        }
    });
    let mut opts = ProbeOptions::new(REPO, ASSET);
    opts.api_base = format!("http://127.0.0.1:{port}");
    opts.max_retries = 2;
    let report = run(&opts).await;

    assert_eq!(report.decision, Decision::KeepsRetrying);
    assert!(!report.board_succeeds());
    assert_eq!(report.error, ErrorCode::Network);
    assert_eq!(report.failed_step, Some(Step::ReleaseCheck));
    assert_eq!(report.requests.len(), 3, "the first try and two retries");
    assert_eq!(report.retries_performed(), 2);
}

#[test]
fn the_cli_prints_one_json_object_exits_by_verdict_and_never_prints_the_token() {
    let image = write("cli.bin", &release_image());
    let sim = env!("CARGO_BIN_EXE_sim");
    let private = PlainGithub::start(&image, &["--token", TOKEN]);
    let out = Command::new(sim)
        .args(["probe", "--repo", REPO, "--asset", ASSET, "--json"])
        .args([
            "--api-base",
            &private.base,
            "--token-env",
            "PROBE_TEST_TOKEN",
        ])
        .env("PROBE_TEST_TOKEN", TOKEN)
        .output()
        .expect("sim runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    assert!(!stdout.contains(TOKEN) && !String::from_utf8_lossy(&out.stderr).contains(TOKEN));
    let json: serde_json::Value = serde_json::from_str(stdout.trim()).expect("one JSON object");
    assert_eq!(json["decision"], "installs");
    assert_eq!(json["installs"], "1.2");
    assert!(json["redirects"][0]["location_bytes"].as_u64() >= Some(1000));
    assert_eq!(json["boot"]["version"], "1.2");

    let wrong = PlainGithub::start(&image, &["--wrong-digest"]);
    let out = Command::new(sim)
        .args(["probe", "--repo", REPO, "--asset", ASSET])
        .args(["--api-base", &wrong.base])
        .output()
        .expect("sim runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains("refuses: hash_mismatch"), "{stdout}");
    assert!(stdout.contains("failed step: verify"), "{stdout}");

    let out = Command::new(sim)
        .args(["probe", "--repo", REPO, "--asset", ASSET, "--token-env"])
        .arg("PROBE_TEST_UNSET_VARIABLE")
        .output()
        .expect("sim runs");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("PROBE_TEST_UNSET_VARIABLE"));
}
