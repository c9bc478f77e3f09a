//! Contract tests: GitHub's response shapes, recorded in `fixtures/github/`, served by wiremock
//! to the virtual board (the OTA core driven by the simulator's reqwest client), and what the
//! core does with each.
//!
//! The mock GitHub in `sim::github` and the core were written from the same understanding of
//! GitHub, so a wrong belief shared by both (a 256-byte URL buffer against ~1 KB signed
//! redirects, say) passes every scenario. Here the server is not ours: three wiremock servers
//! stand in for GitHub's three hosts and answer with the recorded status, headers and body.
//!
//! ```text
//!  board ──GET /repos/acme/thermostat/releases/latest──────▶ api    (api.github.com)
//!  board ──GET /repos/…/releases/assets/{id} (with a token)─▶ api    ─┐ 302, ~1 KB Location
//!  board ──GET /acme/thermostat/releases/download/…────────▶ web    (github.com) ─┤
//!  board ──GET /github-production-release-asset…?sig=…──────▶ assets (release-assets / objects
//!                                                                     .githubusercontent.com)
//! ```
//!
//! What the test changes in a recording, and nothing else (see `fixtures/github/README.md`):
//! the scheme and host of GitHub's URLs become the wiremock servers' (path and query stay byte
//! for byte), the firmware asset's `size` and `digest` become those of the image the test
//! built, `Content-Length` / `Content-Range` follow the bytes actually served, and a chunked
//! recording is de-chunked so that hyper can chunk it again.

use std::net::SocketAddr;
use std::time::Duration;

use firmware::trace::{ErrorCode, Event, Purpose};
use sha2::{Digest, Sha256};
use sim::board::{BootEnd, TraceLine, Triggers, VirtualBoard, Wiring};
use sim::image;
use sim::scenario::led_string;
use sim::world::{BrokerChoice, SimDns, board_http_client, broker_addr, conf_json};
use wiremock::matchers::{header, header_exists, method, path};
use wiremock::{Mock, MockServer, Request, ResponseTemplate};

/// Where the recordings are.
const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../fixtures/github");
/// The recordings' firmware asset: its `size` and `digest` as the JSON spells them. The test
/// replaces exactly these with its own image's (a recording that no longer has them fails).
const RECORDED_SIZE: &str = "\"size\":1048592,";
const RECORDED_DIGEST: &str =
    "sha256:79cd91558852afbb70c99695471119797fa0fa0f82ec14f5c6370db0cfbd9ab5";
/// The release in the recordings, and the version inside the image the test publishes.
const TAG: &str = "v1.1.0";
const NEW_VERSION: &str = "1.1.0";
const RUNNING_VERSION: &str = "1.0.3";
const LATEST: &str = "/repos/acme/thermostat/releases/latest";
const DOWNLOAD: &str = "/acme/thermostat/releases/download/v1.1.0/firmware.bin";
const ASSET_API: &str = "/repos/acme/thermostat/releases/assets/316540211";
/// conf.json's `github.token` (see `sim::world::conf_json`).
const TOKEN: &str = "sim-token";
/// Size of the image the test publishes: 38 sectors, the last one partial.
const IMAGE_SIZE: usize = 150 * 1024 + 700;
/// Where ota_1 starts (the board boots ota_0, so updates go there).
const OTA_1: usize = 0x1f_0000;

// ---------------------------------------------------------------------------------------------
// Recordings

