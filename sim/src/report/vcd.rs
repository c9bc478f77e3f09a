//! A run's LED and power waveforms as an IEEE 1364 value change dump, for GTKWave or Surfer.
//!
//! ```text
//! power   ‾‾‾‾‾‾‾‾‾‾‾|______|‾‾‾‾‾‾‾‾‾‾‾‾‾‾‾‾‾‾‾‾‾‾‾‾‾‾‾‾‾‾‾‾‾‾‾‾‾
//! yellow  _‾‾‾‾‾‾‾‾‾‾|______|_‾‾‾‾‾‾‾‾‾‾‾‾‾|_____________________
//! app     ___________|______|_______________________|‾‾‾‾‾‾‾‾‾‾‾‾
//!         boot 1     cut    boot 2                  boot 3 (after a reboot)
//! ```
//!
//! Time is the virtual clock in ms since the first boot (`$timescale 1 ms`). Power is high
//! from each boot's power-on; a boot that ended in a power cut drops it, and every LED
//! with it, until the next power-on. A reboot keeps the power, but the reset turns the LEDs
//! off and the next boot starts with `written` at 0 until its first progress report. Marks
//! past a boot's end are drawn at its end: the waveform never runs backwards.

use super::{BootTimeline, Timeline};
use std::fmt::Write;

/// The signals, their VCD identifier codes and widths, in declaration order.
const SIGNALS: [(Signal, &str, &str, u32); 5] = [
    (Signal::Power, "power", "p", 1),
    (Signal::Yellow, "yellow", "y", 1),
    (Signal::Green, "green", "g", 1),
    (Signal::App, "app", "a", 1),
    (Signal::Written, "written", "w", 32),
];

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Signal {
    Power,
    Yellow,
    Green,
    App,
    Written,
}

impl Signal {
    fn index(self) -> usize {
        self as usize
    }
    fn led(name: &str) -> Option<Signal> {
        match name {
            "yellow" => Some(Signal::Yellow),
            "green" => Some(Signal::Green),
            "app" => Some(Signal::App),
            _ => None,
        }
    }
}

/// The VCD text.
pub fn render(timeline: &Timeline) -> String {
    let mut out = String::new();
    // `write!` into a String cannot fail; the results are discarded for that reason.
    let _ = writeln!(
        out,
        "$date\n\tvirtual clock: 0 ms is the first boot's power-on\n$end"
    );
    let _ = writeln!(
        out,
        "$version\n\tsim sweep {} (esp-ota host simulator)\n$end",
        env!("CARGO_PKG_VERSION")
    );
    let _ = writeln!(out, "$comment\n\t{}\n$end", comment(&timeline.title));
    out.push_str("$timescale 1 ms $end\n$scope module board $end\n");
    for (_, name, id, width) in SIGNALS {
        let _ = writeln!(out, "$var wire {width} {id} {name} $end");
    }
    out.push_str("$upscope $end\n$enddefinitions $end\n");

    let changes = changes(&timeline.boots);
    // Everything starts low: before the first power-on the board is dark.
    let mut current = [0u32; SIGNALS.len()];
    let mut i = 0;
    // Changes at time 0 are the initial values, so `$dumpvars` holds them.
    while i < changes.len() && changes[i].0 == 0 {
        current[changes[i].1.index()] = changes[i].2;
        i += 1;
    }
    out.push_str("#0\n$dumpvars\n");
    for (signal, _, id, _) in SIGNALS {
        out.push_str(&value(signal, current[signal.index()], id));
    }
    out.push_str("$end\n");

    let mut at = 0;
    while i < changes.len() {
        let time = changes[i].0;
        // The last value each signal takes at this time, then only real changes.
        let mut next = current;
        while i < changes.len() && changes[i].0 == time {
            next[changes[i].1.index()] = changes[i].2;
            i += 1;
        }
        let mut block = String::new();
        for (signal, _, id, _) in SIGNALS {
            if next[signal.index()] != current[signal.index()] {
                block.push_str(&value(signal, next[signal.index()], id));
            }
        }
        current = next;
        if !block.is_empty() {
            let _ = writeln!(out, "#{time}");
            out.push_str(&block);
            at = time;
        }
    }
    // A final time stamp, so a viewer shows the last boot to its end.
    let end = timeline.boots.iter().map(|b| b.end_ms).max().unwrap_or(0);
    if end > at {
        let _ = writeln!(out, "#{end}");
    }
    out
}

