//! The board's serial console: read live from a port that may disappear and come back
//! (the ESP32-C3's USB-Serial-JTAG re-enumerates when its power is cut), kept raw
//! in the run's folder, and read back into boots with the core's own trace parser.

use firmware::trace::{Event, ParseError};
use std::fmt;

/// One boot as its console shows it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Boot {
    /// Slot and version from the `boot` event.
    pub slot: Option<u8>,
    /// Version the core reported running.
    pub version: String,
    /// `result` of the `outcome` event, if the boot got that far.
    pub outcome: Option<String>,
    /// `error` of the `outcome` event.
    pub error: Option<String>,
    /// LED sequence (`Y`/`y` yellow, `.`/`-` green blinks).
    pub leds: String,
    /// Every event with its time.
    pub events: Vec<(u64, Event)>,
    /// The harness cut its power ([`POWER_CUT`] in the console after its lines).
    pub cut: bool,
}

/// The note the harness writes into the console log when it cuts the power: the boot it
/// ends was cut, whatever it printed (an `outcome` line comes before the log record the cut
/// may interrupt).
pub const POWER_CUT: &str = "# hil: power cut";

/// A console line that starts like a trace line but does not parse.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BadLine {
    /// 1-based line number.
    pub line: usize,
    /// Why.
    pub error: ParseError,
    /// The line.
    pub text: String,
}

impl fmt::Display for BadLine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}: {}: {}", self.line, self.error, self.text)
    }
}

impl std::error::Error for BadLine {}

/// Splits a console capture into boots. Other output (ROM banner, bootloader,
/// the glue's `# ` lines, the application) is skipped; a new boot starts with
/// the yellow LED going on (the core's first event), or where the time since
/// boot goes back.
///
/// A trace line cut short by a reset or a power cut (the chip stops mid-line, the bridge's
/// FIFO holds half of it) is skipped when a restart follows it: the ROM's banner, or the
/// harness's `# hil:` note that the port went away. Any other bad trace line is an error.
pub fn read_console(text: &str) -> Result<Vec<Boot>, BadLine> {
    let mut boots: Vec<Boot> = Vec::new();
    let mut last_ms = None;
    // A banner glued to the end of a torn line starts a line of its own.
    let lines: Vec<(usize, &str)> = text
        .lines()
        .enumerate()
        .flat_map(|(i, line)| split_at_banner(line).into_iter().map(move |l| (i, l)))
        .collect();
    // A reset banner came after the last trace event: a boot started that printed nothing yet.
    let mut restarted = false;
    for (k, &(i, line)) in lines.iter().enumerate() {
        let text = line.trim_start();
        if text.starts_with(POWER_CUT) {
            match boots.last_mut() {
                // A boot cut before its first trace line (in the bootloader) is a boot too.
                Some(boot) if !restarted => boot.cut = true,
                _ => boots.push(Boot {
                    cut: true,
                    ..Boot::default()
                }),
            }
            restarted = false;
            continue;
        }
        if (text.starts_with("ESP-ROM:") || text.starts_with("rst:")) && !text.contains("DOWNLOAD")
        {
            restarted = true;
        }
        let Some(parsed) = Event::parse_line(line.trim_start()) else {
            continue;
        };
        let (ms, event) = match parsed {
            Ok(p) => p,
            Err(_) if restart_follows(&lines[k + 1..]) => continue,
            Err(error) => {
                return Err(BadLine {
                    line: i + 1,
                    error,
                    text: line.to_string(),
                });
            }
        };
        restarted = false;
        // The core's first event of every boot is the yellow LED going on.
        let yellow_on = matches!(
            event,
            Event::Led {
                led: firmware::led::Led::Yellow,
                on: true
            }
        );
        let second_boot_event = matches!(event, Event::Boot { .. }) && has_boot(boots.last());
        if boots.is_empty() || yellow_on || last_ms.is_some_and(|l| ms < l) || second_boot_event {
            boots.push(Boot::default());
        }
        last_ms = Some(ms);
        if let Some(boot) = boots.last_mut() {
            boot.events.push((ms, event));
        }
    }
    for boot in &mut boots {
        for (_, e) in &boot.events {
            match e {
                Event::Boot { slot, version, .. } => {
                    boot.slot = Some(*slot);
                    boot.version = version.to_string();
                }
                Event::Outcome { result, error, .. } => {
                    boot.outcome = Some(result.name().to_string());
                    boot.error = Some(error.name().to_string());
                }
                _ => {}
            }
        }
        boot.leds =
            firmware::trace::led_sequence(boot.events.iter().map(|(ms, e)| (*ms, e))).to_string();
    }
    Ok(boots)
}

