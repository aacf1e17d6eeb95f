//! The gRPC admin API (`ferry.v1`, DESIGN.md "Interfaces"): policies, registries, executions and
//! tasks, drift reports, queue and worker status, plus `grpc.health.v1` and server reflection.
//!
//! Served by `ferry serve --admin-listen` and `ferry worker --admin-listen`. Every instance reads
//! the region's shared state (queue and history in Redis/Valkey, the config file), so any one of
//! them answers for the whole region.
//!
//! # Invariants
//! - Admin services require `authorization: Bearer <token>` ([`auth`]: a static token, or an OIDC
//!   JWT ([`oidc`]) whose claim maps to a role) and the role [`roles::RPCS`] names for the RPC;
//!   health and reflection are open so probes and `grpcurl` work without a token (they reveal no
//!   data).
//! - Errors map to gRPC codes in one place ([`status`]).
//! - Streams are owned by the server's task tracker and end with the client, the execution or
//!   the server; the server stops on its cancellation token and waits for them.
pub mod auth;
mod convert;
pub mod oidc;
pub mod roles;
mod services;
pub mod status;

use std::sync::Arc;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tonic::transport::ServerTlsConfig;

use ferry_proto::v1 as pb;

use crate::catalog::PolicyStore;
use crate::config::Config;
use crate::replicate::Registries;
use crate::runtime::listener::Listener;
use crate::store::history::History;
use crate::store::queue::{DeadLetters, JobQueue, Pauses};

pub use auth::{AdminAuth, Authorized};
pub use services::Admin;
pub use status::AdminError;

/// What the admin services read and act on.
pub struct AdminState {
    /// The config file (its policies and registries; policies stored through the API come from
    /// `store`).
    pub config: Config,
    pub store: Arc<dyn PolicyStore>,
    pub registries: Registries,
    pub queue: Arc<dyn JobQueue>,
    pub dead_letters: Arc<dyn DeadLetters>,
    /// Pausing and resuming policies (and their parked jobs).
    pub pauses: Arc<dyn Pauses>,
    pub history: Arc<dyn History>,
    /// Ends streams and the server.
    pub shutdown: CancellationToken,
    /// Owns the tasks behind server streams.
    pub tasks: TaskTracker,
}

/// Why the admin server could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot build gRPC reflection: {0}")]
    Reflection(String),
    #[error("admin API server failed: {0}")]
    Transport(#[from] tonic::transport::Error),
}

/// TLS for a gRPC listener (`role`: `admin` or `forward`, for messages) from PEM files: the
/// server's certificate chain and key, and with `client_ca` client certificates signed by that CA
/// are required (mTLS). Errors name the file.
pub fn tls_config(
    role: &str,
    cert: &std::path::Path,
    key: &std::path::Path,
    client_ca: Option<&std::path::Path>,
) -> Result<ServerTlsConfig, String> {
    let read = |what: &str, path: &std::path::Path| {
        std::fs::read(path)
            .map_err(|e| format!("cannot read the {role} {what} {}: {e}", path.display()))
    };
    let mut tls = ServerTlsConfig::new().identity(tonic::transport::Identity::from_pem(
        read("TLS certificate", cert)?,
        read("TLS key", key)?,
    ));
    if let Some(ca) = client_ca {
        tls = tls.client_ca_root(tonic::transport::Certificate::from_pem(read(
            "client CA",
            ca,
        )?));
    }
    Ok(tls)
}

/// Serves the admin API on `listener` (with its connection limits, [`crate::runtime::listener`]) until
/// `state.shutdown` fires, then waits for open streams. With `tls`, connections are TLS (and mTLS
/// when it names a client CA).
pub async fn serve(
    listener: Listener,
    state: AdminState,
    auth: AdminAuth,
    tls: Option<ServerTlsConfig>,
) -> Result<(), ServeError> {
    let shutdown = state.shutdown.clone();
    let tasks = state.tasks.clone();
    let admin = Admin {
        state: Arc::new(state),
    };
    let (health, health_service) = tonic_health::server::health_reporter();
    health
        .set_serving::<pb::policies_server::PoliciesServer<Admin>>()
        .await;
    health
        .set_serving::<pb::registries_server::RegistriesServer<Admin>>()
        .await;
    health
        .set_serving::<pb::executions_server::ExecutionsServer<Admin>>()
        .await;
    health
        .set_serving::<pb::drift_server::DriftServer<Admin>>()
        .await;
    health
        .set_serving::<pb::operations_server::OperationsServer<Admin>>()
        .await;
    let reflection = |b: tonic_reflection::server::Builder<'static>| {
        b.register_encoded_file_descriptor_set(ferry_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let reflection_v1 = reflection(tonic_reflection::server::Builder::configure())
        .build_v1()
        .map_err(|e| ServeError::Reflection(e.to_string()))?;
    let reflection_v1alpha = reflection(tonic_reflection::server::Builder::configure())
        .build_v1alpha()
        .map_err(|e| ServeError::Reflection(e.to_string()))?;
    let router = crate::runtime::listener::grpc_server(tls)?
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(Authorized::new(
            pb::policies_server::PoliciesServer::new(admin.clone()),
            auth.clone(),
        ))
        .add_service(Authorized::new(
            pb::registries_server::RegistriesServer::new(admin.clone()),
            auth.clone(),
        ))
        .add_service(Authorized::new(
            pb::executions_server::ExecutionsServer::new(admin.clone()),
            auth.clone(),
        ))
        .add_service(Authorized::new(
            pb::drift_server::DriftServer::new(admin.clone()),
            auth.clone(),
        ))
        .add_service(Authorized::new(
            pb::operations_server::OperationsServer::new(admin),
            auth,
        ));
    let result = crate::runtime::listener::serve_grpc(router, listener, shutdown).await;
    tasks.close();
    tasks.wait().await;
    result.map_err(ServeError::from)
}
