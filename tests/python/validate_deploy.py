"""Checks deploy/ without a container engine; run by tests/deploy.rs with the venv of
scripts/install-test-python.sh.

    python validate_deploy.py REPO_ROOT EXTRACT_DIR

- every YAML and JSON file under deploy/ parses;
- deploy/k8s: each object passes kubernetes-validate in strict mode (the Kubernetes OpenAPI
  schemas that the package ships, so unknown or misspelt fields fail), and the objects
  agree with each other: the Deployment mounts the ConfigMap, reads existing Secret keys,
  probes /healthz and /readyz on its HTTP port, carries the scrape annotations, and the
  Service selects its pods; the ConfigMap's catalog is deploy/catalog.example.toml verbatim;
- deploy/docker-compose.yml: passes the Compose specification's JSON schema (as vendored by
  check-jsonschema), every file it builds or mounts exists, images are pinned, depends_on
  names existing services; the Dockerfile it builds copies files that exist and ends as a
  non-root user;
- Grafana: the dashboard's data source is the provisioned one, and the provisioned
  dashboard folder is where compose mounts deploy/grafana/dashboards.

Writes the ConfigMap's files into EXTRACT_DIR (for `dynsig check-config`) and the Secret's
variables as EXTRACT_DIR/env.json. Prints every problem and exits 1 if there is any.
"""

import importlib.resources
import json
import pathlib
import sys

import jsonschema
import kubernetes_validate
import yaml

K8S_VERSION = "1.37.0"

problems = []


def check(ok, message):
    if not ok:
        problems.append(message)
    return ok


def load_yaml_docs(path):
    try:
        return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    except yaml.YAMLError as e:
        check(False, f"{path}: not valid YAML: {e}")
        return []


def check_k8s(deploy, extract):
    objects = {}
    for path in sorted((deploy / "k8s").glob("*.yaml")):
        for doc in load_yaml_docs(path):
            if doc.get("kind") == "Kustomization":
                for resource in doc.get("resources", []):
                    check((path.parent / resource).is_file(), f"{path}: resource {resource} missing")
                continue
            try:
                kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
            except kubernetes_validate.ValidationError as e:
                check(False, f"{path}: {doc.get('kind')} {'.'.join(map(str, e.path))}: {e.message}")
            objects[(doc["kind"], doc["metadata"]["name"])] = doc

    deployment = objects.get(("Deployment", "dynsig"))
    configmap = objects.get(("ConfigMap", "dynsig"))
    if not (check(deployment, "k8s: no Deployment dynsig") and check(configmap, "k8s: no ConfigMap dynsig")):
        return
    pod = deployment["spec"]["template"]
    container = pod["spec"]["containers"][0]
    ports = {p["name"]: p["containerPort"] for p in container.get("ports", [])}

    for volume in pod["spec"].get("volumes", []):
        if "configMap" in volume:
            check(("ConfigMap", volume["configMap"]["name"]) in objects, f"k8s: volume {volume['name']}: no such ConfigMap")
    env = {}
    for var in container.get("env", []):
        ref = var.get("valueFrom", {}).get("secretKeyRef")
        if ref:
            secret = objects.get(("Secret", ref["name"]))
            if check(secret, f"k8s: env {var['name']}: no Secret {ref['name']}"):
                values = {**secret.get("stringData", {})}
                check(ref["key"] in values, f"k8s: env {var['name']}: Secret {ref['name']} has no key {ref['key']}")
                env[var["name"]] = values.get(ref["key"], "")
    for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
        get = container.get(probe, {}).get("httpGet", {})
        check(get.get("path") == path, f"k8s: {probe} must GET {path}")
        check(get.get("port") in ports or get.get("port") in ports.values(), f"k8s: {probe} port is not a container port")
    annotations = pod["metadata"].get("annotations", {})
    check(annotations.get("prometheus.io/scrape") == "true", "k8s: pod lacks prometheus.io/scrape")
    check(annotations.get("prometheus.io/path") == "/metrics", "k8s: prometheus.io/path is not /metrics")
    check(int(annotations.get("prometheus.io/port", 0)) in ports.values(), "k8s: prometheus.io/port is not a container port")
    service = objects.get(("Service", "dynsig"))
    if check(service, "k8s: no Service dynsig"):
        labels = pod["metadata"]["labels"]
        check(all(labels.get(k) == v for k, v in service["spec"]["selector"].items()), "k8s: Service selects no dynsig pod")

    catalog = (deploy / "catalog.example.toml").read_text()
    check(configmap["data"].get("catalog.toml") == catalog,
          "k8s: ConfigMap catalog.toml differs from deploy/catalog.example.toml")
    for name, text in configmap["data"].items():
        (extract / name).write_text(text)
    (extract / "env.json").write_text(json.dumps(env))


