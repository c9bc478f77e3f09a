//! Drives the state machine through whole boots with an in-memory flash and
//! a scripted GitHub, and checks the LED and log sequences of DESIGN.md §1.

use embedded_storage::nor_flash::{
    ErrorType, NorFlash, NorFlashError, NorFlashErrorKind, ReadNorFlash,
};
use firmware::Instant;
use firmware::format::app_image::{self, AppDesc, SegmentSpec};
use firmware::format::partition::{self, TABLE_OFFSET};
use firmware::http::{HttpRequest, ResponseHead, Transport};
use firmware::led::Led;
use firmware::machine::{Action, BootInfo, Updater};
use firmware::trace::Event;
use sha2::{Digest, Sha256};

#[derive(Debug)]
struct Oops;
impl NorFlashError for Oops {
    fn kind(&self) -> NorFlashErrorKind {
        NorFlashErrorKind::Other
    }
}

struct Ram(Vec<u8>);

std::thread_local! {
    /// Every sector this test thread's flash erased, in order.
    static ERASES: std::cell::RefCell<Vec<u32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// The sectors erased since the last call.
fn take_erases() -> Vec<u32> {
    ERASES.with(|e| std::mem::take(&mut *e.borrow_mut()))
}
impl ErrorType for Ram {
    type Error = Oops;
}
impl ReadNorFlash for Ram {
    const READ_SIZE: usize = 4;
    fn read(&mut self, offset: u32, bytes: &mut [u8]) -> Result<(), Oops> {
        assert_eq!((offset % 4, bytes.len() % 4), (0, 0), "unaligned read");
        bytes.copy_from_slice(&self.0[offset as usize..offset as usize + bytes.len()]);
        Ok(())
    }
    fn capacity(&self) -> usize {
        self.0.len()
    }
}
impl NorFlash for Ram {
    const WRITE_SIZE: usize = 4;
    const ERASE_SIZE: usize = 4096;
    fn erase(&mut self, from: u32, to: u32) -> Result<(), Oops> {
        ERASES.with(|e| e.borrow_mut().extend((from..to).step_by(4096)));
        self.0[from as usize..to as usize].fill(0xFF);
        Ok(())
    }
    fn write(&mut self, offset: u32, bytes: &[u8]) -> Result<(), Oops> {
        assert_eq!((offset % 4, bytes.len() % 4), (0, 0), "unaligned write");
        for (d, s) in self.0[offset as usize..].iter_mut().zip(bytes) {
            *d &= *s;
        }
        Ok(())
    }
}

const CONF: &str = r#"{"wifi":{"ssid":"lab","password":"hunter22-secret"},
  "github":{"repository":"acme/thermo","api_base":"https://gh.test","asset":"fw.bin","token":"ghp_secret_token"},
  "mqtt":{"host":"broker","client_id":"board-1","password":"mqtt-secret"}}"#;

fn image(version: &str) -> Vec<u8> {
    image_for_revisions(version, 0, 199)
}

/// An image that the bootloader starts only on chip revisions `min..=max` (major * 100 + minor).
fn image_for_revisions(version: &str, min: u16, max: u16) -> Vec<u8> {
    image_built(version, min, max, 1)
}

/// A build of `version` whose code bytes follow pattern `salt` (another build, same size).
fn image_with_data(version: &str, salt: u32) -> Vec<u8> {
    image_built(version, 0, 199, salt)
}

fn image_built(version: &str, min: u16, max: u16, salt: u32) -> Vec<u8> {
    let mut header = app_image::esp32c3_header(0x4038_0080);
    header.min_chip_rev_full = min;
    header.max_chip_rev_full = max;
    let mut data = AppDesc::new(version, "thermo").to_bytes().to_vec();
    data.extend((0..20_000u32).map(|i| (i.wrapping_mul(salt) % 251) as u8));
    let segs = [SegmentSpec {
        load_addr: 0x3C00_0020,
        data: &data,
    }];
    let mut out = vec![0; app_image::image_len(&segs)];
    app_image::write_image(&mut out, &header, &segs).unwrap();
    out
}

fn board(running: &str) -> Ram {
    let mut flash = Ram(vec![0xFF; 0x40_0000]);
    let mut table = [0u8; partition::TABLE_LEN];
    partition::default_table().write(&mut table).unwrap();
    flash.0[TABLE_OFFSET as usize..][..table.len()].copy_from_slice(&table);
    let img = image(running);
    flash.0[0x10000..][..img.len()].copy_from_slice(&img);
    flash.0[0x3d0000..][..CONF.len()].copy_from_slice(CONF.as_bytes());
    flash
}

fn release_json(tag: &str, img: &[u8], digest_of: &[u8]) -> String {
    let digest: String = Sha256::digest(digest_of)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!(
        r#"{{"tag_name":"{tag}","draft":false,"prerelease":false,"body":"{}","assets":[{{"name":"fw.bin","size":{},
        "digest":"sha256:{digest}","url":"https://gh.test/repos/acme/thermo/releases/assets/1",
        "browser_download_url":"https://gh.test/acme/thermo/releases/download/{tag}/fw.bin"}}]}}"#,
        "notes ".repeat(2000),
        img.len()
    )
}

/// One boot: returns the trace, the published payloads and how it ended.
struct BootResult {
    events: Vec<Event>,
    published: Vec<String>,
    rebooted: bool,
    /// Every request the core made, in order.
    requests: Vec<HttpRequest>,
    /// When the core said `StartApplication` (the routine still running).
    app_early_at: Option<u64>,
}

/// What the scripted server answers to one request.
enum Reply {
    /// A response; the body is cut (connection reset) after `cut_at` bytes when set.
    Http {
        status: u16,
        headers: Vec<(&'static str, String)>,
        body: Vec<u8>,
        cut_at: Option<usize>,
    },
    /// The request fails below HTTP.
    Transport(Transport),
    /// The power goes: the boot ends here.
    PowerCut,
}

impl Reply {
    fn ok(body: &[u8]) -> Reply {
        Reply::Http {
            status: 200,
            headers: vec![("content-length", body.len().to_string())],
            body: body.to_vec(),
            cut_at: None,
        }
    }

