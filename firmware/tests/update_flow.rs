//! Drives the state machine through whole boots with an in-memory flash and
//! a scripted GitHub, and checks the LED and log sequences of DESIGN.md §1.

use embedded_storage::nor_flash::{
    ErrorType, NorFlash, NorFlashError, NorFlashErrorKind, ReadNorFlash,
};
use firmware::Instant;
use firmware::format::app_image::{self, AppDesc, SegmentSpec};
use firmware::format::partition::{self, TABLE_OFFSET};
use firmware::http::ResponseHead;
use firmware::led::Led;
use firmware::machine::{Action, Updater};
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
    let mut data = AppDesc::new(version, "thermo").to_bytes().to_vec();
    data.extend((0..20_000u32).map(|i| (i % 251) as u8));
    let segs = [SegmentSpec {
        load_addr: 0x3C00_0020,
        data: &data,
    }];
    let mut out = vec![0; app_image::image_len(&segs)];
    app_image::write_image(&mut out, &app_image::esp32c3_header(0x4038_0080), &segs).unwrap();
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
    let mut core = Updater::new(flash, 1);
    let mut now = Instant(0);
    core.handle_boot(now, None);
    let mut events = Vec::new();
    let mut published = Vec::new();
    for _ in 0..10_000 {
        while let Some((_, e)) = core.poll_event() {
            events.push(e);
        }
        let Some(action) = core.poll_action() else {
            match core.poll_timeout() {
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
                if network {
                    core.handle_network(now, true)
                }
            }
            Action::Http(req) => {
                let body: &[u8] = if req.url.contains("/releases/latest") {
                    release.as_bytes()
                } else {
                    asset
                };
                if req.url.contains("/releases/download/") {
                    let mut head = ResponseHead::new(302);
                    head.header("location", "http://cdn.test/blob/1");
                    core.handle_response_head(now, req.id, &head);
                    continue;
                }
                assert!(
                    !req.authorize || req.url.starts_with("https://gh.test"),
                    "token sent to {}",
                    req.url
                );
                let mut head = ResponseHead::new(200);
                head.header("content-length", &body.len().to_string());
                core.handle_response_head(now, req.id, &head);
                for chunk in body.chunks(1460) {
                    core.handle_response_body(now, req.id, chunk);
                }
                core.handle_response_end(now, req.id);
            }
            Action::Publish { seq, payload, .. } => {
                if broker_up {
                    published.push(String::from_utf8(payload.to_vec()).unwrap());
                }
                core.handle_publish_result(now, seq, broker_up);
            }
            Action::Reboot => {
                while let Some((_, e)) = core.poll_event() {
                    events.push(e);
                }
                return (
                    core.into_flash(),
                    BootResult {
                        events,
                        published,
                        rebooted: true,
                    },
                );
            }
            Action::RunApplication => {
                while let Some((_, e)) = core.poll_event() {
                    events.push(e);
                }
                return (
                    core.into_flash(),
                    BootResult {
                        events,
                        published,
                        rebooted: false,
                    },
                );
            }
            Action::Led { .. } | Action::AbortHttp { .. } => {}
        }
    }
    panic!("the routine did not end: {events:?}");
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
    assert!(
        first
            .events
            .iter()
            .any(|e| matches!(e, Event::Switch { slot: 1, .. }))
    );

    let (flash, second) = boot(flash, &release, &new, true);
    assert!(!second.rebooted);
    assert_eq!(outcome(&second.events), "updated/none");
    assert_eq!(
        leds(&second.events),
        "YGGy",
        "yellow on, green twice, yellow off"
    );
    assert!(matches!(second.events.last(), Some(Event::App)));
    assert!(
        second
            .events
            .iter()
            .any(|e| matches!(e, Event::Boot { slot: 1, .. }))
    );

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
        again
            .events
            .iter()
            .any(|e| matches!(e, Event::Boot { slot: 0, .. })),
        "still on the old slot"
    );
}

#[test]
fn a_log_the_broker_did_not_take_is_delivered_at_the_next_boot() {
    let new = image("1.0");
    let release = release_json("1.0", &new, &new);
    let (flash, down) = boot(board("1.0"), &release, &new, false);
    assert!(
        down.events
            .iter()
            .any(|e| matches!(e, Event::LogKept { pending: 1 }))
    );
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

#[test]
fn a_new_image_without_network_uses_its_trials_then_rolls_back() {
    let new = image("1.1");
    let release = release_json("1.1", &new, &new);
    let (mut flash, _) = boot(board("1.0"), &release, &new, true);
    for trial in 1..=3 {
        let (next, result) = boot_with(flash, &release, &new, true, false);
        flash = next;
        assert!(result.rebooted, "trial {trial} reboots after the deadline");
        assert_eq!(
            outcome(&result.events),
            "failed/self_check",
            "trial {trial}"
        );
        assert_eq!(otadata_slot(&flash), Some(1));
    }
    let (flash, last) = boot_with(flash, &release, &new, true, false);
    assert_eq!(outcome(&last.events), "rolled_back/self_check");
    assert_eq!(otadata_slot(&flash), Some(0));
    // The old image comes back and refuses the release that failed.
    let (_, old) = boot(flash, &release, &new, true);
    assert_eq!(outcome(&old.events), "failed/rolled_back_release");
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
    assert!(
        result
            .events
            .iter()
            .any(|e| matches!(e, Event::Error { detail, .. } if detail.contains("larger than")))
    );
}
