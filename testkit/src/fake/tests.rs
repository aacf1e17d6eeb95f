//! Tests of the fake over real HTTP (reqwest), one per behavior plus the
//! well-behaved protocol paths the behaviors build on.

use super::*;
use reqwest::{Client, Method as M, Response as R};

fn client() -> Client {
    Client::builder().no_proxy().build().unwrap()
}

async fn body_json(resp: R) -> serde_json::Value {
    serde_json::from_slice(&resp.bytes().await.unwrap()).unwrap()
}

async fn error_code(resp: R) -> String {
    body_json(resp).await["errors"][0]["code"]
        .as_str()
        .unwrap()
        .to_owned()
}

fn header(resp: &R, name: &str) -> String {
    resp.headers()
        .get(name)
        .unwrap_or_else(|| panic!("no {name} header"))
        .to_str()
        .unwrap()
        .to_owned()
}

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";

/// Puts a config and a layer blob and returns a manifest referencing them.
fn image_manifest(fake: &FakeRegistry, seed: u8) -> Vec<u8> {
    let config = fake.put_blob(vec![b'{', b'}']);
    let layer = fake.put_blob(vec![seed; 100]);
    serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.empty.v1+json", "digest": config, "size": 2},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": layer, "size": 100}],
    }))
    .unwrap()
}

#[test]
fn routes_parse_names_with_slashes() {
    let r = Route::parse("/v2/a/blobs/b/manifests/latest").unwrap();
    assert!(
        matches!(r, Route::Manifest { ref name, ref reference } if name == "a/blobs/b" && reference == "latest")
    );
    let r = Route::parse("/v2/a/b/c/blobs/sha256%3Aab").unwrap();
    assert!(
        matches!(r, Route::Blob { ref name, ref digest } if name == "a/b/c" && digest == "sha256:ab")
    );
    assert!(
        matches!(Route::parse("/v2/x/y/blobs/uploads/").unwrap(), Route::UploadStart { ref name } if name == "x/y")
    );
    assert!(
        matches!(Route::parse("/v2/x/blobs/uploads").unwrap(), Route::UploadStart { ref name } if name == "x")
    );
    assert!(
        matches!(Route::parse("/v2/x/blobs/uploads/u1").unwrap(), Route::Upload { ref name, ref id } if name == "x" && id == "u1")
    );
    assert!(
        matches!(Route::parse("/v2/x/y/tags/list").unwrap(), Route::Tags { ref name } if name == "x/y")
    );
    assert!(matches!(Route::parse("/v2/").unwrap(), Route::Base));
    assert!(matches!(
        Route::parse("/v2/_catalog").unwrap(),
        Route::Catalog
    ));
    assert!(Route::parse("/v2/x").is_none());
}

#[test]
fn repo_name_grammar() {
    for ok in ["a", "library/alpine", "a.b/c_d/e__f/g--h", "0/1"] {
        assert!(valid_repo_name(ok), "{ok}");
    }
    for bad in ["", "A", "a/", "/a", "a//b", "a..b", "a_-b", "-a", "a."] {
        assert!(!valid_repo_name(bad), "{bad}");
    }
}