/// One recorded response: status, headers in their order, body.
#[derive(Clone, Debug)]
struct Recorded {
    name: String,
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Recorded {
    /// Reads `fixtures/github/{name}`: status line, `name: value` lines, blank line, body
    /// (CRLF as sent; a chunked body is decoded here and chunked again by hyper).
    fn load(name: &str) -> Recorded {
        let path = format!("{FIXTURES}/{name}");
        let raw = std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
        let split = raw
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .unwrap_or_else(|| panic!("{name}: no blank line after the head"));
        let head = std::str::from_utf8(&raw[..split]).expect("the head is text");
        let mut lines = head.split("\r\n");
        let status_line = lines.next().expect("a status line");
        let status = status_line
            .strip_prefix("HTTP/1.1 ")
            .and_then(|s| s.get(..3))
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("{name}: bad status line {status_line:?}"));
        let headers: Vec<(String, String)> = lines
            .map(|l| {
                let (k, v) = l
                    .split_once(": ")
                    .unwrap_or_else(|| panic!("{name}: bad header line {l:?}"));
                (k.to_owned(), v.to_owned())
            })
            .collect();
        let mut rec = Recorded {
            name: name.to_owned(),
            status,
            headers,
            body: raw[split + 4..].to_vec(),
        };
        if rec.header("transfer-encoding") == Some("chunked") {
            rec.body = dechunk(&rec.body, name);
        }
        rec
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn set_header(mut self, name: &str, value: &str) -> Self {
        match self
            .headers
            .iter_mut()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
        {
            Some(h) => h.1 = value.to_owned(),
            None => self.headers.push((name.to_owned(), value.to_owned())),
        }
        self
    }

    /// Points GitHub's hosts at the wiremock servers, in headers and (text) body.
    fn rewrite_hosts(mut self, hosts: &Hosts) -> Self {
        for (_, v) in &mut self.headers {
            *v = hosts.rewrite(v);
        }
        if let Ok(text) = std::str::from_utf8(&self.body) {
            self.body = hosts.rewrite(text).into_bytes();
        }
        self
    }

    /// Replaces `from` in the body, which must occur exactly once.
    fn replace_once(mut self, from: &str, to: &str) -> Self {
        let text = String::from_utf8(self.body).expect("a text body");
        assert_eq!(
            text.matches(from).count(),
            1,
            "{}: `{from}` must occur once",
            self.name
        );
        self.body = text.replacen(from, to, 1).into_bytes();
        self
    }

    /// The release JSON describing `image` as its `firmware.bin`.
    fn describing(self, image: &[u8]) -> Self {
        let digest = format!("sha256:{}", hex::encode(Sha256::digest(image)));
        self.replace_once(RECORDED_SIZE, &format!("\"size\":{},", image.len()))
            .replace_once(RECORDED_DIGEST, &digest)
    }

    /// An asset-host recording carrying `image` from byte `from` on (Content-Range follows).
    fn carrying(mut self, image: &[u8], from: usize) -> Self {
        self.body = image[from..].to_vec();
        if self.status == 206 {
            let range = format!("bytes {from}-{}/{}", image.len() - 1, image.len());
            self = self.set_header("content-range", &range);
        }
        self
    }

    /// A 416 recording for an asset of `len` bytes.
    fn unsatisfiable_for(self, len: usize) -> Self {
        self.set_header("content-range", &format!("bytes */{len}"))
    }

    /// The wiremock answer: the recorded status, headers in order, body; `Content-Length` is
    /// the length of the body served (hyper insists), a chunked recording stays chunked.
    fn template(&self) -> ResponseTemplate {
        let mut t = ResponseTemplate::new(self.status);
        for (k, v) in &self.headers {
            if k.eq_ignore_ascii_case("content-length") {
                t = t.append_header(k.as_str(), self.body.len().to_string().as_str());
            } else {
                t = t.append_header(k.as_str(), v.as_str());
            }
        }
        t.set_body_bytes(self.body.clone())
    }
}

/// Decodes a chunked body (RFC 9112 §7.1), refusing anything malformed.
fn dechunk(mut data: &[u8], name: &str) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let eol = data
            .windows(2)
            .position(|w| w == b"\r\n")
            .unwrap_or_else(|| panic!("{name}: chunk size line"));
        let size_text = std::str::from_utf8(&data[..eol]).expect("hex size");
        let size = usize::from_str_radix(size_text.split(';').next().unwrap_or(""), 16)
            .unwrap_or_else(|_| panic!("{name}: chunk size {size_text:?}"));
        data = &data[eol + 2..];
        if size == 0 {
            assert_eq!(data, b"\r\n", "{name}: no trailers expected");
            return out;
        }
        out.extend_from_slice(&data[..size]);
        assert_eq!(&data[size..size + 2], b"\r\n", "{name}: chunk end");
        data = &data[size + 2..];
    }
}

/// GitHub's three hosts, each a wiremock server.
struct Hosts {
    api: MockServer,
    web: MockServer,
    assets: MockServer,
}

