//! The servers a virtual board talks to, wired with fault proxies:
//!
//! ```text
//!  board ──reqwest──> proxy ──> mock GitHub (axum)      /repos/…, /{o}/{r}/releases/download/… → 302 → signed asset URL
//!  board ──MQTT 5──> proxy ──> rumqttd (in-process)    <── collector subscribed to the log topics
//! ```
//!
//! The proxies are the only board-facing listeners. They bind loopback for the virtual board
//! ([`World::start`]), or an address a real board on WiFi reaches ([`World::start_on`], HIL);
//! the mock GitHub and the broker stay on loopback behind them. The mock writes every URL it
//! hands out (API `url`, `browser_download_url`, the 302s to the asset host) from the request's
//! `Host` header, so they name whatever address the board connected to.

use crate::broker::{Broker, BrokerAddr, BrokerError, BrokerHandle};
use crate::github::{GithubConfig, GithubError, GithubHandle, MockGithub, RateLimit};
use crate::proxy::{Proxy, ProxyError, ProxyHandle};
use std::net::{IpAddr, SocketAddr};
use std::sync::OnceLock;

/// Why the servers could not start.
#[derive(Debug, thiserror::Error)]
pub enum WorldError {
    /// The mock GitHub.
    #[error("mock GitHub: {0}")]
    Github(#[from] GithubError),
    /// A fault proxy.
    #[error("fault proxy: {0}")]
    Proxy(#[from] ProxyError),
    /// The broker.
    #[error("broker: {0}")]
    Broker(#[from] BrokerError),
    /// An external broker URL that does not resolve.
    #[error("broker {0} does not resolve")]
    Unresolvable(String),
    /// A board's servers asked to listen on an unspecified address (`0.0.0.0`, `::`): the
    /// board's `conf.json` needs the one address it reaches.
    #[error(
        "{0} is no address a board can be given: listen on the address it reaches (e.g. this host's LAN address)"
    )]
    Unspecified(IpAddr),
}

/// Where the MQTT broker is.
#[derive(Clone, Debug)]
pub enum BrokerChoice {
    /// rumqttd in this process (started once, shared by every world).
    Embedded,
    /// A broker given by URL.
    External(BrokerAddr),
}

static EMBEDDED: OnceLock<Result<BrokerHandle, String>> = OnceLock::new();

/// The shared broker's address.
pub fn broker_addr(choice: &BrokerChoice) -> Result<BrokerAddr, WorldError> {
    match choice {
        BrokerChoice::External(addr) => Ok(addr.clone()),
        BrokerChoice::Embedded => {
            BrokerAddr::parse(&embedded_broker()?.url()).map_err(WorldError::Broker)
        }
    }
}

/// The embedded broker (on loopback), started by the first caller and shared by every world.
pub fn embedded_broker() -> Result<BrokerHandle, WorldError> {
    let handle = EMBEDDED.get_or_init(|| Broker::start_embedded().map_err(|e| e.to_string()));
    match handle {
        Ok(h) => Ok(h.clone()),
        Err(e) => Err(WorldError::Unresolvable(e.clone())),
    }
}

/// One set of servers (per scenario, or one for a whole sweep).
pub struct World {
    /// The mock GitHub.
    pub github: GithubHandle,
    /// Proxy in front of it: the board's `api_base`.
    pub github_proxy: ProxyHandle,
    /// The broker, as the collector reaches it.
    pub broker: BrokerAddr,
    /// Proxy in front of the broker: where the board publishes.
    pub broker_proxy: ProxyHandle,
    /// The address the proxies listen on: loopback, or the host's address a real board reaches.
    pub listen: IpAddr,
}

impl World {
    /// Starts a mock GitHub and both proxies, on loopback. `rate_limited` keeps GitHub's 60
    /// requests an hour; sweeps turn it off (thousands of boots from one address).
    pub async fn start(broker: &BrokerChoice, rate_limited: bool) -> Result<World, WorldError> {
        Self::start_on(broker, rate_limited, IpAddr::from([127, 0, 0, 1])).await
    }

    /// As [`World::start`], with both proxies listening on `listen` (ephemeral ports): the
    /// host's LAN address, for a real board on WiFi. The mock GitHub and the broker stay on
    /// loopback behind the proxies.
    pub async fn start_on(
        broker: &BrokerChoice,
        rate_limited: bool,
        listen: IpAddr,
    ) -> Result<World, WorldError> {
        Self::start_at(broker, rate_limited, SocketAddr::new(listen, 0)).await
    }

