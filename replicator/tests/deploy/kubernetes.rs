//! The shipped Kubernetes deployment (`deploy/kubernetes`: a base and one overlay per region)
//! renders offline with `kubectl kustomize` — Debian's `kubernetes-client` (kustomize v2.0) and
//! newer ones alike — into manifests that run the region the overlay names: the config it mounts
//! validates, both processes carry that region, the Forward certificate cert-manager issues is for
//! the host the other regions dial and lands in the Secret the agent reads, every secret reaches a
//! pod by reference only and only where it is used, and no container runs as root.
//!
//! `kubectl` is a prerequisite (`deploy/local/setup.sh` installs it): without it these tests fail.

use std::collections::BTreeSet;
use std::process::Command;

use ferry_replicator::config::Config;
use serde::Deserialize;
use serde_yaml::Value;

const OVERLAYS: [&str; 2] = ["eu", "us"];

/// The overlay's rendered objects, from `kubectl kustomize`.
fn render(region: &str) -> Vec<Value> {
    let dir = super::deploy("kubernetes/overlays").join(region);
    let out = Command::new("kubectl")
        .arg("kustomize")
        .arg(&dir)
        .output()
        .expect("kubectl runs (bash deploy/local/setup.sh installs it)");
    assert!(
        out.status.success(),
        "kubectl kustomize {}: {}",
        dir.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).expect("UTF-8 manifests");
    serde_yaml::Deserializer::from_str(&text)
        .map(|doc| Value::deserialize(doc).expect("rendered YAML parses"))
        .filter(|v| !v.is_null())
        .collect()
}

fn find<'a>(objects: &'a [Value], kind: &str, name: &str) -> &'a Value {
    objects
        .iter()
        .find(|o| o["kind"].as_str() == Some(kind) && o["metadata"]["name"].as_str() == Some(name))
        .unwrap_or_else(|| panic!("no {kind} {name} rendered"))
}

fn str_of(v: &Value) -> &str {
    v.as_str().unwrap_or_else(|| panic!("not a string: {v:?}"))
}

/// The ferry.json the overlay's ConfigMap carries, parsed and validated as `ferry` would.
fn mounted_config(objects: &[Value]) -> (Config, serde_json::Value) {
    let map = objects
        .iter()
        .find(|o| {
            o["kind"].as_str() == Some("ConfigMap")
                && str_of(&o["metadata"]["name"]).starts_with("ferry-config")
        })
        .expect("the ferry-config ConfigMap");
    let text = str_of(&map["data"]["ferry.json"]);
    let config = Config::from_slice(text.as_bytes(), "ConfigMap ferry-config")
        .unwrap_or_else(|e| panic!("the rendered ferry.json: {e}"));
    (config, serde_json::from_str(text).unwrap())
}

fn container<'a>(objects: &'a [Value], deployment: &str) -> &'a Value {
    &find(objects, "Deployment", deployment)["spec"]["template"]["spec"]["containers"][0]
}

fn env_value<'a>(container: &'a Value, name: &str) -> Option<&'a Value> {
    container["env"]
        .as_sequence()
        .into_iter()
        .flatten()
        .find(|e| e["name"].as_str() == Some(name))
}

/// Every `password_env` the config names.
fn password_envs(config: &serde_json::Value) -> BTreeSet<String> {
    fn walk(v: &serde_json::Value, out: &mut BTreeSet<String>) {
        match v {
            serde_json::Value::Object(m) => {
                for (k, v) in m {
                    match (k.as_str(), v) {
                        ("password_env", serde_json::Value::String(s)) => {
                            out.insert(s.clone());
                        }
                        _ => walk(v, out),
                    }
                }
            }
            serde_json::Value::Array(a) => a.iter().for_each(|v| walk(v, out)),
            _ => {}
        }
    }
    let mut out = BTreeSet::new();
    walk(config, &mut out);
    out
}

#[test]
fn each_overlay_runs_both_processes_in_a_region_its_validated_config_declares() {
    for region in OVERLAYS {
        let objects = render(region);
        let (config, _) = mounted_config(&objects);
        assert!(
            config.regions.iter().any(|r| r.name == region),
            "overlay {region}: ferry.json declares no region {region:?}"
        );
        for deployment in ["ferry-agent", "ferry-worker"] {
            let env = env_value(container(&objects, deployment), "FERRY_REGION")
                .unwrap_or_else(|| panic!("{region}/{deployment}: no FERRY_REGION"));
            assert_eq!(str_of(&env["value"]), region, "{region}/{deployment}");
        }
    }
}