impl Hosts {
    async fn start() -> Hosts {
        Hosts {
            api: MockServer::start().await,
            web: MockServer::start().await,
            assets: MockServer::start().await,
        }
    }

    fn rewrite(&self, text: &str) -> String {
        text.replace("https://api.github.com", &self.api.uri())
            .replace("https://github.com", &self.web.uri())
            .replace(
                "https://release-assets.githubusercontent.com",
                &self.assets.uri(),
            )
            .replace("https://objects.githubusercontent.com", &self.assets.uri())
    }

    /// A recording with the hosts pointed here.
    fn recorded(&self, name: &str) -> Recorded {
        Recorded::load(name).rewrite_hosts(self)
    }

    /// The release check answers this recording (`times`: that many requests, then the next
    /// mounted answer; priority 1 beats the default 5).
    async fn api_latest(&self, rec: &Recorded, times: Option<u64>) {
        let mut m = Mock::given(method("GET"))
            .and(path(LATEST))
            .respond_with(rec.template())
            .named(rec.name.clone());
        if let Some(n) = times {
            m = m.up_to_n_times(n).with_priority(1);
        }
        m.mount(&self.api).await;
    }

    /// The usual release: the recorded JSON describing `image`.
    async fn release(&self, image: &[u8]) {
        let rec = self.recorded("releases-latest.200.http").describing(image);
        self.api_latest(&rec, None).await;
    }

    /// `browser_download_url` answers the recorded 302; the asset host serves `image` at the
    /// path of its `Location`. Returns the rewritten `Location`.
    async fn downloads(&self, redirect: &str, image: &[u8]) -> String {
        let rec = self.recorded(redirect);
        let location = rec.header("location").expect("a Location").to_owned();
        Mock::given(method("GET"))
            .and(path(DOWNLOAD))
            .respond_with(rec.template())
            .mount(&self.web)
            .await;
        self.serves_asset(&location, image).await;
        location
    }

    /// The asset host answers the recorded 200 with `image` at `location`'s path.
    async fn serves_asset(&self, location: &str, image: &[u8]) {
        let asset = self.recorded("asset.200.http").carrying(image, 0);
        Mock::given(method("GET"))
            .and(path(path_of(location)))
            .respond_with(asset.template())
            .mount(&self.assets)
            .await;
    }
}

/// The path of an absolute URL (without the query).
fn path_of(url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let path_and_query = &rest[rest.find('/').unwrap_or(rest.len())..];
    path_and_query
        .split_once('?')
        .map_or(path_and_query, |(p, _)| p)
        .to_owned()
}

/// Path and query of an absolute URL, as sent on the request line.
fn path_and_query(url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    rest[rest.find('/').unwrap_or(rest.len())..].to_owned()
}

/// Path and query of a request wiremock received.
fn request_target(r: &Request) -> String {
    match r.url.query() {
        Some(q) => format!("{}?{q}", r.url.path()),
        None => r.url.path().to_owned(),
    }
}

fn header_of<'a>(r: &'a Request, name: &str) -> Option<&'a str> {
    r.headers.get(name).and_then(|v| v.to_str().ok())
}

/// Each request's `name` header (None where it has none), in the order `server` received them.
async fn received_headers(server: &MockServer, name: &str) -> Vec<Option<String>> {
    received(server)
        .await
        .iter()
        .map(|r| header_of(r, name).map(str::to_owned))
        .collect()
}

async fn received(server: &MockServer) -> Vec<Request> {
    server
        .received_requests()
        .await
        .expect("wiremock records requests")
}

// ---------------------------------------------------------------------------------------------
// The board

/// The image GitHub serves in these tests: a real ESP32-C3 app image carrying the tag's version.
fn release_image() -> Vec<u8> {
    let img = image::build(NEW_VERSION, IMAGE_SIZE, 11);
    assert!(img.len() >= IMAGE_SIZE && !img.len().is_multiple_of(4096));
    img
}

/// A board as `just flash` leaves it, running 1.0.3, its conf.json pointing at the api host.
struct Board {
    board: VirtualBoard,
    http: reqwest::Client,
    wiring: Wiring,
    ends: Vec<BootEnd>,
}

