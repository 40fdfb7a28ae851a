"""deploy/: the Dockerfiles linted (hadolint) and read against the project's pins, the image's entrypoint and health
check run, the podman settings, every kustomization under deploy/k8s rendered (`kubectl kustomize`) and validated
against the Kubernetes schemas (kubernetes-validate), and each rendered Deployment read against what `korasr serve`
really has: its routes, its flags, the environment variables it reads. No image is built and no cluster is needed."""

from __future__ import annotations

import http.server
import importlib.util
import inspect
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import threading
import tomllib
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
ENTRYPOINT = DEPLOY / "docker" / "entrypoint.sh"
HEALTHCHECK = DEPLOY / "docker" / "healthcheck.py"
# The oldest Kubernetes the manifests are written for (the preStop sleep is an exec, not the 1.30+ sleep action) and
# the newest kubernetes-validate knows.
KUBERNETES_VERSIONS = ("1.30.0", "latest")
# Set by korasr serve itself for its worker processes: never a deployment's to set.
INTERNAL_ENV = {"KORASR_SERVE_CONFIG"}
# The modules `korasr serve` runs, whose environment reads make the names a deployment may set.
SERVE_SOURCES = ("korasr/serve", "korasr/runtime", "korasr/registry.py", "korasr/release.py", "korasr/errors.py")
ENV_READ = re.compile(r"""(?:environ\.get\(|environ\[|getenv\()\s*["']([A-Z][A-Z0-9_]+)["']""")
K8S_REF = re.compile(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)")  # Kubernetes expands $(NAME) in command and args


def tool(name: str) -> str:
    """A dev-extra tool from this interpreter's venv, else PATH."""
    local = Path(sys.executable).parent / name
    found = str(local) if local.is_file() else shutil.which(name)
    assert found, f"{name} is not installed: pip install -e '.[dev]'"
    return found


# --- the Dockerfiles ---------------------------------------------------------------------------------------------


