"""The deployment files (``deploy/``, ``Containerfile``) hold together.

Each file is parsed and its key structure checked, cross-file facts are compared (the
scheduler address the CronJob uses is the Service the DaskCluster gets, the image's
UID is the one Kubernetes runs as, the unit may write every path the example config
writes), and the real tools are run where they exist: ``systemd-analyze``, ``hadolint``,
``openssl``, ``sh -n``. Nothing here builds an image or starts a container.
"""

from __future__ import annotations

import copy
import json
import os
import re
import shlex
import shutil
import subprocess
import tomllib
from pathlib import Path, PurePosixPath
from typing import Any

import dask.config
import pytest
import yaml
from dask.utils import parse_timedelta
from distributed.security import Security
from packaging.requirements import Requirement
from packaging.version import Version

from cnnpipe.pipeline.malloc import MALLOC_ENV

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
CONTAINERFILE = ROOT / "Containerfile"
SERVICE = DEPLOY / "systemd" / "cnnpipe-nightly.service"
TIMER = DEPLOY / "systemd" / "cnnpipe-nightly.timer"
NIGHTLY_EXEC = "/opt/cnnpipe/venv/bin/cnnpipe nightly /etc/cnnpipe/nightly.toml"

# The nightly config schema cnnpipe.nightly/1 (pipeline/nightly.py validates it fully).
NIGHTLY_KEYS = {"schema", "output_root", "partition", "inputs", "models", "ledger", "quarantine",
                "quarantine_mode", "reports", "run", "cluster"}
CLUSTER_KINDS = {"embedded", "scheduler", "slurm", "kubernetes"}
CLUSTER_KEYS = {"kind", "address", "workers", "tls_ca_file", "tls_cert", "tls_key",
                "slurm", "kubernetes"}
RUN_FORBIDDEN = {"inputs", "models", "out", "scheduler"}


# ---------------------------------------------------------------- helpers


def _yaml_docs(path: Path) -> list[Any]:
    with path.open() as f:
        return [d for d in yaml.safe_load_all(f) if d is not None]


def _one(docs: list[Any], kind: str) -> dict[str, Any]:
    found = [d for d in docs if d.get("kind") == kind]
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


def _flag(args: list[str], flag: str) -> str:
    """The value after ``flag`` in an argument list (``--flag value``)."""
    assert flag in args, f"{flag} missing from {args}"
    return str(args[args.index(flag) + 1])


def _containerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for raw in CONTAINERFILE.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue  # Docker drops comment lines inside continuations too
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        text = pending + line
        pending = ""
        word, _, rest = text.partition(" ")
        instructions.append((word.upper(), rest.strip()))
    assert not pending, "Containerfile ends inside a line continuation"
    return instructions


def _stages() -> list[list[tuple[str, str]]]:
    """The instructions of each build stage (index 0: global ARGs before the first FROM)."""
    stages: list[list[tuple[str, str]]] = [[]]
    for ins in _containerfile():
        if ins[0] == "FROM":
            stages.append([])
        stages[-1].append(ins)
    return stages


def _global_args() -> dict[str, str]:
    args = {}
    for word, rest in _stages()[0]:
        assert word == "ARG", f"only ARG may precede the first FROM, found {word}"
        name, _, default = rest.partition("=")
        args[name] = default
    return args


def _base_images() -> list[str]:
    args = _global_args()
    stage_names: set[str] = set()
    images = []
    for stage in _stages()[1:]:
        words = stage[0][1].split()
        image = re.sub(r"\$\{?(\w+)\}?", lambda m: args[m.group(1)], words[0])
        if image not in stage_names:
            images.append(image)
        if len(words) == 3 and words[1].upper() == "AS":
            stage_names.add(words[2])
    return images


def _stage_arg(stage: list[tuple[str, str]], name: str) -> str:
    for word, rest in stage:
        if word == "ARG" and rest.startswith(f"{name}="):
            return rest.split("=", 1)[1]
    raise AssertionError(f"ARG {name} with a default not found in the stage")


