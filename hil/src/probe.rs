//! The LEDs, observed from outside the firmware.
//!
//! The yellow and green LED lines are wired to modem-status inputs (CTS, DSR, DCD, RI) of a
//! second USB-UART adapter, which the harness samples every 2 ms. USB-UART inputs are
//! active-low: a line the GPIO drives high (LED on, for an LED between the GPIO and ground)
//! reads as "not asserted". The virtual board's probe reads the GPIO writes of its glue over
//! the side channel. Edges become LED sequences (`Y..y`) the same way the core's trace does.

use firmware::led::Led;
use firmware::trace::Event;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// One change of an LED line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Edge {
    /// Milliseconds (host time since the probe started, or the virtual board's time).
    pub ms: u64,
    /// Which LED.
    pub led: Led,
    /// Its new state.
    pub on: bool,
}

/// A modem-status input of a USB-UART adapter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Input {
    /// Clear To Send.
    Cts,
    /// Data Set Ready.
    Dsr,
    /// Data Carrier Detect.
    Dcd,
    /// Ring Indicator.
    Ri,
}

impl Input {
    fn parse(s: &str) -> Option<Input> {
        match s.to_ascii_lowercase().as_str() {
            "cts" => Some(Input::Cts),
            "dsr" => Some(Input::Dsr),
            "dcd" | "cd" => Some(Input::Dcd),
            "ri" => Some(Input::Ri),
            _ => None,
        }
    }

    fn read(self, port: &mut dyn serialport::SerialPort) -> serialport::Result<bool> {
        match self {
            Input::Cts => port.read_clear_to_send(),
            Input::Dsr => port.read_data_set_ready(),
            Input::Dcd => port.read_carrier_detect(),
            Input::Ri => port.read_ring_indicator(),
        }
    }
}

/// Where the probe is and how it is wired.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProbeSpec {
    /// The adapter's device.
    pub path: String,
    /// The input the yellow LED line drives.
    pub yellow: Input,
    /// The input the green LED line drives.
    pub green: Input,
    /// Inputs read asserted when the LED is on (an adapter without the usual inverter).
    pub active_high: bool,
}

/// Why the probe could not start.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    /// A `--probe` value that does not parse.
    #[error(
        "LED probe `{0}`: expected PORT[:yellow=cts,green=dsr][:active-high] (inputs: cts, dsr, dcd, ri)"
    )]
    Spec(String),
    /// The adapter could not be opened.
    #[error("LED probe {path}: {source}")]
    Open {
        /// The device.
        path: String,
        /// The cause.
        source: serialport::Error,
    },
}

impl ProbeSpec {
    /// `PORT`, `PORT:yellow=cts,green=dsr`, `PORT:yellow=dcd,green=ri:active-high`.
    pub fn parse(spec: &str) -> Result<ProbeSpec, ProbeError> {
        let bad = || ProbeError::Spec(spec.to_string());
        let mut parts = spec.split(':');
        let path = parts.next().filter(|p| !p.is_empty()).ok_or_else(bad)?;
        let mut out = ProbeSpec {
            path: path.to_string(),
            yellow: Input::Cts,
            green: Input::Dsr,
            active_high: false,
        };
        for part in parts {
            if part == "active-high" {
                out.active_high = true;
                continue;
            }
            for pair in part.split(',') {
                let (led, input) = pair.split_once('=').ok_or_else(bad)?;
                let input = Input::parse(input).ok_or_else(bad)?;
                match led {
                    "yellow" => out.yellow = input,
                    "green" => out.green = input,
                    _ => return Err(bad()),
                }
            }
        }
        if out.yellow == out.green {
            return Err(bad());
        }
        Ok(out)
    }
}

