//! Where `ferry admin` connects and how: the endpoint flags, TLS for https:// endpoints, the
//! bearer token, and [`Ctx`], which every command receives.
//!
//! Invariants: local problems (no endpoint, unreadable token or certificate files) are reported
//! before any connection is attempted, because the channel connects on first use; every unary
//! call is bounded by `--timeout`, streams are not; the token is a sensitive header value, never
//! printed; it is sent as it was read (a static token or an OIDC JWT alike — the server tells
//! them apart).
use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ferry_proto::v1::drift_client::DriftClient;
use ferry_proto::v1::executions_client::ExecutionsClient;
use ferry_proto::v1::operations_client::OperationsClient;
use ferry_proto::v1::policies_client::PoliciesClient;
use ferry_proto::v1::registries_client::RegistriesClient;
use serde::Serialize;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tonic::{Code, Status};

use super::output::{emit, error_chain, Failure, Format};

/// The global flags that say where the admin API is and how to authenticate to it.
#[derive(clap::Args, Debug)]
pub struct ConnectionFlags {
    /// Admin API endpoint, e.g. http://127.0.0.1:9443 or https://ferry.region-a:9443 (`host:port`
    /// means http://).
    #[arg(long, env = "FERRY_ADMIN_ENDPOINT", global = true)]
    pub endpoint: Option<String>,
    /// File with the bearer token (its first non-empty line): a static admin token or an OIDC
    /// access token (JWT), sent unchanged. Default: FERRY_ADMIN_TOKEN.
    #[arg(long, global = true)]
    pub token_file: Option<PathBuf>,
    /// PEM CA bundle that signed the server's certificate (https:// endpoints).
    #[arg(long, global = true)]
    pub ca_file: Option<PathBuf>,
    /// PEM client certificate, for servers that require one (mTLS); needs --key.
    #[arg(long, global = true, requires = "key")]
    pub cert: Option<PathBuf>,
    /// PEM key of --cert.
    #[arg(long, global = true, requires = "cert")]
    pub key: Option<PathBuf>,
}

pub type Svc = InterceptedService<Channel, Bearer>;

/// Adds `authorization: Bearer <token>` to every call (nothing when no token is configured).
#[derive(Clone)]
pub struct Bearer(Option<MetadataValue<Ascii>>);

impl tonic::service::Interceptor for Bearer {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, Status> {
        if let Some(v) = &self.0 {
            req.metadata_mut().insert("authorization", v.clone());
        }
        Ok(req)
    }
}

impl Bearer {
    /// The token of `--token-file` or `FERRY_ADMIN_TOKEN` (none is allowed: the server decides).
    fn load(token_file: Option<&Path>) -> Result<Bearer, Failure> {
        let tokens = ferry_replicator::tokens::load(token_file, "FERRY_ADMIN_TOKEN", "admin")
            .map_err(|e| Failure::other("admin token", e))?;
        let Some(t) = tokens.first() else {
            return Ok(Bearer(None));
        };
        let mut v = MetadataValue::try_from(format!("Bearer {t}")).map_err(|_| {
            let problem = "it holds characters not allowed in a header".to_string();
            Failure::other("admin token", problem)
        })?;
        v.set_sensitive(true);
        Ok(Bearer(Some(v)))
    }
}

/// TLS settings of an https:// endpoint from `--ca-file`, `--cert` and `--key`.
fn client_tls(flags: &ConnectionFlags) -> Result<ClientTlsConfig, Failure> {
    let read = |flag: &str, path: &Path| {
        std::fs::read(path)
            .map_err(|e| Failure::other(&format!("{flag} {}", path.display()), e.to_string()))
    };
    let Some(ca) = &flags.ca_file else {
        let problem =
            "an https:// endpoint needs --ca-file with the CA that signed the server's certificate"
                .to_string();
        return Err(Failure::other("admin TLS", problem));
    };
    let mut tls =
        ClientTlsConfig::new().ca_certificate(Certificate::from_pem(read("--ca-file", ca)?));
    if let (Some(cert), Some(key)) = (&flags.cert, &flags.key) {
        tls = tls.identity(Identity::from_pem(
            read("--cert", cert)?,
            read("--key", key)?,
        ));
    }
    Ok(tls)
}