def instructions(dockerfile: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order, continuation lines joined, comments left out."""
    logical, current = [], ""
    for line in dockerfile.read_text().splitlines():
        if not current and (not line.strip() or line.lstrip().startswith("#")):
            continue
        current += line.rstrip("\\").rstrip() + " " if line.endswith("\\") else line
        if not line.endswith("\\"):
            logical.append(current)
            current = ""
    return [(s.split(None, 1)[0].upper(), s.split(None, 1)[1] if " " in s.strip() else "") for s in logical]


def final_stage(dockerfile: Path) -> list[tuple[str, str]]:
    steps = instructions(dockerfile)
    last_from = max(i for i, (op, _) in enumerate(steps) if op == "FROM")
    return steps[last_from:]


def arg_default(dockerfile: Path, name: str) -> str:
    found = [a.split("=", 1)[1] for op, a in instructions(dockerfile) if op == "ARG" and a.startswith(f"{name}=")]
    assert found, f"{dockerfile.name}: no ARG {name}=default"
    return found[-1].strip('"')


def env_of(steps: list[tuple[str, str]]) -> dict[str, str]:
    env: dict[str, str] = {}
    for op, a in steps:
        if op == "ENV":
            env.update(dict(pair.split("=", 1) for pair in shlex.split(a)))
    return env


def pyproject_pin(extra: str, package: str) -> str:
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    pins = [d.split("==", 1)[1] for d in extras[extra] if re.match(rf"{re.escape(package)}(\[.*\])?==", d)]
    assert pins, f"pyproject.toml: no {package}==… in the {extra} extra"
    return pins[0]


@pytest.mark.parametrize("name", ["Dockerfile", "Dockerfile.train"])
def test_dockerfiles_lint_clean(name):
    lint = subprocess.run([tool("hadolint"), "--no-color", str(DEPLOY / name)], capture_output=True, text=True)
    assert lint.returncode == 0, lint.stdout + lint.stderr


def test_hadolint_does_fail_a_bad_dockerfile(tmp_path):
    """The lint above is not vacuous: unpinned base, apt without --no-install-recommends, root."""
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM debian\nRUN apt-get update && apt-get install -y curl\n")
    lint = subprocess.run([tool("hadolint"), "--no-color", str(bad)], capture_output=True, text=True)
    assert lint.returncode != 0 and "DL3" in lint.stdout


def test_service_image_contract():
    dockerfile = DEPLOY / "Dockerfile"
    steps = final_stage(dockerfile)
    ops = dict(steps)  # the last of each instruction
    user = ops["USER"].split(":")[0]
    assert user.isdigit() and int(user) != 0, "a numeric non-root USER (runAsNonRoot can only check a number)"
    entrypoint = json.loads(ops["ENTRYPOINT"])
    assert entrypoint[:2] == ["tini", "--"], "tini as PID 1 passes SIGTERM on to the server"
    assert "HEALTHCHECK" in ops and "korasr-healthcheck" in ops["HEALTHCHECK"]
    env = env_of(steps)
    assert ops["EXPOSE"].split("/")[0] == env["KORASR_PORT"], "EXPOSE and the port the entrypoint listens on"
    assert env["KORASR_MODEL"] == "/model"
    allowed = serve_env_names() | entrypoint_env_names()
    assert {k for k in env if k.startswith("KORASR_")} <= allowed, "ENV names korasr does not read"
    copied = {a.split()[-2]: a.split()[-1] for op, a in steps if op == "COPY" and "--from" not in a}
    for source, target in copied.items():
        if "$" not in source:
            assert (ROOT / source).exists(), f"COPY {source}: not in the repository"
        if target.startswith("/usr/local/bin/"):
            assert os.access(ROOT / source, os.X_OK), f"{source}: not executable"
    assert (ROOT / arg_default(dockerfile, "EXPORT")).is_dir()
    assert {"korasr-entrypoint", "korasr-healthcheck"} <= {Path(t).name for t in copied.values()}
    build = " ".join(a for op, a in instructions(dockerfile) if op == "RUN")
    assert '".[${EXTRAS}]"' in build and "torch==" not in build and "[train" not in build, "torch-free: an extra"
    assert arg_default(dockerfile, "EXTRAS") == "serve", "the serve extra by default (gateway: Triton's client too)"
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]["optional-dependencies"]
    assert extras["gateway"][-1] == "korasr[serve]" and not any("torch" in d or "nemo" in d for d in extras["gateway"])
    assert arg_default(dockerfile, "MLFLOW") == pyproject_pin("registry", "mlflow"), "the registry extra's MLflow"


def test_service_image_carries_korasr_data_files():
    """A wheel carries only what pyproject.toml declares: every non-Python file of korasr/ must reach the image."""
    declared = json.dumps(tomllib.loads((ROOT / "pyproject.toml").read_text()).get("tool", {}).get("setuptools", {}))
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    for path in (ROOT / "korasr").rglob("*"):
        if path.is_file() and path.suffix not in (".py", ".pyc") and "__pycache__" not in path.parts:
            rel = path.relative_to(ROOT).as_posix()
            assert path.name in declared or rel in dockerfile, f"{rel}: left out of the image (package-data?)"


def test_dockerignore_keeps_what_the_dockerfiles_copy():
    ignored = {
        line.strip()
        for line in (DEPLOY / "Dockerfile.dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    for name in ("Dockerfile", "Dockerfile.train"):
        for op, a in instructions(DEPLOY / name):
            if op == "COPY" and "--from" not in a:
                for source in a.split()[:-1]:
                    assert source.split("/")[0] not in ignored, f"{name}: COPY {source}, which the context leaves out"


def test_training_image_uses_the_setup_pins():
    dockerfile = DEPLOY / "Dockerfile.train"
    makefile = (ROOT / "Makefile").read_text()
    torch = arg_default(dockerfile, "TORCH")
    assert re.search(rf"pip install -q torch=={re.escape(torch)}\n", makefile), "make setup's torch"
    assert torch == pyproject_pin("train", "torch")
    assert arg_default(dockerfile, "KENLM") == re.search(r"KENLM_VERSION := (\S+)", makefile).group(1)
    build = " ".join(a for _, a in instructions(dockerfile))
    assert set(re.search(r"KENLM_DEBS := (.+)", makefile).group(1).split()) <= set(build.split())
    assert '".[train]"' in build and "torch==${TORCH}" in build
    user = dict(final_stage(dockerfile))["USER"].split(":")[0]
    assert user.isdigit() and int(user) != 0


# --- the entrypoint and the health check, run ---------------------------------------------------------------------


def test_entrypoint_turns_the_environment_into_serve_flags(tmp_path):
    """The entrypoint runs for real with a stand-in `korasr` that prints its arguments; they parse as `korasr serve`'s
    (KORASR_MODEL and KORASR_PORT with their defaults and set, the container's arguments passed through)."""
    from korasr.cli import build_parser

    fake = tmp_path / "korasr"
    fake.write_text(f"#!{sys.executable}\nimport json, sys\nprint(json.dumps(sys.argv[1:]))\n")
    fake.chmod(0o755)
    base = {"PATH": f"{tmp_path}:/usr/bin:/bin"}

    def argv(env: dict, *args: str):  # type: ignore[no-untyped-def]
        run = subprocess.run(["sh", str(ENTRYPOINT), *args], env=base | env, capture_output=True, text=True)
        assert run.returncode == 0, run.stderr
        return build_parser().parse_args(json.loads(run.stdout))

    default = argv({})
    assert (default.serve_model, default.host, default.port) == ("/model", "0.0.0.0", 8000)
    set_ = argv({"KORASR_MODEL": "models:/korasr@production", "KORASR_PORT": "9100"}, "--threads=2", "--follow=60")
    assert (set_.serve_model, set_.port, set_.threads, set_.follow) == ("models:/korasr@production", 9100, 2, 60.0)


def serve_on(port_holder: list, statuses: list[int]):  # type: ignore[no-untyped-def]
    class Health(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # type: ignore[no-untyped-def]
            code = statuses.pop(0) if self.path == "/health" else 404
            self.send_response(code)
            self.end_headers()
            self.wfile.write(b'{"ready": %s}' % (b"true" if code == 200 else b"false"))

        def log_message(self, *args):  # type: ignore[no-untyped-def]
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Health)
    port_holder.append(server.server_address[1])
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def test_healthcheck_follows_health(tmp_path):
    port: list[int] = []
    server = serve_on(port, [503, 200])
    try:

        def check() -> subprocess.CompletedProcess:
            env = {"PATH": "/usr/bin:/bin", "KORASR_PORT": str(port[0])}
            return subprocess.run([sys.executable, str(HEALTHCHECK)], env=env, capture_output=True, text=True)

        loading, ready = check(), check()
        assert loading.returncode == 1 and "503" in loading.stdout
        assert ready.returncode == 0
    finally:
        server.shutdown()
        server.server_close()
    refused = subprocess.run(
        [sys.executable, str(HEALTHCHECK)], env={"KORASR_PORT": str(port[0])}, capture_output=True, text=True
    )
    assert refused.returncode == 1


def test_podman_settings_are_the_ones_this_machine_needs():
    containers = tomllib.loads((DEPLOY / "podman" / "containers.conf").read_text())
    engine = {"runtime": "runc", "cgroup_manager": "cgroupfs", "events_logger": "file"}
    assert containers["engine"].items() >= engine.items()
    assert containers["containers"]["netns"] == "host"
    assert set(containers["containers"]["default_ulimits"]) == {"nofile=4096:4096", "nproc=4096:4096"}
    storage = tomllib.loads((DEPLOY / "podman" / "storage.conf").read_text())["storage"]
    assert storage == {
        "driver": "vfs",
        "runroot": "/run/containers/storage",
        "graphroot": "/var/lib/containers/storage",
    }


# --- Kubernetes ---------------------------------------------------------------------------------------------------

KUSTOMIZATIONS = sorted(p.parent.relative_to(K8S).as_posix() for p in K8S.rglob("kustomization.yaml"))
SERVICE_KUSTOMIZATIONS = [k for k in KUSTOMIZATIONS if k != "train"]  # train/: a Job on the training image


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[dict]]:
    kubectl = shutil.which("kubectl")
    if not kubectl:
        pytest.skip("kubectl is not installed (its `kubectl kustomize` renders the manifests)")
    out = {}
    for name in KUSTOMIZATIONS:
        run = subprocess.run([kubectl, "kustomize", str(K8S / name)], capture_output=True, text=True, timeout=60)
        assert run.returncode == 0, f"kubectl kustomize deploy/k8s/{name}: {run.stderr}"
        out[name] = [o for o in yaml.safe_load_all(run.stdout) if o]
    return out


def test_every_kustomization_is_tested():
    assert {"base", "overlays/registry", "train"} <= set(KUSTOMIZATIONS)


@pytest.mark.parametrize("name", KUSTOMIZATIONS)
def test_rendered_objects_validate(rendered, name):
    import kubernetes_validate

    assert rendered[name]
    for version in KUBERNETES_VERSIONS:
        version = kubernetes_validate.latest_version() if version == "latest" else version
        for obj in rendered[name]:
            try:
                kubernetes_validate.validate(obj, version, strict=True)
            except kubernetes_validate.ValidationError as e:
                pytest.fail(f"{name}: {obj['kind']}/{obj['metadata']['name']} on Kubernetes {version}: {e.message}")


def test_validation_is_strict():
    """The validation above is not vacuous: a misspelled field and a wrong type are refused."""
    import kubernetes_validate

    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "x"}, "spec": {"containers": [{"name": "x"}]}}
    kubernetes_validate.validate(pod, "1.30.0", strict=True)
    for broken in ({"image": "x", "imagePullPolicey": "Always"}, {"image": "x", "ports": [{"containerPort": "80"}]}):
        pod["spec"]["containers"][0] = {"name": "x", **broken}
        with pytest.raises(kubernetes_validate.ValidationError):
            kubernetes_validate.validate(pod, "1.30.0", strict=True)


