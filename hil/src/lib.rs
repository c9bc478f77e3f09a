//! Hardware-in-the-loop harness.
//!
//! What exists: reading a board's serial console back into the core's trace
//! events and summarising each boot the way the simulator's scenarios state
//! their expectations (version, outcome, LED sequence). Flashing a board with
//! espflash, cutting its power and replaying recorded scenarios are not built
//! yet (see the README, "What is missing").

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
}

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
pub fn read_console(text: &str) -> Result<Vec<Boot>, BadLine> {
    let mut boots: Vec<Boot> = Vec::new();
    let mut last_ms = None;
    for (i, line) in text.lines().enumerate() {
        let Some(parsed) = Event::parse_line(line.trim_start()) else {
            continue;
        };
        let (ms, event) = parsed.map_err(|error| BadLine {
            line: i + 1,
            error,
            text: line.to_string(),
        })?;
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
        boot.leds = firmware::led::sequence(boot.events.iter().map(|(ms, e)| (*ms, e))).to_string();
    }
    Ok(boots)
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
    fn board_noise_is_skipped_and_a_broken_trace_line_is_reported() {
        let console = "ESP-ROM:esp32c3-api1-20210207\nI (30) boot: ESP-IDF v5.1\n# wifi: associating\nOTA 0 led led=yellow on=true\nOTA 0 boot slot=0 version=1.0 state=valid\nhello from the app\n";
        let boots = read_console(console).unwrap();
        assert_eq!((boots.len(), boots[0].slot), (1, Some(0)));
        let err = read_console("OTA 0 boot slot=x\n").unwrap_err();
        assert_eq!(err.line, 1);
    }
}
