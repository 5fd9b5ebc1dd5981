//! Where the client commands (`demo`, `bench`, `seed`, `saga`) find the services: one address for
//! `sagaflow dev` (every service on one port), or one address per service for the distributed
//! mode (docs/operations.md, "Running").
//!
//! Per service, the first of these that is set wins:
//!
//! 1. `--<service>-addr` (or its `SAGAFLOW_<SERVICE>_ADDR`, the same variable `sagaflow serve`
//!    reads to find its peers, so one environment serves both);
//! 2. `--addr` (`SAGAFLOW_ADDR`): one address for every service;
//! 3. `--distributed`: the service's `serve` default, `http://127.0.0.1:<port>` (order 50061 …
//!    orchestrator 50067);
//! 4. the command's own default: `demo` and `bench` start an embedded system, `saga` and `seed`
//!    talk to `sagaflow dev` on `http://127.0.0.1:50051`.
//!
//! Credentials (docs/operations.md, "Security"): with `--tls-ca` (`SAGAFLOW_TLS_CA`) every
//! address is called over TLS trusting only that CA (an `http://` address as `https://`); with
//! `SAGAFLOW_TOKEN` set, every call carries it as `authorization: Bearer <token>`, the
//! operator's credential for the admin RPCs (`saga`, `seed`, and the seeding of `demo` and
//! `bench`). The token is read from the environment only, never a flag: a flag shows in `ps`.
//! Without it, the operator token of a `sagaflow dev` data directory is sent when there is one
//! (`--data-dir`, `SAGAFLOW_DATA_DIR`, default `.sagaflow`): `dev` accepts it on its public RPCs,
//! so the commands see every user's orders (docs/operations.md, "End users").

use std::{path::PathBuf, time::Duration};

use anyhow::Context as _;
use clap::Args;
use sagaflow_server::{
    end_users::DEV_OPERATOR_TOKEN_FILE,
    transport::{BearerToken, Transport},
};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};

use crate::{load::addr_url, services::Service};

/// The address of `sagaflow dev` when nothing else is given.
pub const DEV_ADDR: &str = "http://127.0.0.1:50051";

/// The services' addresses (see the module docs for which one wins).
#[derive(Debug, Clone, Default, Args)]
pub struct TargetArgs {
    /// One address serving every service (`sagaflow dev`), e.g. `127.0.0.1:50051`.
    #[arg(long, env = "SAGAFLOW_ADDR", global = true)]
    pub addr: Option<String>,
    /// Address each service at its `sagaflow serve` default port on 127.0.0.1 (50061–50067)
    /// unless its own `--<service>-addr` is given.
    #[arg(long, global = true)]
    pub distributed: bool,
    /// Order service (PlaceOrder, GetOrder).
    #[arg(long, env = "SAGAFLOW_ORDER_ADDR", global = true)]
    pub order_addr: Option<String>,
    /// Coupon service.
    #[arg(long, env = "SAGAFLOW_COUPON_ADDR", global = true)]
    pub coupon_addr: Option<String>,
    /// Inventory service.
    #[arg(long, env = "SAGAFLOW_INVENTORY_ADDR", global = true)]
    pub inventory_addr: Option<String>,
    /// Payment service.
    #[arg(long, env = "SAGAFLOW_PAYMENT_ADDR", global = true)]
    pub payment_addr: Option<String>,
    /// Point service.
    #[arg(long, env = "SAGAFLOW_POINT_ADDR", global = true)]
    pub point_addr: Option<String>,
    /// Ranking service.
    #[arg(long, env = "SAGAFLOW_RANKING_ADDR", global = true)]
    pub ranking_addr: Option<String>,
    /// Orchestrator (the saga admin API).
    #[arg(long, env = "SAGAFLOW_ORCHESTRATOR_ADDR", global = true)]
    pub orchestrator_addr: Option<String>,
    /// The deployment's CA certificate, PEM: call every service over TLS, trusting only it.
    #[arg(long, env = "SAGAFLOW_TLS_CA", global = true)]
    pub tls_ca: Option<PathBuf>,
    /// Data directory of the `sagaflow dev` called (default `.sagaflow`): without
    /// `SAGAFLOW_TOKEN`, its operator token (`dev-operator-token`, made by `dev`) is sent, which
    /// `dev` accepts on the public RPCs for every user's data.
    #[arg(long, env = "SAGAFLOW_DATA_DIR", global = true)]
    pub data_dir: Option<PathBuf>,
}

