//! `sim serve --release TAG=PATH` serves the user's own image files as the releases of
//! `acme/thermostat`, the last one given as the latest, each as `firmware.bin`.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

/// Kills the server when the test ends, however it ends.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test]
async fn serves_the_given_files_as_releases_the_last_one_latest() {
    let dir = std::env::temp_dir().join(format!("sim-serve-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (old, new) = (
        sim::image::build("1.1", 40_000, 11),
        sim::image::build("1.2", 70_000, 12),
    );
    std::fs::write(dir.join("a.bin"), &old).unwrap();
    std::fs::write(dir.join("b.bin"), &new).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_sim"))
        .args(["serve", "--addr", "127.0.0.1:0", "--release"])
        .arg(format!("1.1={}", dir.join("a.bin").display()))
        .arg("--release")
        .arg(format!("1.2={}", dir.join("b.bin").display()))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let server = Server(child);
    let mut first = String::new();
    BufReader::new(stdout).read_line(&mut first).unwrap();
    let base = first
        .split_whitespace()
        .nth(1)
        .unwrap_or_else(|| panic!("no URL in {first:?}"))
        .to_string();
    assert!(first.contains("1.1 (40"), "{first}");
    let http = reqwest::Client::new();
    let latest = http
        .get(format!("{base}/repos/acme/thermostat/releases/latest"))
        .header("user-agent", "test")
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    let latest: serde_json::Value = serde_json::from_slice(&latest).unwrap();
    assert_eq!(latest["tag_name"], "1.2", "{latest}");
    let asset = &latest["assets"][0];
    assert_eq!(asset["name"], "firmware.bin");
    assert_eq!(asset["size"], new.len());
    // The browser URL redirects to the asset host; reqwest follows.
    let url = asset["browser_download_url"].as_str().unwrap();
    let body = http.get(url).send().await.unwrap().bytes().await.unwrap();
    assert_eq!(body.as_ref(), new.as_slice());
    drop(server);
}

#[test]
fn a_release_that_is_not_tag_eq_path_or_a_missing_file_is_refused_by_name() {
    let out = Command::new(env!("CARGO_BIN_EXE_sim"))
        .args(["serve", "--release", "firmware.bin"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("`firmware.bin` is not TAG=PATH"), "{err}");
    let out = Command::new(env!("CARGO_BIN_EXE_sim"))
        .args([
            "serve",
            "--addr",
            "127.0.0.1:0",
            "--release",
            "1.1=/nonexistent/x.bin",
        ])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("--release 1.1=/nonexistent/x.bin"), "{err}");
}