/// Every value the signals take, (absolute ms, signal, value), in time order.
fn changes(boots: &[BootTimeline]) -> Vec<(u64, Signal, u32)> {
    let mut all = Vec::new();
    // Where the previous boot ended: a boot cannot power on before it.
    let mut cursor = 0u64;
    for boot in boots {
        let start = boot.start_ms.max(cursor);
        let end = boot.end_ms.max(start);
        let at = |ms: u64| start.saturating_add(ms).min(end);
        let mut this = vec![
            (start, Signal::Power, 1),
            // Power-on and reset leave every LED dark and nothing downloaded yet.
            (start, Signal::Yellow, 0),
            (start, Signal::Green, 0),
            (start, Signal::App, 0),
            (start, Signal::Written, 0),
        ];
        for led in &boot.leds {
            if let Some(signal) = Signal::led(&led.led) {
                this.push((at(led.ms), signal, u32::from(led.on)));
            }
        }
        for &(ms, written, _) in &boot.progress {
            this.push((at(ms), Signal::Written, written));
        }
        // Stable: marks at the same ms keep their order, the last one wins.
        this.sort_by_key(|c| c.0);
        if boot.ended_in_power_cut() {
            for (signal, _, _, _) in SIGNALS {
                if signal != Signal::Written {
                    this.push((end, signal, 0));
                }
            }
        }
        all.extend(this);
        cursor = end;
    }
    all
}

fn value(signal: Signal, v: u32, id: &str) -> String {
    if signal == Signal::Written {
        format!("b{v:b} {id}\n")
    } else {
        format!("{v}{id}\n")
    }
}

/// A `$comment` body: one line, no `$` (a `$end` in it would close the section early).
fn comment(title: &str) -> String {
    title
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .filter(|&c| c != '$')
        .collect()
}

#[cfg(test)]
mod tests {
    use super::super::sample;
    use super::*;
    use std::collections::HashMap;

    /// What an independent reader makes of a dump: declared ids and widths, the initial
    /// values, and every later change with its time.
    #[derive(Debug, Default)]
    struct Dump {
        vars: HashMap<String, (String, u32)>,
        initial: HashMap<String, u64>,
        changes: Vec<(u64, String, u64)>,
        times: Vec<u64>,
        timescale: String,
    }

    impl Dump {
        /// The value of a signal (by name) at a time, after the changes at that time.
        fn at(&self, name: &str, time: u64) -> u64 {
            let id = self
                .vars
                .iter()
                .find(|(_, (n, _))| n == name)
                .map(|(id, _)| id.clone())
                .expect("signal declared");
            let mut v = self.initial[&id];
            for (t, i, value) in &self.changes {
                if *t <= time && *i == id {
                    v = *value;
                }
            }
            v
        }
    }

    /// Reads a dump token by token, as the standard describes it; panics on anything it
    /// does not expect.
    fn read(text: &str) -> Dump {
        let mut dump = Dump::default();
        let mut tokens = text.split_whitespace().peekable();
        let mut time: Option<u64> = None;
        let mut in_dumpvars = false;
        let mut definitions_done = false;
        while let Some(tok) = tokens.next() {
            if !definitions_done {
                match tok {
                    "$var" => {
                        let _kind = tokens.next().unwrap();
                        let width: u32 = tokens.next().unwrap().parse().unwrap();
                        let id = tokens.next().unwrap().to_string();
                        let name = tokens.next().unwrap().to_string();
                        assert_eq!(tokens.next(), Some("$end"));
                        assert!(dump.vars.insert(id, (name, width)).is_none(), "id twice");
                    }
                    "$timescale" => {
                        dump.timescale = tokens
                            .by_ref()
                            .take_while(|t| *t != "$end")
                            .collect::<Vec<_>>()
                            .join(" ")
                    }
                    "$enddefinitions" => {
                        assert_eq!(tokens.next(), Some("$end"));
                        definitions_done = true;
                    }
                    t if t.starts_with('$') && t != "$end" => {
                        // $date, $version, $comment, $scope, $upscope: skip to their $end.
                        for t in tokens.by_ref() {
                            if t == "$end" {
                                break;
                            }
                        }
                    }
                    other => panic!("unexpected {other} in the header"),
                }
                continue;
            }
            let (id, value) = match tok {
                "$dumpvars" => {
                    in_dumpvars = true;
                    continue;
                }
                "$end" => {
                    assert!(in_dumpvars, "$end outside $dumpvars");
                    in_dumpvars = false;
                    continue;
                }
                t if t.starts_with('#') => {
                    let t: u64 = t[1..].parse().expect("time");
                    if let Some(previous) = time {
                        assert!(t > previous, "time {t} after {previous}");
                    }
                    time = Some(t);
                    dump.times.push(t);
                    continue;
                }
                t if t.starts_with('b') => {
                    let id = tokens.next().expect("vector id").to_string();
                    (id, u64::from_str_radix(&t[1..], 2).expect("binary"))
                }
                t => {
                    let (v, id) = t.split_at(1);
                    (id.to_string(), v.parse().expect("0 or 1"))
                }
            };
            let (_, width) = dump
                .vars
                .get(&id)
                .unwrap_or_else(|| panic!("id {id} not declared"));
            assert!(value < 1 << width, "{value} wider than {width} bits");
            let t = time.expect("a value before any time");
            if in_dumpvars {
                dump.initial.insert(id, value);
            } else {
                dump.changes.push((t, id, value));
            }
        }
        assert!(definitions_done);
        dump
    }

