//! The portable OTA core.
//!
//! Everything that *decides* anything about an over-the-air update lives in
//! this crate's library: configuration parsing, version ordering, the GitHub
//! release parser, the ESP-IDF flash formats and the update state machine.
//! It is `#![no_std]`, allocates nothing, performs no I/O and reads no clock:
//! the board glue (`src/bin/board.rs`) and the host simulator (`sim/`) feed it
//! events with the current time and execute the [`machine::Action`]s it
//! answers with. Both drive this same code, so what the simulator proves is
//! what the board runs.
//!
//! | module        | what it holds                                                |
//! |---------------|--------------------------------------------------------------|
//! | [`machine`]   | the update state machine (sans-IO: events in, actions out)   |
//! | [`config`]    | `conf.json`                                                  |
//! | [`version`]   | release tags `1.0`, `1.10`, `v1.2.3` and their ordering       |
//! | [`release`]   | GitHub's release JSON, parsed while it streams in            |
//! | [`json`]      | the streaming JSON tokenizer both parsers share              |
//! | [`format`]    | ESP-IDF formats: partition table, otadata, app image         |
//! | [`storage`]   | the flash seam, the flash layout, durable progress and log   |
//! | [`trace`]     | the one event type: serial line, MQTT JSON, parse-back       |
//! | [`led`]       | the LED patterns every outcome shows                         |
//! | [`backoff`]   | capped exponential backoff with jitter                       |
//! | [`http`]      | requests the core asks for, response heads drivers report    |
#![no_std]
#![forbid(unsafe_code)]
#![warn(missing_docs)]

#[cfg(test)]
extern crate std;

pub mod backoff;
pub mod config;
pub mod format;
pub mod http;
pub mod json;
pub mod led;
pub mod machine;
pub mod release;
pub mod storage;
pub mod trace;
pub mod version;

/// A point in time, in milliseconds since the board booted.
///
/// The core never reads a clock: every input carries `now`, and every wait the
/// core needs comes back as a deadline from [`machine::Updater::poll_timeout`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Instant(pub u64);

impl Instant {
    /// This instant plus `ms` milliseconds, saturating instead of wrapping.
    pub const fn plus_ms(self, ms: u64) -> Instant {
        Instant(self.0.saturating_add(ms))
    }

    /// Milliseconds from `earlier` to `self`, zero if `earlier` is later.
    pub const fn since(self, earlier: Instant) -> u64 {
        self.0.saturating_sub(earlier.0)
    }
}