    fn status(status: u16, headers: Vec<(&'static str, String)>) -> Reply {
        Reply::Http {
            status,
            headers,
            body: Vec::new(),
            cut_at: None,
        }
    }
}

/// The boot as a board sees it: the slot the bootloader started and the chip.
#[derive(Clone, Copy)]
struct Boot {
    running_slot: u8,
    chip_revision: u16,
    /// WiFi joins from this virtual time on (`u64::MAX`: never).
    network_from_ms: u64,
    broker_up: bool,
    /// The power goes at this virtual time (`u64::MAX`: never).
    power_off_at_ms: u64,
    /// The board's WiFi driver does not start (the glue reports it at each join).
    wifi_broken: bool,
    /// The broker's PUBACKs arrive after the core's publish deadline.
    late_pubacks: bool,
}

impl Boot {
    /// The slot otadata selects, as a bootloader without rollback boots it.
    fn as_selected(flash: &Ram) -> Boot {
        Boot {
            running_slot: otadata_slot(flash).unwrap_or(0),
            chip_revision: 4,
            network_from_ms: 0,
            broker_up: true,
            power_off_at_ms: u64::MAX,
            wifi_broken: false,
            late_pubacks: false,
        }
    }
}

const SLOT_OFFSETS: [u32; 2] = [0x10000, 0x1f0000];

fn run_boot(
    flash: Ram,
    boot: Boot,
    server: &mut dyn FnMut(&HttpRequest) -> Reply,
) -> (Ram, BootResult) {
    let mut core = Updater::new(flash, 1);
    let mut now = Instant(0);
    core.handle_boot(
        now,
        BootInfo {
            running_offset: SLOT_OFFSETS[usize::from(boot.running_slot)],
            chip_revision: boot.chip_revision,
        },
    );
    let mut result = BootResult {
        events: Vec::new(),
        published: Vec::new(),
        rebooted: false,
        requests: Vec::new(),
        app_early_at: None,
    };
    for _ in 0..10_000 {
        while let Some((_, e)) = core.poll_event() {
            result.events.push(e);
        }
        let Some(action) = core.poll_action() else {
            match core.poll_timeout() {
                Some(t) if t.0 >= boot.power_off_at_ms => {
                    return (core.into_flash(), result);
                }
                Some(t) => {
                    now = t;
                    core.handle_timeout(now);
                    continue;
                }
                None => break,
            }
        };
        match action {
            Action::JoinNetwork => {
                assert!(
                    core.config().is_some(),
                    "no network before conf.json was read"
                );
                if boot.wifi_broken {
                    core.handle_join_error(now, Transport::Board, "WiFi driver did not start");
                } else if now.0 >= boot.network_from_ms {
                    core.handle_network(now, true)
                }
            }
            Action::Http(req) => {
                assert!(
                    !req.authorize || req.url.starts_with("https://gh.test"),
                    "token sent to {}",
                    req.url
                );
                result.requests.push(req.clone());
                match server(&req) {
                    Reply::PowerCut => return (core.into_flash(), result),
                    Reply::Transport(kind) => {
                        core.handle_transport_error(now, req.id, kind, "scripted failure")
                    }
                    Reply::Http {
                        status,
                        headers,
                        body,
                        cut_at,
                    } => {
                        let mut head = ResponseHead::new(status);
                        for (name, value) in &headers {
                            head.header(name, value);
                        }
                        core.handle_response_head(now, req.id, &head);
                        let sent = &body[..cut_at.unwrap_or(body.len()).min(body.len())];
                        for chunk in sent.chunks(1460) {
                            core.handle_response_body(now, req.id, chunk);
                        }
                        if cut_at.is_some() {
                            core.handle_transport_error(now, req.id, Transport::Network, "reset");
                        } else {
                            core.handle_response_end(now, req.id);
                        }
                    }
                }
            }
            Action::Publish { seq, payload, .. } => {
                if boot.broker_up {
                    result
                        .published
                        .push(String::from_utf8(payload.to_vec()).unwrap());
                }
                if boot.late_pubacks {
                    now = now.plus_ms(firmware::machine::PUBLISH_TIMEOUT_MS + 1);
                    core.handle_timeout(now);
                }
                core.handle_publish_result(now, seq, boot.broker_up);
            }
            Action::Reboot | Action::RunApplication => {
                while let Some((_, e)) = core.poll_event() {
                    result.events.push(e);
                }
                assert!(core.is_done(), "Reboot and RunApplication end the routine");
                result.rebooted = action == Action::Reboot;
                return (core.into_flash(), result);
            }
            Action::StartApplication => {
                assert!(
                    !core.is_done(),
                    "StartApplication while the routine still runs"
                );
                assert!(result.app_early_at.is_none(), "the application starts once");
                result.app_early_at = Some(now.0);
            }
            Action::Led { .. } | Action::AbortHttp { .. } => {}
        }
    }
    panic!("the routine did not end: {:?}", result.events);
}

/// GitHub as the scripts here need it: the release JSON, a 302 from the download URL, the asset.
fn github<'a>(release: &'a str, asset: &'a [u8]) -> impl FnMut(&HttpRequest) -> Reply + 'a {
    move |req| {
        if req.url.contains("/releases/latest") {
            Reply::ok(release.as_bytes())
        } else if req.url.contains("/releases/download/") {
            Reply::status(302, vec![("location", "https://cdn.test/blob/1".into())])
        } else {
            Reply::ok(asset)
        }
    }
}

fn boot(flash: Ram, release: &str, asset: &[u8], broker_up: bool) -> (Ram, BootResult) {
    boot_with(flash, release, asset, broker_up, true)
}

fn boot_with(
    flash: Ram,
    release: &str,
    asset: &[u8],
    broker_up: bool,
    network: bool,
) -> (Ram, BootResult) {
    let boot = Boot {
        network_from_ms: if network { 0 } else { u64::MAX },
        broker_up,
        ..Boot::as_selected(&flash)
    };
    run_boot(flash, boot, &mut github(release, asset))
}

fn leds(events: &[Event]) -> String {
    events
        .iter()
        .filter_map(|e| match e {
            Event::Led {
                led: Led::Yellow,
                on,
            } => Some(if *on { "Y" } else { "y" }),
            Event::Led {
                led: Led::Green,
                on: true,
            } => Some("G"),
            _ => None,
        })
        .collect()
}

fn outcome(events: &[Event]) -> String {
    events
        .iter()
        .find_map(|e| match e {
            Event::Outcome { result, error, .. } => {
                Some(format!("{}/{}", result.name(), error.name()))
            }
            _ => None,
        })
        .expect("an outcome")
}

#[test]
fn an_update_installs_reboots_confirms_and_blinks_twice() {
    let new = image("1.1");
    let release = release_json("1.1", &new, &new);

    let (flash, first) = boot(board("1.0"), &release, &new, true);
    assert!(first.rebooted);
    assert_eq!(outcome(&first.events), "installed/none");
    assert_eq!(
        leds(&first.events),
        "Y",
        "yellow on, no green before the reboot"
    );
    assert!(saw(&first, |e| matches!(e, Event::Switch { slot: 1, .. })));

    let (flash, second) = boot(flash, &release, &new, true);
    assert!(!second.rebooted);
    assert_eq!(outcome(&second.events), "updated/none");
    assert_eq!(
        leds(&second.events),
        "YGGy",
        "yellow on, green twice, yellow off"
    );
    assert!(matches!(second.events.last(), Some(Event::App)));
    assert!(saw(&second, |e| matches!(e, Event::Boot { slot: 1, .. })));

    let (_, third) = boot(flash, &release, &new, true);
    assert_eq!(outcome(&third.events), "up_to_date/none");
    assert_eq!(leds(&third.events), "YGy", "nothing new: green once");

    let all: Vec<&String> = first
        .published
        .iter()
        .chain(&second.published)
        .chain(&third.published)
        .collect();
    assert_eq!(all.len(), 3, "{all:?}");
    assert!(
        all[0].contains(r#""result":"installed","from":"1.0","to":"1.1""#),
        "{}",
        all[0]
    );
    assert!(
        all[1].contains(r#""result":"updated","from":"1.0","to":"1.1""#),
        "{}",
        all[1]
    );
    for payload in all {
        for secret in ["hunter22", "ghp_secret", "mqtt-secret"] {
            assert!(!payload.contains(secret), "{payload}");
        }
    }
}

#[test]
fn a_hash_mismatch_keeps_the_running_firmware_and_says_so() {
    let new = image("1.1");
    let release = release_json("1.1", &new, b"something else");
    let (flash, result) = boot(board("1.0"), &release, &new, true);
    assert!(!result.rebooted);
    assert_eq!(outcome(&result.events), "failed/hash_mismatch");
    assert_eq!(
        leds(&result.events),
        "YGG",
        "two long blinks, yellow stays on"
    );
    let (_, again) = boot(flash, &release, &new, true);
    assert!(
        saw(&again, |e| matches!(e, Event::Boot { slot: 0, .. })),
        "still on the old slot"
    );
}

#[test]
fn a_log_the_broker_did_not_take_is_delivered_at_the_next_boot() {
    let new = image("1.0");
    let release = release_json("1.0", &new, &new);
    let (flash, down) = boot(board("1.0"), &release, &new, false);
    assert!(saw(&down, |e| matches!(e, Event::LogKept { pending: 1 })));
    let (_, up) = boot(flash, &release, &new, true);
    assert_eq!(up.published.len(), 2, "{:?}", up.published);
    assert!(up.published[0].contains(r#""seq":1"#) && up.published[1].contains(r#""seq":2"#));
}

#[test]
fn a_downgrade_is_refused_by_default() {
    let old = image("0.9");
    let release = release_json("0.9", &old, &old);
    let (_, result) = boot(board("1.0"), &release, &old, true);
    assert_eq!(outcome(&result.events), "failed/downgrade");
}

#[test]
fn the_core_runs_in_fixed_memory() {
    let updater = std::mem::size_of::<Updater<Ram>>() - std::mem::size_of::<Ram>();
    let release = std::mem::size_of::<firmware::release::ReleaseParser>();
    let config = std::mem::size_of::<firmware::config::ConfigParser>();
    println!("Updater: {updater} bytes (release parser {release}, config parser {config})");
    // Nothing in the core grows with the image or the JSON: these are the whole of it.
    assert!(
        release < 16 * 1024 && config < 4096 && updater < 64 * 1024,
        "{updater} {release} {config}"
    );
}

fn otadata_slot(flash: &Ram) -> Option<u8> {
    use firmware::format::otadata::OtaData;
    let s0: [u8; 32] = flash.0[0xd000..0xd020].try_into().unwrap();
    let s1: [u8; 32] = flash.0[0xe000..0xe020].try_into().unwrap();
    OtaData::from_sectors(&s0, &s1).boot_slot(2)
}

#[test]
fn a_new_image_that_cannot_read_conf_json_rolls_back_at_once() {
    let new = image("1.1");
    let release = release_json("1.1", &new, &new);
    let (mut flash, first) = boot(board("1.0"), &release, &new, true);
    assert!(first.rebooted);
    assert_eq!(otadata_slot(&flash), Some(1));
    flash.0[0x3d0000..0x3d0000 + 10].copy_from_slice(b"{\"wifi\": [");
    let (flash, second) = boot(flash, &release, &new, true);
    assert!(second.rebooted, "{:?}", second.events);
    assert_eq!(outcome(&second.events), "rolled_back/self_check");
    assert_eq!(
        otadata_slot(&flash),
        Some(0),
        "otadata points back at the old image"
    );
}

/// Review defect 4: an outage after an update used to use up the new image's trials, roll a
/// good image back and bar its release. A trial boot that only lacks the network gives its
/// trial back at the deadline and goes on; the image confirms as soon as the network returns.
#[test]
fn a_new_image_without_network_keeps_its_trials_and_confirms_when_the_network_returns() {
    let new = image("1.1");
    let release = release_json("1.1", &new, &new);
    let (mut flash, _) = boot(board("1.0"), &release, &new, true);
    for trial in 1..=4 {
        // Power lost after 25 minutes without WiFi, four boots in a row.
        let mut boot = Boot::as_selected(&flash);
        boot.network_from_ms = u64::MAX;
        boot.power_off_at_ms = 25 * 60 * 1000;
        let (next, result) = run_boot(flash, boot, &mut github(&release, &new));
        flash = next;
        assert!(
            saw(&result, |e| matches!(
                e,
                Event::TrialReturned { boots: 0, of: 3 }
            )),
            "trial {trial}: {:?}",
            result.events
        );
        assert!(!saw(&result, |e| matches!(e, Event::Outcome { .. })));
        assert_eq!(otadata_slot(&flash), Some(1), "still on the new image");
    }
    let mut boot = Boot::as_selected(&flash);
    boot.network_from_ms = 45 * 60 * 1000;
    let (flash, back) = run_boot(flash, boot, &mut github(&release, &new));
    assert!(saw(&back, |e| matches!(e, Event::TrialReturned { .. })));
    assert_eq!(outcome(&back.events), "updated/none");
    assert!(confirmed(&back));
    assert_eq!(otadata_slot(&flash), Some(1));
}

/// `board(running)` with `update.max_wait_s` set in its conf.json.
fn board_waiting(running: &str, max_wait_s: u32) -> Ram {
    let mut flash = board(running);
    let conf = format!(
        "{}}},\"update\":{{\"max_wait_s\":{max_wait_s}}}}}",
        CONF.trim_end_matches('}')
    );
    flash.0[0x3d0000..][..conf.len()].copy_from_slice(conf.as_bytes());
    flash
}

#[test]
fn the_application_starts_after_max_wait_and_the_update_still_installs_when_the_network_returns() {
    let new = image("1.1");
    let release = release_json("1.1", &new, &new);
    let flash = board_waiting("1.0", 90);
    let mut boot = Boot::as_selected(&flash);
    boot.network_from_ms = 6 * 3600 * 1000;
    let (flash, result) = run_boot(flash, boot, &mut github(&release, &new));
    assert_eq!(result.app_early_at, Some(90_000), "{:?}", result.events);
    assert!(saw(&result, |e| matches!(
        e,
        Event::AppEarly { waited_ms: 90_000 }
    )));
    // The yellow LED stays on: the routine has not succeeded yet when the application starts.
    assert_eq!(leds(&result.events), "Y");
    assert_eq!(outcome(&result.events), "installed/none");
    assert!(result.rebooted);
    let retries = result
        .events
        .iter()
        .filter(|e| matches!(e, Event::Retry { .. }))
        .count();
    assert!(
        retries > 100,
        "it kept retrying beside the application: {retries}"
    );
    assert_eq!(otadata_slot(&flash), Some(1));
}

/// When the application starts, for `update.max_wait_s` (None: the default) and a network
/// that comes back at `network_from_ms`; the update installs in every case.
#[test]
fn the_application_starts_at_the_limit_only_when_the_routine_is_still_running() {
    let default_ms = u64::from(firmware::config::DEFAULT_MAX_WAIT_S) * 1000;
    let cases = [
        // (max_wait_s, network back at, StartApplication at)
        (None, 10 * 60 * 1000, Some(default_ms)),
        (Some(90), 60 * 1000, None),
        (Some(0), 3 * 3600 * 1000, None),
    ];
    let new = image("1.1");
    let release = release_json("1.1", &new, &new);
    for (max_wait_s, network_from_ms, early_at) in cases {
        let flash = match max_wait_s {
            Some(s) => board_waiting("1.0", s),
            None => board("1.0"),
        };
        let mut boot = Boot::as_selected(&flash);
        boot.network_from_ms = network_from_ms;
        let (_, result) = run_boot(flash, boot, &mut github(&release, &new));
        assert_eq!(result.app_early_at, early_at, "max_wait_s {max_wait_s:?}");
        assert_eq!(outcome(&result.events), "installed/none");
    }
}

/// GitHub that ignores `If-None-Match` (answers 200 each time), serving `asset` under
/// `release`; counts the asset requests.
fn counting_github<'a>(
    release: &'a str,
    asset: &'a [u8],
    asset_requests: &'a mut u32,
) -> impl FnMut(&HttpRequest) -> Reply + 'a {
    let mut inner = github(release, asset);
    move |req| {
        if req.accept == firmware::http::Accept::OctetStream {
            *asset_requests += 1;
        }
        inner(req)
    }
}

#[test]
fn a_release_that_failed_verification_is_not_downloaded_again_until_it_changes() {
    let new = image("1.1");
    let wrong = image("1.0.9");
    // The digest says `wrong`: the downloaded image never matches it.
    let release = release_json("1.1", &new, &wrong);
    let mut fetched = 0;
    let (flash, first) = run_boot(
        board("1.0"),
        Boot::as_selected(&board("1.0")),
        &mut counting_github(&release, &new, &mut fetched),
    );
    assert_eq!(outcome(&first.events), "failed/hash_mismatch");
    assert_eq!(fetched, 1);
    take_erases();
    let (flash, second) = run_boot(
        flash,
        Boot::as_selected(&board("1.0")),
        &mut counting_github(&release, &new, &mut fetched),
    );
    assert_eq!(outcome(&second.events), "failed/hash_mismatch");
    assert_eq!(fetched, 1, "the same asset is not fetched again");
    let slot_erases = take_erases()
        .into_iter()
        .filter(|s| (0x1f0000..0x3d0000).contains(s))
        .count();
    assert_eq!(
        slot_erases, 0,
        "no slot sector erased for a release refused before"
    );
    // The release is fixed: another digest (and asset), so it is fetched and installed.
    let fixed = release_json("1.1", &new, &new)
        .replace("\"name\":\"fw.bin\"", "\"id\":77,\"name\":\"fw.bin\"");
    let (flash, third) = run_boot(
        flash,
        Boot::as_selected(&board("1.0")),
        &mut counting_github(&fixed, &new, &mut fetched),
    );
    assert_eq!(
        outcome(&third.events),
        "installed/none",
        "{:?}",
        third.events
    );
    assert_eq!(fetched, 2);
    assert_eq!(otadata_slot(&flash), Some(1));
}

#[test]
fn a_long_backlog_is_delivered_over_several_boots_not_all_in_one() {
    let current = image("1.0");
    let release = release_json("1.0", &current, &current);
    let mut flash = board("1.0");
    for _ in 0..40 {
        (flash, _) = boot(flash, &release, &current, false);
    }
    let (flash, first) = boot(flash, &release, &current, true);
    let max = firmware::machine::MAX_PUBLISHES_PER_BOOT as usize;
    assert_eq!(first.published.len(), max);
    assert!(
        saw(&first, |e| matches!(e, Event::LogKept { pending: 9 })),
        "{:?}",
        first.events
    );
    let (_, second) = boot(flash, &release, &current, true);
    assert_eq!(
        second.published.len(),
        10,
        "the rest and this boot's record"
    );
}

/// One boot of a board on 1.0 whose broker's PUBACKs (or failure reports) come after the
/// core's publish deadline, then a normal boot: the records the second boot publishes.
fn after_late_pubacks(broker_up: bool) -> (BootResult, Vec<String>) {
    let current = image("1.0");
    let release = release_json("1.0", &current, &current);
    let flash = board("1.0");
    let mut late = Boot::as_selected(&flash);
    late.late_pubacks = true;
    late.broker_up = broker_up;
    let (flash, first) = run_boot(flash, late, &mut github(&release, &current));
    let (_, second) = boot(flash, &release, &current, true);
    (first, second.published)
}

#[test]
fn a_puback_after_the_deadline_still_counts_as_delivered() {
    let (first, next) = after_late_pubacks(true);
    assert_eq!(first.published.len(), 1);
    assert!(
        saw(&first, |e| matches!(e, Event::Published { seq: 1 })),
        "{:?}",
        first.events
    );
    // Not published again: the broker has it.
    assert_eq!(next.len(), 1);
    assert!(next[0].contains("\"seq\":2"), "{next:?}");
}

#[test]
fn a_late_failure_report_does_not_deliver_a_record() {
    let (first, next) = after_late_pubacks(false);
    assert!(!saw(&first, |e| matches!(e, Event::Published { .. })));
    assert_eq!(next.len(), 2, "the kept record goes at the next boot");
}

/// Drains the core's actions: whether one of them was an HTTP request.
fn requested(core: &mut Updater<Ram>) -> bool {
    let mut any = false;
    while let Some(action) = core.poll_action() {
        any |= matches!(action, Action::Http(_));
    }
    while core.poll_event().is_some() {}
    any
}

#[test]
fn the_networks_return_ends_a_network_backoff_at_once_but_not_a_rate_limit_wait() {
    let mut core = Updater::new(board("1.0"), 1);
    let boot = BootInfo {
        running_offset: SLOT_OFFSETS[0],
        chip_revision: 4,
    };
    core.handle_boot(Instant(0), boot);
    assert!(!requested(&mut core), "no network yet");
    // The join times out: a network retry waits its backoff.
    let join_timeout = core.poll_timeout().unwrap();
    core.handle_timeout(join_timeout);
    assert!(!requested(&mut core));
    let backoff_end = core.poll_timeout().unwrap();
    assert!(backoff_end > join_timeout.plus_ms(1));
    // The WiFi comes back before the backoff is over: the check goes now.
    core.handle_network(join_timeout.plus_ms(1), true);
    assert!(
        requested(&mut core),
        "the check starts as soon as the network is back"
    );

    // A rate limit keeps its wait, whatever the network does meanwhile.
    let mut core = Updater::new(board("1.0"), 1);
    core.handle_boot(Instant(0), boot);
    core.handle_network(Instant(0), true);
    let mut check_id = None;
    while let Some(action) = core.poll_action() {
        if let Action::Http(req) = action {
            check_id = Some(req.id);
        }
    }
    let mut head = ResponseHead::new(429);
    head.header("retry-after", "600");
    core.handle_response_head(Instant(10), check_id.unwrap(), &head);
    assert!(!requested(&mut core));
    core.handle_network(Instant(20), false);
    core.handle_network(Instant(30), true);
    assert!(
        !requested(&mut core),
        "a rate limit is not a network outage"
    );
    core.handle_timeout(Instant(300_000));
    assert!(!requested(&mut core), "still waiting for the rate limit");
    core.handle_timeout(Instant(601_000));
    assert!(
        requested(&mut core),
        "asked again once the rate limit passed"
    );
}

/// GitHub as `github` serves it, with a weak ETag on the release answer and 304 to an
/// `If-None-Match` that names it (as api.github.com does). Records every request.
fn etag_github<'a>(
    release: &'a str,
    asset: &'a [u8],
    requests: &'a mut Vec<HttpRequest>,
) -> impl FnMut(&HttpRequest) -> Reply + 'a {
    let etag = format!("W/\"{:x}\"", Sha256::digest(release.as_bytes()));
    let mut inner = github(release, asset);
    move |req| {
        requests.push(req.clone());
        if !req.url.contains("/releases/latest") {
            return inner(req);
        }
        if req.if_none_match.as_deref() == Some(etag.as_str()) {
            return Reply::status(304, vec![("etag", etag.clone())]);
        }
        Reply::Http {
            status: 200,
            headers: vec![
                ("etag", etag.clone()),
                ("content-length", release.len().to_string()),
            ],
            body: release.as_bytes().to_vec(),
            cut_at: None,
        }
    }
}

fn checks(requests: &[HttpRequest]) -> Vec<Option<String>> {
    requests
        .iter()
        .filter(|r| r.url.contains("/releases/latest"))
        .map(|r| r.if_none_match.as_ref().map(|e| e.to_string()))
        .collect()
}

#[test]
fn an_unchanged_release_answer_is_a_304_and_still_up_to_date() {
    let current = image("1.0");
    let release = release_json("1.0", &current, &current);
    let mut requests = Vec::new();
    let flash = board("1.0");
    let boot = Boot::as_selected(&flash);
    let (flash, first) = run_boot(
        flash,
        boot,
        &mut etag_github(&release, &current, &mut requests),
    );
    assert_eq!(outcome(&first.events), "up_to_date/none");
    let (_, second) = run_boot(
        flash,
        boot,
        &mut etag_github(&release, &current, &mut requests),
    );
    assert_eq!(
        outcome(&second.events),
        "up_to_date/none",
        "{:?}",
        second.events
    );
    let sent = checks(&requests);
    assert_eq!(sent.len(), 2);
    assert_eq!(sent[0], None, "nothing remembered at the first boot");
    assert!(
        sent[1].as_deref().is_some_and(|e| e.starts_with("W/")),
        "{sent:?}"
    );
    assert!(saw(&second, |e| matches!(
        e,
        Event::Response { status: 304, .. }
    )));
    assert!(saw(
        &second,
        |e| matches!(e, Event::Release { tag, .. } if tag == "1.0")
    ));
    assert_eq!(leds(&second.events), "YGy");
}

#[test]
fn a_refused_release_answered_304_is_refused_again_without_a_download() {
    let new = image("1.1");
    let release = release_json("1.1", &new, &image("1.0.9"));
    let mut requests = Vec::new();
    let flash = board("1.0");
    let boot = Boot::as_selected(&flash);
    let (flash, first) = run_boot(flash, boot, &mut etag_github(&release, &new, &mut requests));
    assert_eq!(outcome(&first.events), "failed/hash_mismatch");
    let before = requests.len();
    let (flash, second) = run_boot(flash, boot, &mut etag_github(&release, &new, &mut requests));
    assert_eq!(outcome(&second.events), "failed/hash_mismatch");
    assert_eq!(
        requests.len(),
        before + 1,
        "only the check: {:?}",
        &requests[before..]
    );
    assert!(requests[before].if_none_match.is_some());
    assert_eq!(otadata_slot(&flash), None);
}

#[test]
fn a_remembered_answer_is_not_used_once_the_running_version_changed() {
    let current = image("1.0");
    let release = release_json("1.0", &current, &current);
    let mut requests = Vec::new();
    let flash = board("1.0");
    let boot = Boot::as_selected(&flash);
    let (mut flash, _) = run_boot(
        flash,
        boot,
        &mut etag_github(&release, &current, &mut requests),
    );
    // Flashed by hand with 1.1 since: "1.0 is up to date" says nothing about 1.1.
    let newer = image("1.1");
    flash.0[0x10000..][..newer.len()].copy_from_slice(&newer);
    let (_, second) = run_boot(
        flash,
        boot,
        &mut etag_github(&release, &current, &mut requests),
    );
    assert_eq!(checks(&requests), [None, None]);
    assert_eq!(outcome(&second.events), "failed/downgrade");
}

#[test]
fn a_304_to_a_request_without_an_etag_is_an_error_not_a_verdict() {
    let current = image("1.0");
    let release = release_json("1.0", &current, &current);
    let (_, result) = run_boot(board("1.0"), Boot::as_selected(&board("1.0")), &mut |req| {
        if req.url.contains("/releases/latest") {
            Reply::status(304, vec![])
        } else {
            github(&release, &current)(req)
        }
    });
    assert_eq!(outcome(&result.events), "failed/http_status");
}

#[test]
fn boots_without_github_continue_their_backoff_and_an_answer_ends_it() {
    let current = image("1.0");
    let release = release_json("1.0", &current, &current);
    let mut flash = board("1.0");
    let first_check_at = |events: &[Event]| {
        events.iter().find_map(|e| match e {
            Event::Retry {
                attempt: 0,
                delay_ms,
                ..
            } => Some(*delay_ms),
            _ => None,
        })
    };
    let mut delays = Vec::new();
    for _ in 0..8 {
        let mut boot = Boot::as_selected(&flash);
        boot.network_from_ms = u64::MAX;
        boot.power_off_at_ms = 10 * 60 * 1000;
        let (next, result) = run_boot(flash, boot, &mut github(&release, &current));
        flash = next;
        delays.push(first_check_at(&result.events));
    }
    assert_eq!(delays[0], None, "the first boot asks at once");
    let delays: Vec<u32> = delays[1..].iter().map(|d| d.expect("a wait")).collect();
    // Equal jitter: after k failed boots the wait is in [d/2, d] with d = 1 s · 2^(k-1),
    // growing up to six boots and no further.
    for (k, d) in delays.iter().enumerate() {
        let full = 1000u32 << k.min(5);
        assert!((full / 2..=full).contains(d), "boot {}: {d} ms", k + 2);
    }
    let (flash, answered) = run_boot(
        flash,
        Boot::as_selected(&board("1.0")),
        &mut github(&release, &current),
    );
    assert!(first_check_at(&answered.events).is_some());
    assert_eq!(outcome(&answered.events), "up_to_date/none");
    let (_, after) = boot(flash, &release, &current, true);
    assert_eq!(
        first_check_at(&after.events),
        None,
        "an answer ends the backoff"
    );
}

#[test]
fn an_endless_release_response_is_refused() {
    let new = image("1.1");
    // A JSON string that never ends: the parser alone would read it forever.
    let endless = format!(
        "{{\"tag_name\":\"1.1\",\"body\":\"{}",
        "x".repeat(5 * 1024 * 1024)
    );
    let (_, result) = boot(board("1.0"), &endless, &new, true);
    assert_eq!(outcome(&result.events), "failed/bad_release");
    assert!(saw(
        &result,
        |e| matches!(e, Event::Error { detail, .. } if detail.contains("larger than"))
    ));
}

// ----- the defects a review against real GitHub and ESP-IDF found ---------------------------

fn otadata_entries(flash: &Ram) -> [firmware::format::otadata::OtaEntry; 2] {
    use firmware::format::otadata::OtaEntry;
    let entry = |at: usize| OtaEntry::from_bytes(flash.0[at..at + 32].try_into().unwrap());
    [entry(0xd000), entry(0xe000)]
}

fn set_otadata(flash: &mut Ram, sector: usize, entry: firmware::format::otadata::OtaEntry) {
    let at = 0xd000 + sector * 0x1000;
    flash.0[at..at + 0x1000].fill(0xFF);
    flash.0[at..at + 32].copy_from_slice(&entry.to_bytes());
}

fn slot_bytes(flash: &Ram, slot: u8, len: usize) -> Vec<u8> {
    let at = SLOT_OFFSETS[usize::from(slot)] as usize;
    flash.0[at..at + len].to_vec()
}

/// A signed asset-host URL of the shape GitHub sends today (about 1 KB).
fn signed_location() -> String {
    let jwt = format!(
        "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.{}.sig",
        "A".repeat(600)
    );
    format!(
        "https://release-assets.githubusercontent.com/github-production-release-asset/41898282/\
         5b0c7e0e-8d4f-4f5c-9b7a-2a1f0c9d3e11?sp=r&sv=2018-11-09&sr=b&spr=https\
         &se=2026-11-27T13%3A05%3A33Z&rscd=attachment%3B+filename%3Dfw.bin\
         &rsct=application%2Foctet-stream&skoid=96c2d410-5711-43a1-aedd-ab1947aa7ab0\
         &sktid=398a6654-997b-47e9-b12b-9515b896b4de&skt=2026-11-27T12%3A04%3A58Z\
         &ske=2026-11-27T13%3A05%3A33Z&sks=b&skv=2018-11-09\
         &sig=Kx7b1yq0%2BZ0nqQ2c2m2o5zYq3u0e9hX1b2c3d4e5f6g%3D&jwt={jwt}\
         &response-content-disposition=attachment%3B%20filename%3Dfw.bin\
         &response-content-type=application%2Foctet-stream"
    )
}

/// Defect 1: every real download failed at the redirect (a 256-byte URL buffer against
/// GitHub's ~1 KB signed Location).
#[test]
fn a_download_follows_a_1_kib_signed_redirect() {
    let new = image("1.1");
    let release = release_json("1.1", &new, &new);
    let location = signed_location();
    assert!(location.len() > 1000, "{}", location.len());
    let mut asset_requests = Vec::new();
    let (flash, first) = run_boot(board("1.0"), Boot::as_selected(&board("1.0")), &mut |req| {
        if req.url.contains("/releases/latest") {
            Reply::ok(release.as_bytes())
        } else if req.url.contains("/releases/") {
            Reply::status(302, vec![("location", location.clone())])
        } else {
            asset_requests.push(req.url.to_string());
            Reply::ok(&new)
        }
    });
    assert_eq!(
        outcome(&first.events),
        "installed/none",
        "{:?}",
        first.events
    );
    assert_eq!(asset_requests.len(), 1);
    assert_eq!(asset_requests[0], location, "the signed URL, byte for byte");
    assert_eq!(otadata_slot(&flash), Some(1));
}

/// Defect 2: with slot 1 valid (seq 4) and slot 0's entry aborted by a rollback bootloader
/// (seq 5), reinstalling must rewrite the aborted sector, never the bootable one.
#[test]
fn a_reinstall_after_an_aborted_image_keeps_the_bootable_entry() {
    use firmware::format::otadata::{ImageState, OtaEntry};
    let mut flash = board("1.0");
    let old = image("1.0");
    flash.0[0x1f0000..][..old.len()].copy_from_slice(&old);
    set_otadata(&mut flash, 0, OtaEntry::new(5, ImageState::Aborted));
    set_otadata(&mut flash, 1, OtaEntry::new(4, ImageState::Valid));
    assert_eq!(otadata_slot(&flash), Some(1));
    let new = image("1.1");
    let release = release_json("1.1", &new, &new);
    let (flash, result) = run_boot(
        flash,
        Boot::as_selected(&board("1.0")).running(1),
        &mut github(&release, &new),
    );
    assert_eq!(
        outcome(&result.events),
        "installed/none",
        "{:?}",
        result.events
    );
    let [s0, s1] = otadata_entries(&flash);
    assert_eq!(
        s1,
        OtaEntry::new(4, ImageState::Valid),
        "the bootable entry is intact"
    );
    assert_eq!(s0, OtaEntry::new(5, ImageState::New));
    // Should the new image fail again, slot 1 still boots.
    let mut flash = flash;
    set_otadata(&mut flash, 0, OtaEntry::new(5, ImageState::Aborted));
    assert_eq!(otadata_slot(&flash), Some(1));
}

impl Boot {
    fn running(self, slot: u8) -> Boot {
        Boot {
            running_slot: slot,
            ..self
        }
    }
}

/// Defect 3: the bootloader rejected the image otadata selects (for a reason the core does not
/// check) and started slot 0. The core must believe the hardware, not otadata: the next
/// update goes into slot 1 and never erases the slot that is executing.
#[test]
fn the_running_slot_is_what_the_hardware_says_not_what_otadata_selects() {
    use firmware::format::otadata::{ImageState, OtaEntry};
    let mut flash = board("1.0");
    let rejected = image("1.1");
    flash.0[0x1f0000..][..rejected.len()].copy_from_slice(&rejected);
    set_otadata(&mut flash, 0, OtaEntry::new(1, ImageState::Valid));
    set_otadata(&mut flash, 1, OtaEntry::new(2, ImageState::New));
    let running = slot_bytes(&flash, 0, 0x8000);
    let new = image("1.2");
    let release = release_json("1.2", &new, &new);
    let (flash, result) = run_boot(
        flash,
        Boot::as_selected(&board("1.0")).running(0),
        &mut github(&release, &new),
    );
    assert!(
        saw(&result, |e| matches!(e, Event::Boot { slot: 0, .. })),
        "{:?}",
        result.events
    );
    assert_eq!(outcome(&result.events), "rolled_back/bad_image");
    // The next boot (otadata now selects slot 0) installs the newer release into slot 1.
    let (flash, result) = run_boot(
        flash,
        Boot::as_selected(&board("1.0")),
        &mut github(&release, &new),
    );
    assert_eq!(outcome(&result.events), "installed/none");
    assert_eq!(
        slot_bytes(&flash, 0, 0x8000),
        running,
        "the running slot is untouched"
    );
    assert_eq!(slot_bytes(&flash, 1, new.len()), new);
}

/// Defect 3, second half: an image outside the chip's revision window would be refused by the
/// bootloader; the core refuses it before switching.
#[test]
fn an_image_for_other_chip_revisions_is_refused_before_the_switch() {
    for (min, max) in [(5, 199), (0, 3)] {
        let new = image_for_revisions("1.1", min, max);
        let release = release_json("1.1", &new, &new);
        let (flash, result) = boot(board("1.0"), &release, &new, true);
        assert_eq!(outcome(&result.events), "failed/wrong_chip", "{min}..{max}");
        assert!(saw(&result, |e| matches!(
            e,
            Event::Error { detail, .. } if detail.contains("this board is v0.4")
        )));
        assert_eq!(otadata_slot(&flash), None, "nothing switched");
    }
    for (min, max) in [(3, 99), (0, 0), (4, 0xFFFF)] {
        let fits = image_for_revisions("1.1", min, max);
        let release = release_json("1.1", &fits, &fits);
        let (_, result) = boot(board("1.0"), &release, &fits, true);
        assert_eq!(outcome(&result.events), "installed/none", "{min}..{max}");
    }
}

fn installed_board() -> (Ram, String, Vec<u8>) {
    let new = image("1.1");
    let release = release_json("1.1", &new, &new);
    let (flash, first) = boot(board("1.0"), &release, &new, true);
    assert_eq!(outcome(&first.events), "installed/none");
    (flash, release, new)
}

/// Whether the boot reported an event `is` recognises.
fn saw(result: &BootResult, is: impl Fn(&Event) -> bool) -> bool {
    result.events.iter().any(is)
}

fn confirmed(result: &BootResult) -> bool {
    saw(result, |e| matches!(e, Event::Confirmed { .. }))
}

/// Defect 4: any HTTP status used to confirm a new image. A 403 from broken credentials or
/// a 5xx proves nothing: only a parsed, usable release does.
#[test]
fn a_new_image_confirms_only_on_a_usable_release() {
    use firmware::format::otadata::ImageState;
    let (flash, _, _) = installed_board();
    let (flash, forbidden) = run_boot(
        flash,
        Boot::as_selected(&board("1.0")).running(1),
        &mut |_| Reply::status(403, vec![("content-type", "application/json".into())]),
    );
    assert!(!confirmed(&forbidden), "{:?}", forbidden.events);
    assert_eq!(outcome(&forbidden.events), "failed/http_status");
    let [s0, _] = otadata_entries(&flash);
    assert_eq!(
        (s0.seq, s0.image_state()),
        (2, ImageState::New),
        "still on trial"
    );

    // GitHub unavailable past the trial deadline: the trial is given back, and the first
    // usable release confirms the image in the same boot.
    let new = image("1.1");
    let release = release_json("1.1", &new, &new);
    let mut calls = 0;
    let mut script = github(&release, &new);
    let (flash, unavailable) = run_boot(
        flash,
        Boot::as_selected(&board("1.0")).running(1),
        &mut |req| {
            calls += 1;
            if calls <= 60 {
                return Reply::status(503, vec![]);
            }
            script(req)
        },
    );
    let returned = unavailable
        .events
        .iter()
        .position(|e| matches!(e, Event::TrialReturned { .. }))
        .expect("the trial is given back");
    let confirmed_at = unavailable
        .events
        .iter()
        .position(|e| matches!(e, Event::Confirmed { .. }))
        .expect("confirmed once a release came");
    assert!(returned < confirmed_at);
    assert_eq!(outcome(&unavailable.events), "updated/none");
    assert_eq!(otadata_slot(&flash), Some(1));
}

/// Defect 4: a boot that only lacked the network gives its trial back, but a TLS failure is the
/// image's own (its roots, its clock) and uses the trial: such an image rolls back.
#[test]
fn tls_failures_use_up_trials_and_roll_back() {
    let (mut flash, release, new) = installed_board();
    for _ in 0..3 {
        let (next, result) = run_boot(
            flash,
            Boot::as_selected(&board("1.0")).running(1),
            &mut |_| Reply::Transport(Transport::Tls),
        );
        flash = next;
        assert_eq!(
            outcome(&result.events),
            "failed/self_check",
            "{:?}",
            result.events
        );
        assert!(!saw(&result, |e| matches!(e, Event::TrialReturned { .. })));
    }
    the_next_boot_rolls_back(flash, &release, &new);
}

/// Defect 5: hostile numbers in headers must not overflow (debug builds panic on overflow).
#[test]
fn hostile_rate_limit_headers_do_not_panic_the_core() {
    let mut calls = 0;
    let (_, result) = run_boot(board("1.0"), Boot::as_selected(&board("1.0")), &mut |_| {
        calls += 1;
        if calls > 2 {
            return Reply::PowerCut;
        }
        Reply::status(
            403,
            vec![
                ("x-ratelimit-remaining", "0".into()),
                ("x-ratelimit-reset", "18446744073709551615".into()),
                ("date", "Sun, 06 Nov 99999999999999999 08:49:37 GMT".into()),
                ("retry-after", "4294967295".into()),
            ],
        )
    });
    assert!(saw(&result, |e| matches!(e, Event::Retry { .. })));
}

/// Defect 6: the token goes to the configured API host only, and no redirect may downgrade
/// https to http.
#[test]
fn the_token_never_leaves_the_api_host_and_https_never_becomes_http() {
    let new = image("1.1");
    let release = release_json("1.1", &new, &new).replace(
        "https://gh.test/repos/acme/thermo/releases/assets/1",
        "https://evil.test/assets/1",
    );
    // run_boot asserts that no authorized request leaves https://gh.test.
    let (_, result) = boot(board("1.0"), &release, &new, true);
    assert_eq!(outcome(&result.events), "installed/none");
    assert!(
        result
            .requests
            .iter()
            .all(|r| !r.url.starts_with("https://evil.test"))
    );

    let release = release_json("1.1", &new, &new);
    let (flash, result) = run_boot(board("1.0"), Boot::as_selected(&board("1.0")), &mut |req| {
        if req.url.contains("/releases/latest") {
            Reply::ok(release.as_bytes())
        } else if req.url.starts_with("https://") {
            Reply::status(302, vec![("location", "http://cdn.test/blob/1".into())])
        } else {
            Reply::ok(&new)
        }
    });
    assert_eq!(
        outcome(&result.events),
        "failed/http_status",
        "{:?}",
        result.events
    );
    assert!(
        result
            .requests
            .iter()
            .all(|r| r.url.starts_with("https://"))
    );
    assert_eq!(otadata_slot(&flash), None);
}

/// A GitHub whose asset host speaks Range, If-Range and ETag (RFC 9110), serving `asset`
/// with ETag `etag`; a request is cut after `cut_at` body bytes when set.
fn ranged_github<'a>(
    release: &'a str,
    asset: &'a [u8],
    etag: &'a str,
    cut_at: Option<usize>,
) -> impl FnMut(&HttpRequest) -> Reply + 'a {
    move |req| {
        if req.url.contains("/releases/latest") {
            return Reply::ok(release.as_bytes());
        }
        if req.url.contains("/releases/") {
            return Reply::status(302, vec![("location", "https://cdn.test/blob/1".into())]);
        }
        let validator_matches = req.if_range.as_deref().is_none_or(|v| v == etag);
        match req.range_from {
            Some(from) if validator_matches => {
                let body = asset[from as usize..].to_vec();
                Reply::Http {
                    status: 206,
                    headers: vec![
                        ("content-length", body.len().to_string()),
                        (
                            "content-range",
                            format!("bytes {from}-{}/{}", asset.len() - 1, asset.len()),
                        ),
                        ("etag", etag.to_string()),
                    ],
                    body,
                    cut_at,
                }
            }
            _ => Reply::Http {
                status: 200,
                headers: vec![
                    ("content-length", asset.len().to_string()),
                    ("etag", etag.to_string()),
                ],
                body: asset.to_vec(),
                cut_at,
            },
        }
    }
}