    #[test]
    fn the_dump_reads_back_with_declared_ids_and_rising_times() {
        let dump = read(&render(&sample::timeline()));
        assert_eq!(dump.timescale, "1 ms");
        let mut names: Vec<_> = dump.vars.values().cloned().collect();
        names.sort();
        assert_eq!(
            names,
            [
                ("app".to_string(), 1),
                ("green".to_string(), 1),
                ("power".to_string(), 1),
                ("written".to_string(), 32),
                ("yellow".to_string(), 1)
            ]
        );
        assert_eq!(dump.initial.len(), 5, "every signal has an initial value");
        assert_eq!(dump.times.last(), Some(&2500), "ends with the last boot");
    }

    #[test]
    fn power_is_low_from_the_cut_to_the_next_power_on() {
        let dump = read(&render(&sample::timeline()));
        assert_eq!(dump.at("power", 0), 1);
        assert_eq!(dump.at("power", 499), 1);
        for t in [500, 650, 799] {
            assert_eq!(dump.at("power", t), 0, "at {t}");
            assert_eq!(dump.at("yellow", t), 0, "the cut turns the LED off, at {t}");
        }
        assert_eq!(dump.at("power", 800), 1);
        // The reboot into boot 3 keeps the power on.
        assert_eq!(dump.at("power", 1900), 1);
        assert_eq!(dump.at("power", 2500), 1);
    }

    #[test]
    fn leds_and_progress_follow_the_marks_on_the_absolute_clock() {
        let dump = read(&render(&sample::timeline()));
        assert_eq!(dump.at("yellow", 1), 0);
        assert_eq!(dump.at("yellow", 2), 1);
        assert_eq!(dump.at("yellow", 801), 1);
        assert_eq!(dump.at("yellow", 1800), 0);
        assert_eq!(dump.at("written", 300), 4096);
        assert_eq!(
            dump.at("written", 800),
            0,
            "a new boot has downloaded nothing yet"
        );
        assert_eq!(dump.at("written", 1000), 4096);
        assert_eq!(dump.at("written", 1700), 8192);
        assert_eq!(dump.at("green", 1905), 1);
        assert_eq!(dump.at("app", 2299), 0);
        assert_eq!(dump.at("app", 2300), 1);
    }

    #[test]
    fn marks_out_of_order_or_past_the_end_never_run_time_backwards() {
        let mut t = sample::timeline();
        t.boots[0].leds.push(green_on(900));
        t.boots[0].leds.insert(0, green_on(400));
        // Boot 2 claims to power on before boot 1 ended: it starts at the end instead.
        t.boots[1].start_ms = 300;
        // read() asserts that times rise.
        let dump = read(&render(&t));
        assert_eq!(dump.at("green", 399), 0);
        assert_eq!(dump.at("green", 400), 1, "sorted into place");
        assert_eq!(dump.at("green", 499), 1);
        // The mark past the end lands on the cut, which turns the LED off; boot 2 powers on
        // in the same ms.
        assert_eq!(dump.at("green", 500), 0);
        assert_eq!(dump.at("power", 500), 1);
        assert_eq!(
            dump.at("written", 700),
            4096,
            "boot 2's progress, from 500 ms"
        );
    }

    #[test]
    fn an_empty_timeline_is_a_valid_dump() {
        let dump = read(&render(&Timeline::default()));
        assert_eq!(dump.initial.len(), 5);
        assert!(dump.changes.is_empty());
    }

    #[test]
    fn a_dollar_in_the_title_cannot_end_the_comment() {
        let mut t = sample::timeline();
        t.title = "x $end $var wire 1 z evil $end\nnext".into();
        let text = render(&t);
        let dump = read(&text);
        assert_eq!(dump.vars.len(), 5);
        assert!(text.contains("$comment\n\tx end var wire 1 z evil end next\n$end"));
    }

    fn green_on(ms: u64) -> super::super::LedMark {
        super::super::LedMark {
            ms,
            led: "green".into(),
            on: true,
        }
    }
}
