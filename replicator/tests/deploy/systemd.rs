//! The systemd units (`deploy/systemd`) are valid for Debian 12's systemd and confine the
//! services: `systemd-analyze verify` accepts them as shipped (with `ExecStart` pointed at this
//! build's binaries, the only change), and `systemd-analyze security` rates each one's exposure
//! at most [`MAX_EXPOSURE`] ("OK" on its 0–10 scale; a unit with none of the hardening options
//! rates 9.6, "UNSAFE").

use std::path::Path;
use std::process::Command;

const UNITS: [&str; 2] = ["ferry-agent.service", "ferry-worker@.service"];

/// The highest exposure `systemd-analyze security` may give a shipped unit.
const MAX_EXPOSURE: f64 = 2.0;

/// The unit, as shipped, with its binaries replaced by this build's, written to `dir`.
fn installed_copy(unit: &str, dir: &Path) -> std::path::PathBuf {
    let bin = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/debug");
    let text = super::read(&format!("systemd/{unit}"))
        .replace("/usr/local/bin/", &format!("{}/", bin.display()));
    let path = dir.join(unit);
    std::fs::write(&path, text).unwrap();
    path
}

fn systemd_analyze(args: &[&str], unit: &Path) -> (bool, String) {
    let out = Command::new("systemd-analyze")
        .args(args)
        .arg(unit)
        .output()
        .expect("systemd-analyze runs (Debian's systemd package)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn the_units_verify_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    for unit in UNITS {
        // An instance of the template (ferry-worker@1.service) is what systemd would load.
        let path = installed_copy(unit, dir.path());
        let path = if unit.ends_with("@.service") {
            let instance = dir.path().join(unit.replace("@.", "@1."));
            std::fs::rename(&path, &instance).unwrap();
            instance
        } else {
            path
        };
        let (ok, text) = systemd_analyze(&["verify", "--man=no"], &path);
        assert!(ok && text.trim().is_empty(), "{unit}:\n{text}");
    }
}

#[test]
fn the_units_confine_the_services() {
    let dir = tempfile::tempdir().unwrap();
    for unit in UNITS {
        let path = installed_copy(unit, dir.path());
        let (ok, text) = systemd_analyze(&["security", "--offline=true", "--no-pager"], &path);
        assert!(ok, "{unit}:\n{text}");
        let exposure: f64 = text
            .lines()
            .find_map(|l| l.split("Overall exposure level for ").nth(1))
            .and_then(|rest| rest.split(": ").nth(1))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{unit}: no exposure level in:\n{text}"));
        assert!(
            exposure <= MAX_EXPOSURE,
            "{unit}: exposure {exposure} > {MAX_EXPOSURE}:\n{text}"
        );
    }
}