impl Board {
    fn new(hosts: &Hosts, client_id: &str, token: bool) -> Board {
        let broker = broker_addr(&BrokerChoice::Embedded).expect("embedded broker");
        let broker: SocketAddr = sim::broker::resolve(&broker).expect("broker address");
        let prefix = format!("contract/{}", std::process::id());
        let conf = conf_json(
            &hosts.api.uri(),
            broker,
            client_id,
            &prefix,
            false,
            false,
            token,
        );
        let running = image::build(RUNNING_VERSION, 32 * 1024, 0xB007);
        Board {
            board: VirtualBoard::new(image::provision(conf.as_bytes(), &running, 5), client_id, 5),
            http: board_http_client(&SimDns::default()).expect("HTTP client"),
            wiring: Wiring { broker },
            ends: Vec::new(),
        }
    }

    /// Boots until the application runs (at most 6 boots).
    async fn run(&mut self, triggers: &mut Triggers) {
        while self.board.boots < 6 {
            let end = self.board.boot(&self.http, &self.wiring, triggers).await;
            self.ends.push(end.clone());
            match end {
                BootEnd::App => return,
                BootEnd::Reboot | BootEnd::PowerCut => {}
                other => panic!("boot {}: {other:?}\n{}", self.board.boots, self.console()),
            }
        }
        panic!("the application never ran\n{}", self.console());
    }

    async fn run_to_app(&mut self) {
        self.run(&mut Triggers::default()).await;
    }

    fn console(&self) -> String {
        self.board
            .trace
            .iter()
            .map(|l| format!("boot {} {}\n", l.boot, l.render()))
            .collect()
    }

    fn lines(&self, boot: u32) -> impl Iterator<Item = &TraceLine> {
        self.board.trace.iter().filter(move |l| l.boot == boot)
    }

    /// `result/error` of each boot's outcome (`cut` for a boot that lost power).
    fn outcomes(&self) -> Vec<String> {
        (1..=self.board.boots)
            .map(|b| {
                if self.ends[(b - 1) as usize] == BootEnd::PowerCut {
                    return "cut".to_owned();
                }
                self.lines(b)
                    .find_map(|l| match &l.event {
                        Event::Outcome { result, error, .. } => {
                            Some(format!("{}/{}", result.name(), error.name()))
                        }
                        _ => None,
                    })
                    .unwrap_or_else(|| "none".to_owned())
            })
            .collect()
    }

    /// The version of the image the bootloader started last.
    fn running(&self) -> &str {
        &self.board.boot_choices.last().expect("booted").1.version
    }

    /// The bytes of ota_1 up to `len`.
    fn ota_1(&self, len: usize) -> &[u8] {
        &self.board.flash.contents()[OTA_1..OTA_1 + len]
    }

    /// Boots with a power cut mid-download, then on: asserts that the next boot installed
    /// `image` and the one after confirmed it.
    async fn update_through_cut_mid_download(&mut self, image: &[u8]) {
        self.run(&mut cut_mid_download()).await;
        assert_eq!(
            self.outcomes(),
            ["cut", "installed/none", "updated/none"],
            "{}",
            self.console()
        );
        self.assert_updated_to(image);
    }

    /// Asserts the board installed `image`, confirmed it, and runs it.
    fn assert_updated_to(&self, image: &[u8]) {
        let outcomes = self.outcomes();
        assert_eq!(
            outcomes[outcomes.len() - 2..],
            ["installed/none", "updated/none"],
            "{}",
            self.console()
        );
        assert_eq!(self.running(), NEW_VERSION);
        assert!(self.ota_1(image.len()) == image, "ota_1 holds the image");
        assert_eq!(led_string(&self.board.trace, self.board.boots), "Y..y");
    }

    /// Every `(ms, delay_ms, reason)` retry of a boot.
    fn retries(&self, boot: u32) -> Vec<(u64, u32, ErrorCode)> {
        self.lines(boot)
            .filter_map(|l| match l.event {
                Event::Retry {
                    delay_ms, reason, ..
                } => Some((l.ms, delay_ms, reason)),
                _ => None,
            })
            .collect()
    }

    /// `(ms, purpose, from)` of every request of a boot.
    fn requests(&self, boot: u32) -> Vec<(u64, Purpose, u32)> {
        self.lines(boot)
            .filter_map(|l| match l.event {
                Event::Request { purpose, from, .. } => Some((l.ms, purpose, from)),
                _ => None,
            })
            .collect()
    }
}

