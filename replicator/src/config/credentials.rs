//! Credentials by reference: resolving them, and deciding which references a registry stored
//! through the admin API may use.
//!
//! Secrets never appear in a config or an API request: a registry names an environment variable,
//! a password file or a docker/podman auth file, and [`Credential::resolve`] reads it when the
//! registry's client is built. Errors name the variable, file or host, never the secret.
//!
//! Invariant of [`CredentialRules`]: an admin token must not be worth the process's secrets. A
//! registry stored through the API may only use references the operator allowed at start-up:
//! files below a `--credentials-dir`, environment variables named `FERRY_CRED_*`, and the
//! references the config file's own registries use — the latter only for a registry on the same
//! origin (scheme, host and port) as the config registry that uses it, so pointing a stored
//! registry at another host cannot carry that credential there. Nothing below `/proc`, `/sys` or
//! `/dev` is ever read for an API registry. Auth files are origin-bound by construction (the entry
//! for the registry's own host is used).
use std::path::Path;

use base64::Engine as _;
use serde_json::Value;

use super::Problem;
use super::{Credential, RegistryConfig, Secret};
/// A credential reference that could not be resolved. The message names the env var, file or
/// host involved, never a secret.
#[derive(Debug, thiserror::Error)]
#[error("registry {registry}: {message}")]
pub struct CredentialError {
    pub registry: String,
    pub message: String,
}

impl Credential {
    /// Reads the secret this credential refers to (env var, password file or auth file entry for
    /// the registry's host).
    pub fn resolve(&self, registry: &RegistryConfig) -> Result<Secret, CredentialError> {
        let error = |message: String| CredentialError {
            registry: registry.name.clone(),
            message,
        };
        match self {
            Credential::Basic {
                username,
                password_env,
                password_file,
            } => {
                let password = match (password_env, password_file) {
                    (Some(var), None) => password_from_env(var),
                    (None, Some(file)) => password_from_file(file),
                    _ => Err("set exactly one of `password_env` and `password_file`".to_string()),
                }
                .map_err(error)?;
                Ok(Secret::Basic {
                    username: username.clone(),
                    password,
                })
            }
            Credential::AuthFile { path } => from_auth_file(path, &registry.url).map_err(error),
        }
    }
}

fn password_from_env(var: &str) -> Result<String, String> {
    match std::env::var_os(var) {
        None => Err(format!("environment variable {var} is not set")),
        Some(v) if v.is_empty() => Err(format!("environment variable {var} is empty")),
        Some(v) => v
            .into_string()
            .map_err(|_| format!("environment variable {var} is not valid UTF-8")),
    }
}

fn password_from_file(file: &Path) -> Result<String, String> {
    let text = std::fs::read_to_string(file)
        .map_err(|e| format!("cannot read password file {}: {e}", file.display()))?;
    let password = text.trim_end_matches(['\n', '\r']);
    if password.is_empty() {
        return Err(format!("password file {} is empty", file.display()));
    }
    Ok(password.to_string())
}

/// Hosts that all mean Docker Hub in auth files.
const DOCKER_HUB: &[&str] = &[
    "docker.io",
    "index.docker.io",
    "registry-1.docker.io",
    "registry.hub.docker.com",
];

/// An auth file key without its scheme: `https://host:5000/v1/` → `host:5000/v1/`.
fn auth_key_without_scheme(key: &str) -> &str {
    key.strip_prefix("https://")
        .or_else(|| key.strip_prefix("http://"))
        .unwrap_or(key)
}

/// `host[:port]` of an auth file key: `https://host:5000/v1/` → `host:5000`.
fn auth_key_host(key: &str) -> String {
    auth_key_without_scheme(key)
        .split('/')
        .next()
        .unwrap_or_default()
        .to_ascii_lowercase()
}

/// How many path components an auth file key has after its host (podman scopes entries to
/// namespaces: `quay.io/team`); `0` for a plain host.
fn auth_key_depth(key: &str) -> usize {
    auth_key_without_scheme(key)
        .trim_end_matches('/')
        .matches('/')
        .count()
}

/// Reads the docker/podman auth file entry for the registry at `registry_url`.
fn from_auth_file(file: &Path, registry_url: &str) -> Result<Secret, String> {
    let target = AuthTarget::new(registry_url)?;
    let document = read_auth_document(file)?;
    let auths = document.get("auths").and_then(Value::as_object);
    let Some(entry) = auths.and_then(|auths| target.entry(auths)) else {
        return Err(target.no_entry(file, &document, auths));
    };
    entry_secret(entry, &target.authority, file)
}

