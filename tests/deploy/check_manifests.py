"""Checks the Kubernetes manifests in deploy/k8s, offline.

Run by crates/sdserve/tests/deploy_manifests.rs with the deploy venv's Python
(scripts/requirements-deploy.txt):

    python tests/deploy/check_manifests.py --sdserve target/debug/sdserve

For every overlay in deploy/k8s/overlays it
  1. renders it with `kubectl kustomize` (kubectl's built-in kustomize);
  2. validates each object against the Kubernetes OpenAPI schemas
     (kubernetes-validate, strict: unknown fields fail) for the oldest version the
     manifests need (1.30: the preStop `sleep` action) and the newest bundled; the
     KEDA ScaledObject, a custom resource without a bundled schema, against
     tests/deploy/schemas/keda-scaledobject.json;
  3. checks what the deployment promises (probes, drain vs grace period, non-root,
     read-only root, limits, the device each overlay targets) and that every
     SDSERVE_* variable set is one `sdserve serve --help` documents;
  4. runs checkov on the rendered files with deploy/k8s/checkov.yaml (whose skips
     are justified there) and fails on any failed check.
Exits 1 with one line per problem.
"""

import argparse
import json
import pathlib
import re
import subprocess
import sys
import tempfile

import jsonschema
import kubernetes_validate
import yaml

ROOT = pathlib.Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
KUBE_VERSIONS = ["1.30.0", kubernetes_validate.latest_version()]
SCALEDOBJECT_SCHEMA = json.loads(
    (ROOT / "tests" / "deploy" / "schemas" / "keda-scaledobject.json").read_text()
)

# What each overlay is for: a resource its container must be limited by, the
# image tag, and other fields that must be there.
EXPECTED = {
    "cpu": {"tag": "cpu", "device": "cpu"},
    "nvidia": {"tag": "cuda", "device": "cuda", "resource": "nvidia.com/gpu"},
    "mig": {"tag": "cuda", "device": "cuda", "resource": "nvidia.com/mig-2g.20gb"},
    "hami": {"tag": "cuda", "device": "cuda", "resource": "nvidia.com/gpumem"},
    "cgpu": {"tag": "cuda", "device": "cuda", "resource": "aliyun.com/gpu-mem"},
    "gvisor": {"tag": "cpu", "device": "cpu", "runtime_class": "gvisor"},
    "keda": {"tag": "cpu", "device": "cpu", "min_replicas": 1},
    "keda-scale-to-zero": {"tag": "cpu", "device": "cpu", "min_replicas": 0},
}


def render(overlay: pathlib.Path) -> list:
    out = subprocess.run(
        ["kubectl", "kustomize", str(overlay)], capture_output=True, text=True
    )
    if out.returncode != 0:
        raise RuntimeError(f"kubectl kustomize {overlay} failed: {out.stderr}")
    return [doc for doc in yaml.safe_load_all(out.stdout) if doc]


def validate_schema(doc: dict) -> list:
    what = f"{doc.get('kind')}/{doc.get('metadata', {}).get('name')}"
    if doc.get("kind") == "ScaledObject":
        try:
            jsonschema.validate(doc, SCALEDOBJECT_SCHEMA)
        except jsonschema.ValidationError as e:
            return [f"{what}: {e.message} at {list(e.absolute_path)}"]
        return []
    problems = []
    for version in KUBE_VERSIONS:
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as e:
            problems.append(f"{what} (Kubernetes {version}): {e.message} at {list(e.path)}")
        except kubernetes_validate.SchemaNotFoundError as e:
            problems.append(f"{what} (Kubernetes {version}): no schema: {e}")
    return problems


def serve_variables(sdserve: str) -> set:
    help_text = subprocess.run(
        [sdserve, "serve", "--help"], capture_output=True, text=True, check=True
    ).stdout
    return set(re.findall(r"\[env: (SDSERVE_[A-Z_]+)", help_text))