#[test]
fn each_region_gets_a_forward_certificate_for_the_host_other_regions_dial() {
    for region in OVERLAYS {
        let objects = render(region);
        let (config, _) = mounted_config(&objects);
        let forward_url = &config
            .regions
            .iter()
            .find(|r| r.name == region)
            .expect("region in config")
            .forward_url;
        let host = reqwest::Url::parse(forward_url)
            .expect("forward_url parses")
            .host_str()
            .expect("forward_url has a host")
            .to_string();

        let cert = find(&objects, "Certificate", "ferry-forward");
        let names: Vec<&str> = cert["spec"]["dnsNames"]
            .as_sequence()
            .expect("dnsNames")
            .iter()
            .map(str_of)
            .collect();
        assert_eq!(names, [host.as_str()], "{region}: the certificate's names");
        let usages: Vec<&str> = cert["spec"]["usages"]
            .as_sequence()
            .expect("usages")
            .iter()
            .map(str_of)
            .collect();
        for usage in ["server auth", "client auth"] {
            assert!(usages.contains(&usage), "{region}: {usage} missing");
        }
        // Issued by the shared CA's Issuer, into the Secret the agent mounts for --forward-*.
        let issuer = str_of(&cert["spec"]["issuerRef"]["name"]);
        find(&objects, "Issuer", issuer);
        let secret = str_of(&cert["spec"]["secretName"]);
        let volumes =
            &find(&objects, "Deployment", "ferry-agent")["spec"]["template"]["spec"]["volumes"];
        let tls_volume = volumes
            .as_sequence()
            .unwrap()
            .iter()
            .find(|v| v["secret"]["secretName"].as_str() == Some(secret))
            .unwrap_or_else(|| panic!("{region}: the agent does not mount Secret {secret}"));
        let mount = container(&objects, "ferry-agent")["volumeMounts"]
            .as_sequence()
            .unwrap()
            .iter()
            .find(|m| m["name"] == tls_volume["name"])
            .expect("the TLS volume is mounted");
        let path = str_of(&mount["mountPath"]);
        let args: Vec<&str> = container(&objects, "ferry-agent")["args"]
            .as_sequence()
            .unwrap()
            .iter()
            .map(str_of)
            .collect();
        for (flag, file) in [
            ("--forward-tls-cert", "tls.crt"),
            ("--forward-tls-key", "tls.key"),
            ("--forward-ca", "ca.crt"),
        ] {
            let at = args.iter().position(|a| *a == flag).expect(flag);
            assert_eq!(args[at + 1], format!("{path}/{file}"), "{region}: {flag}");
        }
    }
}

#[test]
fn secrets_reach_the_pods_by_reference_and_only_where_used() {
    for region in OVERLAYS {
        let objects = render(region);
        let (_, json) = mounted_config(&objects);
        let passwords = password_envs(&json);
        assert!(!passwords.is_empty(), "the shipped config names passwords");
        for (deployment, own) in [
            ("ferry-agent", "FERRY_FORWARD_TOKEN"),
            ("ferry-worker", "FERRY_ADMIN_TOKEN"),
        ] {
            let c = container(&objects, deployment);
            assert!(
                c["envFrom"].is_null(),
                "{deployment}: envFrom imports every key"
            );
            for name in passwords.iter().map(String::as_str).chain([own]) {
                let env = env_value(c, name)
                    .unwrap_or_else(|| panic!("{region}/{deployment}: {name} is not set"));
                assert!(
                    env["value"].is_null(),
                    "{deployment}: {name} has a literal value"
                );
                assert_eq!(
                    str_of(&env["valueFrom"]["secretKeyRef"]["key"]),
                    name,
                    "{deployment}: {name}"
                );
            }
        }
        // The worker never holds the regions' token, nor the agent the admin token.
        assert!(env_value(container(&objects, "ferry-worker"), "FERRY_FORWARD_TOKEN").is_none());
        assert!(env_value(container(&objects, "ferry-agent"), "FERRY_ADMIN_TOKEN").is_none());
        // No Secret is rendered: they are created in the cluster, never committed.
        assert!(
            objects.iter().all(|o| o["kind"].as_str() != Some("Secret")),
            "{region}: a Secret is in the manifests"
        );
    }
}

#[test]
fn no_container_runs_as_root_or_writes_its_root_filesystem() {
    for region in OVERLAYS {
        let objects = render(region);
        for o in &objects {
            let Some(pod) = o["spec"]["template"]["spec"].as_mapping() else {
                continue;
            };
            let name = str_of(&o["metadata"]["name"]);
            assert_eq!(
                pod.get("securityContext")
                    .and_then(|s| s["runAsNonRoot"].as_bool()),
                Some(true),
                "{region}/{name}: runAsNonRoot"
            );
            for c in o["spec"]["template"]["spec"]["containers"]
                .as_sequence()
                .unwrap()
            {
                let sc = &c["securityContext"];
                assert_eq!(
                    sc["allowPrivilegeEscalation"].as_bool(),
                    Some(false),
                    "{name}"
                );
                assert_eq!(sc["readOnlyRootFilesystem"].as_bool(), Some(true), "{name}");
                assert!(
                    !c["resources"]["requests"]["memory"].is_null(),
                    "{region}/{name}: no memory request"
                );
            }
        }
    }
}
