//! The LED patterns every outcome shows.
//!
//! The yellow LED is on from the first instant of a boot until the update
//! routine ended well; it stays on after an error so a board in trouble is
//! visible across the room. The green LED then blinks the outcome:
//!
//! | pattern        | meaning                                                           |
//! |----------------|-------------------------------------------------------------------|
//! | `●`            | up to date: nothing to install                                    |
//! | `● ●`          | updated: this boot runs (and confirmed) a new release             |
//! | `● ● ●`        | no usable release: none published, bad tag, bad JSON, no asset    |
//! | `▬`            | refused: downgrade, image larger than the slot                    |
//! | `▬ ▬`          | verification failed: size, SHA-256, image checksum, chip, version |
//! | `▬ ▬ ▬`        | conf.json is missing or wrong                                     |
//! | `▬ ▬ ▬ ▬`      | flash trouble: partition table, otadata, write error              |
//! | `● ▬`          | GitHub answered something unexpected (status, redirect loop)      |
//! | `▬ ●`          | a trial boot failed (no answer from GitHub in time), or the release offered was rolled back here |
//!
//! `●` is 200 ms on, `▬` is 800 ms on; each is followed by 400 ms off.

use crate::Instant;

/// The board's LEDs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Led {
    /// Busy / attention.
    Yellow,
    /// Outcome.
    Green,
}

impl Led {
    /// Lower-case name, as traces print it.
    pub fn name(self) -> &'static str {
        match self {
            Led::Yellow => "yellow",
            Led::Green => "green",
        }
    }
}

/// A short blink, in ms on.
pub const SHORT_MS: u64 = 200;
/// A long blink, in ms on.
pub const LONG_MS: u64 = 800;
/// The pause after each blink.
pub const GAP_MS: u64 = 400;

/// A blink pattern: `true` is long, `false` short.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pattern(pub &'static [bool]);

impl Pattern {
    /// Up to date.
    pub const UP_TO_DATE: Pattern = Pattern(&[false]);
    /// Updated.
    pub const UPDATED: Pattern = Pattern(&[false, false]);
    /// No usable release.
    pub const NO_RELEASE: Pattern = Pattern(&[false, false, false]);
    /// Refused.
    pub const REFUSED: Pattern = Pattern(&[true]);
    /// Verification failed.
    pub const VERIFY_FAILED: Pattern = Pattern(&[true, true]);
    /// Configuration error.
    pub const CONFIG_ERROR: Pattern = Pattern(&[true, true, true]);
    /// Flash error.
    pub const FLASH_ERROR: Pattern = Pattern(&[true, true, true, true]);
    /// Unexpected answer from GitHub.
    pub const PROTOCOL_ERROR: Pattern = Pattern(&[false, true]);
    /// Rolled back.
    pub const ROLLED_BACK: Pattern = Pattern(&[true, false]);

    /// The pattern as text: `.` short, `-` long (`..` is updated).
    pub fn code(self) -> &'static str {
        match self.0 {
            [false] => ".",
            [false, false] => "..",
            [false, false, false] => "...",
            [true] => "-",
            [true, true] => "--",
            [true, true, true] => "---",
            [true, true, true, true] => "----",
            [false, true] => ".-",
            [true, false] => "-.",
            _ => "?",
        }
    }
}

/// Plays a pattern on the green LED as timed on/off edges.
#[derive(Clone, Debug, Default)]
pub struct Player {
    pattern: Option<Pattern>,
    /// Index of the next edge: even = switch on blink `step / 2`, odd = switch it off.
    step: usize,
    next: Option<Instant>,
}

impl Player {
    /// Starts `pattern` now.
    pub fn start(&mut self, pattern: Pattern, now: Instant) {
        *self = Player {
            pattern: Some(pattern),
            step: 0,
            next: Some(now),
        };
    }

    /// When the next edge is due.
    pub fn deadline(&self) -> Option<Instant> {
        self.next
    }

    /// True once the whole pattern has played.
    pub fn finished(&self) -> bool {
        self.next.is_none()
    }

    /// The edge due at `now`, if any: `Some(on)`.
    pub fn poll(&mut self, now: Instant) -> Option<bool> {
        let (pattern, due) = (self.pattern?, self.next?);
        if now < due {
            return None;
        }
        let blink = self.step / 2;
        let on = self.step.is_multiple_of(2);
        let long = pattern.0[blink];
        self.step += 1;
        self.next = if on {
            Some(now.plus_ms(if long { LONG_MS } else { SHORT_MS }))
        } else if blink + 1 < pattern.0.len() {
            Some(now.plus_ms(GAP_MS))
        } else {
            None
        };
        Some(on)
    }
}

/// The LED sequence these edges (ms, LED, on) show, as text: `Y`/`y` yellow on/off,
/// `.`/`-` a short/long green blink. `Y..y` is an update's second boot. The simulator's
/// expectations and the HIL's verdicts both read LEDs this way
/// ([`crate::trace::led_sequence`] reads it from a trace).
pub fn sequence(edges: impl IntoIterator<Item = (u64, Led, bool)>) -> heapless::String<64> {
    let mut out = heapless::String::new();
    let mut green_on_at = None;
    for (ms, led, on) in edges {
        let c = match (led, on) {
            (Led::Yellow, on) => Some(if on { 'Y' } else { 'y' }),
            (Led::Green, true) => {
                green_on_at = Some(ms);
                None
            }
            (Led::Green, false) => green_on_at.take().map(|t| {
                if ms.saturating_sub(t) >= LONG_MS {
                    '-'
                } else {
                    '.'
                }
            }),
        };
        if let Some(c) = c {
            // 64 edges are far more than a boot shows; a longer sequence is cut.
            let _ = out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn play(pattern: Pattern) -> std::vec::Vec<(u64, bool)> {
        let mut p = Player::default();
        p.start(pattern, Instant(1000));
        let mut edges = std::vec::Vec::new();
        while let Some(at) = p.deadline() {
            let on = p.poll(at).unwrap();
            edges.push((at.0, on));
        }
        edges
    }

    #[test]
    fn updated_is_two_short_blinks() {
        assert_eq!(
            play(Pattern::UPDATED),
            [(1000, true), (1200, false), (1600, true), (1800, false)]
        );
    }

    #[test]
    fn up_to_date_is_one_short_blink() {
        assert_eq!(play(Pattern::UP_TO_DATE), [(1000, true), (1200, false)]);
    }

    #[test]
    fn edges_read_as_their_led_sequence() {
        let edges = [
            (0, Led::Yellow, true),
            (10, Led::Green, true),
            (210, Led::Green, false),
            (610, Led::Green, true),
            (1410, Led::Green, false),
            (1410, Led::Yellow, false),
        ];
        assert_eq!(sequence(edges).as_str(), "Y.-y");
    }

    #[test]
    fn every_pattern_is_distinct() {
        let all = [
            Pattern::UP_TO_DATE,
            Pattern::UPDATED,
            Pattern::NO_RELEASE,
            Pattern::REFUSED,
            Pattern::VERIFY_FAILED,
            Pattern::CONFIG_ERROR,
            Pattern::FLASH_ERROR,
            Pattern::PROTOCOL_ERROR,
            Pattern::ROLLED_BACK,
        ];
        for (i, a) in all.iter().enumerate() {
            assert_ne!(a.code(), "?");
            for b in &all[i + 1..] {
                assert_ne!(play(*a), play(*b));
            }
        }
    }
}
