//! The application routine — **this is the file to edit.**
//!
//! The OTA core runs first on every boot (check, download, verify, switch,
//! confirm). When it is done it asks the glue to start the application
//! ([`firmware::machine::Action::RunApplication`]) and this task is spawned.
//! The update logic keeps running beside it (for example to deliver an
//! activity log that could not be published yet), so the application must be
//! `async` and yield (`Timer::after(..).await`) rather than busy-loop.
//!
//! Replace the body of [`run`] with your sensors, control loops, … The example
//! blinks the LED on the GPIO named `leds.app` in `conf.json`.

use embassy_time::{Duration, Timer};
use esp_hal::gpio::Output;

/// The example application: blink the `app` LED at 1 Hz, forever.
#[embassy_executor::task]
pub async fn run(mut led: Option<Output<'static>>) {
    loop {
        if let Some(led) = led.as_mut() {
            led.toggle();
        }
        Timer::after(Duration::from_millis(500)).await;
    }
}