def check_promises(name: str, docs: list, variables: set) -> list:
    problems = []
    want = EXPECTED.get(name)
    if want is None:
        return [f"overlay {name} has no entry in EXPECTED: say what it is for"]
    by_kind = {}
    for doc in docs:
        by_kind.setdefault(doc["kind"], []).append(doc)
    config = {}
    for cm in by_kind.get("ConfigMap", []):
        config.update(cm.get("data", {}))
    unknown = sorted(k for k in config if k.startswith("SDSERVE_") and k not in variables)
    if unknown:
        problems.append(f"{name}: variables sdserve does not read: {unknown}")
    if config.get("SDSERVE_DEVICE") != want["device"]:
        problems.append(f"{name}: SDSERVE_DEVICE is {config.get('SDSERVE_DEVICE')}")
    deployments = by_kind.get("Deployment", [])
    if len(deployments) != 1:
        return problems + [f"{name}: {len(deployments)} Deployments"]
    pod = deployments[0]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    if not container["image"].endswith(":" + want["tag"]):
        problems.append(f"{name}: image {container['image']}, want tag {want['tag']}")
    probes = {
        kind: container.get(kind, {}).get("httpGet", {}).get("path")
        for kind in ("startupProbe", "readinessProbe", "livenessProbe")
    }
    if probes != {"startupProbe": "/readyz", "readinessProbe": "/readyz", "livenessProbe": "/livez"}:
        problems.append(f"{name}: probes {probes}")
    drain = int(config.get("SDSERVE_DRAIN_TIMEOUT", "120"))
    grace = pod.get("terminationGracePeriodSeconds", 30)
    # preStop sleep + drain + the 3 s forced close must fit the grace period.
    pre_stop = container.get("lifecycle", {}).get("preStop", {}).get("sleep", {}).get("seconds", 0)
    if grace < pre_stop + drain + 3:
        problems.append(f"{name}: grace {grace}s < preStop {pre_stop}s + drain {drain}s + 3s")
    security = container.get("securityContext", {})
    for key, value in [
        ("readOnlyRootFilesystem", True),
        ("allowPrivilegeEscalation", False),
        ("runAsNonRoot", True),
    ]:
        if security.get(key) is not value:
            problems.append(f"{name}: securityContext.{key} is {security.get(key)}")
    if pod.get("securityContext", {}).get("runAsUser") != 10001:
        problems.append(f"{name}: pod does not run as the image's user 10001")
    limits = container.get("resources", {}).get("limits", {})
    requests = container.get("resources", {}).get("requests", {})
    if "memory" not in limits or "memory" not in requests:
        problems.append(f"{name}: memory requests/limits missing (the memory plan's budget)")
    if "resource" in want and want["resource"] not in limits:
        problems.append(f"{name}: no {want['resource']} limit: {sorted(limits)}")
    if pod.get("runtimeClassName") != want.get("runtime_class"):
        problems.append(f"{name}: runtimeClassName {pod.get('runtimeClassName')}")
    annotations = deployments[0]["spec"]["template"]["metadata"].get("annotations", {})
    if annotations.get("prometheus.io/scrape") != "true" or annotations.get("prometheus.io/path") != "/metrics":
        problems.append(f"{name}: no Prometheus scrape annotations")
    mounts = {m["mountPath"] for m in container.get("volumeMounts", [])}
    for path in ("/data/huggingface", "/data/models", "/data/outputs", "/tmp"):
        if path not in mounts:
            problems.append(f"{name}: nothing mounted at {path} (read-only root)")
    scaled = by_kind.get("ScaledObject", [])
    if "min_replicas" in want:
        if len(scaled) != 1:
            problems.append(f"{name}: {len(scaled)} ScaledObjects")
        else:
            spec = scaled[0]["spec"]
            if spec.get("minReplicaCount") != want["min_replicas"]:
                problems.append(f"{name}: minReplicaCount {spec.get('minReplicaCount')}")
            if spec["scaleTargetRef"]["name"] != deployments[0]["metadata"]["name"]:
                problems.append(f"{name}: ScaledObject targets {spec['scaleTargetRef']['name']}")
            if not any("sd_queue_size" in t["metadata"].get("query", "") for t in spec["triggers"]):
                problems.append(f"{name}: no trigger on sd_queue_size")
    elif scaled:
        problems.append(f"{name}: unexpected ScaledObject")
    return problems


def run_checkov(checkov: str, rendered: pathlib.Path) -> list:
    out = subprocess.run(
        [checkov, "--config-file", str(K8S / "checkov.yaml"), "-d", str(rendered),
         "--quiet", "-o", "json"],
        capture_output=True, text=True,
    )
    try:
        reports = json.loads(out.stdout)
    except json.JSONDecodeError:
        return [f"checkov gave no JSON (exit {out.returncode}): {out.stdout[-2000:]} {out.stderr[-2000:]}"]
    if isinstance(reports, dict):
        reports = [reports]
    problems = []
    passed = 0
    for report in reports:
        results = report.get("results", {})
        passed += report.get("summary", {}).get("passed", 0)
        for failed in results.get("failed_checks", []):
            problems.append(
                f"checkov {failed['check_id']} ({failed['check_name']}) on {failed['resource']} in {failed['file_path']}"
            )
    if passed == 0 and not problems:
        problems.append(f"checkov passed nothing: did it read the files? {out.stdout[-500:]}")
    print(f"checkov: {passed} passed, {len(problems)} failed")
    return problems


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sdserve", required=True, help="the sdserve binary (for its variables)")
    parser.add_argument("--checkov", default=str(pathlib.Path(sys.executable).parent / "checkov"))
    args = parser.parse_args()

    variables = serve_variables(args.sdserve)
    if len(variables) < 29:
        print(f"sdserve serve --help lists only {len(variables)} variables")
        return 1
    problems = []
    overlays = sorted(p for p in (K8S / "overlays").iterdir() if p.is_dir())
    missing = sorted(set(EXPECTED) - {p.name for p in overlays})
    if missing:
        problems.append(f"overlays missing: {missing}")
    with tempfile.TemporaryDirectory() as tmp:
        rendered = pathlib.Path(tmp)
        for overlay in overlays:
            docs = render(overlay)
            (rendered / f"{overlay.name}.yaml").write_text(yaml.safe_dump_all(docs))
            for doc in docs:
                problems += validate_schema(doc)
            problems += check_promises(overlay.name, docs, variables)
            print(f"{overlay.name}: {len(docs)} objects rendered and validated")
        for extra in (K8S / "overlays" / "gvisor" / "runtimeclass.yaml",):
            for doc in yaml.safe_load_all(extra.read_text()):
                problems += validate_schema(doc)
        problems += run_checkov(args.checkov, rendered)
    for problem in problems:
        print("PROBLEM:", problem)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