# What korasr serve has, read from its code.


def serve_env_names() -> set[str]:
    """Environment variables `korasr serve` reads: its modules and its CLI command, by their source."""
    from korasr import cli
    from korasr.serve.config import settings

    sources = [inspect.getsource(cli._serve_parser), inspect.getsource(cli._serve)]
    for entry in SERVE_SOURCES:
        path = ROOT / entry
        sources += [p.read_text() for p in ([path] if path.is_file() else sorted(path.rglob("*.py")))]
    names = {n for text in sources for n in ENV_READ.findall(text)} - INTERNAL_ENV
    names |= set(cli.flag_variables(cli.subparser(cli.build_parser(), "serve")))  # KORASR_<FLAG> for every flag
    names |= {s.env for s in settings() if s.env}  # the schema's, secrets included (docs/settings.md lists them)
    assert {"KORASR_API_KEY", "KORASR_ADMIN_KEY", "KORASR_JOBS_DIR", "MLFLOW_TRACKING_URI"} <= names, "the scan broke"
    spec = importlib.util.find_spec("mlflow")  # the registry's client reads its own (credentials, TLS)
    if spec and spec.submodule_search_locations:
        mlflow_env = Path(spec.submodule_search_locations[0]) / "environment_variables.py"
        names |= set(re.findall(r'"(MLFLOW_TRACKING_[A-Z_]+)"', mlflow_env.read_text()))
    return names