/// A first boot that stores 3 sectors of `asset` and is then cut.
fn cut_after_three_sectors(release: &str, asset: &[u8], etag: &str) -> Ram {
    let mut first_asset = true;
    let mut script = ranged_github(release, asset, etag, Some(3 * 4096 + 100));
    let (flash, result) = run_boot(board("1.0"), Boot::as_selected(&board("1.0")), &mut |req| {
        if req.url.starts_with("https://cdn.test") {
            if !first_asset {
                return Reply::PowerCut;
            }
            first_asset = false;
        }
        script(req)
    });
    // The connection broke after three sectors and the power went as the retry asked again.
    let retried = result
        .requests
        .iter()
        .filter(|r| r.url.starts_with("https://cdn.test"))
        .map(|r| r.range_from)
        .collect::<Vec<_>>();
    assert_eq!(retried, [None, Some(3 * 4096)], "{:?}", result.events);
    flash
}

/// Defect 7: a resume says which file it continues (If-Range with the ETag) …
#[test]
fn a_resume_sends_if_range_with_the_assets_etag() {
    let new = image("1.1");
    let release = release_json("1.1", &new, &new);
    let flash = cut_after_three_sectors(&release, &new, "\"0x8DD0A1\"");
    let (flash, result) = run_boot(
        flash,
        Boot::as_selected(&board("1.0")),
        &mut ranged_github(&release, &new, "\"0x8DD0A1\"", None),
    );
    let asset_request = first_asset_request(&result);
    assert_eq!(asset_request.range_from, Some(3 * 4096));
    assert_eq!(asset_request.if_range.as_deref(), Some("\"0x8DD0A1\""));
    assert_eq!(outcome(&result.events), "installed/none");
    assert_eq!(slot_bytes(&flash, 1, new.len()), new);
}

