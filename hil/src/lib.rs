//! Hardware-in-the-loop harness: flashes an ESP32-C3 (or the simulator's virtual one behind
//! a pty) with espflash's library, watches its serial console, LEDs and MQTT activity log,
//! cuts its power, replays recorded power cuts, and judges each run against the same
//! expectations the simulator uses.
//!
//! - [`console`]: the serial console, read live (reconnecting) and parsed into boots;
//! - [`flashing`]: what gets written where, and espflash;
//! - [`power`]: reset line, hub port power, a user's relay command;
//! - [`probe`]: the LED lines, read from outside the firmware;
//! - [`report`]: table, JSON and JUnit XML;
//! - [`run`]: one scenario or replay on one board, judged.

pub mod console;
pub mod flashing;
pub mod power;
pub mod probe;
pub mod report;
pub mod run;

pub use console::{BadLine, Boot, read_console};
