//! Power and reset control of the board under test.
//!
//! A cut is what the harness does to the board, so it goes through a backend that acts on the
//! board from outside: its EN line (through the USB-UART bridge's RTS, the way espflash resets
//! a board), the port power of a USB hub that can switch it (`uhubctl`), or any command the
//! user gives (a relay board). The virtual board's lines are on its side channel.
//!
//! A real backend reacts to what the harness sees on the console, so a cut lands some
//! milliseconds after the event that triggered it; the virtual board's lands exactly there.
//! That is why exact cuts (at one flash operation) are replayed from recordings instead.

use std::process::Command;
use std::time::Duration;

/// Why a power or reset action failed.
#[derive(Debug, thiserror::Error)]
pub enum PowerError {
    /// A modem line could not be set on the serial port.
    #[error("serial port {path}: {source}")]
    Serial {
        /// The device.
        path: String,
        /// The cause.
        source: serialport::Error,
    },
    /// The user's command failed to start or exited non-zero.
    #[error("power command `{command}`: {why}")]
    Command {
        /// The command line.
        command: String,
        /// What happened.
        why: String,
    },
    /// A backend description that does not parse.
    #[error(
        "power backend `{0}`: expected `reset`, `uhubctl:LOCATION:PORT` or `cmd:OFF-COMMAND;ON-COMMAND`"
    )]
    Spec(String),
}

/// What the harness can do to the board's power.
pub trait PowerControl: Send {
    /// A short name for reports.
    fn name(&self) -> String;
    /// Cuts power (or holds the chip in reset) now.
    fn cut(&mut self) -> Result<(), PowerError>;
    /// Restores power (or releases reset): the board boots its firmware.
    fn restore(&mut self) -> Result<(), PowerError>;
    /// True when a cut takes the power away (the flash loses it mid-operation); false when it
    /// only holds EN low (the chip stops at once, the flash finishes its current operation).
    fn removes_power(&self) -> bool;
    /// Someone else (espflash's resets, after a cut) drove the board's lines since: forget
    /// what this backend holds open, so that its next action starts afresh.
    fn released(&mut self) {}
}

/// EN through the USB-UART bridge's RTS, as espflash's hard reset does: RTS asserted pulls EN
/// low (held in reset), released lets the chip boot; DTR (GPIO9, BOOT) stays released so it
/// boots the firmware, not the ROM loader. The C3's USB-Serial-JTAG decodes the same lines
/// into a chip reset, but its USB device is not reset with the chip: there a cut is a reset
/// pulse, not a power-off, and the flash finishes the operation it was doing.
pub struct ResetLine {
    path: String,
    port: Option<Box<dyn serialport::SerialPort>>,
}

impl ResetLine {
    /// Uses the modem lines of `path` (the board's own console port, or a second adapter).
    pub fn new(path: &str) -> ResetLine {
        ResetLine {
            path: path.to_string(),
            port: None,
        }
    }

    fn port(&mut self) -> Result<&mut Box<dyn serialport::SerialPort>, PowerError> {
        let port = match self.port.take() {
            Some(p) => p,
            // Not exclusive: the console reads the same device.
            None => serialport::new(&self.path, 115_200)
                .timeout(Duration::from_millis(100))
                .exclusive(false)
                .open()
                .map_err(|source| PowerError::Serial {
                    path: self.path.clone(),
                    source,
                })?,
        };
        Ok(self.port.insert(port))
    }

    fn lines(&mut self, dtr: bool, rts: bool) -> Result<(), PowerError> {
        let path = self.path.clone();
        let port = self.port()?;
        let serial = |source| PowerError::Serial {
            path: path.clone(),
            source,
        };
        port.write_data_terminal_ready(dtr).map_err(serial)?;
        port.write_request_to_send(rts).map_err(serial)?;
        Ok(())
    }
}

impl PowerControl for ResetLine {
    fn name(&self) -> String {
        format!("reset line (RTS of {})", self.path)
    }
    fn cut(&mut self) -> Result<(), PowerError> {
        self.lines(false, true)
    }
    fn restore(&mut self) -> Result<(), PowerError> {
        let r = self.lines(false, false);
        // Opened again next time: a device that re-enumerated meanwhile is a new one.
        self.port = None;
        r
    }
    fn removes_power(&self) -> bool {
        false
    }
    fn released(&mut self) {
        self.port = None;
    }
}