// ---------------------------------------------------------------------------------------------
// Redirects

/// Installs through one recorded redirect shape, without a token.
async fn installs_through(redirect: &str, min_location: usize) {
    let hosts = Hosts::start().await;
    let image = release_image();
    hosts.release(&image).await;
    let location = hosts.downloads(redirect, &image).await;
    assert!(
        location.len() >= min_location,
        "{redirect}: Location is {} bytes",
        location.len()
    );

    let mut board = Board::new(&hosts, &format!("contract-{}", &redirect[..14]), false);
    board.run_to_app().await;

    board.assert_updated_to(&image);
    // The board asked the asset host for exactly the signed URL, byte for byte.
    let asset_requests = received(&hosts.assets).await;
    assert_eq!(asset_requests.len(), 1);
    assert_eq!(
        request_target(&asset_requests[0]),
        path_and_query(&location)
    );
    assert_eq!(
        header_of(&asset_requests[0], "accept"),
        Some("application/octet-stream")
    );
    // One release check per boot, both to the API host.
    assert_eq!(received(&hosts.api).await.len(), 2);
}

#[tokio::test]
async fn installs_through_the_1_kb_release_assets_redirect() {
    // GitHub's Location is ~900 bytes for `firmware.bin`; `http://127.0.0.1:PORT` is 15 bytes
    // shorter than `https://release-assets.githubusercontent.com`.
    installs_through("download.302-release-assets.http", 880).await;
}

#[tokio::test]
async fn installs_through_the_older_objects_redirect() {
    installs_through("download.302-objects.http", 520).await;
}

#[tokio::test]
async fn the_token_goes_to_the_api_host_and_never_to_the_asset_host() {
    let hosts = Hosts::start().await;
    let image = release_image();
    hosts.release(&image).await;
    let redirect = hosts.recorded("asset-api.302-release-assets.http");
    let location = redirect.header("location").expect("Location").to_owned();
    Mock::given(method("GET"))
        .and(path(ASSET_API))
        .and(header("accept", "application/octet-stream"))
        .respond_with(redirect.template())
        .mount(&hosts.api)
        .await;
    hosts.serves_asset(&location, &image).await;

    let mut board = Board::new(&hosts, "contract-token", true);
    board.run_to_app().await;

    board.assert_updated_to(&image);
    let api = received(&hosts.api).await;
    let targets: Vec<String> = api.iter().map(request_target).collect();
    assert_eq!(
        targets,
        [LATEST, ASSET_API, LATEST],
        "private repositories go through the API"
    );
    for r in &api {
        assert_eq!(
            header_of(r, "authorization"),
            Some(format!("Bearer {TOKEN}").as_str()),
            "{}",
            request_target(r)
        );
    }
    let assets = received(&hosts.assets).await;
    assert_eq!(assets.len(), 1);
    assert_eq!(request_target(&assets[0]), path_and_query(&location));
    for r in &assets {
        assert!(
            header_of(r, "authorization").is_none(),
            "the token leaked to the asset host"
        );
        assert!(
            !r.headers.iter().any(|(_, v)| v
                .as_bytes()
                .windows(TOKEN.len())
                .any(|w| w == TOKEN.as_bytes())),
            "the token leaked to the asset host in a header"
        );
    }
    assert!(received(&hosts.web).await.is_empty());
}

// ---------------------------------------------------------------------------------------------
// Resuming

/// Hosts that publish a release whose download redirects (as GitHub's does) to the asset
/// host; returns them, the release image, and the location of its asset.
async fn hosts_with_a_release() -> (Hosts, Vec<u8>, String) {
    let hosts = Hosts::start().await;
    let image = release_image();
    hosts.release(&image).await;
    let location = hosts
        .downloads("download.302-release-assets.http", &image)
        .await;
    (hosts, image, location)
}

/// Power is cut once 10,000 image bytes reached the core: two 4 KiB sectors are durable.
fn cut_mid_download() -> Triggers {
    Triggers {
        at_download_byte: Some(10_000),
        ..Triggers::default()
    }
}