/// The environment variable the client commands read the operator's bearer token from.
pub const TOKEN_VARIABLE: &str = "SAGAFLOW_TOKEN";

impl TargetArgs {
    /// Whether any address was given (`demo` and `bench` then drive that system instead of
    /// starting an embedded one).
    pub fn any(&self) -> bool {
        self.distributed
            || self.addr.is_some()
            || Service::ALL.iter().any(|s| self.own(*s).is_some())
    }

    fn own(&self, service: Service) -> Option<&String> {
        match service {
            Service::Order => self.order_addr.as_ref(),
            Service::Coupon => self.coupon_addr.as_ref(),
            Service::Inventory => self.inventory_addr.as_ref(),
            Service::Payment => self.payment_addr.as_ref(),
            Service::Point => self.point_addr.as_ref(),
            Service::Ranking => self.ranking_addr.as_ref(),
            Service::Orchestrator => self.orchestrator_addr.as_ref(),
        }
    }

    /// The URL of `service`, or `None` when nothing addresses it (rule 4 of the module docs is
    /// the caller's).
    pub fn url(&self, service: Service) -> Option<String> {
        if let Some(own) = self.own(service).filter(|a| !a.trim().is_empty()) {
            return Some(addr_url(own.trim()));
        }
        if let Some(addr) = self.addr.as_ref().filter(|a| !a.trim().is_empty()) {
            return Some(addr_url(addr.trim()));
        }
        self.distributed
            .then(|| format!("http://127.0.0.1:{}", service.default_port()))
    }

    /// Where `service` is, with `sagaflow dev`'s address when nothing addresses it.
    pub fn url_or_dev(&self, service: Service) -> String {
        self.url(service).unwrap_or_else(|| DEV_ADDR.to_owned())
    }

    /// A lazily connected plaintext channel to `service` at `url` (connect timeout 2 s): an
    /// embedded system this process started.
    ///
    /// # Errors
    /// When `url` is not a valid URI; the message names the flag.
    pub fn channel(service: Service, url: &str) -> anyhow::Result<Channel> {
        Endpoint::from_shared(url.to_owned())
            .map(|e| e.connect_timeout(Duration::from_secs(2)).connect_lazy())
            .map_err(|e| {
                anyhow::anyhow!(
                    "--{}-addr (or --addr) {url:?} is not a URL: {e}",
                    service.name()
                )
            })
    }

