//! The virtual ESP32-C3 behind a pty, driven the way the HIL harness drives a real board:
//! espflash's library flashes it through the ROM loader (no stub, no modem lines), then a
//! reset over the side channel boots it against a real simulated world.

use espflash::connection::{Connection, ResetAfterOperation, ResetBeforeOperation};
use espflash::flasher::Flasher;
use espflash::image_format::Segment;
use espflash::target::{Chip, DefaultProgressCallback};
use md5::{Digest, Md5};
use serialport::{SerialPort, TTYPort, UsbPortInfo};
use sim::board::VirtualBoard;
use sim::bootloader::Model;
use sim::chip::{ChipFaults, ChipHandle, ChipOptions, ChipState};
use sim::flash::SimFlash;
use sim::github::{Asset, Release};
use sim::world::{BrokerChoice, World, conf_json};
use std::borrow::Cow;
use std::io::Read;
use std::time::{Duration, Instant};

const SEED: u64 = 7;

/// A classic USB-UART bridge (CP2102): not the C3's USB-Serial-JTAG, so espflash does not
/// touch the RTC watchdog.
fn bridge() -> UsbPortInfo {
    UsbPortInfo {
        vid: 0x10C4,
        pid: 0xEA60,
        serial_number: None,
        manufacturer: None,
        product: None,
    }
}

/// A chip behind one end of a pty; the other end for the host.
fn chip(revision: u16) -> (ChipHandle, TTYPort) {
    let (host, device) = TTYPort::pair().expect("pty pair");
    let board = VirtualBoard::new(SimFlash::new(SEED), "", SEED);
    let opts = ChipOptions {
        seed: SEED,
        model: Model::Espflash,
        chip_revision: revision,
    };
    let handle = sim::chip::spawn(Box::new(device), board, opts).expect("chip starts");
    (handle, host)
}

/// Powers the chip and resets it into download mode, as a harness would.
fn into_download(chip: &ChipHandle) {
    chip.power(true);
    wait_for(chip, |s| {
        s != ChipState::Off && !matches!(s, ChipState::Booting { .. })
    });
    chip.reset(true);
    wait_for(chip, |s| s == ChipState::Download);
}

