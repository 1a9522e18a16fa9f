//! The Kubernetes manifests (`deploy/k8s`) as a cluster would take them,
//! checked offline by tools we did not write (from PyPI, pinned in
//! `tests/python/requirements-k8s.txt`): every overlay renders with
//! `kubectl kustomize`, validates strictly against the Kubernetes 1.37
//! schemas (`kubernetes-validate`; the Prometheus Operator's
//! ServiceMonitor has no schema there and is only warned about), and
//! passes checkov's Kubernetes policies — in particular no privileged
//! container, CPU and memory requests and limits, and readiness and
//! liveness probes on every workload. Two checks are skipped, with reason:
//! CKV_K8S_43 (image by digest: a release pins it with `kustomize edit set
//! image`, the repository names a tag) and CKV_K8S_35 (secrets as files:
//! the Redis and PostgreSQL URLs reach the processes as environment
//! variables, which is how they take them today). Each checker is shown
//! to refuse a broken manifest, so a pass means something.

use std::path::{Path, PathBuf};
use std::process::Command;

use obr_tests::python;
use obr_tests::scratch::Scratch;
use serde_json::Value;

const OVERLAYS: [&str; 2] = ["dev", "prod"];
const SKIPPED: &str = "CKV_K8S_43,CKV_K8S_35";
/// checkov's ids for what the issue names: no privileged container (16),
/// CPU and memory requests and limits (10, 11, 12, 13), readiness and
/// liveness probes (9, 8), and no privilege escalation (20).
const REQUIRED: [&str; 8] = [
    "CKV_K8S_16",
    "CKV_K8S_10",
    "CKV_K8S_11",
    "CKV_K8S_12",
    "CKV_K8S_13",
    "CKV_K8S_9",
    "CKV_K8S_8",
    "CKV_K8S_20",
];

fn run(command: &mut Command) -> anyhow::Result<std::process::Output> {
    Ok(command.output()?)
}

/// A venv's console script, run by the venv's python: the script's own
/// `#!` names the directory the venv was built in, before it was renamed.
fn tool(tools: &Path, name: &str) -> Command {
    let mut command = Command::new(tools.join("python"));
    command.arg(tools.join(name));
    command
}

fn render(tools: &Path, overlay: &str, into: &Path) -> anyhow::Result<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy/k8s/overlays")
        .join(overlay);
    let output = run(Command::new(tools.join("kubectl"))
        .arg("kustomize")
        .arg(&dir))?;
    anyhow::ensure!(
        output.status.success(),
        "kubectl kustomize {overlay}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let file = into.join(format!("{overlay}.yaml"));
    std::fs::write(&file, &output.stdout)?;
    Ok(file)
}

fn validate(tools: &Path, file: &Path) -> anyhow::Result<std::process::Output> {
    run(tool(tools, "kubernetes-validate")
        .args(["--strict", "--kubernetes-version", "1.37.0", "--no-warn"])
        .arg(file))
}

fn checkov(tools: &Path, file: &Path) -> anyhow::Result<Value> {
    let output = run(tool(tools, "checkov")
        .arg("-f")
        .arg(file)
        .args(["--framework", "kubernetes", "--skip-download", "-o", "json"])
        .args(["--skip-check", SKIPPED]))?;
    Ok(serde_json::from_slice(&output.stdout)?)
}

#[test]
fn every_overlay_renders_validates_and_passes_the_policies() -> anyhow::Result<()> {
    let tools = python::k8s_tools()?;
    let scratch = Scratch::new("k8s-manifests")?;
    for overlay in OVERLAYS {
        let file = render(&tools, overlay, scratch.path())?;
        let text = std::fs::read_to_string(&file)?;
        for kind in [
            "Deployment",
            "StatefulSet",
            "HorizontalPodAutoscaler",
            "PodDisruptionBudget",
            "NetworkPolicy",
        ] {
            assert!(
                text.contains(&format!("kind: {kind}\n")),
                "{overlay} has no {kind}"
            );
        }

        let valid = validate(&tools, &file)?;
        assert!(
            valid.status.success(),
            "{overlay} breaks the Kubernetes schemas:\n{}{}",
            String::from_utf8_lossy(&valid.stdout),
            String::from_utf8_lossy(&valid.stderr)
        );

        let report = checkov(&tools, &file)?;
        let failed = &report["results"]["failed_checks"];
        assert_eq!(
            failed.as_array().map_or(0, Vec::len),
            0,
            "{overlay} fails checkov: {failed:#}"
        );
        // The policies that matter most ran, on every workload.
        let passed = report["results"]["passed_checks"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let workloads = ["Deployment.", "StatefulSet."];
        let checked = |id: &str, resource: &str| {
            passed
                .iter()
                .any(|c| c["check_id"] == id && c["resource"].as_str() == Some(resource))
        };
        let resources: Vec<String> = passed
            .iter()
            .filter_map(|c| c["resource"].as_str())
            .filter(|r| workloads.iter().any(|w| r.starts_with(w)))
            .map(str::to_owned)
            .collect();
        assert!(
            resources.iter().any(|r| r.ends_with(".obr-relay")),
            "{resources:?}"
        );
        assert!(
            resources.iter().any(|r| r.ends_with(".obr-signer")),
            "{resources:?}"
        );
        for resource in &resources {
            for id in REQUIRED {
                assert!(
                    checked(id, resource),
                    "{overlay}: {id} did not pass on {resource}"
                );
            }
        }
    }

    // The checkers refuse what they should: a misspelt field, and a
    // privileged container.
    let file = render(&tools, "prod", scratch.path())?;
    let text = std::fs::read_to_string(&file)?;
    let misspelt = scratch.join("misspelt.yaml");
    std::fs::write(
        &misspelt,
        text.replacen("  replicas: 3\n", "  replica: 3\n", 1),
    )?;
    assert!(
        !validate(&tools, &misspelt)?.status.success(),
        "a misspelt field validated"
    );
    let privileged = scratch.join("privileged.yaml");
    std::fs::write(
        &privileged,
        text.replacen("readOnlyRootFilesystem: true", "privileged: true", 1),
    )?;
    let report = checkov(&tools, &privileged)?;
    let failed: Vec<&str> = report["results"]["failed_checks"]
        .as_array()
        .map(|f| f.iter().filter_map(|c| c["check_id"].as_str()).collect())
        .unwrap_or_default();
    assert!(
        failed.contains(&"CKV_K8S_16"),
        "a privileged container passed: {failed:?}"
    );
    Ok(())
}