def entrypoint_env_names() -> set[str]:
    return set(re.findall(r"\$\{(KORASR_[A-Z0-9_]+)", ENTRYPOINT.read_text()))


@pytest.fixture(scope="module")
def app_routes() -> tuple[set[str], object]:
    """The app's route paths, and a client of an app whose model is not loaded (its lifespan never runs) with an API
    key set: what a probe, which sends no key, sees while a pod is starting."""
    from fastapi.testclient import TestClient

    from korasr.serve import ServeConfig, create_app

    app = create_app(ServeConfig(model=Path("/nonexistent"), api_key="client-key", admin_key=None))
    return {r.path for r in app.router.routes}, TestClient(app)


def find(objects: list[dict], kind: str, name: str | None = None) -> list[dict]:
    return [o for o in objects if o["kind"] == kind and name in (None, o["metadata"]["name"])]


def container_env(container: dict, objects: list[dict]) -> dict[str, str | None]:
    """Every variable the container gets: env (None when it comes from a Secret) and envFrom's ConfigMaps."""
    env: dict[str, str | None] = {}
    for source in container.get("envFrom", []):
        assert "configMapRef" in source, f"envFrom {source}: only ConfigMaps, whose names can be checked"
        (config_map,) = find(objects, "ConfigMap", source["configMapRef"]["name"])
        env.update(config_map["data"])
    for var in container.get("env", []):
        env[var["name"]] = var.get("value")
    return env