#[tokio::test]
async fn resumes_with_range_and_githubs_206() {
    let (hosts, image, location) = hosts_with_a_release().await;
    let partial = hosts.recorded("asset.206.http").carrying(&image, 8192);
    assert_eq!(
        partial.header("content-range"),
        Some(format!("bytes 8192-{}/{}", image.len() - 1, image.len()).as_str())
    );
    Mock::given(method("GET"))
        .and(path(path_of(&location)))
        .and(header("range", "bytes=8192-"))
        .respond_with(partial.template())
        .with_priority(1)
        .mount(&hosts.assets)
        .await;

    let mut board = Board::new(&hosts, "contract-resume", false);
    board.update_through_cut_mid_download(&image).await;
    assert!(
        board
            .lines(2)
            .any(|l| l.event == Event::Resume { from: 8192 }),
        "{}",
        board.console()
    );
    let installed = board.lines(2).find_map(|l| match l.event {
        Event::Outcome {
            bytes,
            resumed_from,
            ..
        } => Some((bytes, resumed_from)),
        _ => None,
    });
    assert_eq!(installed, Some((image.len() as u32 - 8192, 8192)));
    let ranges = received_headers(&hosts.assets, "range").await;
    assert_eq!(ranges, [None, Some("bytes=8192-".to_owned())]);
    // The resume names the file it continues: the ETag the asset host's 200 carried.
    let validators = received_headers(&hosts.assets, "if-range").await;
    assert_eq!(validators, [None, Some("\"0x8DE3E1C0F2A7B55\"".to_owned())]);
}

#[tokio::test]
async fn restarts_from_zero_when_the_asset_host_answers_416() {
    let (hosts, image, location) = hosts_with_a_release().await;
    let refused = hosts
        .recorded("asset.416.http")
        .unsatisfiable_for(image.len());
    Mock::given(method("GET"))
        .and(path(path_of(&location)))
        .and(header_exists("range"))
        .respond_with(refused.template())
        .up_to_n_times(1)
        .with_priority(1)
        .mount(&hosts.assets)
        .await;

    let mut board = Board::new(&hosts, "contract-416", false);
    board.update_through_cut_mid_download(&image).await;
    let downloads: Vec<u32> = board
        .requests(2)
        .into_iter()
        .filter(|(_, p, _)| *p == Purpose::Download)
        .map(|(_, _, from)| from)
        .collect();
    // Each attempt is two requests: the 302 from github.com, then the asset host.
    assert_eq!(downloads, [8192, 8192, 0, 0], "{}", board.console());
    assert!(board.lines(2).any(|l| matches!(
        &l.event,
        Event::Error { code: ErrorCode::Network, detail } if detail.contains("416")
    )));
    let ranges = received_headers(&hosts.assets, "range").await;
    assert_eq!(ranges, [None, Some("bytes=8192-".to_owned()), None]);
}

// ---------------------------------------------------------------------------------------------
// Rate limits, errors

/// The release check answers `first` `times` times, then the release; returns the board.
async fn after(first: &str, times: u64, client_id: &str) -> (Hosts, Board, Vec<u8>) {
    let hosts = Hosts::start().await;
    let image = release_image();
    hosts.api_latest(&hosts.recorded(first), Some(times)).await;
    hosts.release(&image).await;
    hosts
        .downloads("download.302-release-assets.http", &image)
        .await;
    let mut board = Board::new(&hosts, client_id, false);
    board.run_to_app().await;
    (hosts, board, image)
}

#[tokio::test]
async fn waits_out_the_primary_rate_limit_until_x_ratelimit_reset() {
    let rec = Recorded::load("releases-latest.403-rate-limit.http");
    assert_eq!(rec.header("x-ratelimit-remaining"), Some("0"));
    // x-ratelimit-reset 1766055578 − Date (Thu, 18 Dec 2025 10:47:38 GMT = 1766054858) = 720 s,
    // plus the second the reset itself lasts.
    let wait_ms = 721_000;

    let (_hosts, board, image) =
        after("releases-latest.403-rate-limit.http", 1, "contract-primary").await;

    board.assert_updated_to(&image);
    assert_eq!(
        board.retries(1),
        [(0, wait_ms, ErrorCode::RateLimited)],
        "{}",
        board.console()
    );
    let checks: Vec<u64> = board
        .requests(1)
        .into_iter()
        .filter(|(_, p, _)| *p == Purpose::Check)
        .map(|(ms, _, _)| ms)
        .collect();
    assert_eq!(
        checks,
        [0, u64::from(wait_ms)],
        "asked again only after the reset"
    );
}

