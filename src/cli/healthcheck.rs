//! `smtp2gmail healthcheck`: asks a running server's `/healthz` (or `/readyz`) and exits 0 only
//! on a 2xx. It is the container image's HEALTHCHECK: the image holds nothing but the binary, so
//! there is no curl or shell to ask with.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::process::ExitCode;
use std::time::Duration;

use super::{EXIT_FAILURE, EXIT_USAGE};
use crate::config::Config;

/// Within Docker's default HEALTHCHECK timeout (30 s) and Kubernetes' probe timeout (1 s is the
/// default there, but an exec probe is given its own), long enough for a loaded server.
const TIMEOUT: Duration = Duration::from_secs(5);

/// Options of `healthcheck`.
#[derive(Debug, clap::Args)]
pub struct HealthcheckArgs {
    /// Ask /readyz (ready to deliver: credentials and queue usable) instead of /healthz (alive)
    #[arg(long)]
    pub ready: bool,
    /// Ask this URL instead of the one [http] listen gives
    #[arg(long, value_name = "URL")]
    pub url: Option<String>,
}

/// Runs the check; prints why it failed on stderr.
pub async fn run(config: &Config, args: HealthcheckArgs) -> ExitCode {
    let path = if args.ready { "readyz" } else { "healthz" };
    let url = match args.url {
        Some(url) => url,
        None => match config.http.address() {
            Some(addr) => endpoint(addr, path),
            None => {
                eprintln!(
                    "smtp2gmail: the HTTP endpoints are off ([http] listen = \"\"): nothing to ask"
                );
                return ExitCode::from(EXIT_USAGE);
            }
        },
    };
    // No proxy: an HTTP_PROXY set for the server's calls to Google must not carry a loopback check.
    let client = match reqwest::Client::builder()
        .timeout(TIMEOUT)
        .no_proxy()
        .build()
    {
        Ok(client) => client,
        Err(err) => {
            eprintln!("smtp2gmail: cannot make an HTTP client: {err}");
            return ExitCode::from(EXIT_FAILURE);
        }
    };
    match client.get(&url).send().await {
        Ok(response) if response.status().is_success() => {
            println!("{url}: {}", response.status());
            ExitCode::SUCCESS
        }
        Ok(response) => {
            let status = response.status();
            let body = response.text().await.unwrap_or_default();
            eprintln!("smtp2gmail: {url}: {status} {}", body.trim());
            ExitCode::from(EXIT_FAILURE)
        }
        Err(err) => {
            eprintln!("smtp2gmail: {url}: {err}");
            ExitCode::from(EXIT_FAILURE)
        }
    }
}

/// The URL of `path` on a server listening on `addr`: an unspecified address (0.0.0.0, ::) is
/// reached on loopback, as a container's own health check does.
fn endpoint(addr: SocketAddr, path: &str) -> String {
    let ip = match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    format!("http://{}/{path}", SocketAddr::new(ip, addr.port()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unspecified_addresses_are_asked_on_loopback() {
        let url = |addr: &str| endpoint(addr.parse().unwrap(), "healthz");
        assert_eq!(url("0.0.0.0:9925"), "http://127.0.0.1:9925/healthz");
        assert_eq!(url("[::]:9925"), "http://[::1]:9925/healthz");
        assert_eq!(url("10.1.2.3:80"), "http://10.1.2.3:80/healthz");
    }
}
