//! The application routine — **this is the file to edit.**
//!
//! ## When it starts
//!
//! The OTA core runs first on every boot (check, download, verify, switch, confirm). The
//! driver spawns [`run`] once, at the first of:
//!
//! - the update routine is over ([`firmware::machine::Action::RunApplication`]), or
//! - the routine has been retrying for `update.max_wait_s` (conf.json; default 120 s, `0`
//!   waits for ever) without finishing ([`firmware::machine::Action::StartApplication`]):
//!   WiFi down, GitHub unreachable, rate-limited, … The application then runs while the
//!   updater keeps retrying beside it; the yellow LED stays on until the routine really
//!   succeeded.
//!
//! Either way the updater goes on running next to the application (retries, the activity
//! log), so the application must be `async` and yield (`Timer::after(..).await`) rather
//! than busy-loop.
//!
//! ## Reboots into a new version
//!
//! When the updater installs a newer release while the application runs, it does not cut
//! the application off. It sets [`reboot_pending`] (and wakes [`reboot_requested`]), then
//! waits for [`allow_reboot`] to return, and only then restarts into the new version. The
//! new image is already committed, so a power cut in between boots it too. By default
//! [`allow_reboot`] returns at once. An application with work that must not be cut (a
//! heating cycle, a half-written file) makes it wait for its own safe point, e.g.:
//!
//! ```ignore
//! static SAFE_POINT: Signal<CriticalSectionRawMutex, ()> = Signal::new();
//! pub async fn allow_reboot() {
//!     SAFE_POINT.wait().await // signalled by `run` between two cycles
//! }
//! ```
//!
//! The example below blinks the LED on the GPIO named `leds.app` in `conf.json` and stops
//! blinking once a reboot is pending.

use core::sync::atomic::{AtomicBool, Ordering};

use embassy_futures::select::{Either, select};
use embassy_sync::blocking_mutex::raw::CriticalSectionRawMutex;
use embassy_sync::signal::Signal;
use embassy_time::{Duration, Timer};
use esp_hal::gpio::Output;

/// Set once per boot by the driver: a new version is installed and waits for the reboot.
static REBOOT_PENDING: AtomicBool = AtomicBool::new(false);
/// Wakes [`reboot_requested`].
static REBOOT_WAKE: Signal<CriticalSectionRawMutex, ()> = Signal::new();

/// `true` once the updater waits to restart into a newly installed version.
pub fn reboot_pending() -> bool {
    REBOOT_PENDING.load(Ordering::Acquire)
}

/// Resolves once the updater waits to restart into a newly installed version.
pub async fn reboot_requested() {
    while !reboot_pending() {
        REBOOT_WAKE.wait().await;
    }
}

/// Called by the driver before it waits on [`allow_reboot`].
pub(super) fn request_reboot() {
    REBOOT_PENDING.store(true, Ordering::Release);
    REBOOT_WAKE.signal(());
}

/// **The reboot hook**: returns when the application allows the restart into the new
/// version. Default: at once. See the module docs for an application that needs a safe point.
pub async fn allow_reboot() {}

/// The example application: blink the `app` LED at 1 Hz until a reboot is pending.
#[embassy_executor::task]
pub async fn run(mut led: Option<Output<'static>>) {
    loop {
        match select(Timer::after(Duration::from_millis(500)), reboot_requested()).await {
            Either::First(()) => {
                if let Some(led) = led.as_mut() {
                    led.toggle();
                }
            }
            Either::Second(()) => {
                if let Some(led) = led.as_mut() {
                    led.set_low();
                }
                // Nothing left to do: the driver restarts the chip.
                core::future::pending::<()>().await;
            }
        }
    }
}