/// The registry an auth file is searched for.
struct AuthTarget {
    /// Its host, lowercase (Docker Hub's aliases are recognized by it).
    host: String,
    /// `host[:port]`, as auth file keys name it.
    authority: String,
}

impl AuthTarget {
    /// The target for the registry at `registry_url`.
    fn new(registry_url: &str) -> Result<AuthTarget, String> {
        let url =
            url::Url::parse(registry_url).map_err(|_| "the registry URL is invalid".to_string())?;
        let host = url.host_str().unwrap_or_default().to_ascii_lowercase();
        let authority = match url.port() {
            Some(port) => format!("{host}:{port}"),
            None => host.clone(),
        };
        Ok(AuthTarget { host, authority })
    }

    /// Whether an auth file key's `host[:port]` names this registry (any Docker Hub alias names
    /// Docker Hub).
    fn matches_host(&self, key_host: &str) -> bool {
        key_host == self.authority
            || (DOCKER_HUB.contains(&self.host.as_str()) && DOCKER_HUB.contains(&key_host))
    }

    /// The `auths` entry for this registry.
    fn entry<'a>(&self, auths: &'a serde_json::Map<String, Value>) -> Option<&'a Value> {
        // An exact `host[:port]` key wins over a repository-scoped one (`host/namespace`).
        let mut candidates: Vec<(&String, &Value)> = auths
            .iter()
            .filter(|(key, _)| self.matches_host(&auth_key_host(key)))
            .collect();
        candidates.sort_by_key(|(key, _)| auth_key_depth(key));
        candidates.first().map(|(_, entry)| *entry)
    }

    /// The error for an auth `file` without an entry for this registry: the credential helper it
    /// delegates to, else the entries it has.
    fn no_entry(
        &self,
        file: &Path,
        document: &Value,
        auths: Option<&serde_json::Map<String, Value>>,
    ) -> String {
        let shown = file.display();
        let authority = &self.authority;
        let helper = document
            .get("credHelpers")
            .and_then(|h| h.as_object())
            .and_then(|h| h.iter().find(|(k, _)| self.matches_host(&auth_key_host(k))))
            .and_then(|(_, v)| v.as_str())
            .or_else(|| document.get("credsStore").and_then(Value::as_str));
        if let Some(helper) = helper {
            return format!(
                "auth file {shown} has no `auths` entry for {authority}: it delegates to the credential helper `docker-credential-{helper}`, which Ferry does not run; log in with `--authfile`/`--config` pointing at a plain file"
            );
        }
        let known: Vec<&str> = auths
            .map(|a| a.keys().map(String::as_str).collect())
            .unwrap_or_default();
        format!(
            "auth file {shown} has no entry for {authority} (entries: {})",
            if known.is_empty() {
                "none".to_string()
            } else {
                known.join(", ")
            }
        )
    }
}

/// The JSON document of an auth `file`.
fn read_auth_document(file: &Path) -> Result<Value, String> {
    let shown = file.display();
    let text = std::fs::read(file).map_err(|e| format!("cannot read auth file {shown}: {e}"))?;
    // Only the position of a syntax error is reported: the file holds secrets.
    serde_json::from_slice(&text).map_err(|e| {
        format!(
            "auth file {shown} is not valid JSON (line {}, column {})",
            e.line(),
            e.column()
        )
    })
}

/// The credential an auth file `entry` for `authority` holds: `auth` (base64 of `user:password`),
/// else `username` and `password`.
fn entry_secret(entry: &Value, authority: &str, file: &Path) -> Result<Secret, String> {
    let shown = file.display();
    let field = |name: &str| {
        entry
            .get(name)
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
    };
    if let Some(auth) = field("auth") {
        let engines = [
            base64::engine::general_purpose::STANDARD,
            base64::engine::general_purpose::STANDARD_NO_PAD,
        ];
        let decoded = engines
            .iter()
            .find_map(|engine| engine.decode(auth.trim()).ok())
            .and_then(|bytes| String::from_utf8(bytes).ok());
        // The decode error is not shown: it would quote bytes of the secret.
        let Some((username, password)) = decoded.as_deref().and_then(|d| d.split_once(':')) else {
            return Err(format!(
                "the `auth` value for {authority} in auth file {shown} is not base64 of `user:password`"
            ));
        };
        return Ok(Secret::Basic {
            username: username.to_string(),
            password: password.to_string(),
        });
    }
    if let (Some(username), Some(password)) = (field("username"), field("password")) {
        return Ok(Secret::Basic {
            username: username.to_string(),
            password: password.to_string(),
        });
    }
    if field("identitytoken").is_some() {
        return Err(format!(
            "the entry for {authority} in auth file {shown} holds an identity token, which Ferry does not support; log in with a username and password or access token"
        ));
    }
    Err(format!(
        "the entry for {authority} in auth file {shown} has no `auth` value"
    ))
}