#[tokio::test]
async fn push_pull_and_list_like_a_registry() {
    let fake = FakeRegistry::start(Behavior::default()).await.unwrap();
    let c = client();
    let url = fake.url();

    let resp = c.get(format!("{url}/v2/")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(
        header(&resp, "docker-distribution-api-version"),
        "registry/2.0"
    );

    // Monolithic upload.
    let config = b"{}".to_vec();
    let config_digest = sha256_digest(&config);
    let resp = c
        .post(format!(
            "{url}/v2/org/app/blobs/uploads/?digest={config_digest}"
        ))
        .body(config.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    assert_eq!(header(&resp, "docker-content-digest"), config_digest);
    assert_eq!(
        header(&resp, "location"),
        format!("{url}/v2/org/app/blobs/{config_digest}")
    );

    // Chunked upload: POST, PATCH ×2 (with and without Content-Range), status, PUT.
    let layer: Vec<u8> = (0..=255u8).cycle().take(1000).collect();
    let layer_digest = sha256_digest(&layer);
    let resp = c
        .post(format!("{url}/v2/org/app/blobs/uploads/"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);
    assert_eq!(header(&resp, "range"), "0-0");
    let uuid = header(&resp, "docker-upload-uuid");
    let loc = header(&resp, "location");
    assert!(
        loc.ends_with(&format!("/v2/org/app/blobs/uploads/{uuid}")),
        "{loc}"
    );
    let resp = c
        .patch(&loc)
        .header("content-range", "0-599")
        .body(layer[..600].to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);
    assert_eq!(header(&resp, "range"), "0-599");
    // Out of order chunk: 416.
    let resp = c
        .patch(&loc)
        .header("content-range", "0-9")
        .body(layer[..10].to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 416);
    let resp = c
        .patch(&loc)
        .body(layer[600..900].to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(header(&resp, "range"), "0-899");
    let resp = c.get(&loc).send().await.unwrap();
    assert_eq!(resp.status(), 204);
    assert_eq!(header(&resp, "range"), "0-899");
    // Wrong digest: rejected, session gone.
    let resp = c
        .put(format!("{loc}?digest={config_digest}"))
        .body(layer[900..].to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    assert_eq!(error_code(resp).await, "DIGEST_INVALID");
    assert_eq!(c.get(&loc).send().await.unwrap().status(), 404);
    // Again, correctly.
    let resp = c
        .post(format!("{url}/v2/org/app/blobs/uploads/"))
        .send()
        .await
        .unwrap();
    let loc = header(&resp, "location");
    c.patch(&loc)
        .body(layer[..900].to_vec())
        .send()
        .await
        .unwrap();
    let resp = c
        .put(format!("{loc}?digest={layer_digest}"))
        .body(layer[900..].to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    assert!(fake.has_blob(&layer_digest));

    // Cancelled upload.
    let resp = c
        .post(format!("{url}/v2/org/app/blobs/uploads/"))
        .send()
        .await
        .unwrap();
    let loc = header(&resp, "location");
    assert_eq!(c.delete(&loc).send().await.unwrap().status(), 204);
    assert_eq!(
        error_code(c.delete(&loc).send().await.unwrap()).await,
        "BLOB_UPLOAD_UNKNOWN"
    );

    // Blob HEAD/GET, and a range.
    let resp = c
        .head(format!("{url}/v2/org/app/blobs/{layer_digest}"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(header(&resp, "content-length"), "1000");
    assert_eq!(header(&resp, "docker-content-digest"), layer_digest);
    let resp = c
        .get(format!("{url}/v2/org/app/blobs/{layer_digest}"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.bytes().await.unwrap().to_vec(), layer);
    let resp = c
        .get(format!("{url}/v2/org/app/blobs/{layer_digest}"))
        .header("range", "bytes=990-")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 206);
    assert_eq!(resp.bytes().await.unwrap().to_vec(), layer[990..]);
    let resp = c
        .head(format!("{url}/v2/org/app/blobs/sha256:{}", "0".repeat(64)))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);

    // A manifest whose layer is missing is refused.
    let missing = sha256_digest(b"missing");
    let bad = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.empty.v1+json", "digest": config_digest, "size": 2},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": missing, "size": 7}],
    }))
    .unwrap();
    let resp = c
        .put(format!("{url}/v2/org/app/manifests/v1"))
        .header("content-type", OCI_MANIFEST)
        .body(bad)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    assert_eq!(error_code(resp).await, "MANIFEST_BLOB_UNKNOWN");

    // A good manifest, by tag.
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.empty.v1+json", "digest": config_digest, "size": 2},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": layer_digest, "size": 1000}],
    }))
    .unwrap();
    let digest = sha256_digest(&manifest);
    // Wrong digest reference.
    let resp = c
        .put(format!("{url}/v2/org/app/manifests/{config_digest}"))
        .header("content-type", OCI_MANIFEST)
        .body(manifest.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(error_code(resp).await, "DIGEST_INVALID");
    let resp = c
        .put(format!("{url}/v2/org/app/manifests/v1"))
        .header("content-type", OCI_MANIFEST)
        .body(manifest.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    assert_eq!(header(&resp, "docker-content-digest"), digest);
    assert_eq!(
        header(&resp, "location"),
        format!("{url}/v2/org/app/manifests/{digest}")
    );
    assert_eq!(
        fake.manifest("org/app", "v1"),
        Some((OCI_MANIFEST.to_owned(), manifest.clone()))
    );

    for method in [M::HEAD, M::GET] {
        let resp = c
            .request(method.clone(), format!("{url}/v2/org/app/manifests/v1"))
            .header(
                "accept",
                format!("application/vnd.docker.distribution.manifest.v2+json, {OCI_MANIFEST}"),
            )
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "{method}");
        assert_eq!(header(&resp, "docker-content-digest"), digest);
        assert_eq!(header(&resp, "content-type"), OCI_MANIFEST);
        assert_eq!(header(&resp, "content-length"), manifest.len().to_string());
        let body = resp.bytes().await.unwrap();
        if method == M::GET {
            assert_eq!(body.to_vec(), manifest);
        } else {
            assert!(body.is_empty());
        }
    }
    // By digest, and an Accept header that excludes OCI.
    let resp = c
        .get(format!("{url}/v2/org/app/manifests/{digest}"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.bytes().await.unwrap().to_vec(), manifest);
    let resp = c
        .get(format!("{url}/v2/org/app/manifests/v1"))
        .header(
            "accept",
            "application/vnd.docker.distribution.manifest.v2+json",
        )
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);
    assert_eq!(error_code(resp).await, "MANIFEST_UNKNOWN");

    // An index needs its children in the repo.
    let index = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [{"mediaType": OCI_MANIFEST, "digest": digest, "size": manifest.len()}],
    }))
    .unwrap();
    for (repo, status) in [("other", 400), ("org/app", 201)] {
        let resp = c
            .put(format!("{url}/v2/{repo}/manifests/multi"))
            .header("content-type", "application/vnd.oci.image.index.v1+json")
            .body(index.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), status, "{repo}");
    }

    // Tags, catalog and their pagination.
    for t in ["v2", "v3"] {
        fake.put_manifest("org/app", Some(t), OCI_MANIFEST, manifest.clone());
    }
    for r in ["a", "b", "c"] {
        fake.put_manifest(r, Some("x"), OCI_MANIFEST, manifest.clone());
    }
    let resp = c
        .get(format!("{url}/v2/org/app/tags/list"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        body_json(resp).await,
        serde_json::json!({"name": "org/app", "tags": ["multi", "v1", "v2", "v3"]})
    );
    let resp = c
        .get(format!("{url}/v2/org/app/tags/list?n=2"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        header(&resp, "link"),
        "</v2/org/app/tags/list?last=v1&n=2>; rel=\"next\""
    );
    assert_eq!(
        body_json(resp).await["tags"],
        serde_json::json!(["multi", "v1"])
    );
    let resp = c
        .get(format!("{url}/v2/org/app/tags/list?n=2&last=v1"))
        .send()
        .await
        .unwrap();
    assert!(resp.headers().get("link").is_none());
    assert_eq!(
        body_json(resp).await["tags"],
        serde_json::json!(["v2", "v3"])
    );
    let resp = c
        .get(format!("{url}/v2/nope/tags/list"))
        .send()
        .await
        .unwrap();
    assert_eq!(error_code(resp).await, "NAME_UNKNOWN");
    let resp = c
        .get(format!("{url}/v2/_catalog?n=2"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        header(&resp, "link"),
        "</v2/_catalog?last=b&n=2>; rel=\"next\""
    );
    assert_eq!(
        body_json(resp).await["repositories"],
        serde_json::json!(["a", "b"])
    );
    let resp = c
        .get(format!("{url}/v2/_catalog?n=2&last=b"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        body_json(resp).await["repositories"],
        serde_json::json!(["c", "org/app"])
    );

    // Deletes: by tag refused (distribution 2.8), by digest removes every tag.
    let resp = c
        .delete(format!("{url}/v2/org/app/manifests/v1"))
        .send()
        .await
        .unwrap();
    assert_eq!(error_code(resp).await, "DIGEST_INVALID");
    let resp = c
        .delete(format!("{url}/v2/org/app/manifests/{digest}"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);
    assert_eq!(fake.tags("org/app"), vec!["multi"]);
    assert!(fake.manifest("org/app", "v1").is_none());

    // Bad repository names.
    let resp = c
        .get(format!("{url}/v2/Upper/tags/list"))
        .send()
        .await
        .unwrap();
    assert_eq!(error_code(resp).await, "NAME_INVALID");
    fake.stop().await;
}

#[tokio::test]
async fn corrupt_blobs_serve_flipped_bytes() {
    let fake = FakeRegistry::start(Behavior::default()).await.unwrap();
    let good = fake.put_blob(b"hello".to_vec());
    let bad = fake.put_blob(b"world".to_vec());
    fake.set_behavior(|b| {
        b.corrupt_blobs.insert(bad.clone());
    });
    let c = client();
    let resp = c
        .get(format!("{}/v2/r/blobs/{good}", fake.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(&resp.bytes().await.unwrap()[..], b"hello");
    let resp = c
        .get(format!("{}/v2/r/blobs/{bad}", fake.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(header(&resp, "docker-content-digest"), bad);
    let body = resp.bytes().await.unwrap();
    assert_eq!(body.len(), 5);
    assert_eq!(body[0], b'w' ^ 0xff);
    assert_eq!(&body[1..], b"orld");

    // Manifests too.
    let m = fake.put_manifest(
        "r",
        Some("t"),
        OCI_MANIFEST,
        b"{\"schemaVersion\":2}".to_vec(),
    );
    fake.set_behavior(|b| {
        b.corrupt_blobs.insert(m.clone());
    });
    let resp = c
        .get(format!("{}/v2/r/manifests/t", fake.url()))
        .send()
        .await
        .unwrap();
    assert_ne!(sha256_digest(&resp.bytes().await.unwrap()), m);
}

#[tokio::test]
async fn basic_auth_is_required() {
    let fake = FakeRegistry::start(Behavior {
        require_basic: Some(("alice".into(), "pw".into())),
        ..Behavior::default()
    })
    .await
    .unwrap();
    let c = client();
    let resp = c.get(format!("{}/v2/", fake.url())).send().await.unwrap();
    assert_eq!(resp.status(), 401);
    assert_eq!(header(&resp, "www-authenticate"), "Basic realm=\"fake\"");
    assert_eq!(error_code(resp).await, "UNAUTHORIZED");
    let resp = c
        .get(format!("{}/v2/", fake.url()))
        .basic_auth("alice", Some("wrong"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    let resp = c
        .get(format!("{}/v2/", fake.url()))
        .basic_auth("alice", Some("pw"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
}

#[tokio::test]
async fn bearer_token_flow() {
    let fake = FakeRegistry::start(Behavior {
        require_bearer: Some(BearerSetup {
            username: "bob".into(),
            password: "pw".into(),
            service: "fake".into(),
        }),
        ..Behavior::default()
    })
    .await
    .unwrap();
    let url = fake.url();
    let c = client();

    let resp = c.get(format!("{url}/v2/")).send().await.unwrap();
    assert_eq!(resp.status(), 401);
    assert_eq!(
        header(&resp, "www-authenticate"),
        format!("Bearer realm=\"{url}/token\",service=\"fake\"")
    );
    let resp = c
        .put(format!("{url}/v2/team/app/manifests/v1"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        header(&resp, "www-authenticate"),
        format!(
            "Bearer realm=\"{url}/token\",service=\"fake\",scope=\"repository:team/app:pull,push\""
        )
    );
    let resp = c
        .get(format!("{url}/v2/team/app/tags/list"))
        .send()
        .await
        .unwrap();
    assert!(header(&resp, "www-authenticate").ends_with("scope=\"repository:team/app:pull\""));
    let resp = c.get(format!("{url}/v2/_catalog")).send().await.unwrap();
    assert!(header(&resp, "www-authenticate").ends_with("scope=\"registry:catalog:*\""));

    let token_url = format!("{url}/token?service=fake&scope=repository:team/app:pull");
    assert_eq!(c.get(&token_url).send().await.unwrap().status(), 401);
    let resp = c
        .get(&token_url)
        .basic_auth("bob", Some("bad"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    let resp = c
        .get(&token_url)
        .basic_auth("bob", Some("pw"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let token_body = body_json(resp).await;
    assert_eq!(token_body["expires_in"], 300);
    let token = token_body["token"].as_str().unwrap().to_owned();

    let resp = c
        .get(format!("{url}/v2/"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let resp = c
        .get(format!("{url}/v2/"))
        .bearer_auth("forged")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    assert!(fake
        .request_log()
        .iter()
        .any(|(m, p)| m == "GET" && p == "/token?service=fake&scope=repository:team/app:pull"));
}

#[tokio::test]
async fn deny_answers_every_v2_request() {
    let fake = FakeRegistry::start(Behavior {
        deny: Some((
            403,
            "DENIED".into(),
            "requested access to the resource is denied".into(),
        )),
        ..Behavior::default()
    })
    .await
    .unwrap();
    let c = client();
    for path in ["/v2/", "/v2/a/tags/list", "/v2/a/manifests/x"] {
        let resp = c.get(format!("{}{path}", fake.url())).send().await.unwrap();
        assert_eq!(resp.status(), 403, "{path}");
        let body = body_json(resp).await;
        assert_eq!(body["errors"][0]["code"], "DENIED");
        assert_eq!(
            body["errors"][0]["message"],
            "requested access to the resource is denied"
        );
    }
    fake.set_behavior(|b| b.deny = None);
    assert_eq!(
        c.get(format!("{}/v2/", fake.url()))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
}

#[tokio::test]
async fn rejected_manifest_media_types() {
    let fake = FakeRegistry::start(Behavior {
        reject_manifest_media_types: HashSet::from([OCI_MANIFEST.to_owned()]),
        ..Behavior::default()
    })
    .await
    .unwrap();
    let manifest = image_manifest(&fake, 1);
    let resp = client()
        .put(format!("{}/v2/r/manifests/t", fake.url()))
        .header("content-type", OCI_MANIFEST)
        .body(manifest)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    assert_eq!(error_code(resp).await, "MANIFEST_INVALID");
}

#[tokio::test]
async fn vanishing_tags_are_listed_but_unknown() {
    let fake = FakeRegistry::start(Behavior::default()).await.unwrap();
    let manifest = image_manifest(&fake, 2);
    let digest = fake.put_manifest("r", Some("gone"), OCI_MANIFEST, manifest);
    fake.put_manifest("r", Some("here"), OCI_MANIFEST, image_manifest(&fake, 3));
    fake.set_behavior(|b| {
        b.vanish_after_list.insert("gone".into());
    });
    let c = client();
    let resp = c
        .get(format!("{}/v2/r/tags/list", fake.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(
        body_json(resp).await["tags"],
        serde_json::json!(["gone", "here"])
    );
    for m in [M::GET, M::HEAD] {
        let resp = c
            .request(m, format!("{}/v2/r/manifests/gone", fake.url()))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 404);
    }
    let resp = c
        .get(format!("{}/v2/r/manifests/gone", fake.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(error_code(resp).await, "MANIFEST_UNKNOWN");
    // By digest it is still there, and other tags are unaffected.
    let resp = c
        .get(format!("{}/v2/r/manifests/{digest}", fake.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let resp = c
        .get(format!("{}/v2/r/manifests/here", fake.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
}

#[tokio::test]
async fn retry_after_then_success() {
    let fake = FakeRegistry::start(Behavior {
        retry_after: Some((2, "1".into())),
        ..Behavior::default()
    })
    .await
    .unwrap();
    let c = client();
    let url = format!("{}/v2/", fake.url());
    for _ in 0..2 {
        let resp = c.get(&url).send().await.unwrap();
        assert_eq!(resp.status(), 429);
        assert_eq!(header(&resp, "retry-after"), "1");
        assert_eq!(error_code(resp).await, "TOOMANYREQUESTS");
    }
    assert_eq!(c.get(&url).send().await.unwrap().status(), 200);
    // Changing the setting re-arms it; unrelated changes do not.
    let date = "Wed, 21 Oct 2015 07:28:00 GMT";
    fake.set_behavior(|b| b.retry_after = Some((1, date.into())));
    let resp = c.get(&url).send().await.unwrap();
    assert_eq!(header(&resp, "retry-after"), date);
    fake.set_behavior(|b| b.mount_answers_202 = true);
    assert_eq!(c.get(&url).send().await.unwrap().status(), 200);
}

#[tokio::test]
async fn mounts_201_or_202() {
    let fake = FakeRegistry::start(Behavior::default()).await.unwrap();
    let digest = fake.put_blob(b"shared layer".to_vec());
    let c = client();
    let mount = format!(
        "{}/v2/dst/blobs/uploads/?mount={digest}&from=src",
        fake.url()
    );
    let resp = c.post(&mount).send().await.unwrap();
    assert_eq!(resp.status(), 201);
    assert_eq!(header(&resp, "docker-content-digest"), digest);
    assert_eq!(
        header(&resp, "location"),
        format!("{}/v2/dst/blobs/{digest}", fake.url())
    );

    let unknown = sha256_digest(b"nope");
    let resp = c
        .post(format!(
            "{}/v2/dst/blobs/uploads/?mount={unknown}&from=src",
            fake.url()
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);
    assert!(resp.headers().contains_key("docker-upload-uuid"));

    fake.set_behavior(|b| {
        b.mount_answers_202 = true;
        b.relative_locations = true;
    });
    let resp = c.post(&mount).send().await.unwrap();
    assert_eq!(resp.status(), 202);
    let loc = header(&resp, "location");
    assert!(loc.starts_with("/v2/dst/blobs/uploads/"), "{loc}");
    // The session works: cancel it as a client falling back would.
    let resp = c
        .delete(format!("{}{loc}", fake.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 204);
}

#[tokio::test]
async fn request_log_records_method_path_and_query() {
    let fake = FakeRegistry::start(Behavior::default()).await.unwrap();
    let c = client();
    c.get(format!("{}/v2/", fake.url())).send().await.unwrap();
    c.head(format!("{}/v2/a/b/manifests/latest", fake.url()))
        .send()
        .await
        .unwrap();
    c.get(format!("{}/v2/_catalog?n=1", fake.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(
        fake.request_log(),
        vec![
            ("GET".to_owned(), "/v2/".to_owned()),
            ("HEAD".to_owned(), "/v2/a/b/manifests/latest".to_owned()),
            ("GET".to_owned(), "/v2/_catalog?n=1".to_owned()),
        ]
    );
    fake.clear_request_log();
    assert!(fake.request_log().is_empty());
}

#[tokio::test]
async fn authorization_log_records_each_requests_credentials() {
    let fake = FakeRegistry::start(Behavior::default()).await.unwrap();
    let c = client();
    c.get(format!("{}/v2/", fake.url())).send().await.unwrap();
    c.get(format!("{}/v2/", fake.url()))
        .header("authorization", "Basic eDp5")
        .send()
        .await
        .unwrap();
    assert_eq!(
        fake.authorization_log(),
        vec![
            ("GET".to_owned(), "/v2/".to_owned(), None),
            (
                "GET".to_owned(),
                "/v2/".to_owned(),
                Some("Basic eDp5".to_owned())
            ),
        ]
    );
}

#[tokio::test]
async fn locations_links_redirects_and_realms_can_name_another_origin() {
    let fake = FakeRegistry::start(Behavior {
        upload_location_origin: Some("http://elsewhere:1".into()),
        link_origin: Some("http://elsewhere:2".into()),
        redirect_blob_gets_to: Some("http://elsewhere:3".into()),
        token_realm: Some("http://elsewhere:4/token".into()),
        max_page_size: Some(1),
        ..Default::default()
    })
    .await
    .unwrap();
    let m = image_manifest(&fake, 1);
    fake.put_manifest("a", Some("v1"), OCI_MANIFEST, m.clone());
    fake.put_manifest("a", Some("v2"), OCI_MANIFEST, m);
    let c = Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let resp = c
        .post(format!("{}/v2/a/blobs/uploads/", fake.url()))
        .send()
        .await
        .unwrap();
    assert!(header(&resp, "location").starts_with("http://elsewhere:1/v2/a/blobs/uploads/"));
    let resp = c
        .get(format!("{}/v2/a/tags/list?n=10", fake.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(
        header(&resp, "link"),
        "<http://elsewhere:2/v2/a/tags/list?last=v1&n=10>; rel=\"next\""
    );
    assert_eq!(body_json(resp).await["tags"], serde_json::json!(["v1"]));
    let layer = fake.put_blob(vec![1; 100]);
    let resp = c
        .get(format!("{}/v2/a/blobs/{layer}", fake.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 307);
    assert_eq!(
        header(&resp, "location"),
        format!("http://elsewhere:3/v2/a/blobs/{layer}")
    );
    fake.set_behavior(|b| {
        b.require_bearer = Some(BearerSetup {
            service: "fake".into(),
            ..Default::default()
        })
    });
    let resp = c.get(format!("{}/v2/", fake.url())).send().await.unwrap();
    assert!(header(&resp, "www-authenticate").contains("realm=\"http://elsewhere:4/token\""));
}

#[tokio::test]
async fn hostile_lists_are_endless_looping_or_oversized() {
    let fake = FakeRegistry::start(Behavior {
        hostile_lists: Some(HostileList::Endless { per_page: 2 }),
        token_expires_in: Some(u64::MAX),
        ..Default::default()
    })
    .await
    .unwrap();
    let c = client();
    let page = |url: String| {
        let c = c.clone();
        async move { c.get(url).send().await.unwrap() }
    };
    let resp = page(format!("{}/v2/_catalog?last=p7&n=5", fake.url())).await;
    assert_eq!(
        header(&resp, "link"),
        "</v2/_catalog?last=p8&n=5>; rel=\"next\""
    );
    assert_eq!(
        body_json(resp).await["repositories"],
        serde_json::json!(["p7-0", "p7-1"])
    );
    fake.put_manifest("a", Some("v1"), OCI_MANIFEST, image_manifest(&fake, 2));
    fake.set_behavior(|b| b.hostile_lists = Some(HostileList::LinkToFirst));
    let resp = page(format!("{}/v2/a/tags/list?last=v0&n=5", fake.url())).await;
    assert_eq!(header(&resp, "link"), "</v2/a/tags/list?n=5>; rel=\"next\"");
    fake.set_behavior(|b| b.hostile_lists = Some(HostileList::Oversized { bytes: 1000 }));
    let resp = page(format!("{}/v2/a/tags/list", fake.url())).await;
    assert!(resp.bytes().await.unwrap().len() > 1000);
    fake.set_behavior(|b| {
        b.require_bearer = Some(BearerSetup {
            service: "fake".into(),
            ..Default::default()
        })
    });
    let token = body_json(page(format!("{}/token?service=fake", fake.url())).await).await;
    assert_eq!(token["expires_in"], serde_json::json!(u64::MAX));
}
