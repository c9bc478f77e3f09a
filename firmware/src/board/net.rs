//! WiFi station + embassy-net (DHCPv4, DNS, TCP).
//!
//! Executes every `Action::JoinNetwork`, at the core's pace (its join timeout and backoff):
//!
//! ```text
//!   JoinNetwork ─► radio started? ── no ─► WifiController::new ── Err ─► handle_join_error(Board)
//!                       │                        │ Ok                    (next JoinNetwork tries again)
//!                       │                        ▼
//!                       │                 spawn `associate` + the IP stack (once per boot)
//!                       ▼                        │
//!                  wake `associate` ◄────────────┘
//!                       │
//!                  one association attempt (if not associated) ── fails ─► join_failure() ─► handle_join_error
//!                       │ ok: held until the access point goes
//!                       ▼
//!   link + DHCP lease = `Stack::is_config_up` ─► the driver reports each edge with handle_network
//! ```
//!
//! Nothing here retries by itself: after the access point disappears the station stays
//! down until the core asks to join again, so the update's retry timing is the core's alone.
//! A WiFi driver that failed to start leaves nothing behind (esp-radio deinitialises the
//! radio when a half-made controller is dropped), so the next `JoinNetwork` starts afresh.
//!
//! `wifi.auth` (conf.json) maps onto esp-radio's station configuration. esp-radio names the
//! weakest security the station accepts (ESP-IDF's scan threshold) and always runs with
//! PMF capable and WPA3-SAE enabled, so `wpa2` and `wpa2/wpa3` both join WPA2, WPA3 and
//! transition-mode access points (SAE where the access point offers it). esp-radio
//! 1.0.0-beta.1 has no WPA3-only threshold, so `wpa3` is enforced after association: a
//! network that negotiated less than WPA3 is left at once and reported. That keeps the
//! board off a WPA2-only network, but cannot stop a fake WPA2 access point from seeing one
//! WPA2 handshake.

use core::fmt::Write as _;

use embassy_net::{Runner, Stack, StackResources};
use embassy_sync::blocking_mutex::raw::CriticalSectionRawMutex;
use embassy_sync::signal::Signal;
use embassy_time::{Duration, with_timeout};
use esp_hal::peripherals::WIFI;
use esp_println::println;
use esp_radio::wifi::sta::StationConfig;
use esp_radio::wifi::{
    AuthenticationMethod, AuthenticationMethodConfig, Config, ConnectionError, ControllerConfig,
    Interface, WifiController,
};
use firmware::config::{self, WifiAuth};
use firmware::http::Transport;
use firmware::machine::JOIN_TIMEOUT_MS;
use heapless::String;
use static_cell::StaticCell;

/// Why the WiFi driver could not be started (reported as the board's own fault).
#[derive(Debug)]
pub enum StartError {
    /// The SSID is empty or longer than 32 bytes.
    Ssid,
    /// The password is longer than 64 bytes.
    Password,
    /// The radio driver refused to start (`WifiController::new`).
    Radio(esp_radio::wifi::WifiError),
    /// A task of the station could not be spawned (only if a start ran twice).
    Spawn,
}

impl core::fmt::Display for StartError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            StartError::Ssid => f.write_str("wifi.ssid is empty or longer than 32 bytes"),
            StartError::Password => f.write_str("wifi.password is longer than 64 bytes"),
            StartError::Radio(e) => write!(f, "WiFi driver did not start: {e:?}"),
            StartError::Spawn => f.write_str("WiFi station task already running"),
        }
    }
}

/// A failed association, for `handle_join_error`.
pub struct JoinFailure {
    /// Whose fault: `Board` when the radio driver itself failed, else `Network`.
    pub kind: Transport,
    /// What happened, for the trace.
    pub what: String<96>,
}

/// Set by the driver for every `JoinNetwork` once the radio runs.
static JOIN_REQUESTED: Signal<CriticalSectionRawMutex, ()> = Signal::new();
/// The last association attempt failed (the driver reports it to the core).
static JOIN_FAILED: Signal<CriticalSectionRawMutex, JoinFailure> = Signal::new();

/// Sockets: DHCP, DNS, the HTTP connection and the MQTT session, plus one spare so a
/// socket still being torn down can never make `TcpSocket::new` panic on a full set.
const SOCKETS: usize = 5;

/// The WiFi station: the radio peripheral, and once the driver started, the IP stack.
pub struct Station {
    wifi: WIFI<'static>,
    stack: Option<Stack<'static>>,
}

impl Station {
    /// Keeps the radio peripheral; nothing starts before the first [`Station::join`].
    pub fn new(wifi: WIFI<'static>) -> Self {
        Self { wifi, stack: None }
    }