/// A server that ignores `Range` but sends the same file (same strong ETag) costs bandwidth,
/// not flash: durable sectors are compared, not erased again, and the progress sector is
/// erased once, when the download starts.
#[test]
fn a_server_ignoring_range_does_not_make_the_core_erase_again() {
    let new = image("1.1");
    assert!(new.len() > 4 * 4096);
    let release = release_json("1.1", &new, &new);
    let cuts = [Some(4096 + 100), Some(3 * 4096 + 100), None];
    let mut asset_requests = 0;
    let mut ranges = Vec::new();
    take_erases();
    let (flash, result) = run_boot(board("1.0"), Boot::as_selected(&board("1.0")), &mut |req| {
        if req.url.contains("/releases/latest") {
            return Reply::ok(release.as_bytes());
        }
        if req.url.contains("/releases/") {
            return Reply::status(302, vec![("location", "https://cdn.test/blob/1".into())]);
        }
        ranges.push(req.range_from);
        let cut_at = cuts[asset_requests.min(2)];
        asset_requests += 1;
        Reply::Http {
            status: 200,
            headers: vec![
                ("content-length", new.len().to_string()),
                ("etag", "\"0x8DD0A1\"".to_string()),
            ],
            body: new.clone(),
            cut_at,
        }
    });
    assert_eq!(
        outcome(&result.events),
        "installed/none",
        "{:?}",
        result.events
    );
    assert_eq!(ranges, [None, Some(4096), Some(3 * 4096)]);
    assert_eq!(slot_bytes(&flash, 1, new.len()), new);
    let erases = take_erases();
    let progress_sector = 0x3d4000;
    assert_eq!(
        erases.iter().filter(|&&s| s == progress_sector).count(),
        1,
        "{erases:x?}"
    );
    for sector in (0x1f0000..0x1f0000 + new.len() as u32).step_by(4096) {
        assert_eq!(
            erases.iter().filter(|&&s| s == sector).count(),
            1,
            "slot sector {sector:#x} erased once: {erases:x?}"
        );
    }
}