/// A user's commands for off and on (a relay board, a lab supply, `uhubctl`).
pub struct UserCommand {
    off: String,
    on: String,
    label: String,
}

impl UserCommand {
    /// `uhubctl -l LOCATION -p PORT -a off|on`: port power of a hub that really switches it.
    pub fn uhubctl(location: &str, port: &str) -> UserCommand {
        UserCommand {
            off: format!("uhubctl -l {location} -p {port} -a off"),
            on: format!("uhubctl -l {location} -p {port} -a on"),
            label: format!("uhubctl hub {location} port {port}"),
        }
    }

    /// Two shell commands.
    pub fn new(off: &str, on: &str) -> UserCommand {
        UserCommand {
            off: off.to_string(),
            on: on.to_string(),
            label: format!("command `{off}` / `{on}`"),
        }
    }

    fn run(command: &str) -> Result<(), PowerError> {
        let status = Command::new("sh")
            .arg("-c")
            .arg(command)
            .status()
            .map_err(|e| PowerError::Command {
                command: command.to_string(),
                why: e.to_string(),
            })?;
        if status.success() {
            Ok(())
        } else {
            Err(PowerError::Command {
                command: command.to_string(),
                why: format!("exited with {status}"),
            })
        }
    }
}

impl PowerControl for UserCommand {
    fn name(&self) -> String {
        self.label.clone()
    }
    fn cut(&mut self) -> Result<(), PowerError> {
        UserCommand::run(&self.off)
    }
    fn restore(&mut self) -> Result<(), PowerError> {
        UserCommand::run(&self.on)
    }
    fn removes_power(&self) -> bool {
        true
    }
}

/// Parses `--power`: `reset` (the console port's RTS), `reset:/dev/ttyUSB1` (another
/// adapter's), `uhubctl:LOCATION:PORT`, `cmd:OFF;ON`.
pub fn parse(spec: &str, console_port: &str) -> Result<Box<dyn PowerControl>, PowerError> {
    let (kind, rest) = spec.split_once(':').unwrap_or((spec, ""));
    match kind {
        "reset" if rest.is_empty() => Ok(Box::new(ResetLine::new(console_port))),
        "reset" => Ok(Box::new(ResetLine::new(rest))),
        "uhubctl" => match rest.split_once(':') {
            Some((loc, port)) if !loc.is_empty() && !port.is_empty() => {
                Ok(Box::new(UserCommand::uhubctl(loc, port)))
            }
            _ => Err(PowerError::Spec(spec.to_string())),
        },
        "cmd" => match rest.split_once(';') {
            Some((off, on)) if !off.trim().is_empty() && !on.trim().is_empty() => {
                Ok(Box::new(UserCommand::new(off.trim(), on.trim())))
            }
            _ => Err(PowerError::Spec(spec.to_string())),
        },
        _ => Err(PowerError::Spec(spec.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backends_parse_and_bad_ones_say_what_is_expected() {
        assert_eq!(
            parse("reset", "/dev/ttyACM0").unwrap().name(),
            "reset line (RTS of /dev/ttyACM0)"
        );
        assert_eq!(
            parse("uhubctl:1-1:2", "/dev/ttyACM0").unwrap().name(),
            "uhubctl hub 1-1 port 2"
        );
        assert!(
            parse("cmd:relay off;relay on", "p")
                .unwrap()
                .removes_power()
        );
        let err = parse("relay", "p").err().unwrap().to_string();
        assert!(err.contains("uhubctl:LOCATION:PORT"), "{err}");
        assert!(parse("uhubctl:1-1", "p").is_err());
    }

    #[test]
    fn a_user_command_runs_and_its_failure_is_reported() {
        let dir = std::env::temp_dir().join(format!("hil-power-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let flag = dir.join("state");
        let mut p = UserCommand::new(
            &format!("echo off > {}", flag.display()),
            &format!("echo on > {}", flag.display()),
        );
        p.cut().unwrap();
        assert_eq!(std::fs::read_to_string(&flag).unwrap().trim(), "off");
        p.restore().unwrap();
        assert_eq!(std::fs::read_to_string(&flag).unwrap().trim(), "on");
        let mut bad = UserCommand::new("exit 3", "true");
        let err = bad.cut().unwrap_err().to_string();
        assert!(
            err.contains("exit 3") && err.contains("exit status: 3"),
            "{err}"
        );
    }
}
