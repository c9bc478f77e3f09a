//! A virtual ESP32-C3 on a serial port: the simulator's [`VirtualBoard`] behind one end of a
//! pseudo-terminal, for the hardware-in-the-loop harness to test itself against.
//!
//! The chip speaks what a real C3 speaks on its UART0 / USB-Serial-JTAG port:
//! - after `reset(true)` (EN pulsed with GPIO9 low) it prints the ROM's download banner and
//!   answers the ROM serial loader protocol ([`rom_loader`]) that espflash's library uses
//!   without the stub: flashing, MD5 checks and reads go into the board's simulated flash;
//! - after `reset(false)` or `power(true)` it boots through the simulator's bootloader model,
//!   boot after boot, printing the ROM banner of each boot, a `# bootloader: …` line and the
//!   core's trace lines as they happen, and finally `# app: running <version>`.
//!
//! A pty has no modem lines, so reset, power and the LED probe go over [`ChipHandle`] (the
//! "side channel" the harness's backends use). Power cuts and WiFi outages can be armed
//! exactly ([`ChipHandle::arm`]), the way the scenario runner drives the virtual board.
//!
//! The WiFi the board joins and the servers it talks to come from the `conf.json` in the
//! flash's `config` partition, as on the real board: `github.api_base` must be
//! `http://localhost:PORT` (the board's DNS knows only that host, see [`SimDns`]), and the
//! broker is `mqtt.host:mqtt.port`.

pub mod rom_loader;

use crate::board::{BootEnd, LedEdge, Live, Outage, Triggers, VirtualBoard, Wiring};
use crate::bootloader::{Bootloader, Chip, ESP32C3, Model};
use crate::flash::FLASH_SIZE;
use crate::world::{SimDns, board_http_client};
use firmware::config::{Config, MAX_CONFIG_LEN};
use firmware::format::partition::{LABEL_CONFIG, PartitionTable, TABLE_LEN, TABLE_OFFSET};
use rom_loader::{Exit, RomLoader};
use std::io::{Read, Write};
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::{Arc, Mutex};
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender, unbounded_channel};

/// The ROM's first two lines, printed at every reset.
const ROM_HEAD: &str = "ESP-ROM:esp32c3-api1-20210207\nBuild:Feb  7 2021\n";
/// Reset by EN or power-up, GPIO9 low: download mode.
pub const BANNER_DOWNLOAD: &str =
    "rst:0x1 (POWERON),boot:0x4 (DOWNLOAD(USB/UART0/1))\nwaiting for download\n";
/// Reset by EN or power-up, GPIO9 high: boot from flash.
pub const BANNER_POWER_ON: &str = "rst:0x1 (POWERON),boot:0xc (SPI_FAST_FLASH_BOOT)\n";
/// `esp_restart()` (the core's reboot): a software CPU reset, strapping kept.
pub const BANNER_SOFTWARE_RESET: &str = "rst:0xc (RTC_SW_CPU_RST),boot:0xc (SPI_FAST_FLASH_BOOT)\n";

/// A serial port the chip can sit behind.
pub trait ReadWrite: Read + Write + Send {
    /// A second handle on the same port: one thread blocks reading while another writes.
    fn try_clone_port(&self) -> std::io::Result<Box<dyn ReadWrite>>;
}

impl ReadWrite for serialport::TTYPort {
    fn try_clone_port(&self) -> std::io::Result<Box<dyn ReadWrite>> {
        Ok(Box::new(self.try_clone_native()?))
    }
}

/// Why the chip could not start or do what it was asked.
#[derive(Debug, thiserror::Error)]
pub enum ChipError {
    /// The port could not be shared between the reader and the writer.
    #[error("serial port: {0}")]
    Port(#[from] std::io::Error),
    /// The chip's thread could not start.
    #[error("chip thread: {0}")]
    Thread(String),
    /// The chip was shut down (or its thread died) before it answered.
    #[error("the virtual chip is shut down")]
    Gone,
    /// A flash image larger than the chip's 4 MB flash.
    #[error("flash image of {0} bytes is larger than the 4 MB flash")]
    FlashTooLarge(usize),
}

/// The chip's build: what the board's bootloader and eFuses say.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChipOptions {
    /// Seeds the core's jitter and how power cuts tear flash operations.
    pub seed: u64,
    /// The bootloader build on the board.
    pub model: Model,
    /// Wafer revision, `major * 100 + minor` (what the eFuses and `GET_SECURITY_INFO` say).
    pub chip_revision: u16,
}

