//! The README's first command (`deploy/local/quickstart.sh`), run as a newcomer would, with debug
//! binaries: two regions on this machine, an image and its signature pushed into region a with
//! skopeo arrive in region b by themselves, and so does the delete. The script checks every
//! arrival with skopeo against both registries and exits non-zero when one is missing; this test
//! holds it to that and to cleaning up after itself.

use std::process::Command;

#[test]
fn the_quickstart_replicates_an_image_its_signature_and_its_delete_across_two_regions() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let out = Command::new("bash")
        .arg("deploy/local/quickstart.sh")
        .current_dir(&root)
        .env("FERRY_PROFILE", "debug")
        .output()
        .expect("bash runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "quickstart failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    for line in [
        "region b serves demo/app:1.0 = sha256:",
        "region a forwarded",
        "a-to-b  event_based  succeeded",
        "region b no longer serves demo/app:1.0",
    ] {
        assert!(stdout.contains(line), "{line:?} not in:\n{stdout}");
    }
    // Everything it started is gone: its temporary directory holds no process's files any more.
    let work = stdout
        .lines()
        .find_map(|l| l.strip_prefix("    logs in "))
        .expect("the script names its work directory");
    assert!(
        !std::path::Path::new(work.trim()).exists(),
        "{work} is left behind"
    );
}