/// A server that ignores `Range` and sends other bytes under the same ETag (a lying cache)
/// gets them written: a durable sector is skipped only when the flash already holds its bytes.
#[test]
fn a_durable_sector_is_rewritten_when_the_bytes_sent_again_differ() {
    let first = image("1.1");
    // A rebuilt 1.1: same size, other bytes from the first sector on.
    let second = image_with_data("1.1", 7);
    assert_eq!(first.len(), second.len());
    assert_ne!(first[..4096], second[..4096]);
    let release = release_json("1.1", &second, &second);
    let mut asset_requests = 0;
    let (flash, result) = run_boot(board("1.0"), Boot::as_selected(&board("1.0")), &mut |req| {
        if req.url.contains("/releases/latest") {
            return Reply::ok(release.as_bytes());
        }
        if req.url.contains("/releases/") {
            return Reply::status(302, vec![("location", "https://cdn.test/blob/1".into())]);
        }
        asset_requests += 1;
        let (body, cut_at) = if asset_requests == 1 {
            (first.clone(), Some(first.len() / 2 + 4096 + 100))
        } else {
            (second.clone(), None)
        };
        Reply::Http {
            status: 200,
            headers: vec![
                ("content-length", body.len().to_string()),
                ("etag", "\"same\"".to_string()),
            ],
            body,
            cut_at,
        }
    });
    assert_eq!(
        outcome(&result.events),
        "installed/none",
        "{:?}",
        result.events
    );
    assert_eq!(slot_bytes(&flash, 1, second.len()), second);
}