/// Faults driven exactly, as the scenario runner drives the virtual board.
///
/// Everything counts from the arming, as a scenario counts from provisioning: boot 1 is the
/// next boot, the 1st `progress` event is the next one, download byte and time 0 are now.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ChipFaults {
    /// Power cuts at an event, a download byte or a time (and WiFi drops at a byte).
    pub triggers: Triggers,
    /// WiFi outages `(from_boot, from_ms, until_ms)`: from `from_ms` to `until_ms` after the
    /// start of boot `from_boot` (1-based from the arming), like a scenario's `wifi_down`.
    pub wifi_down: Vec<(u32, u64, u64)>,
    /// Cut during the `n`-th flash operation (1-based) counted from the arming: a scenario's
    /// `at_flash_op` (a scenario's flash counts from provisioning, the chip's from here).
    pub at_flash_op: Option<u64>,
    /// Cut during the `nth` (1-based) flash operation touching `[start, end)` after the
    /// arming: a scenario's `at_partition` with its `occurrence`.
    pub in_range: Option<(u32, u32, u32)>,
}

/// A power cut as the chip saw it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CutInfo {
    /// The boot it hit (1-based over the chip's life).
    pub boot: u32,
    /// What it interrupted (`Erase at 0x… (flash operation N)`, `between flash operations`).
    pub what: String,
    /// The update's phase ([`crate::scenario::cut_phase`]).
    pub phase: String,
}

/// What the chip is doing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChipState {
    /// No power.
    Off,
    /// In the ROM's download mode.
    Download,
    /// Running boot number `boot` (1-based over the chip's life).
    Booting {
        /// Boot number.
        boot: u32,
    },
    /// The application runs.
    App,
    /// Powered but doing nothing: an armed power cut hit it, or it bricked or got stuck.
    Dark,
}

enum Command {
    Reset { download: bool },
    Power(bool),
    PowerOnIntoDownload,
    Arm(ChipFaults),
    BeforeBoot(BeforeBoot),
    Dns(SimDns),
    Flash(std::sync::mpsc::Sender<Vec<u8>>),
    LastCut(std::sync::mpsc::Sender<Option<CutInfo>>),
    SetFlash(Vec<u8>, std::sync::mpsc::Sender<()>),
    Shutdown,
}

struct Shared {
    state: ChipState,
    boots: u32,
    leds: Vec<LedEdge>,
}

/// The side channel of a running virtual chip: its reset and power lines, its LED probe
/// and its flash.
#[derive(Clone)]
pub struct ChipHandle {
    commands: UnboundedSender<Command>,
    shared: Arc<Mutex<Shared>>,
}

/// Starts a chip behind `port` around `board` (its flash is the chip's flash), powered
/// off. The port must time out its reads (serialport's ports do), so the chip can stop.
pub fn spawn(
    port: Box<dyn ReadWrite>,
    mut board: VirtualBoard,
    opts: ChipOptions,
) -> Result<ChipHandle, ChipError> {
    board.bootloader = Bootloader {
        model: opts.model,
        chip: Chip {
            id: ESP32C3,
            revision: opts.chip_revision,
        },
    };
    let writer = port;
    let reader = writer.try_clone_port()?;
    let (commands, command_rx) = unbounded_channel();
    let (bytes_tx, bytes_rx) = unbounded_channel();
    let shared = Arc::new(Mutex::new(Shared {
        state: ChipState::Off,
        boots: board.boots,
        leds: Vec::new(),
    }));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stop_reader = stop.clone();
    std::thread::Builder::new()
        .name("chip-uart-rx".into())
        .spawn(move || read_port(reader, bytes_tx, stop_reader))
        .map_err(|e| ChipError::Thread(e.to_string()))?;
    let chip = Runner {
        board,
        opts,
        out: writer,
        shared: shared.clone(),
        faults: ChipFaults::default(),
        before_boot: None,
        dns: SimDns::default(),
        mode: Mode::Off,
    };
    std::thread::Builder::new()
        .name("chip".into())
        .spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build();
            match runtime {
                Ok(rt) => rt.block_on(chip.run(command_rx, bytes_rx)),
                Err(e) => eprintln!("virtual chip: no runtime: {e}"),
            }
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
        })
        .map_err(|e| ChipError::Thread(e.to_string()))?;
    Ok(ChipHandle { commands, shared })
}