def the_container(deployment: dict) -> dict:
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return container


@pytest.mark.parametrize("name", SERVICE_KUSTOMIZATIONS)
def test_deployment_contract_with_the_server(rendered, app_routes, name):
    from korasr.cli import build_parser
    from korasr.serve.gate import PUBLIC_ROUTES

    objects = rendered[name]
    (deployment,) = find(objects, "Deployment")
    routes, not_ready = app_routes
    pod = deployment["spec"]["template"]
    container = the_container(deployment)
    env = container_env(container, objects)

    # env: names korasr serve reads, the entrypoint reads, or Kubernetes expands into the arguments
    expanded = {n for a in container.get("command", []) + container.get("args", []) for n in K8S_REF.findall(a)}
    allowed = serve_env_names() | entrypoint_env_names() | expanded
    assert not set(env) - allowed, f"{name}: variables korasr does not read: {sorted(set(env) - allowed)}"
    assert expanded <= set(env), f"{name}: $(NAME) in args without that variable"

    # args: flags of korasr serve, with what the entrypoint adds
    args = [K8S_REF.sub("postgresql+psycopg://u:p@db/jobs", a) for a in container.get("args", [])]
    try:
        options = build_parser().parse_args(["serve", "--model", "/model", *args])
    except SystemExit:
        pytest.fail(f"{name}: {args} are not all flags of korasr serve (its error above)")
    cpu_limit = container["resources"]["limits"]["cpu"]
    assert options.threads is not None and options.threads <= float(cpu_limit), "--threads within the pod's CPU"

    # ports: the one the server listens on, the probes', the Service's
    port = int(env.get("KORASR_PORT") or 8000)
    by_name = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert port in by_name.values(), f"{name}: the server listens on {port}, the container declares {by_name}"
    probes = {k: container[k] for k in ("startupProbe", "readinessProbe", "livenessProbe")}
    for kind, probe in probes.items():
        path, probe_port = probe["httpGet"]["path"], probe["httpGet"]["port"]
        assert by_name.get(probe_port, probe_port) == port, f"{kind}: port {probe_port}"
        assert path in routes, f"{kind}: {path} is no route of the app"
        assert path in PUBLIC_ROUTES, f"{kind}: {path} needs the API key, which a probe does not send"
    # while the model is not loaded: not ready, yet alive (a loading pod is not restarted)
    for kind in ("startupProbe", "readinessProbe"):
        assert not_ready.get(probes[kind]["httpGet"]["path"]).status_code == 503, f"{kind}: ready before the model"
    assert not_ready.get(probes["livenessProbe"]["httpGet"]["path"]).status_code == 200

    labels = pod["metadata"]["labels"]
    for service in find(objects, "Service"):
        assert service["spec"]["selector"].items() <= labels.items(), f"Service {service['metadata']['name']}"
        for p in service["spec"]["ports"]:
            assert by_name.get(p["targetPort"], p["targetPort"]) == port
    (pdb,) = find(objects, "PodDisruptionBudget")
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items(), "the PDB selects these pods"
    (hpa,) = find(objects, "HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
    assert hpa["spec"]["minReplicas"] <= deployment["spec"]["replicas"] <= hpa["spec"]["maxReplicas"]
    assert "cpu" in container["resources"]["requests"], "CPU utilization is measured against the request"
    for ingress in find(objects, "Ingress"):
        for rule in ingress["spec"]["rules"]:
            for path in rule["http"]["paths"]:
                backend = path["backend"]["service"]
                (service,) = find(objects, "Service", backend["name"])
                assert backend["port"].get("name") in {p["name"] for p in service["spec"]["ports"]}

    # drain: the grace period covers preStop and the drain timeout
    pre_stop = container["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "sleep"
    assert pod["spec"]["terminationGracePeriodSeconds"] > float(pre_stop[1]) + options.drain_timeout

    # non-root, as the image's USER
    image_user = int(dict(final_stage(DEPLOY / "Dockerfile"))["USER"].split(":")[0])
    security = pod["spec"]["securityContext"]
    assert security["runAsNonRoot"] is True and security["runAsUser"] == image_user
    assert container["securityContext"]["allowPrivilegeEscalation"] is False

    # the model and every folder korasr writes: mounted (the root filesystem is read-only)
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    volumes = [v["name"] for v in pod["spec"]["volumes"]]
    assert len(mounts) == len(container["volumeMounts"]) and len(set(volumes)) == len(volumes), "names twice"
    assert {m["name"] for m in mounts.values()} == set(volumes), f"{name}: volumes without mounts, or mounts without"
    model = env.get("KORASR_MODEL") or "/model"
    if model.startswith("models:/"):
        assert env.get("MLFLOW_TRACKING_URI"), f"{name}: models:/ without a registry (MLFLOW_TRACKING_URI)"
        assert "/model" not in mounts, f"{name}: a model volume left over beside models:/"
    else:
        assert model in mounts and mounts[model]["readOnly"] is True, f"{name}: the export {model} is not mounted"
    if container["securityContext"].get("readOnlyRootFilesystem"):
        for folder in (env.get("KORASR_JOBS_DIR"), env.get("KORASR_REGISTRY_CACHE"), "/tmp"):
            assert folder and any(folder == m or folder.startswith(m + "/") for m in mounts), f"{folder}: read-only"


# --- the compose stack ---------------------------------------------------------------------------------------------

COMPOSE = DEPLOY / "compose" / "compose.yaml"


def compose_config(tmp_path: Path, **env: str) -> subprocess.CompletedProcess:
    """`podman-compose config`: the file as compose reads it (variables interpolated, paths resolved)."""
    return subprocess.run([tool("podman-compose"), "-f", str(COMPOSE), "config"], capture_output=True, text=True,
                          env={k: v for k, v in os.environ.items() if not k.startswith("KORASR_")} | env,
                          cwd=tmp_path, timeout=60)  # fmt: skip


def test_compose_file_validates_against_the_compose_spec():
    proc = subprocess.run([tool("check-jsonschema"), "--builtin-schema", "vendor.compose-spec", str(COMPOSE)],
                          capture_output=True, text=True)  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_compose_stack_renders_and_keeps_the_image_contract(tmp_path):
    from korasr.cli import build_parser

    missing = compose_config(tmp_path)
    assert missing.returncode != 0 and "KORASR_EXPORT" in missing.stderr, "an export must be named"
    proc = compose_config(tmp_path, KORASR_EXPORT=str(tmp_path))
    assert proc.returncode == 0, proc.stderr[-3000:]
    stack = yaml.safe_load(proc.stdout)["services"]
    assert {"korasr", "postgres", "mlflow", "prometheus", "grafana"} <= set(stack)
    korasr = stack["korasr"]
    assert korasr["build"]["dockerfile"] == "deploy/Dockerfile" and Path(korasr["build"]["context"]) == ROOT
    assert f"{tmp_path}:/model:ro" in korasr["volumes"]
    assert not set(korasr["environment"]) - (serve_env_names() | entrypoint_env_names())
    options = build_parser().parse_args(["serve", "--model", "/model", *korasr["command"]])
    assert options.job_db.startswith("postgresql+psycopg://") and "@postgres:" in options.job_db
    assert korasr["depends_on"]["postgres"]["condition"] == "service_healthy"
    grace = float(korasr["stop_grace_period"].removesuffix("s"))
    assert grace > options.drain_timeout, "compose's stop grace period outlasts the drain"
    for service in stack.values():  # a laptop stack: nothing published beyond loopback
        for port in service.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), port
    prometheus = yaml.safe_load((DEPLOY / "monitoring" / "prometheus.yml").read_text())
    (target,) = [t for job in prometheus["scrape_configs"] for c in job["static_configs"] for t in c["targets"]]
    assert target == f"korasr:{korasr['environment']['KORASR_PORT']}"
    # every file the configs name inside the containers is mounted there from the repository (the alert rules,
    # Grafana's dashboard); a relative host path is the compose file's folder's
    mounts = {svc: {inside: (COMPOSE.parent / host).resolve() for host, inside, *_ in
                    (v.split(":") for v in stack[svc]["volumes"] if v.startswith((".", "/")))}
              for svc in ("prometheus", "grafana")}  # fmt: skip
    for rules in prometheus["rule_files"]:
        inside = Path("/etc/prometheus") / rules
        assert mounts["prometheus"][str(inside.parent)] / inside.name == DEPLOY / "monitoring" / rules, rules
    providers = yaml.safe_load((DEPLOY / "monitoring" / "grafana" / "dashboards.yaml").read_text())["providers"]
    dashboards = [host for inside, host in mounts["grafana"].items()
                  if inside.startswith(providers[0]["options"]["path"] + "/")]  # fmt: skip
    assert dashboards and all(host.is_file() for host in dashboards), mounts["grafana"]
    assert "mlflow" in korasr["environment"]["MLFLOW_TRACKING_URI"]
    mlflow_pin = pyproject_pin("registry", "mlflow")
    assert stack["mlflow"]["image"].endswith(f":v{mlflow_pin}"), "the MLflow server at the registry extra's version"


# --- every setting from the environment --------------------------------------------------------------------------


def test_every_serve_flag_has_its_variable_checked_as_the_flag_is():
    """KORASR_<FLAG> sets every flag of korasr serve, parsed and bounded as the flag; a flag beats its variable; a bad
    value stops korasr naming the variable (a process, as a container starts it)."""
    from korasr import cli

    serve = cli.subparser(cli.build_parser(), "serve")
    variables = cli.flag_variables(serve)
    flags = {a.option_strings[-1] for a in serve._actions if a.option_strings and a.dest != "help"}
    assert {a.option_strings[-1] for a in variables.values()} == flags, "a flag without its variable"
    assert {"KORASR_MODEL", "KORASR_PORT", "KORASR_DRAIN_TIMEOUT", "KORASR_JOB_DB", "KORASR_LOG_FORMAT"} <= set(
        variables
    )

    env = {"KORASR_MODEL": "/exports/one", "KORASR_PORT": "9001", "KORASR_DRAIN_TIMEOUT": "12.5",
           "KORASR_PUBLIC_DOCS": "yes", "KORASR_CALLBACK_ALLOW": "http://a.example/, https://b.example/hooks/",
           "KORASR_LOG_FORMAT": "json", "KORASR_THREADS": ""}  # fmt: skip
    parser = cli.build_parser()
    cli.env_defaults(cli.subparser(parser, "serve"), env)
    args = parser.parse_args(["serve", "--port", "9002"])
    assert (args.serve_model, args.port, args.drain_timeout, args.public_docs, args.log_format, args.threads) == (
        "/exports/one", 9002, 12.5, True, "json", None)  # fmt: skip
    assert args.callback_allow == ["http://a.example/", "https://b.example/hooks/"]
    parser = cli.build_parser()  # a repeatable flag given replaces its variable's list: an allow-list never widens
    cli.env_defaults(cli.subparser(parser, "serve"), env)
    args = parser.parse_args(
        ["serve", "--callback-allow", "https://c.example/", "--callback-allow", "https://d.example/"]
    )
    assert args.callback_allow == ["https://c.example/", "https://d.example/"]

    for name, value, reason in [("KORASR_DRAIN_TIMEOUT", "0", "out of range"), ("KORASR_PORT", "http", "not an integer"),
                                ("KORASR_LOG_FORMAT", "xml", "not one of text, json"),
                                ("KORASR_PUBLIC_DOCS", "maybe", "not one of 1/0"),
                                ("KORASR_JOB_MAX_ATTEMPTS", "0", "out of range (1 to 100)")]:  # fmt: skip
        proc = subprocess.run([sys.executable, "-m", "korasr.cli", "serve", "--model", "/nonexistent"],
                              env={**os.environ, name: value}, capture_output=True, text=True, timeout=60)  # fmt: skip
        assert proc.returncode == 2 and name in proc.stderr and reason in proc.stderr, (name, proc.stderr[-500:])