/// … and a file that changed on the server is downloaded again from zero, never stitched.
#[test]
fn a_replaced_asset_is_downloaded_from_zero_not_stitched() {
    let old_build = image("1.1");
    let release = release_json("1.1", &old_build, &old_build);
    let flash = cut_after_three_sectors(&release, &old_build, "\"first\"");

    // Same tag, re-uploaded: the server's ETag changed; the release JSON was cached with
    // the old size and digest, so the board only learns it from the asset host.
    let mut rebuilt = image("1.1");
    let last = rebuilt.len() - 40;
    rebuilt[last] ^= 0xFF; // not the file the first boot started on
    let (flash, result) = run_boot(
        flash,
        Boot::as_selected(&board("1.0")),
        &mut ranged_github(&release, &rebuilt, "\"second\"", None),
    );
    let asset_request = first_asset_request(&result);
    assert_eq!(asset_request.if_range.as_deref(), Some("\"first\""));
    // The server answered 200 with the whole new file: the core took all of it from byte 0
    // (nothing resumed), and verification refused it, instead of a silent mix.
    assert!(
        saw(&result, |e| matches!(
            e,
            Event::Outcome { result: firmware::trace::Outcome::Failed, resumed_from: 0, bytes, .. }
                if *bytes as usize == rebuilt.len()
        )),
        "{:?}",
        result.events
    );
    assert_eq!(otadata_slot(&flash), None);

    // A Content-Range total that is not the release's size means another file: start over.
    let new = image("1.1");
    let release = release_json("1.1", &new, &new);
    let flash = cut_after_three_sectors(&release, &new, "\"v\"");
    let mut asked_from = Vec::new();
    let (flash, result) = run_boot(flash, Boot::as_selected(&board("1.0")), &mut |req| {
        if req.url.starts_with("https://cdn.test") {
            asked_from.push(req.range_from);
            if let Some(from) = req.range_from {
                let body = new[from as usize..].to_vec();
                return Reply::Http {
                    status: 206,
                    headers: vec![
                        ("content-length", body.len().to_string()),
                        (
                            "content-range",
                            format!("bytes {from}-{}/{}", new.len() + 99, new.len() + 100),
                        ),
                    ],
                    body,
                    cut_at: None,
                };
            }
        }
        ranged_github(&release, &new, "\"v\"", None)(req)
    });
    assert_eq!(
        asked_from,
        [Some(3 * 4096), None],
        "resumed, then started over"
    );
    assert_eq!(
        outcome(&result.events),
        "installed/none",
        "{:?}",
        result.events
    );
    assert_eq!(slot_bytes(&flash, 1, new.len()), new);

    // A release whose asset was re-uploaded (new updated_at) does not resume the old bytes.
    let flash = cut_after_three_sectors(&release, &new, "\"v\"");
    let reuploaded = release.replace(
        "\"size\"",
        "\"updated_at\":\"2026-11-28T09:00:00Z\",\"size\"",
    );
    assert_ne!(reuploaded, release);
    let (_, result) = run_boot(
        flash,
        Boot::as_selected(&board("1.0")),
        &mut ranged_github(&reuploaded, &new, "\"v\"", None),
    );
    let asset_request = first_asset_request(&result);
    assert_eq!(
        asset_request.range_from, None,
        "a new asset starts at byte 0"
    );
    assert_eq!(outcome(&result.events), "installed/none");
}