#[tokio::test]
async fn waits_out_a_secondary_rate_limit_for_retry_after() {
    for (fixture, wait_ms) in [
        ("releases-latest.403-secondary-rate-limit.http", 60_000),
        ("releases-latest.429-secondary-rate-limit.http", 47_000),
    ] {
        let rec = Recorded::load(fixture);
        assert_eq!(
            rec.header("retry-after"),
            Some((wait_ms / 1000).to_string().as_str())
        );
        let (_hosts, board, image) =
            after(fixture, 1, &format!("contract-{}", &fixture[16..19])).await;
        board.assert_updated_to(&image);
        assert_eq!(
            board.retries(1),
            [(0, wait_ms, ErrorCode::RateLimited)],
            "{fixture}\n{}",
            board.console()
        );
        let second_check = board
            .requests(1)
            .into_iter()
            .filter(|(_, p, _)| *p == Purpose::Check)
            .nth(1)
            .map(|(ms, _, _)| ms);
        assert_eq!(second_check, Some(u64::from(wait_ms)), "{fixture}");
    }
}

#[tokio::test]
async fn retries_githubs_unicorn_503_page() {
    let (_hosts, board, image) = after("releases-latest.503-unicorn.http", 2, "contract-503").await;
    board.assert_updated_to(&image);
    let reasons: Vec<ErrorCode> = board.retries(1).into_iter().map(|r| r.2).collect();
    assert_eq!(
        reasons,
        [ErrorCode::HttpStatus, ErrorCode::HttpStatus],
        "{}",
        board.console()
    );
}

#[tokio::test]
async fn a_404_from_releases_latest_means_no_release() {
    let hosts = Hosts::start().await;
    hosts
        .api_latest(&hosts.recorded("releases-latest.404.http"), None)
        .await;
    let mut board = Board::new(&hosts, "contract-404", false);
    board.run_to_app().await;

    assert_eq!(
        board.outcomes(),
        ["failed/no_release"],
        "{}",
        board.console()
    );
    // `● ● ●`, yellow stays on, the firmware keeps running, nothing was written.
    assert_eq!(led_string(&board.board.trace, 1), "Y...");
    assert_eq!(board.running(), RUNNING_VERSION);
    assert!(board.ota_1(64 * 1024).iter().all(|&b| b == 0xFF));
    assert!(
        board.retries(1).is_empty(),
        "a 404 is an answer, not a fault"
    );
    assert!(received(&hosts.web).await.is_empty());
    assert!(received(&hosts.assets).await.is_empty());
}

#[tokio::test]
async fn a_304_nobody_asked_for_is_an_unexpected_status() {
    let hosts = Hosts::start().await;
    hosts
        .api_latest(&hosts.recorded("releases-latest.304.http"), None)
        .await;
    let mut board = Board::new(&hosts, "contract-304", false);
    board.run_to_app().await;

    // A fresh board remembers no answer, so it does not ask conditionally and GitHub would
    // never answer 304; a 304 can only come from something in between that is broken. It is
    // reported, not mistaken for "nothing new" and not retried forever.
    for r in received(&hosts.api).await {
        assert!(header_of(&r, "if-none-match").is_none());
        assert!(header_of(&r, "if-modified-since").is_none());
    }
    assert_eq!(
        board.outcomes(),
        ["failed/http_status"],
        "{}",
        board.console()
    );
    assert_eq!(led_string(&board.board.trace, 1), "Y.-");
    assert_eq!(board.running(), RUNNING_VERSION);
    assert!(received(&hosts.web).await.is_empty());
}

