//! The Kubernetes manifests (deploy/k8s): every overlay rendered by `kubectl
//! kustomize`, validated offline against the Kubernetes schemas, checked for
//! what it promises and by checkov; tests/deploy/check_manifests.py does the
//! work with the deploy venv (scripts/requirements-deploy.txt, found through
//! `SDSERVE_DEPLOY_PYTHON`, else `.venv-deploy/` at the repository root).

mod common;

use std::path::PathBuf;
use std::process::Command;

use common::deploy;

fn deploy_python() -> PathBuf {
    if let Some(python) = std::env::var_os("SDSERVE_DEPLOY_PYTHON") {
        return PathBuf::from(python);
    }
    let venv = common::repo_root().join(".venv-deploy/bin/python");
    assert!(
        venv.is_file(),
        "no deploy venv: python3 -m venv .venv-deploy && .venv-deploy/bin/pip install \
         -r scripts/requirements-deploy.txt (scripts/test.sh does it), or set \
         SDSERVE_DEPLOY_PYTHON; SDSERVE_SKIP_DEPLOY_TESTS=1 skips"
    );
    venv
}

#[test]
fn every_overlay_renders_validates_and_passes_checkov() {
    if deploy::skipped("every_overlay_renders_validates_and_passes_checkov") {
        return;
    }
    let out = Command::new(deploy_python())
        .arg(common::repo_root().join("tests/deploy/check_manifests.py"))
        .args(["--sdserve", env!("CARGO_BIN_EXE_sdserve")])
        .output()
        .expect("the deploy venv's python runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for overlay in [
        "cpu",
        "nvidia",
        "mig",
        "hami",
        "cgpu",
        "gvisor",
        "keda",
        "keda-scale-to-zero",
    ] {
        assert!(
            stdout.contains(&format!("{overlay}: ")),
            "{overlay} not checked:\n{stdout}"
        );
    }
    assert!(stdout.contains("checkov: "), "{stdout}");
}