/// The bootloader refused the image otadata selects and started the old slot (here: behind a
/// check the core could not make). The core must not install the same release at every boot
/// behind a fallback: it bars the release and points otadata back at the running slot.
#[test]
fn an_image_the_bootloader_refused_is_barred_and_otadata_points_back() {
    let (flash, release, new) = installed_board();
    assert_eq!(otadata_slot(&flash), Some(1));
    let (flash, result) = run_boot(
        flash,
        Boot::as_selected(&board("1.0")).running(0),
        &mut github(&release, &new),
    );
    assert!(
        saw(&result, |e| matches!(
            e,
            Event::Error { detail, .. } if detail.contains("bootloader refused")
        )),
        "{:?}",
        result.events
    );
    assert_eq!(
        otadata_slot(&flash),
        Some(0),
        "otadata points at the running slot again"
    );
    assert_eq!(outcome(&result.events), "rolled_back/bad_image");
    assert!(!result.rebooted, "already on the old image");
    assert_eq!(
        leds(&result.events),
        "YGG",
        "the rollback pattern, yellow stays on"
    );
    assert!(
        result.published[0].contains(r#""from":"1.1","to":"1.0""#),
        "{}",
        result.published[0]
    );
    let (_, next) = run_boot(
        flash,
        Boot::as_selected(&board("1.0")),
        &mut github(&release, &new),
    );
    assert_eq!(outcome(&next.events), "failed/rolled_back_release");
}

/// A trial boot without network, cut by the power after 25 minutes.
fn offline_trial_boot(
    flash: Ram,
    release: &str,
    new: &[u8],
    wifi_broken: bool,
) -> (Ram, BootResult) {
    let mut boot = Boot::as_selected(&flash);
    boot.network_from_ms = u64::MAX;
    boot.power_off_at_ms = 25 * 60 * 1000;
    boot.wifi_broken = wifi_broken;
    run_boot(flash, boot, &mut github(release, new))
}

fn returned(result: &BootResult) -> bool {
    saw(result, |e| matches!(e, Event::TrialReturned { .. }))
}

/// Review: the give-back must be bounded, or an image whose own networking is broken (or
/// that crashes late in every offline boot) is never judged. After MAX_RETURNS boots given
/// back, an offline trial boot keeps its trial and reboots; three of those roll back.
#[test]
fn trial_boots_given_back_are_bounded() {
    use firmware::storage::trial::MAX_RETURNS;
    let (mut flash, release, new) = installed_board();
    for n in 0..MAX_RETURNS {
        let (next, result) = offline_trial_boot(flash, &release, &new, false);
        flash = next;
        assert!(returned(&result), "boot {n}");
    }
    for n in 0..3 {
        let (next, result) = offline_trial_boot(flash, &release, &new, false);
        flash = next;
        assert!(!returned(&result), "boot {n} after the bound");
        assert!(result.rebooted);
        assert_eq!(outcome(&result.events), "failed/self_check");
    }
    the_next_boot_rolls_back(flash, &release, &new);
}

/// Review: a WiFi driver that does not start is the image's fault, not the network's.
#[test]
fn a_radio_that_does_not_start_uses_up_trials() {
    let (mut flash, release, new) = installed_board();
    for _ in 0..3 {
        let (next, result) = offline_trial_boot(flash, &release, &new, true);
        flash = next;
        assert!(!returned(&result), "{:?}", result.events);
        assert!(result.rebooted);
    }
    the_next_boot_rolls_back(flash, &release, &new);
}

/// Review: a connection broken once mid-handshake (reported as TLS by a stack that cannot tell)
/// must not count against a good image when the network then stays away: the last failure
/// before the deadline is judged, not any earlier one.
#[test]
fn only_the_last_failure_before_the_deadline_is_judged() {
    let (flash, _, _) = installed_board();
    let mut calls = 0;
    let mut boot = Boot::as_selected(&flash);
    boot.power_off_at_ms = 25 * 60 * 1000;
    let (_, result) = run_boot(flash, boot, &mut |_| {
        calls += 1;
        Reply::Transport(if calls == 1 {
            Transport::Tls
        } else {
            Transport::Network
        })
    });
    assert!(returned(&result), "{:?}", result.events);
}

/// Review: a release GitHub offers that nobody can use (no release, missing asset) proves
/// nothing about the new image: the old one would see the same. The trial is given back.
#[test]
fn an_unusable_release_on_a_trial_boot_gives_the_trial_back() {
    let (flash, release, new) = installed_board();
    let (flash, result) = run_boot(
        flash,
        Boot::as_selected(&board("1.0")).running(1),
        &mut |_| Reply::status(404, vec![]),
    );
    assert_eq!(outcome(&result.events), "failed/no_release");
    assert!(returned(&result), "{:?}", result.events);
    assert!(!result.rebooted);
    let (_, next) = run_boot(
        flash,
        Boot::as_selected(&board("1.0")).running(1),
        &mut github(&release, &new),
    );
    assert!(saw(&next, |e| matches!(e, Event::Trial { boot: 1, of: 3 })));
    assert_eq!(outcome(&next.events), "updated/none");
}

/// Review: behind a rollback bootloader, an image that dies before its core runs is only seen
/// as an `aborted` otadata entry. The old image counts that boot (once per install), so the
/// release is barred after three, instead of being installed again at every boot. ESP-IDF
/// reuses the sequence number for the re-install (the aborted entry is not the base).
#[test]
fn boots_a_rollback_bootloader_aborted_are_counted_by_the_old_image() {
    use firmware::format::otadata::{ImageState, OtaEntry};
    let new = image("1.1");
    let release = release_json("1.1", &new, &new);
    // As the ESP-IDF bootloader leaves blank otadata after the first boot: seq 1, valid.
    let mut flash = board("1.0");
    set_otadata(&mut flash, 0, OtaEntry::new(1, ImageState::Valid));
    for install in 1..=3 {
        let (next, result) = boot(flash, &release, &new, true);
        assert_eq!(
            outcome(&result.events),
            "installed/none",
            "install {install}"
        );
        flash = next;
        let [_, s1] = otadata_entries(&flash);
        assert_eq!((s1.seq, s1.image_state()), (2, ImageState::New));
        // 1.1 dies before its core runs; the bootloader marks it pending, then aborted.
        set_otadata(&mut flash, 1, OtaEntry::new(2, ImageState::Aborted));
    }
    let (_, barred) = boot(flash, &release, &new, true);
    assert!(
        saw(&barred, |e| matches!(
            e,
            Event::Error { detail, .. } if detail.contains("never saw: trial 3 of 3")
        )),
        "{:?}",
        barred.events
    );
    assert_eq!(outcome(&barred.events), "failed/rolled_back_release");
}

/// The image on trial in slot 1 boots once more and is rolled back to slot 0.
fn the_next_boot_rolls_back(flash: Ram, release: &str, new: &[u8]) {
    let boot = Boot::as_selected(&board("1.0")).running(1);
    let (flash, last) = run_boot(flash, boot, &mut github(release, new));
    assert_eq!(outcome(&last.events), "rolled_back/self_check");
    assert_eq!(otadata_slot(&flash), Some(0));
}

/// The figures the README gives: a trial boot is judged after 10 minutes, a request that
/// delivers nothing for 30 s is a stall, a release response over 4 MiB is refused.
#[test]
fn the_documented_limits() {
    use firmware::machine::{MAX_RELEASE_RESPONSE, STALL_MS, TRIAL_DEADLINE_MS};
    assert_eq!(TRIAL_DEADLINE_MS, 600_000);
    assert_eq!(STALL_MS, 30_000);
    assert_eq!(MAX_RELEASE_RESPONSE, 4_194_304);
}

/// As the ESP-IDF bootloader leaves blank otadata after its first boot: seq 1, valid, slot 0.
fn board_after_first_boot(running: &str) -> Ram {
    use firmware::format::otadata::{ImageState, OtaEntry};
    let mut flash = board(running);
    set_otadata(&mut flash, 0, OtaEntry::new(1, ImageState::Valid));
    flash
}

/// A rollback marks the failed image's entry invalid where it stands (ESP-IDF's way), leaving
/// the previous image's entry untouched: a cut during the rewrite can only land on the old image.
#[test]
fn a_rollback_invalidates_the_trial_entry_in_place() {
    use firmware::format::otadata::{ImageState, OtaEntry};
    let new = image("1.1");
    let release = release_json("1.1", &new, &new);
    let (mut flash, first) = boot(board_after_first_boot("1.0"), &release, &new, true);
    assert_eq!(outcome(&first.events), "installed/none");
    for _ in 0..3 {
        let mut boot = Boot::as_selected(&flash);
        boot.wifi_broken = true;
        boot.power_off_at_ms = 25 * 60 * 1000;
        flash = run_boot(flash, boot, &mut github(&release, &new)).0;
    }
    let [before0, before1] = otadata_entries(&flash);
    assert_eq!((before1.seq, before1.image_state()), (2, ImageState::New));
    let (flash, last) = run_boot(
        flash,
        Boot::as_selected(&board("1.0")).running(1),
        &mut github(&release, &new),
    );
    assert_eq!(outcome(&last.events), "rolled_back/self_check");
    let [after0, after1] = otadata_entries(&flash);
    assert_eq!(after0, before0, "the previous image's entry is not touched");
    assert_eq!(
        after1,
        OtaEntry {
            state: ImageState::Invalid as u32,
            ..before1
        }
    );
    assert_eq!(otadata_slot(&flash), Some(0));
}

/// When the new image's own core counted its trial boot, the abort the rollback bootloader then
/// writes is that same boot: the old image must not count it twice.
#[test]
fn an_abort_the_core_saw_is_not_counted_twice() {
    use firmware::format::otadata::{ImageState, OtaEntry};
    let new = image("1.1");
    let release = release_json("1.1", &new, &new);
    let (flash, _) = boot(board_after_first_boot("1.0"), &release, &new, true);
    // 1.1's trial boot: counted under seq 2, then the power goes before it confirms.
    let mut trial = Boot::as_selected(&flash);
    trial.power_off_at_ms = 0;
    let (mut flash, cut) = run_boot(flash, trial, &mut github(&release, &new));
    assert!(saw(&cut, |e| matches!(e, Event::Trial { boot: 1, of: 3 })));
    // The rollback bootloader marks it aborted and starts 1.0.
    set_otadata(&mut flash, 1, OtaEntry::new(2, ImageState::Aborted));
    let (flash, old) = boot(flash, &release, &new, true);
    assert!(
        !saw(
            &old,
            |e| matches!(e, Event::Error { detail, .. } if detail.contains("never saw"))
        ),
        "{:?}",
        old.events
    );
    assert_eq!(outcome(&old.events), "installed/none");
    let (_, second) = run_boot(
        flash,
        Boot::as_selected(&board("1.0")).running(1),
        &mut github(&release, &new),
    );
    assert!(
        saw(&second, |e| matches!(e, Event::Trial { boot: 2, of: 3 })),
        "{:?}",
        second.events
    );
}

/// An attempt from byte 0 that made nothing durable must not leave its ETag behind: the next
/// attempt from byte 0 may get another file, and its resume must name that one.
#[test]
fn a_fresh_start_forgets_the_etag_of_an_attempt_that_kept_nothing() {
    let new = image("1.1");
    let release = release_json("1.1", &new, &new);
    let mut asset_calls = 0;
    let mut first = ranged_github(&release, &new, "\"A\"", Some(100));
    let mut second = ranged_github(&release, &new, "\"B\"", Some(3 * 4096 + 100));
    let (flash, _) = run_boot(board("1.0"), Boot::as_selected(&board("1.0")), &mut |req| {
        if !req.url.starts_with("https://cdn.test") {
            return first(req);
        }
        asset_calls += 1;
        match asset_calls {
            1 => first(req),
            2 => second(req),
            _ => Reply::PowerCut,
        }
    });
    let (_, result) = run_boot(
        flash,
        Boot::as_selected(&board("1.0")),
        &mut ranged_github(&release, &new, "\"B\"", None),
    );
    let resume = first_asset_request(&result);
    assert_eq!(resume.range_from, Some(3 * 4096));
    assert_eq!(resume.if_range.as_deref(), Some("\"B\""));
    assert_eq!(outcome(&result.events), "installed/none");
}

/// A release response cut short is the network's doing, retried; not a bad release.
#[test]
fn a_release_response_cut_short_is_retried() {
    let new = image("1.1");
    let release = release_json("1.1", &new, &new);
    for with_length in [true, false] {
        let mut calls = 0;
        let mut script = github(&release, &new);
        let (_, result) = run_boot(board("1.0"), Boot::as_selected(&board("1.0")), &mut |req| {
            calls += 1;
            if calls == 1 {
                let headers = if with_length {
                    vec![("content-length", release.len().to_string())]
                } else {
                    vec![]
                };
                return Reply::Http {
                    status: 200,
                    headers,
                    body: release.as_bytes().to_vec(),
                    cut_at: Some(500),
                };
            }
            script(req)
        });
        assert!(
            saw(&result, |e| matches!(e, Event::Retry { .. })),
            "{with_length}"
        );
        assert_eq!(outcome(&result.events), "installed/none", "{with_length}");
    }
}

/// WiFi that drops mid-download: the request is dropped, and the download resumes from what
/// is durable once the network is back.
#[test]
fn wifi_lost_mid_download_resumes_when_it_returns() {
    let new = image("1.1");
    let release = release_json("1.1", &new, &new);
    let mut core = Updater::new(board("1.0"), 7);
    let now = Instant(0);
    core.handle_boot(
        now,
        BootInfo {
            running_offset: SLOT_OFFSETS[0],
            chip_revision: 4,
        },
    );
    let mut actions = Vec::new();
    let drain = |core: &mut Updater<Ram>| {
        while core.poll_event().is_some() {}
        let mut out = Vec::new();
        while let Some(a) = core.poll_action() {
            out.push(a);
        }
        out
    };
    actions.extend(drain(&mut core));
    core.handle_network(now, true);
    let check = drain(&mut core)
        .into_iter()
        .find_map(|a| match a {
            Action::Http(r) => Some(r),
            _ => None,
        })
        .unwrap();
    let mut head = ResponseHead::new(200);
    head.header("content-length", &release.len().to_string());
    core.handle_response_head(now, check.id, &head);
    core.handle_response_body(now, check.id, release.as_bytes());
    core.handle_response_end(now, check.id);
    let download = drain(&mut core)
        .into_iter()
        .find_map(|a| match a {
            Action::Http(r) => Some(r),
            _ => None,
        })
        .unwrap();
    let mut head = ResponseHead::new(200);
    head.header("content-length", &new.len().to_string());
    core.handle_response_head(now, download.id, &head);
    core.handle_response_body(now, download.id, &new[..2 * 4096 + 10]);
    core.handle_network(now, false);
    let dropped = drain(&mut core);
    assert!(
        dropped.contains(&Action::AbortHttp { id: download.id }),
        "{dropped:?}"
    );
    assert!(dropped.contains(&Action::JoinNetwork), "{dropped:?}");
    core.handle_network(now, true);
    let resume = drain(&mut core)
        .into_iter()
        .find_map(|a| match a {
            Action::Http(r) => Some(r),
            _ => None,
        })
        .unwrap();
    assert_eq!(resume.range_from, Some(2 * 4096));
}

/// Review: when the glue cannot say which slot runs, the core updates nothing, but an image on
/// trial is still judged by what otadata selects: it uses up its trials and is rolled back.
#[test]
fn an_unknown_running_slot_still_counts_trials() {
    let (mut flash, _, _) = installed_board();
    let unknown = |flash: Ram| {
        let mut core = Updater::new(flash, 1);
        core.handle_boot(
            Instant(0),
            BootInfo {
                running_offset: u32::MAX,
                chip_revision: 4,
            },
        );
        let mut events = Vec::new();
        while let Some((_, e)) = core.poll_event() {
            events.push(e);
        }
        while core.poll_action().is_some() {}
        (core.into_flash(), events)
    };
    for boot in 1..=3 {
        let (next, events) = unknown(flash);
        flash = next;
        assert!(
            events
                .iter()
                .any(|e| matches!(e, Event::Trial { boot: b, .. } if *b == boot)),
            "{events:?}"
        );
        assert!(events.iter().any(|e| matches!(
            e,
            Event::Error { detail, .. } if detail.contains("which is no OTA slot")
        )));
    }
    let (flash, events) = unknown(flash);
    assert!(
        events.iter().any(|e| matches!(
            e,
            Event::Outcome {
                result: firmware::trace::Outcome::RolledBack,
                ..
            }
        )),
        "{events:?}"
    );
    assert_eq!(otadata_slot(&flash), Some(0));
}

/// The first request of a boot that went to the asset host.
fn first_asset_request(result: &BootResult) -> &HttpRequest {
    result
        .requests
        .iter()
        .find(|r| r.url.starts_with("https://cdn.test"))
        .expect("a request to the asset host")
}

/// Found by the power-cut sweep's `otadata-state` shape: a switch cut while the state word
/// was being programmed leaves `ota_seq` and its CRC intact and the state neither NEW nor
/// anything else a writer produces. ESP-IDF boots such an entry; the image behind it must
/// still be on trial and confirm itself (rewriting the word VALID), not run unconfirmed.
#[test]
fn a_torn_otadata_state_word_puts_the_image_on_trial_and_confirmation_repairs_it() {
    use firmware::format::otadata::ImageState;
    let (mut flash, release, new) = installed_board();
    let [s0, s1] = otadata_entries(&flash);
    // The entry the switch wrote (the other may be erased: its seq reads 0xFFFFFFFF).
    let (sector, mut entry) = if s0.image_state() == ImageState::New {
        (0, s0)
    } else {
        (1, s1)
    };
    assert_eq!(entry.image_state(), ImageState::New);
    entry.state = 0x00FF_00FF; // NEW (all zero) programmed over FF, stopped half way
    assert!(ImageState::is_torn(entry.state));
    set_otadata(&mut flash, sector, entry);
    let (flash, trial) = run_boot(
        flash,
        Boot::as_selected(&board("1.0")).running(1),
        &mut github(&release, &new),
    );
    assert!(
        on_trial(&trial),
        "the boot counts as a trial: {:?}",
        trial.events
    );
    assert!(confirmed(&trial), "{:?}", trial.events);
    let active = otadata_entries(&flash)[sector];
    assert_eq!(active.seq, entry.seq);
    assert_eq!(
        active.state,
        ImageState::Valid as u32,
        "the word is whole again"
    );
    assert!(!ImageState::is_torn(ImageState::New as u32));
    assert!(!ImageState::is_torn(ImageState::Undefined as u32));
}

/// One boot of 1.0 from ota_0 while the latest release is 1.0.
fn boot_factory_up_to_date(flash: Ram) -> (Ram, BootResult) {
    let current = image("1.0");
    let release = release_json("1.0", &current, &current);
    run_boot(
        flash,
        Boot::as_selected(&board("1.0")).running(0),
        &mut github(&release, &current),
    )
}

fn on_trial(result: &BootResult) -> bool {
    saw(result, |e| matches!(e, Event::Trial { .. }))
}

/// Found by the power-cut sweep: the bootloader's own first otadata write on a fresh board
/// (seq 1, VALID) cut while the state word was programmed. The image behind it is the factory
/// one, with no trial record: it is not put on trial (it has nothing to roll back to), and a
/// whole VALID entry one round of sequence numbers higher goes into the other sector, leaving
/// the torn one where it is (erasing it first would leave no entry if power went again).
#[test]
fn a_torn_first_otadata_entry_of_a_fresh_board_is_superseded_not_put_on_trial() {
    use firmware::format::otadata::{ImageState, OtaEntry};
    let mut flash = board("1.0");
    let mut torn = OtaEntry::new(1, ImageState::Valid);
    torn.state = 0xFF00_00FF; // VALID (2) programmed over FF, stopped half way
    set_otadata(&mut flash, 0, torn);
    let (flash, result) = boot_factory_up_to_date(flash);
    assert!(
        !on_trial(&result),
        "the factory image is not on trial: {:?}",
        result.events
    );
    assert_eq!(outcome(&result.events), "up_to_date/none");
    let [s0, s1] = otadata_entries(&flash);
    assert_eq!(s0.state, 0xFF00_00FF, "the torn entry is left alone");
    assert_eq!((s1.seq, s1.image_state()), (3, ImageState::Valid));
    assert_eq!(otadata_slot(&flash), Some(0), "seq 3 still selects ota_0");

    // The same in sector 1, and a trial record of an older install of this slot: the record
    // names another version, so this is still no switch of ours.
    let mut flash = board("1.0");
    let mut torn = OtaEntry::new(3, ImageState::Valid);
    torn.state = 0xFFFF_0002;
    set_otadata(&mut flash, 1, torn);
    let layout = firmware::storage::Layout::read(&mut flash).unwrap();
    firmware::storage::trial::TrialRecord::new(layout.state)
        .begin(&mut flash, 0, "0.9")
        .unwrap();
    let (flash, result) = boot_factory_up_to_date(flash);
    assert!(!on_trial(&result), "{:?}", result.events);
    let [s0, s1] = otadata_entries(&flash);
    assert_eq!(s1.state, 0xFFFF_0002);
    assert_eq!((s0.seq, s0.image_state()), (5, ImageState::Valid));
}

/// Found by the power-cut sweep behind the rollback bootloader: a torn first entry (its CRC
/// never landed) and the only other entry aborted leave otadata selecting nothing; the
/// bootloader starts ota_0 by default. The core points otadata back at the image it runs.
#[test]
fn otadata_that_selects_nothing_is_pointed_back_at_the_running_image() {
    use firmware::format::otadata::{ImageState, OtaEntry};
    let mut flash = board("1.0");
    let mut no_crc = OtaEntry::new(1, ImageState::Valid);
    no_crc.crc = u32::MAX; // the program stopped before the CRC word
    set_otadata(&mut flash, 0, no_crc);
    set_otadata(&mut flash, 1, OtaEntry::new(2, ImageState::Aborted));
    assert_eq!(otadata_slot(&flash), None);
    let (flash, result) = boot_factory_up_to_date(flash);
    assert_eq!(outcome(&result.events), "up_to_date/none");
    assert_eq!(
        otadata_slot(&flash),
        Some(0),
        "{:?}",
        otadata_entries(&flash)
    );
}