/// GitHub's release answers carry a weak ETag (`W/"…"`); the board keeps it with a release it
/// refused and sends it back as `If-None-Match`; GitHub's recorded 304 then refuses the release
/// again without a byte of the asset.
#[tokio::test]
async fn a_refused_release_is_asked_again_with_githubs_weak_etag_and_its_304_costs_no_download() {
    let hosts = Hosts::start().await;
    let image = release_image();
    let answer = hosts
        .recorded("releases-latest.200.http")
        .describing(&image);
    let etag = answer.header("etag").expect("GitHub's ETag").to_owned();
    assert!(etag.starts_with("W/"), "{etag}");
    Mock::given(method("GET"))
        .and(path(LATEST))
        .and(header("if-none-match", etag.as_str()))
        .respond_with(hosts.recorded("releases-latest.304.http").template())
        .with_priority(1)
        .mount(&hosts.api)
        .await;
    hosts.api_latest(&answer, None).await;
    // Other bytes than the release describes: the image's own appended hash refuses them.
    let mut other = image.clone();
    let last = other.len() - 100;
    other[last] ^= 0xFF;
    hosts
        .downloads("download.302-release-assets.http", &other)
        .await;
    let mut board = Board::new(&hosts, "contract-etag", false);
    board.run_to_app().await;
    board.run_to_app().await;

    assert_eq!(
        board.outcomes(),
        ["failed/bad_image", "failed/bad_image"],
        "{}",
        board.console()
    );
    assert_eq!(
        received_headers(&hosts.api, "if-none-match").await,
        [None, Some(etag)]
    );
    assert_eq!(received(&hosts.assets).await.len(), 1, "the asset once");
    assert!(
        board
            .lines(2)
            .any(|l| matches!(l.event, Event::Response { status: 304, .. })),
        "{}",
        board.console()
    );
    assert_eq!(board.running(), RUNNING_VERSION);
}

#[tokio::test]
async fn parses_a_chunked_release_without_content_length() {
    let hosts = Hosts::start().await;
    let image = release_image();
    let chunked = hosts
        .recorded("releases-latest.200-chunked.http")
        .describing(&image);
    assert!(chunked.header("content-length").is_none());
    hosts.api_latest(&chunked, None).await;
    hosts
        .downloads("download.302-release-assets.http", &image)
        .await;

    // What goes over the wire really is chunked (hyper could have buffered it into a length).
    let head = raw_head(&hosts.api, LATEST).await;
    assert!(head.contains("transfer-encoding: chunked"), "{head}");
    assert!(!head.contains("content-length"), "{head}");

    let mut board = Board::new(&hosts, "contract-chunked", false);
    board.run_to_app().await;
    board.assert_updated_to(&image);
}

/// The response head of a plain HTTP/1.1 GET, read off the socket.
async fn raw_head(server: &MockServer, target: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(server.address())
        .await
        .expect("connect");
    let req = format!("GET {target} HTTP/1.1\r\nHost: github\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.expect("send");
    let mut got = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut got))
        .await
        .expect("answer within 5 s")
        .expect("read");
    let text = String::from_utf8_lossy(&got).into_owned();
    text.split("\r\n\r\n").next().unwrap_or("").to_lowercase()
}

// ---------------------------------------------------------------------------------------------
// The recordings themselves

#[test]
fn every_recording_parses_and_the_redirects_are_githubs_length() {
    let names: Vec<String> = std::fs::read_dir(FIXTURES)
        .expect("fixtures/github")
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.ends_with(".http"))
        .collect();
    assert!(names.len() >= 14, "{names:?}");
    for name in &names {
        let rec = Recorded::load(name);
        if let Some(len) = rec.header("content-length")
            && rec.status != 206
            && !name.starts_with("asset.")
        {
            assert_eq!(len, rec.body.len().to_string(), "{name}: Content-Length");
        }
        if let Some(location) = rec.header("location") {
            assert!(
                (500..=1300).contains(&location.len()),
                "{name}: {} bytes",
                location.len()
            );
            assert!(
                location.len() > 256,
                "longer than the URL buffer that broke"
            );
        }
    }
    let json: serde_json::Value =
        serde_json::from_slice(&Recorded::load("releases-latest.200.http").body)
            .expect("the release is JSON");
    assert_eq!(json["tag_name"], TAG);
    assert!(json["body"].as_str().expect("notes").len() > 4096);
    assert_eq!(json["assets"].as_array().expect("assets").len(), 4);
    let chunked = Recorded::load("releases-latest.200-chunked.http");
    assert_eq!(
        chunked.body,
        Recorded::load("releases-latest.200.http").body
    );
}
