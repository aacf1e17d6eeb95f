//! The agent's links to the other regions (README "Regions"): checks `--region` against the
//! config, delivers the outbox to every peer region (one [`Forwarder`] each) and serves
//! `ferry.v1.Events/Forward` on `--forward-listen`.
//!
//! Invariants: a declared region and a forward token are required before anything waits for
//! Redis; the first forward token is the one sent, all of them are accepted.
use std::path::Path;
use std::sync::Arc;

use futures_util::FutureExt as _;

use super::{AppError, DaemonOptions, Parts, Pending, PendingRoutine, RegionOptions};
use crate::config::{Config, Region, RegionConfig};
use crate::regions::{self, ForwardMetrics, ForwardService, Forwarder};
use crate::runtime::listener;

/// What `--region` and the config say this agent forwards, checked before connecting.
pub(super) struct Plan {
    pub region: Region,
    /// The other declared regions (none on a single site).
    peers: Vec<RegionConfig>,
    tokens: Vec<String>,
}

impl Plan {
    pub fn new(options: &RegionOptions, config: &Config, path: &Path) -> Result<Plan, AppError> {
        let region = options.region.clone();
        if let Some(name) = region
            .name()
            .filter(|n| !config.regions.iter().any(|r| &r.name == n))
        {
            let declared: Vec<&str> = config.regions.iter().map(|r| r.name.as_str()).collect();
            return Err(AppError::UnknownRegion {
                region: name.to_string(),
                config: path.display().to_string(),
                declared: if declared.is_empty() {
                    "none".to_string()
                } else {
                    declared.join(", ")
                },
            });
        }
        if region.name().is_none() && options.forward_listen.is_some() {
            return Err(AppError::Unusable(
                "--forward-listen needs --region: other regions forward to a named region".into(),
            ));
        }
        if region.name().is_none() && !config.regions.is_empty() {
            tracing::warn!(
                "the config declares regions but --region (FERRY_REGION) is not set: every event is handled in this region and nothing is forwarded"
            );
        }
        let peers: Vec<RegionConfig> = config
            .regions
            .iter()
            .filter(|r| region.name().is_some() && !region.is(&r.name))
            .cloned()
            .collect();
        let tokens =
            crate::tokens::load(options.token_file.as_deref(), regions::TOKEN_ENV, "forward")
                .map_err(AppError::Unusable)?;
        if tokens.is_empty() && !(peers.is_empty() && options.forward_listen.is_none()) {
            return Err(AppError::NoForwardToken {
                region: region.recorded(),
            });
        }
        Ok(Plan {
            region,
            peers,
            tokens,
        })
    }
}

/// The forwarding parts, built and bound.
pub(super) struct Forwarding {
    /// Receives other regions' events; reloaded with the policies.
    pub service: Option<Arc<ForwardService>>,
    /// The Forward server.
    pub tasks: Vec<Pending>,
    /// The forwarders.
    pub routines: Vec<PendingRoutine>,
}

/// Builds the forwarders and binds `--forward-listen`.
pub(super) async fn build(
    plan: Plan,
    options: &RegionOptions,
    parts: &Parts,
    metrics: ForwardMetrics,
    o: &DaemonOptions,
) -> Result<Forwarding, AppError> {
    let Plan {
        region,
        peers,
        tokens,
    } = plan;
    let queue = parts.backend.store.jobs.clone();
    // A single site has no peers and no Forward endpoint (see `Plan::new`).
    let (Some(outbox), Some(region)) = (parts.backend.outbox.clone(), region.name()) else {
        // In process there is no outbox, and nobody to forward to.
        return Ok(Forwarding {
            service: None,
            tasks: Vec::new(),
            routines: Vec::new(),
        });
    };
    let mut routines: Vec<PendingRoutine> = Vec::new();
    for peer in &peers {
        let forwarder = Forwarder::new(
            region,
            peer,
            outbox.clone(),
            tokens.first().map_or("", String::as_str),
            &options.tls,
            metrics.clone(),
            &o.holder,
        )
        .map_err(AppError::Unusable)?;
        routines.push(Box::new(move |s| forwarder.supervised(s)));
    }
    let Some(addr) = &options.forward_listen else {
        return Ok(Forwarding {
            service: None,
            tasks: Vec::new(),
            routines,
        });
    };
    let service = Arc::new(
        ForwardService::new(region, &o.config, queue, outbox, tokens, metrics)
            .map_err(AppError::Unusable)?
            .with_max_clock_skew(o.max_clock_skew),
    );
    let listener = o.listen_flags.bind_grpc("--forward-listen", addr).await?;
    let tls = match &options.tls.identity {
        Some((cert, key)) => Some(
            crate::control::admin::tls_config("forward", cert, key, options.tls.ca.as_deref())
                .map_err(AppError::Unusable)?,
        ),
        None => None,
    };
    tracing::info!(
        listen = %listener.local_addr().map_or_else(|_| addr.clone(), |a| a.to_string()),
        region = %region,
        tls = tls.is_some(),
        mtls = tls.is_some() && options.tls.ca.is_some(),
        "serving ferry.v1.Events/Forward"
    );
    let router = listener::grpc_server(tls)
        .map_err(AppError::ForwardTls)?
        .add_service((*service).clone().into_server());
    let stop = parts.shutdown.clone();
    let tasks: Vec<Pending> = vec![async move {
        if let Err(e) = listener::serve_grpc(router, listener, stop).await {
            tracing::error!(error = %e, "the Forward endpoint stopped");
        }
    }
    .boxed()];
    Ok(Forwarding {
        service: Some(service),
        tasks,
        routines,
    })
}