fn wait_for(chip: &ChipHandle, done: impl Fn(ChipState) -> bool) {
    let until = Instant::now() + Duration::from_secs(20);
    while !done(chip.state()) {
        assert!(Instant::now() < until, "chip stuck in {:?}", chip.state());
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn connect(port: TTYPort) -> Flasher {
    connect_as(port, bridge())
}

fn connect_as(port: TTYPort, info: UsbPortInfo) -> Flasher {
    let conn = Connection::new(
        port,
        info,
        ResetAfterOperation::NoReset,
        ResetBeforeOperation::NoReset,
        115_200,
    );
    Flasher::connect(conn, false, true, false, Some(Chip::Esp32c3), None)
        .expect("espflash connects")
}

/// Reads the console until `until` appears in it (or 60 s pass).
fn console_until(port: &mut TTYPort, until: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    while Instant::now() < deadline {
        match port.read(&mut buf) {
            Ok(n) => seen.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(e) => panic!("console read: {e}"),
        }
        if String::from_utf8_lossy(&seen).contains(until) {
            break;
        }
    }
    String::from_utf8_lossy(&seen).into_owned()
}

fn md5(bytes: &[u8]) -> u128 {
    u128::from_be_bytes(Md5::digest(bytes).into())
}

/// A world whose GitHub has release 1.1, and the conf.json pointing a board at it.
fn world_with_1_1(rt: &tokio::runtime::Runtime) -> (World, String) {
    let world = rt
        .block_on(World::start(&BrokerChoice::Embedded, false))
        .expect("world starts");
    let newer = sim::image::build("1.1", 64 * 1024, 2);
    world.github.set_releases(
        "acme",
        "thermostat",
        vec![Release::new("1.1", 1_700_000_000).with_asset(Asset::new("firmware.bin", newer))],
    );
    let conf = conf_json(
        &world.api_base(),
        world.board_broker(),
        "chip-test",
        "ota",
        false,
        false,
        false,
    );
    (world, conf)
}

/// Flashes what `just flash` writes through espflash: a bootloader, the partition table,
/// erased otadata, the running image (1.0) in ota_0 and conf.json in the config partition;
/// checks every region's MD5 against the host's; returns the port for the console.
fn flash_board(chip: &ChipHandle, host: TTYPort, conf: &str) -> TTYPort {
    into_download(chip);
    let mut flasher = connect(host);
    let bootloader: Vec<u8> = (0..0x5000u32).map(|i| (i * 31 % 253) as u8).collect();
    let mut table = [0u8; firmware::format::partition::TABLE_LEN];
    firmware::format::partition::default_table()
        .write(&mut table)
        .expect("table");
    let running = sim::image::build("1.0", 64 * 1024, 1);
    let mut conf_bytes = conf.as_bytes().to_vec();
    conf_bytes.resize(conf_bytes.len().div_ceil(4) * 4, b' ');
    let otadata = vec![0xFF; 0x2000];
    let regions: Vec<(u32, &[u8])> = vec![
        (0x0, &bootloader),
        (0x8000, &table),
        (0xD000, &otadata),
        (0x1_0000, &running),
        (0x3D_0000, &conf_bytes),
    ];
    let segments: Vec<Segment> = regions
        .iter()
        .map(|(addr, data)| Segment {
            addr: *addr,
            data: Cow::Borrowed(data),
        })
        .collect();
    flasher
        .write_bins_to_flash(&segments, &mut DefaultProgressCallback)
        .expect("espflash writes (and verifies) every region");
    for (addr, data) in &regions {
        let on_chip = flasher.checksum_md5(*addr, data.len() as u32).expect("md5");
        assert_eq!(on_chip, md5(data), "region at 0x{addr:x}");
    }
    let snapshot = chip.flash().expect("flash");
    assert_eq!(&snapshot[0x1_0000..0x1_0000 + running.len()], &running[..]);
    let mut port = flasher.into_connection().into_serial();
    port.set_timeout(Duration::from_millis(100))
        .expect("timeout");
    port
}

#[test]
fn espflash_connects_reads_the_revision_and_flash_size() {
    let (chip, host) = chip(104);
    let pattern: Vec<u8> = (0..0x2000u32).map(|i| (i * 13 % 251) as u8).collect();
    chip.set_flash(pattern.clone()).expect("set flash");
    into_download(&chip);
    let mut flasher = connect(host);
    let info = flasher.device_info().expect("device info");
    assert_eq!(info.chip, Chip::Esp32c3);
    assert_eq!(info.revision, Some((1, 4)));
    assert_eq!(info.flash_size, espflash::flasher::FlashSize::_4Mb);

    // READ_FLASH_SLOW, 64 bytes a request, as `hil record` reads sectors back. One call per
    // 64 bytes: espflash 4.7's `read_flash_rom` adds the bytes read so far to its offset
    // cumulatively, so from the third block of one call on it reads the wrong place.
    let out = std::env::temp_dir().join(format!("chip-read-{}.bin", std::process::id()));
    let mut read = Vec::new();
    for at in (0x1003..0x1003 + 300).step_by(64) {
        let len = (0x1003 + 300 - at).min(64);
        flasher
            .read_flash_rom(at, len, 64, 1, out.clone())
            .expect("read_flash_rom");
        read.extend(std::fs::read(&out).expect("read file"));
    }
    let _ = std::fs::remove_file(&out);
    assert_eq!(read, pattern[0x1003..0x1003 + 300]);

    // ERASE_REGION is the stub's: the ROM refuses it, and espflash says so.
    let refused = flasher.erase_region(0x1000, 0x1000);
    assert!(
        matches!(refused, Err(espflash::Error::RomError(_))),
        "{refused:?}"
    );
    chip.shutdown();
}

#[test]
fn espflash_flashes_the_virtual_chip_and_the_board_then_updates_itself() {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let (_world, conf) = world_with_1_1(&rt);
    let (chip, host) = chip(4);
    let mut console_port = flash_board(&chip, host, &conf);

    // Booting from flash: the console shows the core's trace, the update, the new version.
    chip.reset(false);
    let console = console_until(&mut console_port, "app: running 1.1");
    assert!(console.contains("app: running 1.1"), "console:\n{console}");
    assert!(
        console.contains("rst:0x1 (POWERON),boot:0xc (SPI_FAST_FLASH_BOOT)"),
        "{console}"
    );
    assert!(
        console.contains("rst:0xc (RTC_SW_CPU_RST)"),
        "the core's reboot into the new image:\n{console}"
    );
    assert!(console.contains("# bootloader: "), "{console}");
    let traces = console.lines().filter(|l| l.starts_with("OTA ")).count();
    assert!(traces > 5, "trace lines on the console:\n{console}");
    assert_eq!(chip.state(), ChipState::App);
    // Boot 1 was the blank flash before download mode; then 1.0 and 1.1.
    assert_eq!(chip.boots(), 3);
    let leds = chip.led_edges();
    assert!(
        leds.iter()
            .any(|e| e.led == firmware::led::Led::Green && e.on),
        "the green LED was switched on: {leds:?}"
    );
    chip.shutdown();
}

#[test]
fn power_off_silences_the_chip_and_set_flash_replaces_the_flash() {
    let (chip, _host) = chip(4);
    chip.power(true);
    wait_for(&chip, |s| s == ChipState::Dark);
    chip.power(false);
    wait_for(&chip, |s| s == ChipState::Off);
    chip.reset(true);
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(
        chip.state(),
        ChipState::Off,
        "EN does nothing without power"
    );
    chip.set_flash(vec![0x5A; 100]).expect("set flash");
    let flash = chip.flash().expect("flash");
    assert_eq!(flash.len(), 4 * 1024 * 1024);
    assert!(flash[..100].iter().all(|&b| b == 0x5A));
    assert!(flash[100..].iter().all(|&b| b == 0xFF));
    assert!(chip.set_flash(vec![0; 5 * 1024 * 1024]).is_err());
    chip.shutdown();
}

#[test]
fn an_armed_power_cut_darkens_the_chip_and_power_brings_it_back_to_finish_the_update() {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let (_world, conf) = world_with_1_1(&rt);
    let (chip, host) = chip(4);
    let mut console_port = flash_board(&chip, host, &conf);
    let mut faults = ChipFaults::default();
    // Cut right after the first progress record, in the middle of the download.
    faults.triggers.at_events.push(("progress".into(), 1));
    chip.arm(faults);
    chip.reset(false);
    wait_for(&chip, |s| s == ChipState::Dark);
    std::thread::sleep(Duration::from_millis(100));
    let cut = console_until_quiet(&mut console_port);
    assert!(cut.contains("OTA 0 progress"), "{cut}");
    assert!(
        !cut.contains("verified") && !cut.contains("reboot"),
        "the cut stopped the boot mid-download:\n{cut}"
    );
    chip.power(true);
    let after = console_until(&mut console_port, "app: running 1.1");
    assert!(after.contains("rst:0x1 (POWERON)"), "{after}");
    assert!(after.contains("app: running 1.1"), "{after}");
    chip.shutdown();
}

#[test]
fn power_off_cuts_a_boot_that_waits_on_the_network() {
    // A GitHub that accepts connections and never answers: the boot waits in real time.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").expect("listener");
    let api = format!(
        "http://localhost:{}",
        silent.local_addr().expect("addr").port()
    );
    let conf = conf_json(
        &api,
        std::net::SocketAddr::from(([127, 0, 0, 1], 9)),
        "chip-test",
        "ota",
        false,
        false,
        false,
    );
    let (chip, host) = chip(4);
    let mut console_port = flash_board(&chip, host, &conf);
    chip.reset(false);
    let waiting = console_until(&mut console_port, "purpose=check");
    assert!(waiting.contains("purpose=check"), "{waiting}");
    chip.power(false);
    wait_for(&chip, |s| s == ChipState::Off);
    // Whatever the boot had printed before the cut may still be in flight; after that, silence.
    std::thread::sleep(Duration::from_millis(200));
    let _ = console_until_quiet(&mut console_port);
    std::thread::sleep(Duration::from_millis(1500));
    let later = console_until_quiet(&mut console_port);
    assert_eq!(later, "", "a chip without power prints nothing");
    assert_eq!(chip.boots(), 2);
    chip.shutdown();
}

/// Whatever the console holds now (reads until one read times out).
fn console_until_quiet(port: &mut TTYPort) -> String {
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    while let Ok(n) = port.read(&mut buf) {
        seen.extend_from_slice(&buf[..n]);
    }
    String::from_utf8_lossy(&seen).into_owned()
}

#[test]
fn a_cut_armed_in_otadata_hits_the_slot_switch_and_the_board_recovers() {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let (_world, conf) = world_with_1_1(&rt);
    let (chip, host) = chip(4);
    let mut console_port = flash_board(&chip, host, &conf);
    // The first flash operation in otadata's second sector: the core's slot switch (seq 2
    // goes to sector 1; the bootloader's first write went to sector 0).
    chip.arm(ChipFaults {
        in_range: Some((0xE000, 0xF000, 1)),
        ..ChipFaults::default()
    });
    chip.reset(false);
    wait_for(&chip, |s| s == ChipState::Dark);
    std::thread::sleep(Duration::from_millis(100));
    let cut = console_until_quiet(&mut console_port);
    assert!(cut.contains("verified version=1.1"), "{cut}");
    // The simulated core still reports the erase the cut failed (`sim run` traces show it),
    // but a board without power prints nothing: the console ends before it, and the board
    // is dark: no reboot, no application.
    assert!(!cut.contains("flash erase at 0xe000 failed"), "{cut}");
    assert!(
        !cut.contains("OTA 0 reboot") && !cut.contains("app: running"),
        "{cut}"
    );
    chip.power(true);
    let after = console_until(&mut console_port, "app: running");
    assert!(after.contains("app: running 1.1"), "{after}");
    chip.shutdown();
}

#[test]
fn wifi_down_armed_for_the_next_boot_delays_the_network_by_an_hour() {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let (_world, conf) = world_with_1_1(&rt);
    let (chip, host) = chip(4);
    let mut console_port = flash_board(&chip, host, &conf);
    // Boot 1 after arming (the chip's boot 2: its first boot was the blank flash).
    chip.arm(ChipFaults {
        wifi_down: vec![(1, 0, 3_600_000)],
        ..ChipFaults::default()
    });
    chip.reset(false);
    let console = console_until(&mut console_port, "app: running");
    let first_up = console
        .lines()
        .find(|l| l.starts_with("OTA ") && l.contains(" network up=true"))
        .expect("the network came up");
    let ms: u64 = first_up
        .split(' ')
        .nth(1)
        .and_then(|m| m.parse().ok())
        .expect("ms");
    assert!(ms >= 3_600_000, "network up at {ms} ms:\n{console}");
    assert!(console.contains("app: running 1.1"), "{console}");
    chip.shutdown();
}

#[test]
fn over_the_c3_s_usb_serial_jtag_espflash_also_stops_the_rtc_watchdog_and_writes() {
    let (chip, host) = chip(4);
    into_download(&chip);
    // Espressif's VID and the USB-Serial-JTAG PID: espflash writes the RTC WDT registers.
    let usb_jtag = UsbPortInfo {
        vid: 0x303A,
        pid: 0x1001,
        serial_number: None,
        manufacturer: None,
        product: None,
    };
    let mut flasher = connect_as(host, usb_jtag);
    let data: Vec<u8> = (0..5000u32).map(|i| (i % 199) as u8).collect();
    flasher
        .write_bin_to_flash(0x2_0000, &data, &mut DefaultProgressCallback)
        .expect("write_bin_to_flash");
    // write_bin_to_flash pads to a multiple of 4 with 0xFF.
    assert_eq!(
        flasher.checksum_md5(0x2_0000, 5000).expect("md5"),
        md5(&data)
    );
    chip.shutdown();
}