def check_compose(deploy):
    path = deploy / "docker-compose.yml"
    (compose,) = load_yaml_docs(path) or [None]
    if not compose:
        return {}
    schema = json.loads(
        (importlib.resources.files("check_jsonschema.builtin_schemas.vendor") / "compose-spec.json").read_text()
    )
    validator = jsonschema.validators.validator_for(schema)(schema)
    for error in validator.iter_errors(compose):
        check(False, f"{path}: {'.'.join(map(str, error.absolute_path))}: {error.message}")
    services = compose["services"]
    for name, service in services.items():
        image = service.get("image")
        if image:
            check(":" in image and not image.endswith(":latest"), f"compose: {name}: image {image} is not pinned")
        build = service.get("build")
        if build:
            context = deploy / build["context"]
            dockerfile = context / build.get("dockerfile", "Dockerfile")
            if check(dockerfile.is_file(), f"compose: {name}: no Dockerfile in {context}"):
                check_dockerfile(context, dockerfile)
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                check((deploy / source).exists(), f"compose: {name}: mounts missing {source}")
        for dependency in service.get("depends_on", []):
            check(dependency in services, f"compose: {name}: depends on unknown service {dependency}")
    return services


def check_dockerfile(context, dockerfile):
    """COPY sources (from the build context) exist, and the last USER is not root."""
    users = []
    for line in dockerfile.read_text().replace("\\\n", " ").splitlines():
        words = line.split()
        if words[:1] == ["COPY"] and not any(w.startswith("--from") for w in words):
            for source in [w for w in words[1:-1] if not w.startswith("--")]:
                check((context / source).exists(), f"{dockerfile}: COPY {source}: not in the build context")
        if words[:1] == ["USER"]:
            users.append(words[1])
    check(users and users[-1].split(":")[0] not in ("root", "0"), f"{dockerfile}: the image must run as a non-root USER")


def check_grafana(deploy, services):
    grafana = deploy / "grafana"
    sources = [s for f in (grafana / "provisioning/datasources").glob("*.yml") for d in load_yaml_docs(f) for s in d["datasources"]]
    uids = {s["uid"] for s in sources}
    providers = [p for f in (grafana / "provisioning/dashboards").glob("*.yml") for d in load_yaml_docs(f) for p in d["providers"]]
    mounts = {v.split(":")[1]: v.split(":")[0] for v in services.get("grafana", {}).get("volumes", [])}
    for provider in providers:
        check(mounts.get(provider["options"]["path"]) == "./grafana/dashboards",
              f"grafana: provider {provider['name']} reads {provider['options']['path']}, where compose mounts no dashboards")
    for path in sorted((grafana / "dashboards").glob("*.json")):
        dashboard = json.loads(path.read_text())
        for panel in dashboard["panels"]:
            for target in [panel] + panel.get("targets", []):
                uid = target.get("datasource", {}).get("uid")
                check(uid is None or uid in uids, f"{path}: panel {panel['title']}: unknown data source {uid}")


def main():
    root, extract = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
    deploy = root / "deploy"
    files = sorted(p for p in deploy.rglob("*") if p.suffix in (".yml", ".yaml", ".json"))
    for path in files:
        if path.suffix == ".json":
            try:
                json.loads(path.read_text())
            except ValueError as e:
                check(False, f"{path}: not valid JSON: {e}")
        else:
            load_yaml_docs(path)
    check_k8s(deploy, extract)
    check_grafana(deploy, check_compose(deploy))
    for problem in problems:
        print(problem)
    print(f"{len(files)} files under deploy/ checked, {len(problems)} problems")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