def _shell_steps(stage: list[tuple[str, str]]) -> list[list[str]]:
    """Each ``&&``-separated command of the stage's RUN instructions, as argv."""
    steps = []
    for word, rest in stage:
        if word == "RUN":
            steps += [shlex.split(part) for part in rest.split("&&")]
    return steps


def _unit(path: Path) -> dict[str, list[tuple[str, str]]]:
    """Sections of a systemd unit file as lists of (key, value); keys may repeat."""
    sections: dict[str, list[tuple[str, str]]] = {}
    current = None
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("["):
            current = line.strip("[]")
            sections[current] = []
            continue
        key, sep, value = line.partition("=")
        assert sep, f"{path.name}: not a key=value line: {raw!r}"
        assert current is not None, f"{path.name}: {raw!r} before any [section]"
        sections[current].append((key.strip(), value.strip()))
    return sections


def _values(section: list[tuple[str, str]], key: str) -> list[str]:
    return [v for k, v in section if k == key]


def _nightly_tomls() -> dict[str, str]:
    """Every nightly config example: name -> TOML text (the CronJob's from its ConfigMap)."""
    docs = _yaml_docs(DEPLOY / "kubernetes" / "nightly-cronjob.yaml")
    return {
        "nightly.example.toml": (DEPLOY / "nightly.example.toml").read_text(),
        "slurm/nightly.toml": (DEPLOY / "slurm" / "nightly.toml").read_text(),
        "kubernetes ConfigMap": _one(docs, "ConfigMap")["data"]["nightly.toml"],
    }


def _mount(volume: str) -> tuple[str, str, str]:
    """(source, target, options) of a compose short-syntax volume, ``${VAR:-x}`` as x."""
    source, target, *options = re.sub(r"\$\{\w+:-([^}]*)\}", r"\1", volume).split(":")
    return source, target, ",".join(options)


def _daskcluster() -> dict[str, Any]:
    return _one(_yaml_docs(DEPLOY / "kubernetes" / "daskcluster.yaml"), "DaskCluster")


def _operator_scheduler_address(cluster: dict[str, Any]) -> str:
    # The Dask operator names the scheduler Service "<cluster name>-scheduler".
    meta = cluster["metadata"]
    return f"tls://{meta['name']}-scheduler.{meta['namespace']}.svc.cluster.local:8786"


def _run(cmd: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False,
                          **kwargs)


def _image_uid() -> int:
    final = _stages()[-1]
    users = [rest for word, rest in final if word == "USER"]
    assert users, "the final stage sets no USER"
    return int(users[-1].split(":")[0])


# ---------------------------------------------------------------- Containerfile


def test_containerfile_bases_are_cuda13_cudnn9_runtime() -> None:
    images = _base_images()
    assert len(images) >= 1
    for image in images:
        assert re.fullmatch(
            r"(docker\.io/|nvcr\.io/)?nvidia/cuda:13\.\d+\.\d+-cudnn-runtime-ubuntu\d\d\.\d\d",
            image,
        ), image


def test_containerfile_swaps_in_onnxruntime_gpu_and_no_torch() -> None:
    stages = _stages()[1:]
    steps = [argv for stage in stages for argv in _shell_steps(stage)]
    pip_steps = [argv for argv in steps if argv[:2] == ["pip", "install"]]
    assert pip_steps, "no `pip install` step"
    assert ["pip", "uninstall", "-y", "onnxruntime"] in steps
    gpu = [a for argv in pip_steps for a in argv if a.startswith("onnxruntime-gpu")]
    assert gpu == ["onnxruntime-gpu==${ONNXRUNTIME_GPU_VERSION}"]
    build = next(s for s in stages if any(a[:2] == ["pip", "install"] for a in _shell_steps(s)))
    version = Version(_stage_arg(build, "ONNXRUNTIME_GPU_VERSION"))
    # onnxruntime-gpu >= 1.27 is the CUDA 13 build; it must also satisfy cnnpipe's pin.
    assert version >= Version("1.27")
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    (ort,) = [Requirement(d) for d in deps if Requirement(d).name == "onnxruntime"]
    assert version in ort.specifier
    # The uninstall comes after cnnpipe's install (which pulls the CPU package) and
    # before the GPU package is installed.
    order = [" ".join(a) for a in steps]
    assert order.index("pip install .") < order.index("pip uninstall -y onnxruntime")
    assert order.index("pip uninstall -y onnxruntime") < next(
        i for i, s in enumerate(order) if "onnxruntime-gpu==" in s)
    installed = [a for argv in pip_steps for a in argv[2:] if not a.startswith("-")]
    assert not [a for a in installed if "torch" in a or "[" in a], installed