/// `line` split before every `ESP-ROM:` that does not start it.
fn split_at_banner(line: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut rest = line;
    while let Some(at) = rest
        .get(1..)
        .and_then(|r| r.find("ESP-ROM:"))
        .map(|a| a + 1)
    {
        out.push(&rest[..at]);
        rest = &rest[at..];
    }
    out.push(rest);
    out
}

/// The next non-empty line restarts the console (a torn line before it is the cut's).
fn restart_follows(rest: &[(usize, &str)]) -> bool {
    match rest.iter().map(|(_, l)| l.trim()).find(|l| !l.is_empty()) {
        Some(next) => {
            next.starts_with("ESP-ROM:") || next.starts_with("rst:") || next.starts_with("# hil:")
        }
        // The last line of a capture can be torn too: the case ended mid-line.
        None => true,
    }
}

fn has_boot(boot: Option<&Boot>) -> bool {
    boot.is_some_and(|b| {
        b.events
            .iter()
            .any(|(_, e)| matches!(e, Event::Boot { .. }))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The simulator's recorded console of an update (an insta snapshot) reads back as two boots.
    #[test]
    fn the_simulators_update_console_reads_back() {
        let text = include_str!("../../sim/tests/snapshots/scenarios__02-update@espflash.snap");
        let boots = read_console(text).unwrap();
        assert_eq!(boots.len(), 2);
        assert_eq!(
            (
                boots[0].version.as_str(),
                boots[0].outcome.as_deref(),
                boots[0].leds.as_str()
            ),
            ("1.0", Some("installed"), "Y")
        );
        assert_eq!(
            (
                boots[1].version.as_str(),
                boots[1].outcome.as_deref(),
                boots[1].leds.as_str()
            ),
            ("1.1", Some("updated"), "Y..y")
        );
    }

    #[test]
    fn a_power_cut_marks_its_boot_even_one_that_printed_nothing() {
        let console = "rst:0x1 (POWERON),boot:0xc (SPI_FAST_FLASH_BOOT)\nOTA 0 led led=yellow on=true\nOTA 0 boot slot=0 version=1.0 state=valid\nOTA 9 outcome result=installed from=1.0 to=1.1 bytes=1 resumed_from=0 retries=0 error=none pattern=\"\"\n\n# hil: power cut\nESP-ROM:esp32c3-api1-20210207\nrst:0x1 (POWERON),boot:0xc (SPI_FAST_FLASH_BOOT)\n\n# hil: power cut\nrst:0x1 (POWERON),boot:0xc (SPI_FAST_FLASH_BOOT)\nOTA 0 led led=yellow on=true\nOTA 0 boot slot=1 version=1.1 state=new\n";
        let boots = read_console(console).unwrap();
        // The first boot printed its outcome, then lost power (its log write, say); the second
        // was cut in the bootloader, before any trace line.
        let shown: Vec<(bool, &str)> = boots.iter().map(|b| (b.cut, b.version.as_str())).collect();
        assert_eq!(shown, [(true, "1.0"), (true, ""), (false, "1.1")]);
        assert_eq!(boots[0].outcome.as_deref(), Some("installed"));
    }

    #[test]
    fn a_line_torn_by_a_reset_is_skipped_but_not_one_in_the_middle() {
        let torn = "OTA 0 led led=yellow on=true\nOTA 0 boot slot=0 version=1.0 state=valid\nOTA 900 progr\n# hil: console lost (EIO)\nESP-ROM:esp32c3-api1-20210207\nOTA 0 led led=yellow on=true\nOTA 0 boot slot=0 version=1.0 state=valid\n";
        let boots = read_console(torn).unwrap();
        assert_eq!(boots.len(), 2);
        let glued = "OTA 0 led led=yellow on=true\nOTA 900 progrESP-ROM:esp32c3-api1-20210207\nOTA 0 led led=yellow on=true\n";
        assert_eq!(read_console(glued).unwrap().len(), 2);
        let middle =
            "OTA 0 led led=yellow on=true\nOTA 900 progr\nOTA 901 led led=yellow on=false\n";
        assert_eq!(read_console(middle).unwrap_err().line, 2);
    }

    #[test]
    fn board_noise_is_skipped_and_a_broken_trace_line_is_reported() {
        let console = "ESP-ROM:esp32c3-api1-20210207\nI (30) boot: ESP-IDF v5.1\n# wifi: associating\nOTA 0 led led=yellow on=true\nOTA 0 boot slot=0 version=1.0 state=valid\nhello from the app\n";
        let boots = read_console(console).unwrap();
        assert_eq!((boots.len(), boots[0].slot), (1, Some(0)));
        let err = read_console("OTA 0 boot slot=x\nOTA 1 led led=yellow on=true\n").unwrap_err();
        assert_eq!(err.line, 1);
        let shown = err.to_string();
        assert!(
            shown.starts_with("line 1: ") && shown.ends_with("OTA 0 boot slot=x"),
            "{shown}"
        );
    }

    #[test]
    fn a_boot_starts_where_time_goes_back_or_a_second_boot_event_comes() {
        // No yellow LED lines (a console that lost them): the clock going back splits boots,
        // and so does a second `boot` event at a later time.
        let back = "OTA 0 boot slot=0 version=1.0 state=valid\nOTA 900 reboot\nOTA 0 boot slot=1 version=1.1 state=new\n";
        let boots = read_console(back).unwrap();
        let versions: Vec<&str> = boots.iter().map(|b| b.version.as_str()).collect();
        assert_eq!(versions, ["1.0", "1.1"]);
        let again =
            "OTA 0 boot slot=0 version=1.0 state=valid\nOTA 5 boot slot=1 version=1.1 state=new\n";
        assert_eq!(read_console(again).unwrap().len(), 2);
        // One boot: a `boot` event after other events of the same boot does not split it.
        let one = "OTA 0 led led=yellow on=true\nOTA 1 boot slot=0 version=1.0 state=valid\nOTA 2 network up=true\n";
        assert_eq!(read_console(one).unwrap().len(), 1);
    }

    /// A device that goes away is noted in the raw log and waited for; a quiet device is
    /// not taken for one that went away.
    #[test]
    fn a_vanished_device_is_noted_and_silence_is_not_mistaken_for_it() {
        use std::io::Write;
        let (mut master, slave) = serialport::TTYPort::pair().unwrap();
        let path = serialport::SerialPort::name(&slave).unwrap();
        let dir = std::env::temp_dir().join(format!("hil-console-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let log = dir.join("console.log");
        let _ = std::fs::remove_file(&log);
        let console = Console::start(
            Source::Device {
                path: path.clone(),
                baud: 115_200,
                open: None,
            },
            &log,
        )
        .unwrap();
        // Longer than the reader's 100 ms read timeout: silence, not a lost device.
        std::thread::sleep(std::time::Duration::from_millis(350));
        master
            .write_all(b"OTA 0 led led=yellow on=true\r\n")
            .unwrap();
        let line = console
            .lines
            .recv_timeout(std::time::Duration::from_secs(5))
            .unwrap();
        assert_eq!(line.text, "OTA 0 led led=yellow on=true");
        assert!(
            !std::fs::read_to_string(&log)
                .unwrap()
                .contains("console lost")
        );
        // The other end closes: reads fail, as when a USB device disappears.
        drop(slave);
        drop(master);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while !std::fs::read_to_string(&log)
            .unwrap()
            .contains("# hil: console lost")
        {
            assert!(
                std::time::Instant::now() < deadline,
                "the loss was never noted"
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        // Dropping the console stops its wait for the device.
        drop(console);
    }
}

/// The line the board glue prints once the application task runs: the end of a boot's
/// update routine (the trace has no event for it).
pub const APP_RUNNING: &str = "# app: running";

/// Where console bytes come from.
pub enum Source {
    /// A serial device by path, reopened whenever it disappears (a power cut re-enumerates
    /// the C3's USB-Serial-JTAG).
    Device {
        /// `/dev/ttyACM0`, …
        path: String,
        /// Baud rate (115200 for the ESP32-C3's ROM and the firmware).
        baud: u32,
        /// The port already open (the flasher's, kept open across the reset that starts the
        /// firmware so that its first lines are not lost); else it is opened here.
        open: Option<Box<dyn std::io::Read + Send>>,
    },
    /// An already open port (the virtual board's pty): never reopened.
    Open(Box<dyn std::io::Read + Send>),
}

/// One console line as the harness saw it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Line {
    /// Milliseconds since the console was opened (host time).
    pub at_ms: u64,
    /// The text, without the line end.
    pub text: String,
}

/// A console being read on its own thread: lines arrive on [`Console::lines`], raw bytes
/// go to the run's `console.log`, and reconnections are noted in it as `# hil: …` lines.
pub struct Console {
    /// The lines, in order.
    pub lines: std::sync::mpsc::Receiver<Line>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
    log: std::path::PathBuf,
}

/// Why the console could not be started.
#[derive(Debug, thiserror::Error)]
pub enum ConsoleError {
    /// The raw log could not be created.
    #[error("console log {path}: {source}")]
    Log {
        /// The file.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// The serial device could not be opened.
    #[error("serial port {path}: {source}")]
    Open {
        /// The device.
        path: String,
        /// The cause.
        source: serialport::Error,
    },
}

/// How long a vanished USB serial device may stay away before the console gives up.
const REAPPEAR_WITHIN: std::time::Duration = std::time::Duration::from_secs(30);

impl Console {
    /// Starts reading `source`, appending everything raw to `log`.
    pub fn start(source: Source, log: &std::path::Path) -> Result<Console, ConsoleError> {
        use std::io::Write;
        let mut raw = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .map_err(|source| ConsoleError::Log {
                path: log.display().to_string(),
                source,
            })?;
        let (mut reader, reopen) = match source {
            Source::Open(r) => (r, None),
            Source::Device { path, baud, open } => {
                let port = match open {
                    Some(p) => p,
                    None => open_device(&path, baud)?,
                };
                (port, Some((path, baud)))
            }
        };
        let (tx, lines) = std::sync::mpsc::channel();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stopping = stop.clone();
        let started = std::time::Instant::now();
        let thread = std::thread::spawn(move || {
            let mut pending = Vec::new();
            let mut buf = [0u8; 1024];
            while !stopping.load(std::sync::atomic::Ordering::Relaxed) {
                match reader.read(&mut buf) {
                    Ok(0) => std::thread::sleep(std::time::Duration::from_millis(5)),
                    Ok(n) => {
                        let _ = raw.write_all(&buf[..n]);
                        pending.extend_from_slice(&buf[..n]);
                        while let Some(end) = pending.iter().position(|&b| b == b'\n') {
                            let line: Vec<u8> = pending.drain(..=end).collect();
                            let text = String::from_utf8_lossy(&line)
                                .trim_end_matches(['\r', '\n'])
                                .to_string();
                            let at_ms = started.elapsed().as_millis() as u64;
                            if tx.send(Line { at_ms, text }).is_err() {
                                return;
                            }
                        }
                    }
                    Err(e)
                        if matches!(
                            e.kind(),
                            std::io::ErrorKind::TimedOut
                                | std::io::ErrorKind::WouldBlock
                                | std::io::ErrorKind::Interrupted
                        ) => {}
                    Err(e) => {
                        // The USB device went away (reset, power cut): wait for it to come back.
                        let Some((path, baud)) = &reopen else {
                            std::thread::sleep(std::time::Duration::from_millis(20));
                            continue;
                        };
                        // Half a line from before the cut is not a line.
                        pending.clear();
                        let _ = writeln!(raw, "\n# hil: console lost ({e}); waiting for {path}");
                        let gone = std::time::Instant::now();
                        loop {
                            if stopping.load(std::sync::atomic::Ordering::Relaxed) {
                                return;
                            }
                            if gone.elapsed() > REAPPEAR_WITHIN {
                                let _ = writeln!(
                                    raw,
                                    "# hil: {path} did not come back within {}s",
                                    REAPPEAR_WITHIN.as_secs()
                                );
                                return;
                            }
                            std::thread::sleep(std::time::Duration::from_millis(100));
                            if let Ok(r) = open_device(path, *baud) {
                                reader = r;
                                let _ = writeln!(
                                    raw,
                                    "# hil: console back after {} ms",
                                    gone.elapsed().as_millis()
                                );
                                break;
                            }
                        }
                    }
                }
            }
        });
        Ok(Console {
            lines,
            stop,
            thread: Some(thread),
            log: log.to_path_buf(),
        })
    }

    /// Writes a note of the harness's into the raw log, as a `# hil: …` line of its own
    /// (after whatever the board printed so far).
    pub fn note(&self, text: &str) {
        use std::io::Write;
        if let Ok(mut f) = std::fs::OpenOptions::new().append(true).open(&self.log) {
            let _ = write!(f, "\n# hil: {text}\n");
        }
    }
}

impl Drop for Console {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            // The reader wakes at least every read timeout (100 ms) to see the flag.
            let _ = t.join();
        }
    }
}

fn open_device(path: &str, baud: u32) -> Result<Box<dyn std::io::Read + Send>, ConsoleError> {
    // Not exclusive: the reset-line backend opens the same device for its modem lines.
    let port = serialport::new(path, baud)
        .timeout(std::time::Duration::from_millis(100))
        .exclusive(false)
        .open()
        .map_err(|source| ConsoleError::Open {
            path: path.to_string(),
            source,
        })?;
    Ok(Box::new(port))
}
