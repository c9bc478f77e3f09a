//! WiFi station + embassy-net (DHCPv4, DNS, TCP).
//!
//! Executes `Action::JoinNetwork` once: configures the station with the SSID
//! and password from the core's config and spawns two tasks, one that keeps
//! (re)associating with the access point and one that runs the IP stack. The
//! driver watches [`Stack::is_config_up`] (link up *and* a DHCP lease) and
//! reports each edge to the core with `handle_network`. Retry *policy* for the
//! update lives in the core; reassociation after a WiFi drop is the radio's
//! job, as on any station.

use embassy_net::{Runner, Stack, StackResources};
use embassy_time::{Duration, Timer};
use esp_hal::peripherals::WIFI;
use esp_println::println;
use esp_radio::wifi::sta::StationConfig;
use esp_radio::wifi::{
    AuthenticationMethodConfig, Config, ControllerConfig, Interface, WifiController,
};
use static_cell::StaticCell;

/// Why the station could not be set up (bad SSID/password length, radio init).
#[derive(Debug)]
pub enum NetError {
    /// The SSID is empty or longer than 32 bytes.
    Ssid,
    /// The password is longer than 64 bytes.
    Password,
    /// The radio driver refused to start.
    Radio,
}

/// Starts the station and the IP stack; returns the stack handle.
pub fn start(
    spawner: embassy_executor::Spawner,
    wifi: WIFI<'static>,
    ssid: &str,
    password: &str,
    seed: u64,
) -> Result<Stack<'static>, NetError> {
    let auth = if password.is_empty() {
        AuthenticationMethodConfig::Open
    } else {
        AuthenticationMethodConfig::Wpa2Personal(
            password.try_into().map_err(|_| NetError::Password)?,
        )
    };
    let station = StationConfig::default()
        .with_ssid(ssid.try_into().map_err(|_| NetError::Ssid)?)
        .with_authentication(auth);
    let controller = WifiController::new(
        wifi,
        ControllerConfig::default().with_initial_config(Config::Station(station)),
    )
    .map_err(|_| NetError::Radio)?;

    // Sockets: DHCP, DNS, and one TCP connection at a time (HTTP or MQTT).
    static RESOURCES: StaticCell<StackResources<4>> = StaticCell::new();
    let (stack, runner) = embassy_net::new(
        Interface::station(),
        embassy_net::Config::dhcpv4(Default::default()),
        RESOURCES.init(StackResources::new()),
        seed,
    );
    spawner.spawn(associate(controller).map_err(|_| NetError::Radio)?);
    spawner.spawn(run_stack(runner).map_err(|_| NetError::Radio)?);
    Ok(stack)
}

/// Keeps the station associated: connect, wait for the drop, pause, again.
#[embassy_executor::task]
async fn associate(mut controller: WifiController<'static>) {
    loop {
        match controller.connect_async().await {
            Ok(_) => {
                let _ = controller.wait_for_disconnect_async().await;
            }
            Err(e) => println!("# wifi: connect failed: {:?}", e),
        }
        // The radio's own pace between association attempts, not an update
        // retry: the core sees only "network up/down".
        Timer::after(Duration::from_secs(2)).await;
    }
}

#[embassy_executor::task]
async fn run_stack(mut runner: Runner<'static, Interface>) {
    runner.run().await
}