/// Prefix of the environment variables a registry stored through the admin API may name in
/// `password_env` (the operator sets them for that purpose; nothing else of the process's
/// environment, such as `FERRY_WEBHOOK_TOKEN`, is reachable through the API).
pub const API_ENV_PREFIX: &str = "FERRY_CRED_";

/// Trees an API registry can never read, even below an allowed directory: the process's own
/// environment and memory maps live in `/proc`.
const NEVER_READ: &[&str] = &["/proc", "/sys", "/dev"];

/// Which credential references a registry stored through the admin API may use (see the module
/// docs for the rules and why).
#[derive(Debug, Clone, Default)]
pub struct CredentialRules {
    /// `--credentials-dir` directories, canonical (symlinks and `..` resolved).
    dirs: Vec<std::path::PathBuf>,
    /// The config file's registries' references, each with the origin it belongs to.
    file_references: Vec<(Reference, url::Origin)>,
}

/// One credential reference, canonical where it is a path.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Reference {
    Env(String),
    File(std::path::PathBuf),
}

/// A `--credentials-dir` that cannot serve as one.
#[derive(Debug, thiserror::Error)]
#[error("--credentials-dir {dir}: {message}")]
pub struct CredentialsDirError {
    pub dir: String,
    pub message: String,
}

impl CredentialRules {
    /// The rules for a process started with `config` and `--credentials-dir` `dirs`.
    pub fn new(
        config: &super::Config,
        dirs: &[std::path::PathBuf],
    ) -> Result<CredentialRules, CredentialsDirError> {
        let mut canonical = Vec::new();
        for dir in dirs {
            let error = |message: String| CredentialsDirError {
                dir: dir.display().to_string(),
                message,
            };
            let c =
                std::fs::canonicalize(dir).map_err(|e| error(format!("cannot open it: {e}")))?;
            if !c.is_dir() {
                return Err(error("is not a directory".into()));
            }
            if c.parent().is_none() || never_read(&c) {
                return Err(error(format!(
                    "{} would expose the whole system or the process itself; use a directory that holds only registry credentials",
                    c.display()
                )));
            }
            canonical.push(c);
        }
        let file_references = config
            .registries
            .iter()
            .filter_map(|r| {
                let origin = url::Url::parse(&r.url).ok()?.origin();
                Some(
                    references(r.credential.as_ref()?)
                        .into_iter()
                        .map(move |(_, reference)| (reference, origin.clone())),
                )
            })
            .flatten()
            .collect();
        Ok(CredentialRules {
            dirs: canonical,
            file_references,
        })
    }

    /// Whether `registry` (sent through the admin API) may use its credential; every refusal names
    /// the field (`credential.password_file`, …) and the rule.
    pub fn check(&self, registry: &RegistryConfig) -> Result<(), Vec<Problem>> {
        let Some(credential) = &registry.credential else {
            return Ok(());
        };
        let origin = url::Url::parse(&registry.url).ok().map(|u| u.origin());
        let problems: Vec<Problem> = references(credential)
            .into_iter()
            .filter_map(|(field, reference)| {
                let path = format!("credential.{field}");
                let from_config = self
                    .file_references
                    .iter()
                    .any(|(r, o)| *r == reference && Some(o) == origin.as_ref());
                match &reference {
                    Reference::File(file) if never_read(file) => Some(Problem::new(
                        path,
                        format!("{} is never read for a registry stored through the API", file.display()),
                    )),
                    _ if from_config => None,
                    Reference::Env(var) if var.starts_with(API_ENV_PREFIX) => None,
                    Reference::Env(var) => Some(
                        Problem::new(path, format!(
                            "a registry stored through the API may only read environment variables named {API_ENV_PREFIX}*, not {var}"
                        ))
                        .hint(format!("have the operator set {API_ENV_PREFIX}<NAME> on the Ferry processes, or use a file below --credentials-dir")),
                    ),
                    Reference::File(file) if self.dirs.iter().any(|d| file.starts_with(d)) => None,
                    Reference::File(file) => Some(
                        Problem::new(path, format!(
                            "{} is not below a --credentials-dir of this process ({})",
                            file.display(),
                            if self.dirs.is_empty() {
                                "none is set".to_string()
                            } else {
                                self.dirs.iter().map(|d| d.display().to_string()).collect::<Vec<_>>().join(", ")
                            }
                        ))
                        .hint("place the file in a directory the operator passed as --credentials-dir"),
                    ),
                }
            })
            .collect();
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems)
        }
    }
}