impl ChipHandle {
    /// Pulses EN; with `download` GPIO9 is held low, so the ROM enters download mode.
    /// A boot in progress is cut (an EN reset mid-write tears the flash like a power cut).
    /// Does nothing while the power is off.
    pub fn reset(&self, download: bool) {
        let _ = self.commands.send(Command::Reset { download });
    }

    /// Switches the power: off cuts the board now (between flash operations) and the chip
    /// prints nothing more; on boots it from flash.
    pub fn power(&self, on: bool) {
        let _ = self.commands.send(Command::Power(on));
    }

    /// The DNS the board's network gives it (a harness fails lookups with it, as a
    /// scenario's `dns_down` does); by default every lookup of the GitHub host succeeds.
    pub fn set_dns(&self, dns: SimDns) {
        let _ = self.commands.send(Command::Dns(dns));
    }

    /// Powers the chip on with GPIO9 held low (the BOOT button held while plugging it in):
    /// it starts in the ROM's download mode without booting what is on its flash.
    pub fn power_on_into_download(&self) {
        let _ = self.commands.send(Command::PowerOnIntoDownload);
    }

    /// Arms power cuts and WiFi outages for the boots to come (a boot already running keeps
    /// what it had).
    pub fn arm(&self, faults: ChipFaults) {
        let _ = self.commands.send(Command::Arm(faults));
    }

    /// Calls `hook` with each boot's number (1-based over the chip's life) before the boot
    /// starts, on the chip's thread; the WiFi outages it returns, as (from ms, until ms)
    /// after that boot's start, apply to that boot. A harness changes its servers there
    /// (releases published, faults armed), as the simulator's runner does between boots: the
    /// virtual board boots in virtual time, faster than a harness could react to its banner.
    pub fn before_boot(&self, hook: BeforeBoot) {
        let _ = self.commands.send(Command::BeforeBoot(hook));
    }

    /// Every LED write of the glue so far: the virtual board's LED probe.
    pub fn led_edges(&self) -> Vec<LedEdge> {
        self.lock().leds.clone()
    }

    /// A copy of the whole flash (waits for a running boot to end or be cut).
    pub fn flash(&self) -> Result<Vec<u8>, ChipError> {
        let (tx, rx) = std::sync::mpsc::channel();
        self.commands
            .send(Command::Flash(tx))
            .map_err(|_| ChipError::Gone)?;
        rx.recv().map_err(|_| ChipError::Gone)
    }

    /// The last power cut an armed fault made: its boot (over the chip's life), what it
    /// interrupted and the update's phase (what a recording of it is named by).
    pub fn last_cut(&self) -> Result<Option<CutInfo>, ChipError> {
        let (tx, rx) = std::sync::mpsc::channel();
        self.commands
            .send(Command::LastCut(tx))
            .map_err(|_| ChipError::Gone)?;
        rx.recv().map_err(|_| ChipError::Gone)
    }

    /// Replaces the flash's contents (the rest of a shorter image is erased); what a
    /// harness writing a recorded state does, without counting flash operations.
    pub fn set_flash(&self, bytes: Vec<u8>) -> Result<(), ChipError> {
        if bytes.len() > FLASH_SIZE {
            return Err(ChipError::FlashTooLarge(bytes.len()));
        }
        let (tx, rx) = std::sync::mpsc::channel();
        self.commands
            .send(Command::SetFlash(bytes, tx))
            .map_err(|_| ChipError::Gone)?;
        rx.recv().map_err(|_| ChipError::Gone)
    }

    /// What the chip is doing.
    pub fn state(&self) -> ChipState {
        self.lock().state
    }

    /// Boots started so far (over the chip's life).
    pub fn boots(&self) -> u32 {
        self.lock().boots
    }