/// A running modem-line probe.
pub struct ModemProbe {
    edges: Arc<Mutex<Vec<Edge>>>,
    stop: Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl ModemProbe {
    /// Opens the adapter and starts sampling.
    pub fn start(spec: &ProbeSpec) -> Result<ModemProbe, ProbeError> {
        let mut port = serialport::new(&spec.path, 115_200)
            .timeout(Duration::from_millis(50))
            .exclusive(false)
            .open()
            .map_err(|source| ProbeError::Open {
                path: spec.path.clone(),
                source,
            })?;
        let edges = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (out, stopping, spec) = (edges.clone(), stop.clone(), spec.clone());
        let thread = std::thread::spawn(move || {
            let started = Instant::now();
            let mut last = [None::<bool>; 2];
            while !stopping.load(std::sync::atomic::Ordering::Relaxed) {
                for (i, (led, input)) in [(Led::Yellow, spec.yellow), (Led::Green, spec.green)]
                    .into_iter()
                    .enumerate()
                {
                    // A read error (adapter unplugged) leaves the line as it was.
                    let Ok(asserted) = input.read(port.as_mut()) else {
                        continue;
                    };
                    let on = asserted == spec.active_high;
                    if last[i] != Some(on) {
                        last[i] = Some(on);
                        if let Ok(mut e) = out.lock() {
                            e.push(Edge {
                                ms: started.elapsed().as_millis() as u64,
                                led,
                                on,
                            });
                        }
                    }
                }
                std::thread::sleep(Duration::from_millis(2));
            }
        });
        Ok(ModemProbe {
            edges,
            stop,
            thread: Some(thread),
        })
    }

    /// Every edge so far.
    pub fn edges(&self) -> Vec<Edge> {
        self.edges.lock().map(|e| e.clone()).unwrap_or_default()
    }
}

impl Drop for ModemProbe {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// LED sequences per boot from probe edges: a boot starts where the yellow LED goes on (the
/// core's first action), and its sequence reads like the trace's (`Y..y`).
pub fn sequences(edges: &[Edge]) -> Vec<String> {
    let mut boots: Vec<Vec<Event>> = Vec::new();
    let mut times: Vec<Vec<u64>> = Vec::new();
    // The lines' state before the first edge is unknown: a first "off" is the probe's initial
    // reading, not an edge of the firmware's.
    let mut seen_on = false;
    for e in edges {
        if !e.on && !seen_on {
            continue;
        }
        seen_on = true;
        if e.led == Led::Yellow && e.on {
            boots.push(Vec::new());
            times.push(Vec::new());
        }
        if let (Some(b), Some(t)) = (boots.last_mut(), times.last_mut()) {
            b.push(Event::Led {
                led: e.led,
                on: e.on,
            });
            t.push(e.ms);
        }
    }
    boots
        .iter()
        .zip(&times)
        .map(|(events, t)| {
            firmware::trace::led_sequence(t.iter().copied().zip(events.iter())).to_string()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn edge(ms: u64, led: Led, on: bool) -> Edge {
        Edge { ms, led, on }
    }

    #[test]
    fn edges_read_as_the_traces_sequences() {
        let edges = [
            // The probe's first reading: both off.
            edge(0, Led::Yellow, false),
            edge(0, Led::Green, false),
            edge(10, Led::Yellow, true),
            // A power cut: the line drops with the board, and the next boot lights it again.
            edge(900, Led::Yellow, false),
            edge(1500, Led::Yellow, true),
            edge(4000, Led::Green, true),
            edge(4150, Led::Green, false),
            edge(4400, Led::Green, true),
            edge(4550, Led::Green, false),
            edge(4600, Led::Yellow, false),
        ];
        assert_eq!(sequences(&edges), ["Yy", "Y..y"]);
        let long = [
            edge(0, Led::Yellow, true),
            edge(100, Led::Green, true),
            edge(1100, Led::Green, false),
            edge(1300, Led::Green, true),
            edge(1400, Led::Green, false),
            edge(1500, Led::Yellow, false),
        ];
        assert_eq!(sequences(&long), ["Y-.y"]);
    }

    #[test]
    fn probe_specs_parse_and_bad_ones_are_named() {
        let p = ProbeSpec::parse("/dev/ttyUSB1").unwrap();
        assert_eq!(
            (p.yellow, p.green, p.active_high),
            (Input::Cts, Input::Dsr, false)
        );
        let p = ProbeSpec::parse("/dev/ttyUSB1:yellow=dsr,green=cts").unwrap();
        assert_eq!((p.yellow, p.green), (Input::Dsr, Input::Cts));
        let p = ProbeSpec::parse("/dev/ttyUSB1:yellow=dcd,green=ri:active-high").unwrap();
        assert_eq!(
            (p.yellow, p.green, p.active_high),
            (Input::Dcd, Input::Ri, true)
        );
        for bad in [
            "",
            "/dev/x:yellow=foo",
            "/dev/x:blue=cts",
            "/dev/x:yellow=cts,green=cts",
        ] {
            let e = ProbeSpec::parse(bad).unwrap_err().to_string();
            assert!(e.contains("PORT[:yellow=cts,green=dsr]"), "{bad}: {e}");
        }
    }
}