def test_containerfile_runs_cnnpipe_as_non_root() -> None:
    final = _stages()[-1]
    words = [word for word, _ in final]
    assert _image_uid() not in (0,)
    user = [rest for word, rest in final if word == "USER"][-1]
    assert user.split(":")[0] not in ("root", "0")
    assert words.index("ENTRYPOINT") > len(words) - 1 - words[::-1].index("USER")
    assert json.loads(dict(final)["ENTRYPOINT"]) == ["cnnpipe"]
    assert json.loads(dict(final)["CMD"]) == ["--help"]
    assert "WORKDIR" in words
    labels = " ".join(rest for word, rest in final if word == "LABEL")
    assert "org.opencontainers.image.title=" in labels
    assert "org.opencontainers.image.version=" in labels
    # The venv built in the first stage is what the final stage puts on PATH.
    copies = [rest for word, rest in final if word == "COPY"]
    assert "--from=build /opt/cnnpipe/venv /opt/cnnpipe/venv" in copies
    env = " ".join(rest for word, rest in final if word == "ENV")
    assert "PATH=/opt/cnnpipe/venv/bin:$PATH" in env


def test_containerfile_copies_exist_and_are_not_ignored() -> None:
    ignore = [
        line.strip().rstrip("/") for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    for needed in (".venv", "build", ".pytest_cache", ".mypy_cache", ".ruff_cache",
                   ".hypothesis", "tests", ".git"):
        assert needed in ignore, needed
    sources = []
    for stage in _stages()[1:]:
        for word, rest in stage:
            if word == "COPY" and not rest.startswith("--from"):
                sources += rest.split()[:-1]
    assert {"pyproject.toml", "README.md", "src/", "export/", "pipeline/"} <= set(sources)
    for source in sources:
        assert (ROOT / source).exists(), source
        top = PurePosixPath(source).parts[0]
        assert not [p for p in ignore if PurePosixPath(top).match(p)], (source, ignore)


@pytest.mark.skipif(shutil.which("hadolint") is None, reason="hadolint is not installed")
def test_hadolint_passes() -> None:
    result = _run(["hadolint", str(CONTAINERFILE)])
    assert result.returncode == 0, result.stdout + result.stderr


# ---------------------------------------------------------------- YAML


@pytest.mark.parametrize(
    "path", sorted(DEPLOY.rglob("*.yaml")), ids=lambda p: str(p.relative_to(DEPLOY)))
def test_every_yaml_file_parses(path: Path) -> None:
    docs = _yaml_docs(path)
    assert docs
    assert all(isinstance(d, dict) for d in docs)


def test_daskcluster_has_tls_scheduler_and_gpu_workers() -> None:
    cluster = _daskcluster()
    assert cluster["apiVersion"] == "kubernetes.dask.org/v1"
    name = cluster["metadata"]["name"]
    scheduler = cluster["spec"]["scheduler"]
    (sched,) = scheduler["spec"]["containers"]
    assert sched["command"] == ["dask"]  # the image's ENTRYPOINT is cnnpipe
    assert sched["args"][0] == "scheduler"
    assert _flag(sched["args"], "--protocol") == "tls"
    service = scheduler["service"]
    assert service["selector"] == {"dask.org/cluster-name": name,
                                   "dask.org/component": "scheduler"}
    assert 8786 in [p["port"] for p in service["ports"]]

    worker = cluster["spec"]["worker"]
    assert worker["replicas"] >= 1
    (work,) = worker["spec"]["containers"]
    assert work["command"] == ["dask"]
    assert work["args"][:2] == ["worker", _operator_scheduler_address(cluster)]
    assert _flag(work["args"], "--resources") == "GPU=1"
    assert work["resources"]["limits"]["nvidia.com/gpu"] == 1

    for pod, container, who in ((scheduler["spec"], sched, "scheduler"),
                                (worker["spec"], work, "worker")):
        tls_dir = _secret_mount(pod, container, "cnnpipe-dask-tls")
        assert _flag(container["args"], "--tls-ca-file") == f"{tls_dir}/ca.pem"
        assert _flag(container["args"], "--tls-cert") == f"{tls_dir}/{who}.pem"
        assert _flag(container["args"], "--tls-key") == f"{tls_dir}/{who}.key"
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["runAsUser"] == _image_uid()
        assert container["securityContext"]["allowPrivilegeEscalation"] is False


def _secret_mount(pod: dict[str, Any], container: dict[str, Any], secret: str) -> str:
    """The mount path of the volume holding ``secret`` in ``container``."""
    (volume,) = [v["name"] for v in pod["volumes"]
                 if v.get("secret", {}).get("secretName") == secret]
    (mount,) = [m["mountPath"] for m in container["volumeMounts"] if m["name"] == volume]
    return str(mount)


def test_cronjob_runs_nightly_against_the_daskcluster() -> None:
    docs = _yaml_docs(DEPLOY / "kubernetes" / "nightly-cronjob.yaml")
    cron = _one(docs, "CronJob")
    configmap = _one(docs, "ConfigMap")
    assert cron["apiVersion"] == "batch/v1"
    assert len(cron["spec"]["schedule"].split()) == 5
    assert cron["spec"]["concurrencyPolicy"] == "Forbid"
    job = cron["spec"]["jobTemplate"]["spec"]
    pod = job["template"]["spec"]
    (container,) = pod["containers"]
    command = container.get("command", []) + container.get("args", [])
    assert command[:2] == ["cnnpipe", "nightly"]
    config_path = command[2]

    # The config file is the ConfigMap's key, mounted where the command reads it.
    (mount,) = [m for m in container["volumeMounts"] if m["mountPath"] == config_path]
    (volume,) = [v for v in pod["volumes"] if v["name"] == mount["name"]]
    assert volume["configMap"]["name"] == configmap["metadata"]["name"]
    assert mount["subPath"] in configmap["data"]
    config = tomllib.loads(configmap["data"][mount["subPath"]])
    assert config["cluster"]["kind"] == "scheduler"
    cluster = _daskcluster()
    assert config["cluster"]["address"] == _operator_scheduler_address(cluster)
    assert cron["metadata"]["namespace"] == cluster["metadata"]["namespace"]
    tls_dir = _secret_mount(pod, container, "cnnpipe-dask-tls")
    assert config["cluster"]["tls_cert"] == f"{tls_dir}/client.pem"
    assert config["cluster"]["tls_key"] == f"{tls_dir}/client.key"
    assert config["cluster"]["tls_ca_file"] == f"{tls_dir}/ca.pem"

    # Data: the same PVC at the same path as the workers, and output_root is on it.
    pvc = _one(_yaml_docs(DEPLOY / "kubernetes" / "survey-data.yaml"),
               "PersistentVolumeClaim")
    assert "ReadWriteMany" in pvc["spec"]["accessModes"]
    worker_pod = cluster["spec"]["worker"]["spec"]
    (worker,) = worker_pod["containers"]
    for p, c in ((pod, container), (worker_pod, worker)):
        (claim_volume,) = [v["name"] for v in p["volumes"]
                           if v.get("persistentVolumeClaim", {}).get("claimName")
                           == pvc["metadata"]["name"]]
        (data_mount,) = [m["mountPath"] for m in c["volumeMounts"]
                         if m["name"] == claim_volume]
        assert data_mount == "/survey"
    assert config["output_root"].startswith("/survey/")

    # 1 is retried; 2 (config error) and 3 (quarantined inputs) fail the Job at once.
    assert pod["restartPolicy"] == "Never"
    assert job["backoffLimit"] >= 1
    (rule,) = job["podFailurePolicy"]["rules"]
    assert rule["action"] == "FailJob"
    assert rule["onExitCodes"]["operator"] == "In"
    assert sorted(rule["onExitCodes"]["values"]) == [2, 3]


def test_compose_has_tls_scheduler_and_gpu_worker() -> None:
    (compose,) = _yaml_docs(DEPLOY / "compose" / "compose.yaml")
    services = compose["services"]
    scheduler, worker = services["scheduler"], services["gpu-worker"]

    assert scheduler["entrypoint"] == ["dask"]
    assert scheduler["command"][0] == "scheduler"
    assert _flag(scheduler["command"], "--protocol") == "tls"
    assert _flag(scheduler["command"], "--port") == "8786"
    assert any(str(p).endswith(":8786") for p in scheduler["ports"])
    # The dashboard is plain HTTP: it must not be published beyond the host.
    (dashboard,) = [p for p in scheduler["ports"] if str(p).endswith(":8787")]
    assert str(dashboard).startswith("127.0.0.1:")

    assert worker["entrypoint"] == ["dask"]
    assert worker["command"][:2] == ["worker", "tls://scheduler:8786"]
    assert _flag(worker["command"], "--resources") == "GPU=1"
    gpu_devices = [d for d in worker.get("devices", []) if d.startswith("nvidia.com/gpu=")]
    reservations = (worker.get("deploy", {}).get("resources", {})
                    .get("reservations", {}).get("devices", []))
    assert gpu_devices or [d for d in reservations if d.get("driver") == "nvidia"]

    for service, who in ((scheduler, "scheduler"), (worker, "gpu-worker")):
        tls = [m for m in map(_mount, service["volumes"]) if m[1] == "/etc/cnnpipe/tls"]
        assert len(tls) == 1, (who, service["volumes"])
        assert tls[0][2] == "ro"
        cert = "scheduler" if who == "scheduler" else "worker"
        assert _flag(service["command"], "--tls-ca-file") == "/etc/cnnpipe/tls/ca.pem"
        assert _flag(service["command"], "--tls-cert") == f"/etc/cnnpipe/tls/{cert}.pem"
        assert _flag(service["command"], "--tls-key") == f"/etc/cnnpipe/tls/{cert}.key"
        assert service["user"].split(":")[0] == str(_image_uid())

    # The worker and the client see the survey data at the same path.
    client = services["cnnpipe"]
    survey = [v for v in worker["volumes"] if _mount(v)[1] == "/survey"]
    assert len(survey) == 1
    assert _mount(survey[0])[0] == "/survey"  # same path inside and outside by default
    assert survey[0] in client["volumes"]
    # The scheduler never reads pixels and gets no survey volume.
    assert [v for v in scheduler["volumes"] if _mount(v)[1] == "/survey"] == []
    assert client["environment"]["CNNPIPE_SCHEDULER"] == "tls://scheduler:8786"
    assert client["environment"]["CNNPIPE_TLS_CERT"] == "/etc/cnnpipe/tls/client.pem"


def test_jobqueue_workers_retire_before_walltime() -> None:
    (config,) = _yaml_docs(DEPLOY / "slurm" / "jobqueue.yaml")
    slurm = config["jobqueue"]["slurm"]
    args = slurm["worker-extra-args"]
    assert _flag(args, "--resources") == "GPU=1"
    assert slurm["processes"] == 1
    assert "--gres=gpu:1" in slurm["job-extra-directives"]
    h, m, s = (int(x) for x in slurm["walltime"].split(":"))
    walltime = 3600 * h + 60 * m + s
    lifetime = parse_timedelta(_flag(args, "--lifetime"))
    stagger = parse_timedelta(_flag(args, "--lifetime-stagger"))
    assert stagger > 0
    assert lifetime + stagger < walltime
    # --lifetime-restart would restart the worker inside the job, which SLURM then
    # kills at walltime; the job must end instead and be replaced.
    assert "--lifetime-restart" not in args


def test_workers_get_cnnpipes_malloc_settings() -> None:
    # Dask workers of the image (compose, Kubernetes) and of SLURM jobs are not started
    # by the cnnpipe command, so their environment must carry cnnpipe.pipeline.malloc's
    # settings; a nanny passes existing variables on to its worker process.
    env_words = " ".join(rest for word, rest in _stages()[-1] if word == "ENV").split()
    image = dict(w.split("=", 1) for w in env_words if w.startswith("MALLOC_"))
    assert image == dict(MALLOC_ENV)
    (config,) = _yaml_docs(DEPLOY / "slurm" / "jobqueue.yaml")
    exports = [line.split()[1:] for line in config["jobqueue"]["slurm"]["job-script-prologue"]
               if line.startswith("export ")]
    slurm = dict(w.split("=", 1) for words in exports for w in words if w.startswith("MALLOC_"))
    assert slurm == dict(MALLOC_ENV)


def test_slurm_tls_gives_scheduler_and_workers_their_certificates(tmp_path: Path) -> None:
    # What cnnpipe nightly does for kind = "slurm": a Security from the TOML's tls_*
    # keys, built where DASK_CONFIG names the folder holding jobqueue.yaml. The
    # scheduler's and workers' certificates must come from that file.
    shutil.copy(DEPLOY / "slurm" / "jobqueue.yaml", tmp_path)
    merged = dask.config.update(copy.deepcopy(dask.config.config),
                                dask.config.collect(paths=[str(tmp_path)], env={}))
    tls = tomllib.loads((DEPLOY / "slurm" / "nightly.toml").read_text())["cluster"]
    with dask.config.set(merged):
        security = Security(tls_ca_file=tls["tls_ca_file"], tls_client_cert=tls["tls_cert"],
                            tls_client_key=tls["tls_key"], require_encryption=True)
    for role in ("scheduler", "worker", "client"):
        config = security.get_tls_config_for_role(role)
        assert config["ca_file"] == "/etc/cnnpipe/tls/ca.pem"
        assert config["cert"] == f"/etc/cnnpipe/tls/{role}.pem"
        assert config["key"] == f"/etc/cnnpipe/tls/{role}.key"


# ---------------------------------------------------------------- nightly TOML


@pytest.mark.parametrize("name", sorted(_nightly_tomls()))
def test_nightly_examples_follow_the_schema(name: str) -> None:
    config = tomllib.loads(_nightly_tomls()[name])
    assert set(config) <= NIGHTLY_KEYS, set(config) - NIGHTLY_KEYS
    assert PurePosixPath(config["output_root"]).is_absolute()
    assert config["inputs"]
    assert config["models"]
    assert all("{night}" in i for i in config["inputs"])
    assert config.get("quarantine_mode", "move") in ("move", "copy")
    assert not set(config.get("run", {})) & RUN_FORBIDDEN
    cluster = config["cluster"]
    assert set(cluster) <= CLUSTER_KEYS, set(cluster) - CLUSTER_KEYS
    assert cluster["kind"] in CLUSTER_KINDS
    if cluster["kind"] == "scheduler":
        assert cluster["address"].startswith("tls://")
    for table in ("slurm", "kubernetes"):
        assert table not in cluster or cluster["kind"] == table


def test_slurm_example_uses_slurm() -> None:
    config = tomllib.loads((DEPLOY / "slurm" / "nightly.toml").read_text())
    assert config["cluster"]["kind"] == "slurm"
    assert config["cluster"]["workers"] >= 1
    assert config["run"]["device"] == "gpu"


@pytest.mark.parametrize("name", sorted(_nightly_tomls()))
def test_nightly_examples_load_with_nightlyconfig(name: str, tmp_path: Path) -> None:
    from cnnpipe.pipeline import nightly

    path = tmp_path / "nightly.toml"
    path.write_text(_nightly_tomls()[name])
    config = nightly.NightlyConfig.from_toml(path)
    assert PurePosixPath(str(config.output_root)) == PurePosixPath(
        tomllib.loads(path.read_text())["output_root"])


# ---------------------------------------------------------------- systemd


def test_service_unit_settings() -> None:
    unit = _unit(SERVICE)
    service = unit["Service"]
    assert _values(service, "Type") == ["oneshot"]
    assert _values(service, "User") == ["cnnpipe"]
    assert _values(service, "ExecStart") == [NIGHTLY_EXEC]
    # Exit 3 (quarantined inputs) needs a human: the unit must show failed.
    success = " ".join(_values(service, "SuccessExitStatus")).split()
    assert "3" not in success
    prevent = " ".join(_values(service, "RestartPreventExitStatus")).split()
    assert {"2", "3"} <= set(prevent)
    assert _values(service, "ProtectSystem") == ["strict"]
    assert _values(service, "NoNewPrivileges") == ["true"]
    # The GPU device nodes must stay visible to the embedded cluster's workers.
    assert _values(service, "PrivateDevices") in ([], ["false"])


def test_service_may_write_every_path_the_example_writes() -> None:
    writable = [PurePosixPath(p.lstrip("-")) for v in _values(_unit(SERVICE)["Service"],
                                                             "ReadWritePaths")
                for p in v.split()]
    config = tomllib.loads((DEPLOY / "nightly.example.toml").read_text())
    root = config["output_root"]
    paths = [root] + [config.get(k, f"{root}/{k}") for k in ("ledger", "quarantine", "reports")]
    if config["quarantine_mode"] == "move":  # bad inputs are moved out of their folder
        paths += [i.split("{")[0] for i in config["inputs"]]
    for path in map(PurePosixPath, paths):
        assert any(path == w or w in path.parents for w in writable), (path, writable)


def test_timer_settings() -> None:
    timer = _unit(TIMER)
    (calendar,) = _values(timer["Timer"], "OnCalendar")
    assert _values(timer["Timer"], "Persistent") == ["true"]
    (delay,) = _values(timer["Timer"], "RandomizedDelaySec")
    assert 0 < parse_timedelta(delay.replace("min", "m")) <= 30 * 60
    assert _values(timer["Install"], "WantedBy") == ["timers.target"]
    if shutil.which("systemd-analyze"):
        result = _run(["systemd-analyze", "calendar", calendar])
        assert result.returncode == 0, result.stderr


@pytest.fixture
def units_for_verify(tmp_path: Path) -> tuple[Path, Path]:
    """Both units in tmp_path, ExecStart pointed at an existing binary (verify checks it)."""
    true = shutil.which("true")
    assert true is not None
    service = tmp_path / SERVICE.name
    text = SERVICE.read_text()
    assert f"ExecStart={NIGHTLY_EXEC}\n" in text
    service.write_text(text.replace(f"ExecStart={NIGHTLY_EXEC.split()[0]}", f"ExecStart={true}"))
    timer = tmp_path / TIMER.name
    shutil.copy(TIMER, timer)
    return service, timer


@pytest.mark.skipif(shutil.which("systemd-analyze") is None,
                    reason="systemd-analyze is not installed")
def test_systemd_analyze_verify(units_for_verify: tuple[Path, Path]) -> None:
    service, timer = units_for_verify
    result = _run(["systemd-analyze", "verify", "--man=no", str(service), str(timer)])
    # verify exits 0 on unknown keys and bad values too, so its messages about our
    # units count as failures (messages about other units on the host do not).
    ours = [line for line in result.stderr.splitlines()
            if "cnnpipe-nightly" in line or str(service.parent) in line]
    assert result.returncode == 0, result.stderr
    assert ours == []


@pytest.mark.skipif(shutil.which("systemd-analyze") is None,
                    reason="systemd-analyze is not installed")
def test_systemd_security_exposure_is_ok(units_for_verify: tuple[Path, Path]) -> None:
    service, _ = units_for_verify
    result = _run(["systemd-analyze", "security", "--offline=yes", "--threshold=30",
                   str(service)])
    if "--offline" in result.stderr and "unrecognized" in result.stderr:
        pytest.skip("systemd-analyze security --offline needs systemd >= 250")
    # The exposure scale is 0-10 ("OK" below 3.0); threshold 30 means 3.0.
    assert result.returncode == 0, result.stdout[-2000:]


# ---------------------------------------------------------------- cron


def test_crontab_entries() -> None:
    entries = []
    for line in (DEPLOY / "cron" / "crontab").read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#") or re.match(r"^[A-Z_][A-Z0-9_]*=", line):
            continue
        entries.append(line.split(maxsplit=5))
    assert entries
    for fields in entries:
        assert len(fields) == 6, fields
        for field in fields[:5]:
            assert re.fullmatch(r"[\d*/,-]+", field), field
        command = fields[5]
        assert "cnnpipe nightly /etc/cnnpipe/nightly.toml" in command
        assert re.search(r"\bflock -n\b", command)
        assert ">>" in command
        assert "2>&1" in command
        assert "%" not in command.replace("\\%", "")  # cron turns % into a newline
        if shutil.which("sh"):
            result = _run(["sh", "-n", "-c", command])
            assert result.returncode == 0, result.stderr


# ---------------------------------------------------------------- TLS script


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl is not installed")
def test_make_certs_signs_with_its_own_ca(tmp_path: Path) -> None:
    certs = tmp_path / "certs"
    result = _run(["bash", str(DEPLOY / "tls" / "make-certs.sh"), str(certs),
                   "dask-scheduler.example.org", "10.1.2.3"], env={**os.environ, "DAYS": "2"})
    assert result.returncode == 0, result.stderr
    assert certs.stat().st_mode & 0o777 == 0o700
    for who in ("scheduler", "worker", "client"):
        verify = _run(["openssl", "verify", "-CAfile", str(certs / "ca.pem"),
                       str(certs / f"{who}.pem")])
        assert verify.returncode == 0, verify.stdout + verify.stderr
        assert verify.stdout.strip() == f"{certs / who}.pem: OK"
        assert (certs / f"{who}.key").stat().st_mode & 0o777 == 0o600
    san = _run(["openssl", "x509", "-noout", "-ext", "subjectAltName", "-in",
                str(certs / "scheduler.pem")])
    assert "DNS:dask-scheduler.example.org" in san.stdout
    assert "IP Address:10.1.2.3" in san.stdout

    # A CA that did not sign the worker's certificate must not accept it.
    other = tmp_path / "other"
    other.mkdir()
    made = _run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                 "-subj", "/CN=other-ca", "-keyout", str(other / "ca.key"),
                 "-out", str(other / "ca.pem")])
    assert made.returncode == 0, made.stderr
    refused = _run(["openssl", "verify", "-CAfile", str(other / "ca.pem"),
                    str(certs / "worker.pem")])
    assert refused.returncode != 0


# ---------------------------------------------------------------- docs


def test_deploy_readme_names_every_file() -> None:
    text = (DEPLOY / "README.md").read_text()
    for path in sorted(DEPLOY.rglob("*")):
        if path.is_file() and path.name != "README.md":
            assert str(path.relative_to(DEPLOY)) in text, path


def test_readme_deployment_section_precedes_development() -> None:
    headings = re.findall(r"^## (.+)$", (ROOT / "README.md").read_text(), flags=re.M)
    assert "Deployment" in headings
    assert headings.index("Deployment") + 1 == headings.index("Development")