    /// Stops the chip's threads (the port is released once the reader's timeout passes).
    pub fn shutdown(&self) {
        let _ = self.commands.send(Command::Shutdown);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Shared> {
        // A panic while holding the lock leaves plain data: keep using it.
        self.shared.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Reads the port and forwards what arrives, until the chip stops or the port fails.
fn read_port(
    mut port: Box<dyn ReadWrite>,
    bytes: UnboundedSender<Vec<u8>>,
    stop: Arc<std::sync::atomic::AtomicBool>,
) {
    let mut buf = [0u8; 4096];
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        match port.read(&mut buf) {
            Ok(0) => std::thread::sleep(std::time::Duration::from_millis(5)),
            Ok(n) => {
                if bytes.send(buf[..n].to_vec()).is_err() {
                    return;
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::TimedOut
                        | std::io::ErrorKind::WouldBlock
                        | std::io::ErrorKind::Interrupted
                ) => {}
            // The other end is gone (a pty answers EIO): nothing more will arrive.
            Err(_) => return,
        }
    }
}

enum Mode {
    Off,
    Dark,
    Download(Box<RomLoader>),
    /// Boot next, after printing this reset's banner line.
    Boot(&'static str),
    App,
}

/// What interrupted a boot.
enum Interrupt {
    Reset { download: bool },
    PowerOff,
    Shutdown,
}

/// See [`ChipHandle::before_boot`].
pub type BeforeBoot = Box<dyn FnMut(u32) -> Vec<(u64, u64)> + Send>;

struct Runner {
    board: VirtualBoard,
    opts: ChipOptions,
    out: Box<dyn ReadWrite>,
    shared: Arc<Mutex<Shared>>,
    faults: ChipFaults,
    before_boot: Option<BeforeBoot>,
    dns: SimDns,
    mode: Mode,
}

impl Runner {
    async fn run(
        mut self,
        mut commands: UnboundedReceiver<Command>,
        mut bytes: UnboundedReceiver<Vec<u8>>,
    ) {
        let mut port_open = true;
        loop {
            if let Mode::Boot(banner) = self.mode {
                match self.boot(banner, &mut commands, &mut bytes).await {
                    Some(Interrupt::Shutdown) => return,
                    Some(Interrupt::PowerOff) => self.enter(Mode::Off),
                    Some(Interrupt::Reset { download }) => self.reset(download),
                    None => {}
                }
                continue;
            }
            tokio::select! {
                cmd = commands.recv() => {
                    let Some(cmd) = cmd else { return };
                    if !self.command(cmd) {
                        return;
                    }
                }
                input = bytes.recv(), if port_open => {
                    let Some(input) = input else {
                        // The port is gone; keep serving the side channel.
                        port_open = false;
                        continue;
                    };
                    if let Mode::Download(loader) = &mut self.mode {
                        let (answer, exit) = loader.feed(&input, &mut self.board.flash);
                        self.print_bytes(&answer);
                        if exit == Some(Exit::RunUserCode) {
                            self.enter(Mode::Boot(BANNER_POWER_ON));
                        }
                    }
                    // Outside download mode the chip does not read its UART.
                }
            }
        }
    }

    /// Handles a side-channel command while no boot runs; false on shutdown.
    fn command(&mut self, cmd: Command) -> bool {
        match cmd {
            Command::Reset { download } => {
                if !matches!(self.mode, Mode::Off) {
                    self.reset(download);
                }
            }
            Command::Power(on) => match (&self.mode, on) {
                (Mode::Off | Mode::Dark, true) => self.enter(Mode::Boot(BANNER_POWER_ON)),
                (Mode::Off, false) | (_, true) => {}
                (_, false) => self.enter(Mode::Off),
            },
            Command::PowerOnIntoDownload => {
                if matches!(self.mode, Mode::Off | Mode::Dark) {
                    self.reset(true);
                }
            }
            Command::BeforeBoot(hook) => self.before_boot = Some(hook),
            Command::Dns(dns) => self.dns = dns,
            Command::Arm(mut faults) => {
                // The board counts events, bytes, time and boots over its life.
                let board = &self.board;
                let t = &mut faults.triggers;
                for (name, n) in &mut t.at_events {
                    *n += board.event_count(name);
                }
                if let Some((name, n, _)) = &mut t.op_after_event {
                    *n += board.event_count(name);
                }
                t.at_download_byte = t.at_download_byte.map(|b| b + board.downloaded);
                t.wifi_drop_at_byte = t
                    .wifi_drop_at_byte
                    .map(|(b, ms)| (b + board.downloaded, ms));
                t.at_time_ms = t.at_time_ms.map(|ms| ms + board.clock);
                for (from_boot, _, _) in &mut faults.wifi_down {
                    *from_boot += board.boots;
                }
                if let Some(n) = faults.at_flash_op {
                    let at = self.board.flash.ops() + n;
                    self.board.flash.arm_cut(at);
                }
                if let Some((start, end, nth)) = faults.in_range {
                    self.board.flash.arm_cut_in(start, end, nth);
                }
                self.faults = faults;
            }
            Command::LastCut(reply) => {
                let info = self.board.cuts.last().map(|(boot, what)| CutInfo {
                    boot: *boot,
                    what: what.clone(),
                    phase: crate::scenario::cut_phase(&self.board, *boot).to_string(),
                });
                let _ = reply.send(info);
            }
            Command::Flash(reply) => {
                let _ = reply.send(self.board.flash.contents().to_vec());
            }
            Command::SetFlash(bytes, reply) => {
                self.board.flash.load(0, &vec![0xFF; FLASH_SIZE]);
                self.board.flash.load(0, &bytes);
                let _ = reply.send(());
            }
            Command::Shutdown => return false,
        }
        true
    }

    fn reset(&mut self, download: bool) {
        if download {
            self.print(ROM_HEAD);
            self.print(BANNER_DOWNLOAD);
            // The ROM's flash access works whatever the last boot left.
            self.board.flash.power_on();
            let seed = self.opts.seed;
            self.enter(Mode::Download(Box::new(RomLoader::new(
                self.opts.chip_revision,
                seed,
            ))));
        } else {
            self.enter(Mode::Boot(BANNER_POWER_ON));
        }
    }

    fn enter(&mut self, mode: Mode) {
        let state = match &mode {
            Mode::Off => ChipState::Off,
            Mode::Dark => ChipState::Dark,
            Mode::Download(_) => ChipState::Download,
            Mode::Boot(_) => ChipState::Booting {
                boot: self.board.boots + 1,
            },
            Mode::App => ChipState::App,
        };
        self.mode = mode;
        let mut shared = self.shared.lock().unwrap_or_else(|e| e.into_inner());
        shared.state = state;
        shared.boots = self.board.boots;
    }

    /// Runs one boot; returns what interrupted it, if anything did.
    async fn boot(
        &mut self,
        banner: &'static str,
        commands: &mut UnboundedReceiver<Command>,
        bytes: &mut UnboundedReceiver<Vec<u8>>,
    ) -> Option<Interrupt> {
        self.print(ROM_HEAD);
        self.print(banner);
        let next = self.board.boots + 1;
        {
            let mut shared = self.shared.lock().unwrap_or_else(|e| e.into_inner());
            shared.state = ChipState::Booting { boot: next };
            shared.boots = next;
        }
        if let Some(hook) = self.before_boot.as_mut() {
            for (from_ms, until_ms) in hook(next) {
                self.board.outages.push(Outage {
                    from: self.board.clock + from_ms,
                    until: self.board.clock + until_ms,
                });
            }
        }
        for (_, from_ms, until_ms) in self.faults.wifi_down.iter().filter(|(b, _, _)| *b == next) {
            self.board.outages.push(Outage {
                from: self.board.clock + from_ms,
                until: self.board.clock + until_ms,
            });
        }
        let conf = read_conf(self.board.flash.contents());
        if let Some(c) = &conf {
            self.board.client_id = c.mqtt_client_id.to_string();
        }
        // Without a usable conf.json the core reports it and runs the application; the
        // broker address is then never used.
        let broker = conf
            .as_ref()
            .and_then(|c| resolve(&c.mqtt_host, c.mqtt_port))
            .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 1)));
        let wiring = Wiring { broker };
        let http = match board_http_client(&self.dns) {
            Ok(h) => h,
            Err(e) => {
                // The line first: whoever sees the chip dark may read the console next.
                self.print(&format!("# bricked: no HTTP client: {e}\n"));
                self.enter(Mode::Dark);
                return None;
            }
        };
        let (live_tx, mut live_rx) = unbounded_channel();
        self.board.live = Some(live_tx);
        let mut triggers = std::mem::take(&mut self.faults.triggers);
        let mut deferred = Vec::new();
        let mut interrupt = None;
        let mut console = Console {
            out: &mut self.out,
            shared: &self.shared,
        };
        let end = {
            let boot = self.board.boot(&http, &wiring, &mut triggers);
            tokio::pin!(boot);
            loop {
                tokio::select! {
                    biased;
                    Some(live) = live_rx.recv() => console.show(live),
                    end = &mut boot => break Some(end),
                    cmd = commands.recv() => match cmd {
                        None | Some(Command::Shutdown) => {
                            interrupt = Some(Interrupt::Shutdown);
                            break None;
                        }
                        Some(Command::Power(false)) => {
                            interrupt = Some(Interrupt::PowerOff);
                            break None;
                        }
                        Some(Command::Reset { download }) => {
                            interrupt = Some(Interrupt::Reset { download });
                            break None;
                        }
                        Some(other) => deferred.push(other),
                    },
                    // The application does not read the UART.
                    Some(_) = bytes.recv() => {}
                }
            }
        };
        // Lines the boot emitted before it ended or was cut.
        self.board.live = None;
        while let Ok(live) = live_rx.try_recv() {
            console.show(live);
        }
        self.faults.triggers = triggers;
        match end {
            None => {
                // Cut between flash operations: dropping the boot stopped it at an await.
                self.board.flash.cut_now();
            }
            Some(BootEnd::Reboot) => self.enter(Mode::Boot(BANNER_SOFTWARE_RESET)),
            Some(BootEnd::App) => {
                let version = self
                    .board
                    .boot_choices
                    .last()
                    .map(|(_, c)| c.version.clone())
                    .unwrap_or_default();
                // State first: whoever reads the line may ask the state next.
                self.enter(Mode::App);
                // What the board glue prints when the application starts (the harness ends a
                // boot on it), with the version for people reading the console.
                self.print(&format!("# app: running {version}\n"));
            }
            Some(BootEnd::PowerCut) => self.enter(Mode::Dark),
            // The line first: whoever sees the chip dark may read the console next (and tell
            // a brick from a power cut by it).
            Some(BootEnd::Bricked(b)) => {
                self.print(&format!("# bricked: {b}\n"));
                self.enter(Mode::Dark);
            }
            Some(BootEnd::Stuck) => {
                self.print("# stuck: the core waits for nothing\n");
                self.enter(Mode::Dark);
            }
        }
        for cmd in deferred {
            self.command(cmd);
        }
        interrupt
    }

    fn print(&mut self, text: &str) {
        self.print_bytes(text.as_bytes());
    }

    fn print_bytes(&mut self, bytes: &[u8]) {
        // Nobody reading the console is not the chip's problem: a real UART drops bytes too.
        let _ = self.out.write_all(bytes);
        let _ = self.out.flush();
    }
}

/// Prints what a boot shows as it goes and feeds the LED probe.
struct Console<'a> {
    out: &'a mut Box<dyn ReadWrite>,
    shared: &'a Arc<Mutex<Shared>>,
}

