//! The HTTP endpoint's flags and its validated settings (the web config file loaded here).

use super::web_config::WebConfig;
use crate::flags::{self, ConfigError, err};
use clap::Args;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// Flags of the HTTP endpoint.
#[derive(Debug, Args)]
#[command(next_help_heading = "HTTP endpoint")]
pub struct HttpArgs {
    /// TLS and basic auth for the HTTP endpoint: a YAML file in the Prometheus exporter
    /// toolkit's format (`tls_server_config`, `basic_auth_users` with bcrypt hashes). /healthz
    /// and /readyz stay without auth.
    #[arg(
        long = "web.config.file",
        env = "PULLWATCH_WEB_CONFIG_FILE",
        value_name = "PATH"
    )]
    pub web_config_file: Option<PathBuf>,

    /// Address of the HTTP endpoint serving /metrics, /healthz and /readyz.
    #[arg(
        long,
        env = "PULLWATCH_LISTEN",
        default_value = "0.0.0.0:9798",
        value_name = "HOST:PORT",
        value_parser = flags::listen_address
    )]
    pub listen: SocketAddr,

    /// Connections the endpoint keeps open at once; one more is closed at once (and counted in
    /// `pullwatch_http_connections_rejected_total`), so the endpoint cannot take the descriptors
    /// the interposer needs.
    #[arg(
        long = "web.max-connections",
        env = "PULLWATCH_WEB_MAX_CONNECTIONS",
        default_value_t = 64,
        value_name = "N",
        value_parser = flags::positive_count
    )]
    pub max_connections: usize,

    /// A client must send a request's headers within this long (slow-drip clients are cut).
    #[arg(
        long = "web.header-timeout",
        env = "PULLWATCH_WEB_HEADER_TIMEOUT",
        default_value = "10s",
        value_name = "DURATION",
        value_parser = flags::positive_duration
    )]
    pub header_timeout: Duration,

    /// A connection without traffic for this long is closed (keep-alive scrapers reconnect).
    #[arg(
        long = "web.idle-timeout",
        env = "PULLWATCH_WEB_IDLE_TIMEOUT",
        default_value = "2m",
        value_name = "DURATION",
        value_parser = flags::positive_duration
    )]
    pub idle_timeout: Duration,
}

/// Bounds on the endpoint's connections.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ConnectionLimits {
    /// Open connections at most.
    pub max_connections: usize,
    /// Time to send a request's headers.
    pub header_timeout: Duration,
    /// Time without traffic before a connection is closed.
    pub idle_timeout: Duration,
}

/// Settings of the HTTP endpoint.
#[derive(Debug, Clone)]
pub(crate) struct HttpConfig {
    /// Address to listen on.
    pub listen: SocketAddr,
    /// TLS / basic auth, if a web config file was given.
    pub web_config: Option<Arc<WebConfig>>,
    /// Connection bounds.
    pub limits: ConnectionLimits,
}

impl HttpConfig {
    /// The endpoint's settings; loads and checks the web config file.
    pub(crate) fn from_args(args: &HttpArgs) -> Result<Self, ConfigError> {
        let web_config = match &args.web_config_file {
            Some(p) => Some(Arc::new(WebConfig::load(p).map_err(|e| {
                err("web.config.file", format!("{}: {}", p.display(), e.problem))
            })?)),
            None => None,
        };
        Ok(Self {
            listen: args.listen,
            web_config,
            limits: ConnectionLimits {
                max_connections: args.max_connections,
                header_timeout: args.header_timeout,
                idle_timeout: args.idle_timeout,
            },
        })
    }
}