    /// As [`World::start_on`], with the GitHub proxy on `github_listen` exactly (`sim serve --addr`);
    /// the broker proxy takes an ephemeral port on the same IP. An unspecified IP (`0.0.0.0`)
    /// listens on every interface; [`World::api_base`] then cannot name the address a board
    /// reaches, and the caller has to.
    pub async fn start_at(
        broker: &BrokerChoice,
        rate_limited: bool,
        github_listen: SocketAddr,
    ) -> Result<World, WorldError> {
        let mut config = GithubConfig::default();
        if !rate_limited {
            config.rate_limit = RateLimit {
                anonymous: u32::MAX,
                authenticated: u32::MAX,
                ..RateLimit::default()
            };
        }
        let github_server = MockGithub::start(config).await?;
        let github_proxy = Proxy::start_on(github_listen, github_server.addr()).await?;
        let broker = broker_addr(broker)?;
        let upstream = crate::broker::resolve(&broker)
            .ok_or_else(|| WorldError::Unresolvable(broker.url()))?;
        let broker_proxy =
            Proxy::start_on(SocketAddr::new(github_listen.ip(), 0), upstream).await?;
        Ok(World {
            github: github_server,
            github_proxy,
            broker,
            broker_proxy,
            listen: github_listen.ip(),
        })
    }

    /// The board's `api_base`. On 127.0.0.1 a host name, so that DNS failures can be simulated
    /// ([`SimDns`] resolves it to the proxy); on any other address that address, as a real
    /// board on WiFi is given it (`http://192.168.1.10:PORT`, `http://[fd00::1]:PORT`).
    pub fn api_base(&self) -> String {
        let proxy = self.github_proxy.addr();
        if self.listen == IpAddr::from([127, 0, 0, 1]) {
            format!("http://{GITHUB_HOST}:{}", proxy.port())
        } else {
            format!("http://{proxy}")
        }
    }

    /// The board's HTTP client: no automatic redirects (the core follows them), no connection
    /// reuse, DNS by [`SimDns`].
    pub fn http_client(&self, dns: &SimDns) -> Result<reqwest::Client, WorldError> {
        board_http_client(dns)
    }

    /// Where the board's MQTT client connects.
    pub fn board_broker(&self) -> SocketAddr {
        self.broker_proxy.addr()
    }
}

/// The virtual board's HTTP client, whoever the servers are (a [`World`], or the contract
/// tests' wiremock servers): no automatic redirects (the core follows them), no connection
/// reuse, DNS by [`SimDns`].
pub fn board_http_client(dns: &SimDns) -> Result<reqwest::Client, WorldError> {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        // One connection per request, as the board glue does (`Connection: close`): which
        // connection a proxy fault hits must not depend on the pool's timing.
        .pool_max_idle_per_host(0)
        .dns_resolver(std::sync::Arc::new(dns.clone()))
        .build()
        .map_err(|e| WorldError::Unresolvable(e.to_string()))
}

/// The `conf.json` a simulated board gets (`token`: with a GitHub token).
pub fn conf_json(
    api_base: &str,
    broker: SocketAddr,
    client_id: &str,
    prefix: &str,
    prereleases: bool,
    downgrade: bool,
    token: bool,
) -> String {
    // The token makes the board download through the API asset URL (private repositories).
    let token = if token {
        r#", "token": "sim-token""#
    } else {
        ""
    };
    format!(
        r#"{{
  "wifi": {{ "ssid": "sim-wifi", "password": "sim-wifi-secret" }},
  "github": {{ "repository": "https://github.com/acme/thermostat", "api_base": "{api_base}", "asset": "firmware.bin"{token} }},
  "mqtt": {{ "host": "{}", "port": {}, "client_id": "{client_id}", "topic_prefix": "{prefix}", "password": "sim-mqtt-secret" }},
  "leds": {{ "yellow": 4, "green": 5, "app": 8 }},
  "update": {{ "allow_prereleases": {prereleases}, "allow_downgrade": {downgrade} }}
}}"#,
        broker.ip(),
        broker.port()
    )
}

/// The host name the simulated GitHub goes by. A name, not an address, so that DNS failures
/// can be simulated; `localhost`, because the core refuses to send a token over plain http to
/// anything but this machine (the mock speaks plain http on loopback).
pub const GITHUB_HOST: &str = "localhost";

/// The board's DNS: resolves [`GITHUB_HOST`] to loopback, and fails the next
/// `failures` lookups when a scenario says DNS is down.
#[derive(Clone, Default)]
pub struct SimDns {
    /// Lookups still to fail.
    pub failures: std::sync::Arc<std::sync::atomic::AtomicU32>,
}

impl reqwest::dns::Resolve for SimDns {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        use std::sync::atomic::Ordering;
        let fail = self
            .failures
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
            .is_ok();
        let host = name.as_str().to_string();
        Box::pin(async move {
            if fail {
                return Err(format!("DNS lookup of {host} failed (server unreachable)").into());
            }
            if host != GITHUB_HOST {
                return Err(format!("DNS: no such host {host}").into());
            }
            // reqwest replaces the port with the URL's.
            let addrs: reqwest::dns::Addrs =
                Box::new(std::iter::once(SocketAddr::from(([127, 0, 0, 1], 0))));
            Ok(addrs)
        })
    }
}