impl Console<'_> {
    fn show(&mut self, live: Live) {
        let text = match live {
            Live::Bootloader(what) => format!("# bootloader: {what}\n"),
            Live::Line(line) => format!("{}\n", line.render()),
            Live::Led(edge) => {
                let mut shared = self.shared.lock().unwrap_or_else(|e| e.into_inner());
                shared.leds.push(edge);
                return;
            }
        };
        let _ = self.out.write_all(text.as_bytes());
        let _ = self.out.flush();
    }
}

/// The `conf.json` in the flash's `config` partition, if the partition table and the file
/// parse (the core reports what is wrong with them itself).
fn read_conf(flash: &[u8]) -> Option<Config> {
    let table_at = TABLE_OFFSET as usize;
    let table = PartitionTable::parse(flash.get(table_at..table_at + TABLE_LEN)?).ok()?;
    let part = table.by_label(LABEL_CONFIG)?;
    let start = part.offset as usize;
    let len = (part.size as usize).min(MAX_CONFIG_LEN);
    let raw = flash.get(start..start + len)?;
    // The file ends where the erased flash begins.
    let end = raw.iter().position(|&b| b == 0xFF).unwrap_or(raw.len());
    Config::parse(&raw[..end]).ok()
}

/// The broker's address: an IP address, or a name the host resolves (`localhost`).
fn resolve(host: &str, port: u16) -> Option<SocketAddr> {
    if let Ok(ip) = host.parse::<std::net::IpAddr>() {
        return Some(SocketAddr::new(ip, port));
    }
    (host, port).to_socket_addrs().ok()?.next()
}
