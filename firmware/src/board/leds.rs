//! The LEDs named in `conf.json` (`leds.yellow`, `leds.green`, `leds.app`).
//!
//! The pins are only known at run time (they come from the config partition),
//! so they are taken by number. A number that is not a free GPIO on this chip
//! (SPI flash pins, the serial console, input-only pins, non-existent pins)
//! yields no LED instead of a panic or a dead console: the core still runs and
//! its trace lines still show every LED edge.

use esp_hal::gpio::{AnyPin, Level, Output, OutputConfig};
use firmware::led::Led;

/// GPIOs the LEDs may use on this chip.
#[cfg(feature = "esp32c3")]
fn usable(pin: u8) -> bool {
    // 12..=17: SPI flash. 18/19: USB-Serial-JTAG (the console on most
    // boards), 20/21: UART0 (the console on boards with a USB-UART bridge).
    matches!(pin, 0..=11)
}

/// GPIOs the LEDs may use on this chip.
#[cfg(feature = "esp32")]
fn usable(pin: u8) -> bool {
    // 1/3: UART0 console. 6..=11: SPI flash. 34..=39: input only.
    matches!(pin, 0 | 2 | 4 | 5 | 12..=19 | 21..=23 | 25..=27 | 32 | 33)
}

fn output(pin: Option<u8>) -> Option<Output<'static>> {
    let pin = pin.filter(|&p| usable(p))?;
    // SAFETY: `Leds::new` is called once, and `driver` rejects a config that
    // names the same pin twice, so each stolen pin has exactly one owner.
    let pin = unsafe { AnyPin::steal(pin) };
    Some(Output::new(pin, Level::Low, OutputConfig::default()))
}

/// The board's LEDs, each optional.
pub struct Leds {
    yellow: Option<Output<'static>>,
    green: Option<Output<'static>>,
    app: Option<Output<'static>>,
}

impl Leds {
    /// Takes the three GPIOs. Duplicates are dropped (first one wins).
    pub fn new(yellow: Option<u8>, green: Option<u8>, app: Option<u8>) -> Self {
        let green = green.filter(|g| Some(*g) != yellow);
        let app = app.filter(|a| Some(*a) != yellow && Some(*a) != green);
        Self {
            yellow: output(yellow),
            green: output(green),
            app: output(app),
        }
    }

    /// Executes `Action::Led`.
    pub fn set(&mut self, led: Led, on: bool) {
        let out = match led {
            Led::Yellow => self.yellow.as_mut(),
            Led::Green => self.green.as_mut(),
        };
        if let Some(out) = out {
            out.set_level(if on { Level::High } else { Level::Low });
        }
    }

    /// Hands the `app` LED to the application routine.
    pub fn take_app(&mut self) -> Option<Output<'static>> {
        self.app.take()
    }
}