    /// The IP stack, once the radio has started.
    pub fn stack(&self) -> Option<Stack<'static>> {
        self.stack
    }

    /// Executes `JoinNetwork`: starts the radio and the IP stack if they do not run yet
    /// (an error leaves nothing running; call again at the next `JoinNetwork`), then asks
    /// the association task for one attempt.
    pub fn join(
        &mut self,
        spawner: embassy_executor::Spawner,
        config: &config::Config,
        seed: u64,
    ) -> Result<(), StartError> {
        if self.stack.is_none() {
            self.stack = Some(self.start(spawner, config, seed)?);
        }
        JOIN_REQUESTED.signal(());
        Ok(())
    }

    fn start(
        &mut self,
        spawner: embassy_executor::Spawner,
        config: &config::Config,
        seed: u64,
    ) -> Result<Stack<'static>, StartError> {
        let password = config.wifi_password.as_str();
        let station = StationConfig::default()
            .with_ssid(
                config
                    .wifi_ssid
                    .as_str()
                    .try_into()
                    .map_err(|_| StartError::Ssid)?,
            )
            .with_authentication(authentication(config.wifi_auth, password)?);
        // SAFETY: one controller at a time. This runs only while `self.stack` is `None`,
        // i.e. no earlier attempt produced a controller: a failing `WifiController::new`
        // drops (and deinitialises) whatever it built from its copy of the peripheral, and
        // the first success is handed to `associate` for the rest of the program.
        let radio = unsafe { self.wifi.clone_unchecked() };
        let controller = WifiController::new(
            radio,
            ControllerConfig::default().with_initial_config(Config::Station(station)),
        )
        .map_err(StartError::Radio)?;

        static RESOURCES: StaticCell<StackResources<SOCKETS>> = StaticCell::new();
        let resources = RESOURCES
            .try_init(StackResources::new())
            .ok_or(StartError::Spawn)?;
        let (stack, runner) = embassy_net::new(
            Interface::station(),
            embassy_net::Config::dhcpv4(Default::default()),
            resources,
            seed,
        );
        spawner.spawn(associate(controller, config.wifi_auth).map_err(|_| StartError::Spawn)?);
        spawner.spawn(run_stack(runner).map_err(|_| StartError::Spawn)?);
        Ok(stack)
    }
}

/// Resolves when an association attempt failed; the driver waits on it when idle.
pub async fn join_failure() -> JoinFailure {
    JOIN_FAILED.wait().await
}

/// `wifi.auth` as esp-radio's station authentication (see the module docs).
fn authentication(
    auth: WifiAuth,
    password: &str,
) -> Result<AuthenticationMethodConfig, StartError> {
    let password = || password.try_into().map_err(|_| StartError::Password);
    Ok(match auth {
        WifiAuth::Open => AuthenticationMethodConfig::Open,
        // The weakest accepted: WPA2-PSK; WPA3-SAE is used wherever the access point offers it.
        WifiAuth::Wpa2 | WifiAuth::Wpa2Wpa3 | WifiAuth::Wpa3 => {
            AuthenticationMethodConfig::Wpa2Personal(password()?)
        }
    })
}

/// Whether the security the station negotiated satisfies `wifi.auth`.
fn satisfies(required: WifiAuth, negotiated: AuthenticationMethod) -> bool {
    match required {
        WifiAuth::Wpa3 => matches!(
            negotiated,
            AuthenticationMethod::Wpa3Personal
                | AuthenticationMethod::Wpa3ExtPsk
                | AuthenticationMethod::Wpa3ExtPskMixed
                // A transition-mode access point: the station, SAE-capable with PMF, uses SAE.
                | AuthenticationMethod::Wpa2Wpa3Personal
        ),
        WifiAuth::Wpa2 | WifiAuth::Wpa2Wpa3 | WifiAuth::Open => true,
    }
}

fn report(kind: Transport, args: core::fmt::Arguments<'_>) {
    let mut what = String::new();
    // A longer text is cut: the trace line has a bounded detail anyway.
    let _ = what.write_fmt(args);
    println!("# wifi: {}", what);
    JOIN_FAILED.signal(JoinFailure { kind, what });
}

/// Backstop for leaving an access point (the driver confirms within milliseconds).
const DISCONNECT_LIMIT: Duration = Duration::from_secs(5);

/// One association attempt per join request; holds the association until it drops.
#[embassy_executor::task]
async fn associate(mut controller: WifiController<'static>, required: WifiAuth) {
    // An attempt gets as long as the core waits for the network before it retries.
    let attempt_limit = Duration::from_millis(JOIN_TIMEOUT_MS);
    loop {
        JOIN_REQUESTED.wait().await;
        if controller.is_connected() {
            continue;
        }
        match with_timeout(attempt_limit, controller.connect_async()).await {
            Ok(Ok(info)) if satisfies(required, info.authmode) => {
                println!("# wifi: associated ({:?})", info.authmode);
                // The link going down takes the DHCP lease with it: the driver sees
                // `is_config_up` fall and tells the core, which asks to join again.
                let _ = controller.wait_for_disconnect_async().await;
                println!("# wifi: association lost");
            }
            Ok(Ok(info)) => {
                let _ = with_timeout(DISCONNECT_LIMIT, controller.disconnect_async()).await;
                report(
                    Transport::Network,
                    format_args!(
                        "access point negotiated {:?}, wifi.auth asks wpa3",
                        info.authmode
                    ),
                );
            }
            Ok(Err(ConnectionError::Failed(info))) => report(
                Transport::Network,
                format_args!("association failed: {:?}", info.reason),
            ),
            // The radio driver itself failed (it did not start or refused the request).
            Ok(Err(ConnectionError::WifiError(e))) => {
                report(Transport::Board, format_args!("WiFi driver: {:?}", e))
            }
            Ok(Err(e)) => report(Transport::Board, format_args!("WiFi driver: {:?}", e)),
            Err(_) => {
                // Cancel the attempt so the next request starts from a clean state.
                let _ = with_timeout(DISCONNECT_LIMIT, controller.disconnect_async()).await;
                report(
                    Transport::Network,
                    format_args!("no association within {} ms", JOIN_TIMEOUT_MS),
                );
            }
        }
    }
}

#[embassy_executor::task]
async fn run_stack(mut runner: Runner<'static, Interface>) {
    runner.run().await
}
