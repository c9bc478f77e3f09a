//! `sim` command line. For now only `sim serve`: the servers a board (virtual or real) talks to.

use std::net::SocketAddr;

use clap::{Parser, Subcommand};
use sim::broker::Broker;
use sim::github::{GithubConfig, MockGithub};

#[derive(Parser)]
#[command(name = "sim", about = "Host simulator for the ESP32 OTA updater")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the mock GitHub and the embedded MQTT broker until Ctrl-C.
    Serve {
        /// Address of the mock GitHub; port 0 picks a free one. The broker binds the same IP.
        #[arg(long, default_value = "127.0.0.1:0")]
        addr: SocketAddr,
    },
}

/// Errors of the command line.
#[derive(Debug, thiserror::Error)]
enum CliError {
    /// The mock GitHub did not start.
    #[error(transparent)]
    Github(#[from] sim::github::GithubError),
    /// The broker did not start.
    #[error(transparent)]
    Broker(#[from] sim::broker::BrokerError),
    /// Waiting for Ctrl-C failed.
    #[error("cannot wait for Ctrl-C: {0}")]
    Signal(std::io::Error),
}

#[tokio::main]
async fn main() -> Result<(), CliError> {
    match Cli::parse().command {
        Command::Serve { addr } => {
            let github = MockGithub::start_on(addr, GithubConfig::default()).await?;
            // Blocks this worker thread while rumqttd comes up; nothing else is running yet.
            let broker = Broker::start_embedded_on(addr.ip())?;
            println!("github {}", github.base_url());
            println!("mqtt {}", broker.url());
            println!("mqtt-v4 mqtt://{}", broker.v4_addr);
            tokio::signal::ctrl_c().await.map_err(CliError::Signal)?;
            github.shutdown();
            Ok(())
        }
    }
}