    /// The endpoint of `service` at `url`: over TLS trusting `--tls-ca` when given (an
    /// `http://` URL is then called as `https://`), connect timeout 2 s.
    ///
    /// # Errors
    /// When `url` is not a valid URI (the message names the flag) or the CA cannot be read.
    pub fn endpoint(&self, service: Service, url: &str) -> anyhow::Result<Endpoint> {
        let url = match (&self.tls_ca, url.strip_prefix("http://")) {
            (Some(_), Some(rest)) => format!("https://{rest}"),
            _ => url.to_owned(),
        };
        let endpoint = Endpoint::from_shared(url.clone())
            .map_err(|e| {
                anyhow::anyhow!(
                    "--{}-addr (or --addr) {url:?} is not a URL: {e}",
                    service.name()
                )
            })?
            .connect_timeout(Duration::from_secs(2));
        match &self.tls_ca {
            Some(path) => {
                let ca =
                    std::fs::read(path).with_context(|| format!("--tls-ca {}", path.display()))?;
                Ok(endpoint
                    .tls_config(ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca)))?)
            }
            None => Ok(endpoint),
        }
    }

    /// The operator's bearer token from `SAGAFLOW_TOKEN`, if set (and a valid header value);
    /// else the operator token of the `sagaflow dev` data directory (`--data-dir`, default
    /// `.sagaflow`), if there is one.
    pub fn token(&self) -> Option<BearerToken> {
        if let Ok(token) = std::env::var(TOKEN_VARIABLE) {
            return BearerToken::new(&token);
        }
        let dir = self
            .data_dir
            .clone()
            .unwrap_or_else(|| PathBuf::from(".sagaflow"));
        std::fs::read_to_string(dir.join(DEV_OPERATOR_TOKEN_FILE))
            .ok()
            .and_then(|token| BearerToken::new(token.trim()))
    }

    /// A lazily connected transport to `service` at `url`, over TLS with `--tls-ca`, every call
    /// carrying `SAGAFLOW_TOKEN` when set.
    ///
    /// # Errors
    /// As [`TargetArgs::endpoint`].
    pub fn transport(&self, service: Service, url: &str) -> anyhow::Result<Transport> {
        let channel = self.endpoint(service, url)?.connect_lazy();
        Ok(Transport::tcp(channel, self.token()))
    }

    /// Transports to every service, with `fallback` (an embedded system's URL) for those nothing
    /// addresses.
    ///
    /// # Errors
    /// When an address is not a valid URL.
    pub fn peers(&self, fallback: &str) -> anyhow::Result<crate::services::Peers> {
        let ch = |service| {
            let url = self.url(service).unwrap_or_else(|| fallback.to_owned());
            self.transport(service, &url)
        };
        Ok(crate::services::Peers {
            order: ch(Service::Order)?,
            coupon: ch(Service::Coupon)?,
            inventory: ch(Service::Inventory)?,
            payment: ch(Service::Payment)?,
            point: ch(Service::Point)?,
            ranking: ch(Service::Ranking)?,
            orchestrator: ch(Service::Orchestrator)?,
        })
    }
}

/// Checks that every `(service, url)` answers a connection within 2 s (each distinct URL once,
/// over TLS with `targets`' `--tls-ca`), so that a command pointed at a system that is down says
/// so at once instead of retrying.
///
/// # Errors
/// Names the first service whose address does not answer, the address, and the flag to fix.
pub async fn reachable(args: &TargetArgs, targets: &[(Service, String)]) -> anyhow::Result<()> {
    let mut seen = std::collections::BTreeSet::new();
    for (service, url) in targets {
        if !seen.insert(url.clone()) {
            continue;
        }
        let endpoint = args.endpoint(*service, url)?;
        if let Err(err) = endpoint.connect().await {
            anyhow::bail!(
                "nothing answers at {url} (the {} service): {err}; start it (`sagaflow dev`, or \
                 `sagaflow serve {}`) or point --{}-addr / --addr at it",
                service.name(),
                service.name(),
                service.name()
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_address_beats_addr_beats_distributed() {
        let targets = TargetArgs {
            addr: Some("127.0.0.1:7000".into()),
            distributed: true,
            order_addr: Some("10.0.0.1:1".into()),
            ..TargetArgs::default()
        };
        assert_eq!(
            targets.url(Service::Order).as_deref(),
            Some("http://10.0.0.1:1")
        );
        assert_eq!(
            targets.url(Service::Coupon).as_deref(),
            Some("http://127.0.0.1:7000")
        );
        let distributed = TargetArgs {
            distributed: true,
            ..TargetArgs::default()
        };
        assert_eq!(
            distributed.url(Service::Orchestrator).as_deref(),
            Some("http://127.0.0.1:50067")
        );
        assert!(distributed.any());
        let none = TargetArgs::default();
        assert_eq!(none.url(Service::Point), None);
        assert_eq!(none.url_or_dev(Service::Point), DEV_ADDR);
        assert!(!none.any());
    }
}