/// The endpoint URL of `--endpoint` (`host:port` means http://).
fn endpoint_url(flags: &ConnectionFlags) -> Result<String, Failure> {
    let Some(url) = flags.endpoint.as_deref().map(str::trim) else {
        let problem = "pass --endpoint URL or set FERRY_ADMIN_ENDPOINT".to_string();
        return Err(Failure::other("no admin endpoint", problem));
    };
    Ok(if url.contains("://") {
        url.to_string()
    } else {
        format!("http://{url}")
    })
}

/// What every command needs: the channel (connected on first use, so file errors come first),
/// the token, the per-call timeout and the output format.
pub struct Ctx {
    url: String,
    endpoint: Endpoint,
    channel: tokio::sync::OnceCell<Channel>,
    auth: Bearer,
    timeout: Duration,
    pub output: Format,
}

impl Ctx {
    pub fn new(flags: &ConnectionFlags, timeout: u64, output: Format) -> Result<Ctx, Failure> {
        let url = endpoint_url(flags)?;
        let what = format!("admin endpoint {url}");
        let timeout = Duration::from_secs(timeout);
        let mut endpoint = Endpoint::from_shared(url.clone())
            .map_err(|e| Failure::other(&what, error_chain(&e)))?
            .connect_timeout(timeout);
        if url.starts_with("https://") {
            endpoint = endpoint
                .tls_config(client_tls(flags)?)
                .map_err(|e| Failure::other(&what, error_chain(&e)))?;
        } else if flags.ca_file.is_some() || flags.cert.is_some() {
            let problem = "--ca-file/--cert apply to https:// endpoints only".to_string();
            return Err(Failure::other(&what, problem));
        }
        let auth = Bearer::load(flags.token_file.as_deref())?;
        Ok(Ctx {
            url,
            endpoint,
            channel: tokio::sync::OnceCell::new(),
            auth,
            timeout,
            output,
        })
    }

    async fn service(&self) -> Result<Svc, Failure> {
        let channel = self
            .channel
            .get_or_try_init(|| async {
                self.endpoint.connect().await.map_err(|e| Failure {
                    exit: 5,
                    what: format!("cannot connect to {}", self.url),
                    code: Some(Code::Unavailable),
                    message: error_chain(&e),
                })
            })
            .await?;
        Ok(InterceptedService::new(channel.clone(), self.auth.clone()))
    }

    pub async fn policies(&self) -> Result<PoliciesClient<Svc>, Failure> {
        Ok(PoliciesClient::new(self.service().await?))
    }

    pub async fn registries(&self) -> Result<RegistriesClient<Svc>, Failure> {
        Ok(RegistriesClient::new(self.service().await?))
    }

    pub async fn executions(&self) -> Result<ExecutionsClient<Svc>, Failure> {
        Ok(ExecutionsClient::new(self.service().await?))
    }

    pub async fn drift(&self) -> Result<DriftClient<Svc>, Failure> {
        Ok(DriftClient::new(self.service().await?))
    }

    pub async fn operations(&self) -> Result<OperationsClient<Svc>, Failure> {
        Ok(OperationsClient::new(self.service().await?))
    }

    /// One unary call within the timeout; `what` names it in errors.
    pub async fn call<T>(
        &self,
        what: &str,
        call: impl Future<Output = Result<tonic::Response<T>, Status>>,
    ) -> Result<T, Failure> {
        match tokio::time::timeout(self.timeout, call).await {
            Ok(Ok(response)) => Ok(response.into_inner()),
            Ok(Err(status)) => Err(Failure::status(what, &status)),
            Err(_) => Err(Failure {
                exit: 2,
                what: what.to_string(),
                code: Some(Code::DeadlineExceeded),
                message: format!("no answer from {} within {:?}", self.url, self.timeout),
            }),
        }
    }

    /// Opens a server stream; `what` names it in errors. Not bounded by the timeout: a stream
    /// lasts as long as the server sends.
    pub async fn stream<T>(
        &self,
        what: &str,
        open: impl Future<Output = Result<tonic::Response<tonic::Streaming<T>>, Status>>,
    ) -> Result<tonic::Streaming<T>, Failure> {
        open.await
            .map(tonic::Response::into_inner)
            .map_err(|s| Failure::status(what, &s))
    }

    /// Prints the answer: `doc` with `-o json`, else the table `table` makes.
    pub fn emit(&self, doc: &impl Serialize, table: impl FnOnce() -> String) {
        emit(self.output, doc, table);
    }
}