/// The references a credential makes, by field name; paths canonical where they exist (a path
/// that does not exist yet stays as given, so `..` in it cannot pass the directory check).
fn references(credential: &Credential) -> Vec<(&'static str, Reference)> {
    let file = |p: &Path| {
        let resolved = std::fs::canonicalize(p).unwrap_or_else(|_| lexically_absolute(p));
        Reference::File(resolved)
    };
    match credential {
        Credential::Basic {
            password_env,
            password_file,
            ..
        } => password_env
            .iter()
            .map(|v| ("password_env", Reference::Env(v.clone())))
            .chain(password_file.iter().map(|f| ("password_file", file(f))))
            .collect(),
        Credential::AuthFile { path } => vec![("path", file(path))],
    }
}

/// A path that could not be canonicalized, made absolute with every `.`/`..` kept out: a `..`
/// makes it relative-to-nothing (`/..`), which lies below no allowed directory.
fn lexically_absolute(p: &Path) -> std::path::PathBuf {
    use std::path::Component;
    if p.components()
        .any(|c| matches!(c, Component::ParentDir | Component::CurDir))
        || !p.is_absolute()
    {
        return std::path::PathBuf::from("/..");
    }
    p.to_path_buf()
}

fn never_read(p: &Path) -> bool {
    NEVER_READ.iter().any(|root| p.starts_with(root))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn registry(url: &str, credential: Credential) -> RegistryConfig {
        RegistryConfig {
            name: "r".into(),
            id: None,
            local: false,
            kind: Default::default(),
            url: url.into(),
            insecure: false,
            ca_file: None,
            credential: Some(credential),
            concurrency: None,
            chunk_threshold: None,
            chunk_size: None,
            poll_interval_seconds: None,
            requests_per_second: None,
            region: None,
        }
    }

    fn resolve(url: &str, credential: Credential) -> Result<Secret, CredentialError> {
        let r = registry(url, credential);
        r.credential
            .as_ref()
            .map_or(Ok(Secret::Anonymous), |c| c.resolve(&r))
    }

    fn basic(user: &str, password: &str) -> Secret {
        Secret::Basic {
            username: user.into(),
            password: password.into(),
        }
    }

    fn temp_file(dir: &tempfile::TempDir, name: &str, content: &str) -> std::path::PathBuf {
        let path = dir.path().join(name);
        std::fs::write(&path, content).unwrap_or_else(|e| panic!("{e}"));
        path
    }

    #[test]
    fn basic_from_env() {
        let var = "FERRY_TEST_VALIDATE_PASSWORD_SET";
        std::env::set_var(var, "s3cret");
        let cred = |v: &str| Credential::Basic {
            username: "robot".into(),
            password_env: Some(v.into()),
            password_file: None,
        };
        assert_eq!(
            resolve("https://r", cred(var)).ok(),
            Some(basic("robot", "s3cret"))
        );
        let missing = resolve("https://r", cred("FERRY_TEST_VALIDATE_UNSET")).unwrap_err();
        assert_eq!(missing.registry, "r");
        assert!(
            missing
                .message
                .contains("FERRY_TEST_VALIDATE_UNSET is not set"),
            "{missing}"
        );
        std::env::set_var("FERRY_TEST_VALIDATE_EMPTY", "");
        let empty = resolve("https://r", cred("FERRY_TEST_VALIDATE_EMPTY")).unwrap_err();
        assert!(empty.message.contains("is empty"));
    }

    #[test]
    fn basic_from_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = temp_file(&dir, "password", "hunter2\n");
        let cred = |f: std::path::PathBuf| Credential::Basic {
            username: "u".into(),
            password_env: None,
            password_file: Some(f),
        };
        assert_eq!(
            resolve("https://r", cred(file.clone())).ok(),
            Some(basic("u", "hunter2"))
        );
        let crlf = temp_file(&dir, "password-crlf", "hunter2\r\n");
        assert_eq!(
            resolve("https://r", cred(crlf)).ok(),
            Some(basic("u", "hunter2"))
        );
        let blank = temp_file(&dir, "password-blank", "\n");
        assert!(resolve("https://r", cred(blank))
            .unwrap_err()
            .message
            .contains("is empty"));
        let missing = resolve("https://r", cred("/nonexistent/pw".into())).unwrap_err();
        assert!(missing.message.contains("/nonexistent/pw"), "{missing}");
    }

    #[test]
    fn auth_files() {
        let dir = tempfile::tempdir().unwrap();
        let auth = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
        let file = temp_file(
            &dir,
            "auth.json",
            &format!(
                r#"{{"auths": {{
                    "registry.eu.example": {{"auth": "{}"}},
                    "https://registry.us.example:5000/v2/": {{"auth": "{}"}},
                    "https://quay.io/team/": {{"auth": "{}"}},
                    "quay.io": {{"auth": "{}"}},
                    "https://index.docker.io/v1/": {{"auth": "{}"}},
                    "ghcr.io": {{"username": "gh", "password": "tok"}},
                    "token.example": {{"identitytoken": "abc"}},
                    "broken.example": {{"auth": "!!!notbase64"}}
                }}, "credHelpers": {{"gcr.io": "gcloud"}}}}"#,
                auth("eu:pw-eu"),
                auth("us:pw-us"),
                auth("team:pw-team"),
                auth("quay:pw-quay"),
                auth("hub:pw:with:colons"),
            ),
        );
        let cred = || Credential::AuthFile { path: file.clone() };
        let ok = |url: &str| resolve(url, cred()).unwrap_or_else(|e| panic!("{url}: {e}"));
        assert_eq!(ok("https://registry.eu.example"), basic("eu", "pw-eu"));
        assert_eq!(ok("https://REGISTRY.EU.example/"), basic("eu", "pw-eu"));
        assert_eq!(ok("https://registry.us.example:5000"), basic("us", "pw-us"));
        assert_eq!(
            ok("https://quay.io"),
            basic("quay", "pw-quay"),
            "exact host wins"
        );
        assert_eq!(
            ok("https://registry-1.docker.io"),
            basic("hub", "pw:with:colons")
        );
        assert_eq!(ok("https://ghcr.io"), basic("gh", "tok"));

        let err = |url: &str| resolve(url, cred()).unwrap_err().message;
        let absent = err("https://registry.us.example");
        assert!(
            absent.contains("no entry for registry.us.example") && absent.contains("auth.json"),
            "{absent}"
        );
        assert!(!absent.contains("pw-"), "no secret in {absent}");
        assert!(err("https://gcr.io").contains("docker-credential-gcloud"));
        assert!(err("https://token.example").contains("identity token"));
        let broken = err("https://broken.example");
        assert!(
            broken.contains("not base64") && !broken.contains("notbase64"),
            "{broken}"
        );
        let missing = resolve(
            "https://x",
            Credential::AuthFile {
                path: "/nonexistent/auth.json".into(),
            },
        )
        .unwrap_err();
        assert!(missing.message.contains("/nonexistent/auth.json"));
        let garbage = temp_file(
            &dir,
            "garbage.json",
            "{\"auths\": {\"x\": {\"auth\": \"secret-ish",
        );
        let bad = resolve("https://x", Credential::AuthFile { path: garbage }).unwrap_err();
        assert!(
            bad.message.contains("not valid JSON") && !bad.message.contains("secret-ish"),
            "{bad}"
        );
    }

    #[test]
    fn an_auth_value_without_base64_padding_is_read_too() {
        let padded = base64::engine::general_purpose::STANDARD.encode("u:pw");
        assert!(
            padded.ends_with('='),
            "the test needs a value that is padded normally"
        );
        let entry = serde_json::json!({ "auth": padded.trim_end_matches('=') });
        assert_eq!(
            entry_secret(&entry, "r.example", Path::new("auth.json")),
            Ok(basic("u", "pw"))
        );
    }

    #[test]
    fn a_registry_without_an_entry_is_told_of_the_creds_store_it_delegates_to() {
        let target = AuthTarget::new("https://r.example").unwrap();
        let document = serde_json::json!({ "auths": {}, "credsStore": "desktop" });
        let message = target.no_entry(Path::new("auth.json"), &document, None);
        assert!(message.contains("docker-credential-desktop"), "{message}");
    }

    // --- rules for registries stored through the admin API ------------------------------------

    fn config_using(credential: Credential) -> super::super::Config {
        super::super::Config {
            registries: vec![registry("https://config.example:5000", credential)],
            ..Default::default()
        }
    }

    fn env(var: &str) -> Credential {
        Credential::Basic {
            username: "u".into(),
            password_env: Some(var.into()),
            password_file: None,
        }
    }

    fn fields(r: Result<(), Vec<Problem>>) -> Vec<String> {
        r.err()
            .unwrap_or_default()
            .into_iter()
            .map(|p| p.path)
            .collect()
    }

    #[test]
    fn the_root_and_proc_cannot_be_credentials_dirs() {
        let config = super::super::Config::default();
        for dir in ["/", "/proc", "/proc/self"] {
            let err = CredentialRules::new(&config, &[dir.into()]).unwrap_err();
            assert!(err.to_string().contains("--credentials-dir"), "{err}");
        }
        let missing = CredentialRules::new(&config, &["/nonexistent/ferry-creds".into()]);
        assert!(missing.is_err());
    }

    #[test]
    fn env_references_need_the_prefix_or_the_config_registrys_origin() {
        let rules = CredentialRules::new(&config_using(env("EU_PASSWORD")), &[]).unwrap();
        let same_origin = registry("https://config.example:5000/", env("EU_PASSWORD"));
        let other_port = registry("https://config.example:5001", env("EU_PASSWORD"));
        let plain_http = registry("http://config.example:5000", env("EU_PASSWORD"));
        assert!(rules.check(&same_origin).is_ok());
        assert_eq!(
            fields(rules.check(&other_port)),
            ["credential.password_env"]
        );
        assert_eq!(
            fields(rules.check(&plain_http)),
            ["credential.password_env"]
        );
        assert!(rules
            .check(&registry("https://anywhere", env("FERRY_CRED_X")))
            .is_ok());
        assert_eq!(
            fields(rules.check(&registry("https://anywhere", env("HOME")))),
            ["credential.password_env"]
        );
    }

    #[test]
    fn file_references_must_lie_below_a_credentials_dir_once_resolved() {
        let dir = tempfile::tempdir().unwrap();
        let allowed = dir.path().join("allowed");
        std::fs::create_dir(&allowed).unwrap();
        std::fs::write(allowed.join("ok"), "p").unwrap();
        std::fs::write(dir.path().join("secret"), "p").unwrap();
        let config = super::super::Config::default();
        let rules = CredentialRules::new(&config, std::slice::from_ref(&allowed)).unwrap();
        let file = |p: std::path::PathBuf| {
            registry(
                "https://x",
                Credential::Basic {
                    username: "u".into(),
                    password_file: Some(p),
                    password_env: None,
                },
            )
        };
        assert!(rules.check(&file(allowed.join("ok"))).is_ok());
        // Not existing yet is fine below the directory (resolving it fails later, clearly).
        assert!(rules.check(&file(allowed.join("later"))).is_ok());
        for refused in [
            dir.path().join("secret"),
            allowed.join("../secret"),
            allowed.join("../allowed-not/x"),
            "relative/path".into(),
            "/proc/self/environ".into(),
        ] {
            assert_eq!(
                fields(rules.check(&file(refused.clone()))),
                ["credential.password_file"],
                "{}",
                refused.display()
            );
        }
        let auth_file = registry(
            "https://x",
            Credential::AuthFile {
                path: dir.path().join("secret"),
            },
        );
        assert_eq!(fields(rules.check(&auth_file)), ["credential.path"]);
    }

    #[test]
    fn proc_is_refused_even_when_the_config_file_uses_it() {
        let proc_file = Credential::Basic {
            username: "u".into(),
            password_env: None,
            password_file: Some("/proc/self/environ".into()),
        };
        let rules = CredentialRules::new(&config_using(proc_file.clone()), &[]).unwrap();
        let same = registry("https://config.example:5000", proc_file);
        assert_eq!(fields(rules.check(&same)), ["credential.password_file"]);
    }
}
