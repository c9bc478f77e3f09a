//! Board glue: esp-hal, WiFi, TLS, HTTP, MQTT and flash under the OTA core.
//!
//! Nothing here decides anything about an update. Each module executes one
//! kind of [`firmware::machine::Action`] or reports one kind of event back:
//!
//! | module      | moves bytes between the core and …                              |
//! |-------------|-----------------------------------------------------------------|
//! | [`boot`]    | the hardware's answer to "which slot runs, on which chip revision" |
//! | [`driver`]  | everything: the loop `handle_* → poll_trace → poll_action → wait` |
//! | [`net`]     | the WiFi station (started, retried and joined at the core's pace) and embassy-net |
//! | [`http`]    | one HTTP/1.1 GET, plain or TLS, redirects *not* followed        |
//! | [`tls`]     | mbedtls-rs and the embedded root certificates (`certs/`)        |
//! | [`mqtt`]    | MQTT 5 publishes at QoS 1 on one session per boot               |
//! | [`leds`]    | the GPIO outputs named in `conf.json`                           |
//! | [`app`]     | **the application routine and its reboot hook: the place users edit** |

pub mod app;
pub mod boot;
pub mod driver;
pub mod http;
pub mod leds;
pub mod mqtt;
pub mod net;
pub mod tls;
