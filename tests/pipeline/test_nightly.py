"""``cnnpipe nightly`` over a folder of simulated exposures: plain, multi-extension,
tile-compressed and gzip files and one corrupt file, on a real embedded Dask cluster.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zarr
from click.testing import CliRunner

from cnnpipe.cli import cli
from cnnpipe.errors import ConfigError, LockedError
from cnnpipe.pipeline.nightly import (
    EntryStatus,
    Ledger,
    NightlyConfig,
    default_night,
    find_inputs,
    run_nightly,
)
from cnnpipe.pipeline.nightly.report import InputOutcome
from cnnpipe.pipeline.store import StoreLock
from cnnpipe.testing.fitsfiles import (
    write_compressed,
    write_float,
    write_gzip,
    write_mef,
    write_truncated,
)
from cnnpipe.testing.onnx_models import craters_model, segment_model

NIGHT = "2026-11-20"
RUN = {"tile": 32, "patch": 24, "batch": 4, "device": "cpu", "retries": 0}


def _exposures(folder: Path, *, corrupt: bool = True) -> dict[str, Path]:
    folder.mkdir(parents=True)
    files = {
        "plain": write_float(folder / "exp1.fits", shape=(70, 90), seed=1)[0],
        "mef": write_mef(folder / "exp2.fits", n_sci=2, shape=(40, 50), seed=2),
        "rice": write_compressed(folder / "exp3.fits.fz", shape=(60, 64), seed=3),
        "gzip": write_gzip(folder / "exp4.fits.gz", shape=(48, 64), seed=4),
    }
    if corrupt:
        files["corrupt"] = write_truncated(folder / "exp5.fits", shape=(64, 64), keep=0.6)
    (folder / "notes.txt").write_text("not an exposure")
    return files


def _config(root: Path, models: list[Path], *, cluster: dict[str, object] | None = None,
            **extra: object) -> Path:
    lines = [
        f'output_root = "{root / "out"}"',
        f'inputs = ["{root / "incoming" / "{night}"}"]',
        "models = [" + ", ".join(f'"{m}"' for m in models) + "]",
        *(f"{k} = {json.dumps(v)}" for k, v in extra.items()),
        "[run]",
        *(f"{k} = {json.dumps(v)}" for k, v in RUN.items()),
        "[cluster]",
        'kind = "embedded"',
        "workers = 1",
        *(f"{k} = {json.dumps(v)}" for k, v in (cluster or {}).items()),
    ]
    path = root / "nightly.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    root = tmp_path_factory.mktemp("models")
    seg, crat = root / "seg.onnx", root / "craters.onnx"
    segment_model(seg)
    craters_model(crat)
    return [seg, crat]


def _stores(root: Path) -> list[Path]:
    return sorted((root / "out" / NIGHT).glob("*.zarr"))


def _arrays(store: Path) -> dict[str, bytes]:
    g = zarr.open_group(str(store), mode="r")
    out: dict[str, bytes] = {}
    for key in g["images"]:
        for model in ("seg", "craters"):
            for name in ("mask", "prob", "tiles"):
                out[f"{key}/{model}/{name}"] = np.asarray(
                    g[f"images/{key}/{model}/{name}"][...]).tobytes()
    for model in ("seg", "craters"):
        cat = g[f"catalogs/{model}"]
        for col in sorted(cat.array_keys()):
            out[f"cat/{model}/{col}"] = np.asarray(cat[col][...]).tobytes()
    return out


def test_a_night_processes_good_inputs_once_and_quarantines_the_corrupt_one(
    tmp_path: Path, models: list[Path]
) -> None:
    files = _exposures(tmp_path / "incoming" / NIGHT)
    config = _config(tmp_path, models)
    res = CliRunner().invoke(cli, ["nightly", str(config), "--night", NIGHT, "--log-format",
                                   "json"], catch_exceptions=False)
    assert res.exit_code == 3, res.output
    stores = _stores(tmp_path)
    assert len(stores) == 4  # plain, MEF (one store, one image per extension), rice, gzip
    for s in stores:
        attrs = zarr.open_group(str(s), mode="r").attrs["cnnpipe"]
        assert attrs["status"] == "complete"
    mef = next(s for s in stores if s.name.startswith("exp2-"))
    assert sorted(zarr.open_group(str(mef), mode="r")["images"]) == ["exp2_SCI_1", "exp2_SCI_2"]

    # the corrupt file left the input folder with its reason
    quarantined = tmp_path / "out" / "quarantine" / NIGHT / "exp5.fits"
    assert quarantined.exists()
    assert not files["corrupt"].exists()
    reason = json.loads(quarantined.with_name("exp5.fits.reason.json").read_text())
    assert "truncated" in reason["reason"]

    # ledger: four done, one quarantined, keyed by content
    entries = Ledger(tmp_path / "out" / "ledger").entries()
    assert sorted(e.status.value for e in entries) == ["done"] * 4 + ["quarantined"]

    # the report: JSON + Markdown + quick-looks (a mask per image, an SFD plot per image)
    rep = json.loads((tmp_path / "out" / "reports" / f"{NIGHT}.json").read_text())
    assert rep["exit_code"] == 3
    assert rep["counts"] == {"found": 5, "done": 4, "skipped": 0, "quarantined": 1, "failed": 0}
    md = (tmp_path / "out" / "reports" / f"{NIGHT}.md").read_text()
    assert "quarantined" in md
    assert "exp5.fits" in md
    pngs = sorted((tmp_path / "out" / "reports" / NIGHT).glob("*-mask.png"))
    assert len(pngs) == 5  # one per image of the seg model (the MEF has two)
    assert all(p.read_bytes()[:4] == b"\x89PNG" for p in pngs)

    # a second run does nothing; the night's report still shows what the first did
    res = CliRunner().invoke(cli, ["nightly", str(config), "--night", NIGHT],
                             catch_exceptions=False)
    assert res.exit_code == 0, res.output
    assert "0 done, 4 already done" in res.output
    rep2 = json.loads((tmp_path / "out" / "reports" / f"{NIGHT}.json").read_text())
    assert rep2["exit_code"] == 0
    assert rep2["counts"] == rep["counts"]
    assert rep2["cluster"] == "none (nothing to do)"
    assert [o["invocation"] for o in rep2["inputs"]] == [o["invocation"] for o in rep["inputs"]]
    assert _stores(tmp_path) == stores

    # a renamed copy of a done input is the same content: still nothing to do
    os.rename(files["plain"], files["plain"].with_name("exp1-renamed.fits"))
    report = run_nightly(NightlyConfig.from_toml(config), NIGHT, plots=False)
    assert report.exit_code == 0
    assert report.counts()["done"] == 4
    assert ("exp1-renamed.fits", "done") not in [(Path(o.input).name, o.status)
                                                 for o in report.outcomes]  # the earlier one


def test_copies_of_one_input_in_the_same_night_are_processed_once(
    tmp_path: Path, models: list[Path]
) -> None:
    folder = tmp_path / "incoming" / NIGHT
    folder.mkdir(parents=True)
    first = write_float(folder / "a.fits", shape=(40, 50), seed=1)[0]
    shutil.copy(first, folder / "b-copy-of-a.fits")
    write_float(folder / "c.fits", shape=(40, 50), seed=2)
    report = run_nightly(NightlyConfig.from_toml(_config(tmp_path, models[:1])), NIGHT,
                         plots=False)
    assert report.exit_code == 0
    got = {Path(o.input).name: (o.status, o.reason) for o in report.outcomes}
    assert got["a.fits"][0] == got["c.fits"][0] == "done"
    assert got["b-copy-of-a.fits"][0] == "skipped"
    assert str(first) in got["b-copy-of-a.fits"][1]
    assert len(_stores(tmp_path)) == 2
    assert len(Ledger(tmp_path / "out" / "ledger").entries()) == 2


def test_inputs_side_by_side_keep_their_order_and_stop_on_an_error() -> None:
    import threading

    from cnnpipe.pipeline.nightly.job import _side_by_side, _Todo

    todo = [_Todo(Path(f"{i}.fits"), "sha", f"k{i}") for i in range(6)]
    running, peak, lock = [0], [0], threading.Lock()

    def work(i: int, t: _Todo) -> Any:
        with lock:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
        time.sleep(0.05 * (6 - i))  # later inputs finish first
        with lock:
            running[0] -= 1
        return t.path.name

    assert _side_by_side(work, todo, 3) == [f"{i}.fits" for i in range(6)]
    assert peak[0] == 3
    started: list[int] = []

    def failing(i: int, t: _Todo) -> Any:
        started.append(i)
        if i == 1:
            time.sleep(0.1)  # input 2 is under way by now
            raise ConfigError("the same for every input")
        time.sleep(0.3)
        return t.path.name

    with pytest.raises(ConfigError, match="the same for every input"):
        _side_by_side(failing, todo, 2)
    assert sorted(started) == [1, 2]  # 2 ran to its end; 3-6 were not started


@pytest.mark.parametrize(("at_once", "finished"), [(1, "ab"), (2, "abd")])
def test_the_report_of_a_night_stopped_by_an_error_lists_the_inputs_it_finished(
    tmp_path: Path, models: list[Path], monkeypatch: pytest.MonkeyPatch, at_once: int,
    finished: str,
) -> None:
    """Side by side, d started beside c before c failed and ran to its end."""
    import cnnpipe.pipeline.nightly.job as job

    folder = tmp_path / "incoming" / NIGHT
    folder.mkdir(parents=True)
    for name in ("a", "b", "c", "d"):
        write_float(folder / f"{name}.fits", shape=(20, 20), seed=ord(name))

    def fake(config: Any, night: str, todo: Any, **kw: Any) -> InputOutcome:
        if todo.path.name == "c.fits":
            time.sleep(0.2)  # the others started are finished by now
            raise ConfigError("a setting every input needs is wrong")
        return InputOutcome(input=str(todo.path), status="done", sha256=todo.sha)

    monkeypatch.setattr(job, "_process", fake)
    config = NightlyConfig.from_toml(_config(tmp_path, models[:1],
                                             cluster={"inputs_at_once": at_once}))
    with pytest.raises(ConfigError, match="every input needs"):
        run_nightly(config, NIGHT, plots=False)
    rep = json.loads((tmp_path / "out" / "reports" / f"{NIGHT}.json").read_text())
    assert rep["exit_code"] == 2
    assert rep["cluster"].endswith(f"; {at_once} input(s) at a time")
    assert [(Path(o["input"]).name, o["status"]) for o in rep["inputs"]] == [
        (f"{name}.fits", "done") for name in finished]


def test_copy_mode_keeps_the_input_and_does_not_retry_it(
    tmp_path: Path, models: list[Path]
) -> None:
    folder = tmp_path / "incoming" / NIGHT
    folder.mkdir(parents=True)
    bad = write_truncated(folder / "bad.fits")
    config = NightlyConfig.from_toml(_config(tmp_path, models[:1], quarantine_mode="copy"))
    first = run_nightly(config, NIGHT, plots=False)
    assert first.exit_code == 3
    assert bad.exists()
    second = run_nightly(config, NIGHT, plots=False)
    assert second.exit_code == 0
    assert second.this_invocation["skipped"] == 1
    assert [(o.status, o.invocation) for o in second.outcomes] == [
        ("quarantined", first.started)]  # the night's report keeps the first invocation's
    assert Ledger(config.ledger).entries()[0].status is EntryStatus.QUARANTINED


def test_a_killed_night_resumes_with_nothing_duplicated(
    tmp_path: Path, models: list[Path]
) -> None:
    folder = tmp_path / "incoming" / NIGHT
    folder.mkdir(parents=True)
    for i in range(3):
        write_float(folder / f"big{i}.fits", shape=(256, 256), seed=10 + i)
    config = _config(tmp_path, models[:1], cluster={"inputs_at_once": 2})
    cmd = [str(Path(sys.executable).with_name("cnnpipe")), "nightly", str(config), "--night",
           NIGHT, "--log-format", "json", "--no-plots"]
    log = tmp_path / "killed.log"
    with open(log, "w") as f:
        proc = subprocess.Popen(cmd, stderr=f, stdout=subprocess.DEVNULL,
                                start_new_session=True)
    try:  # kill -9 once an input is done and another one is under way
        deadline = time.monotonic() + 120
        while True:
            text = log.read_text()
            started = text.count('"event": "input_started"')
            done = text.count('"event": "input_done"')
            if done >= 1 and started > done:
                break
            assert proc.poll() is None, text
            assert time.monotonic() < deadline, text
            time.sleep(0.05)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    done_before = [e for e in Ledger(tmp_path / "out" / "ledger").entries()]
    assert 1 <= len(done_before) < 3, log.read_text()
    assert '"inputs_at_once": 2' in log.read_text()  # the inputs ran side by side

    rerun = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    events = [json.loads(line) for line in rerun.stderr.splitlines() if line.startswith("{")]
    assert sum(e.get("event") == "input_skipped" for e in events) == len(done_before)
    assert sum(e.get("event") == "input_done" for e in events) == 3 - len(done_before)
    entries = Ledger(tmp_path / "out" / "ledger").entries()
    assert len(entries) == 3
    assert {e.input for e in entries} == {
        str(folder / f"big{i}.fits") for i in range(3)}
    stores = _stores(tmp_path)
    assert len(stores) == 3

    # each store equals a clean `cnnpipe run` of its input with the same settings
    for i, store in enumerate(sorted(stores)):
        ref = tmp_path / f"ref{i}.zarr"
        res = CliRunner().invoke(cli, [
            "run", str(folder / f"big{i}.fits"), "--model", str(models[0]), "--out", str(ref),
            "--tile", "32", "--patch", "24", "--batch", "4", "--device", "cpu",
            "--workers", "1"], catch_exceptions=False)
        assert res.exit_code == 0, res.output
        g, r = zarr.open_group(str(store), mode="r"), zarr.open_group(str(ref), mode="r")
        for name in ("mask", "prob", "tiles"):
            a = np.asarray(g[f"images/big{i}/seg/{name}"][...])
            b = np.asarray(r[f"images/big{i}/seg/{name}"][...])
            assert a.tobytes() == b.tobytes()
        cat_a = {c: np.asarray(g[f"catalogs/seg/{c}"][...]) for c in g["catalogs/seg"].array_keys()}
        cat_b = {c: np.asarray(r[f"catalogs/seg/{c}"][...]) for c in r["catalogs/seg"].array_keys()}
        assert cat_a.keys() == cat_b.keys()
        for c in cat_a:
            assert cat_a[c].tobytes() == cat_b[c].tobytes(), c


def test_a_second_nightly_on_the_same_night_is_refused(
    tmp_path: Path, models: list[Path]
) -> None:
    (tmp_path / "incoming" / NIGHT).mkdir(parents=True)
    config = NightlyConfig.from_toml(_config(tmp_path, models[:1]))
    holder = StoreLock(config.night_dir(NIGHT), run_id="other")
    holder.acquire()
    try:
        with pytest.raises(LockedError, match=f"pid {os.getpid()}"):
            run_nightly(config, NIGHT)
    finally:
        holder.release()


@pytest.mark.parametrize(("text", "match"), [
    ('inputs = ["x"]\nmodels = ["m"]', "output_root: Expected a non-empty string"),
    ('output_root = "o"\nmodels = ["m"]', "inputs: Expected a non-empty list"),
    ('output_root = "o"\ninputs = ["x"]\nmodels = ["m"]\nfoo = 1', r"unknown key\(s\) \['foo'\]"),
    ('output_root = "o"\ninputs = ["x"]\nmodels = ["m"]\n[cluster]\nkind = "mesos"',
     "kind: Expected one of"),
    ('output_root = "o"\ninputs = ["x"]\nmodels = ["m"]\n[cluster]\nkind = "scheduler"',
     "address"),
    ('output_root = "o"\ninputs = ["x"]\nmodels = ["m"]\n[run]\ntile = 0', r"\[run\].*tile"),
    ('output_root = "o"\ninputs = ["x"]\nmodels = ["m"]\n[run]\nworkers = 2',
     "set by the nightly job"),
    ('output_root = "o"\ninputs = ["{date}/x"]\nmodels = ["m"]', "only the {night}"),
    ('output_root = "o"\ninputs = ["x"]\nmodels = ["m"]\nquarantine_mode = "delete"',
     "quarantine_mode"),
    ("output_root = [", "not valid TOML"),
    ('output_root = "o"\ninputs = ["x"]\nmodels = ["m"]\n[cluster]\ninputs_at_once = 0',
     r"\[cluster\] inputs_at_once: Expected a positive integer\. Got 0"),
    ('output_root = "o"\ninputs = ["x"]\nmodels = ["m"]\n[cluster]\nworkers = true',
     r"\[cluster\] workers: Expected a positive integer\. Got True"),
])
def test_bad_configurations_are_refused_naming_file_and_key(
    tmp_path: Path, text: str, match: str
) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(text + "\n")
    with pytest.raises(ConfigError, match=match) as err:
        NightlyConfig.from_toml(path)
    assert str(err.value).startswith(str(path))
    res = CliRunner().invoke(cli, ["nightly", str(path)])
    assert res.exit_code == 2
    assert "Traceback" not in res.output


def test_unknown_model_and_missing_cluster_package_are_config_errors(tmp_path: Path) -> None:
    (tmp_path / "incoming" / NIGHT).mkdir(parents=True)
    write_float(tmp_path / "incoming" / NIGHT / "a.fits")
    config = NightlyConfig.from_dict({"output_root": str(tmp_path / "out"),
                                      "inputs": [str(tmp_path / "incoming/{night}")],
                                      "models": ["no_such_model"]}, where="n.toml")
    with pytest.raises(ConfigError, match="neither a file nor a bundled model"):
        run_nightly(config, NIGHT)
    config = NightlyConfig.from_dict({"output_root": str(tmp_path / "out"),
                                      "inputs": [str(tmp_path / "incoming/{night}")],
                                      "models": ["demo_segment"],
                                      "cluster": {"kind": "kubernetes"}}, where="n.toml")
    try:
        import dask_kubernetes  # noqa: F401
    except ImportError:
        with pytest.raises(ConfigError, match=r"pip install 'cnnpipe\[kubernetes\]'"):
            run_nightly(config, NIGHT)


def test_relative_paths_are_taken_from_the_configuration_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    etc = tmp_path / "etc"
    etc.mkdir()
    path = etc / "nightly.toml"
    path.write_text(
        'output_root = "out"\ninputs = ["in/{night}"]\n'
        'models = ["models/seg.onnx", "craters.onnx", "demo_galaxy", "/abs/m.onnx", '
        '"~/m.onnx"]\n'
        '[run]\ncatalog = "pos/stars.csv"\n'
        '[cluster]\nkind = "scheduler"\naddress = "tls://h:8786"\n'
        'tls_ca_file = "tls/ca.pem"\ntls_cert = "tls/client.pem"\ntls_key = "/k/client.key"\n'
    )
    monkeypatch.chdir(tmp_path)  # not the configuration's folder
    config = NightlyConfig.from_toml(path)
    assert config.output_root == etc / "out"
    assert config.inputs == (str(etc / "in/{night}"),)
    assert config.models == (str(etc / "models/seg.onnx"), str(etc / "craters.onnx"),
                             "demo_galaxy", "/abs/m.onnx", str(Path.home() / "m.onnx"))
    assert config.run["catalog"] == str(etc / "pos/stars.csv")
    assert (config.cluster.tls_ca_file, config.cluster.tls_cert, config.cluster.tls_key) == (
        str(etc / "tls/ca.pem"), str(etc / "tls/client.pem"), "/k/client.key")
    path.write_text('output_root = "out"\ninputs = ["in"]\nmodels = ["demo_galaxy"]\n'
                    '[run]\ncatalog = "windows"\n')
    assert NightlyConfig.from_toml(path).run["catalog"] == "windows"


def test_inputs_globs_folders_and_night_template(tmp_path: Path) -> None:
    night = tmp_path / "2026-01-02"
    night.mkdir()
    for name in ("a.fits", "b.fits.fz", "c.fits.gz", "d.txt", "e.FITS"):
        (night / name).write_bytes(b"")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "x.fits").write_bytes(b"")
    found = find_inputs((str(tmp_path / "{night}"), str(tmp_path / "other" / "*.fits"),
                         str(tmp_path / "{night}" / "a.fits")), "2026-01-02")
    assert [p.name for p in found] == ["a.fits", "b.fits.fz", "c.fits.gz", "e.FITS", "x.fits"]


def test_default_night_is_the_evening_date() -> None:
    import datetime as dt

    assert default_night(dt.datetime(2026, 11, 21, 6, 0, tzinfo=dt.UTC)) == "2026-11-20"
    assert default_night(dt.datetime(2026, 11, 21, 13, 0, tzinfo=dt.UTC)) == "2026-11-21"


def test_a_crater_night_reports_the_size_frequency_plot_and_model_age(tmp_path: Path) -> None:
    from cnnpipe.testing.craters import make_crater_catalog, write_craters

    side = tmp_path / "sim"
    side.mkdir()
    write_craters(make_crater_catalog(384, seed=5), side / "field.fits")
    folder = tmp_path / "incoming" / NIGHT
    folder.mkdir(parents=True)
    os.rename(side / "field.fits", folder / "field.fits")  # the image only, not its truth
    config = NightlyConfig.from_dict({
        "output_root": str(tmp_path / "out"), "inputs": [str(tmp_path / "incoming/{night}")],
        "models": ["demo_craters"], "run": {"device": "cpu"}, "cluster": {"workers": 1},
    }, where="craters.toml")
    report = run_nightly(config, NIGHT)
    assert report.exit_code == 0
    (outcome,) = report.outcomes
    assert outcome.status == "done"
    assert outcome.catalogs["demo_craters"] > 10
    (stats,) = outcome.craters
    assert stats["body"] == "MOON"
    assert stats["n_craters"] == outcome.catalogs["demo_craters"]
    assert stats["age_gyr"] > 0
    sfd = [q for q in outcome.quicklooks if q.endswith("-sfd.png")]
    assert len(sfd) == 1
    assert Path(sfd[0]).read_bytes()[:4] == b"\x89PNG"
    md = (config.reports / f"{NIGHT}.md").read_text()
    assert "model age" in md
    assert Path(sfd[0]).name in md


def test_a_running_schedulers_threads_are_how_many_inputs_run_at_once(
    tmp_path: Path, models: list[Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    from distributed import LocalCluster

    import cnnpipe.pipeline.nightly.job as job

    folder = tmp_path / "incoming" / NIGHT
    folder.mkdir(parents=True)
    for k in range(8):
        write_float(folder / f"f{k}.fits", shape=(20, 20), seed=k)
    running, most = set(), []

    def fake(config: Any, night: str, todo: Any, **kw: Any) -> InputOutcome:
        running.add(todo.path.name)
        most.append(len(running))
        time.sleep(0.3)
        running.discard(todo.path.name)
        return InputOutcome(input=str(todo.path), status="done", sha256=todo.sha)

    monkeypatch.setattr(job, "_process", fake)
    with LocalCluster(n_workers=3, threads_per_worker=2, processes=False,
                      dashboard_address=None) as lc:
        config = NightlyConfig.from_dict({
            "output_root": str(tmp_path / "out"), "inputs": [str(tmp_path / "incoming/{night}")],
            "models": [str(models[0])], "run": RUN,
            "cluster": {"kind": "scheduler", "address": lc.scheduler_address}}, where="n.toml")
        run_nightly(config, NIGHT, plots=False)
    rep = json.loads((tmp_path / "out" / "reports" / f"{NIGHT}.json").read_text())
    # 3 workers x 2 threads, and one more: its store and merge overlap the others' work
    assert rep["cluster"].endswith("; 7 input(s) at a time")
    assert max(most) == 7


def test_slurm_workers_from_the_deploy_configuration_are_gpu_workers_that_retire() -> None:
    """The job script dask-jobqueue makes from deploy/slurm (nothing is submitted)."""
    jobqueue = pytest.importorskip("dask_jobqueue")
    import dask
    import yaml

    from cnnpipe.pipeline.nightly.cluster import make_cluster

    root = Path(__file__).resolve().parents[2] / "deploy" / "slurm"
    site = yaml.safe_load((root / "jobqueue.yaml").read_text())
    config = NightlyConfig.from_toml(root / "nightly.toml")
    spec = replace(config.cluster, tls_ca_file=None, tls_cert=None, tls_key=None)
    slurm = site["jobqueue"]["slurm"]
    with dask.config.set({f"jobqueue.slurm.{k}": v for k, v in slurm.items()}):
        cluster, what = make_cluster(spec)
        try:
            assert isinstance(cluster, jobqueue.SLURMCluster)
            script = cluster.job_script()
        finally:
            cluster.close()
    assert "#SBATCH --gres=gpu:1" in script
    assert "#SBATCH -A survey-nightly" in script  # [cluster.slurm] overrides the site file
    assert "--resources GPU=1" in script
    lifetime = int(script.split("--lifetime ")[1].split("m")[0])
    walltime = slurm["walltime"]
    assert lifetime < int(walltime.split(":")[0]) * 60 + int(walltime.split(":")[1])
    assert what == f"slurm: {config.cluster.workers} job(s)"


def test_a_rerun_does_not_read_finished_inputs_again(
    tmp_path: Path, models: list[Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    import cnnpipe.pipeline.store as store_mod

    folder = tmp_path / "incoming" / NIGHT
    folder.mkdir(parents=True)
    a = write_float(folder / "a.fits", shape=(40, 50), seed=1)[0]
    write_float(folder / "b.fits", shape=(40, 50), seed=2)
    config = NightlyConfig.from_toml(_config(tmp_path, models[:1]))
    assert run_nightly(config, NIGHT, plots=False).exit_code == 0

    hashed: list[str] = []
    real = store_mod.file_sha256

    def counting(path: object) -> str:
        hashed.append(os.path.basename(str(path)))
        return real(path)  # type: ignore[arg-type]

    monkeypatch.setattr(store_mod, "file_sha256", counting)
    second = run_nightly(config, NIGHT, plots=False)
    assert second.this_invocation["skipped"] == 2
    assert [h for h in hashed if h.endswith(".fits")] == []  # the stat memo answered
    # a rewritten file (new content, new mtime) is hashed again and processed
    write_float(a, shape=(40, 50), seed=3)
    third = run_nightly(config, NIGHT, plots=False)
    assert [h for h in hashed if h.endswith(".fits")] == ["a.fits"]
    assert third.this_invocation["done"] == 1
    assert len(Ledger(config.ledger).entries()) == 3  # the memo files are no entries


def test_ledger_key_counts_patch_as_written_and_ignores_speed_settings() -> None:
    from cnnpipe.pipeline.config import RunConfig
    from cnnpipe.pipeline.nightly.ledger import ledger_key

    def key(**run: object) -> str:
        cfg = RunConfig.from_dict({"inputs": ["-"], "models": ["-"], "out": "-", **run})
        return ledger_key("c0ffee", ["m1"], cfg.to_dict())

    # absent and "auto" are one setting; 512 (the default before auto) is another, so a
    # ledger begun then keeps its keys only with patch = 512 written (README "nightly")
    assert key() == key(patch="auto")
    assert key(patch=512) != key()
    assert key(patch=512, batch=4, retries=0) == key(patch=512, batch="auto")
    assert key(tile=1024) != key()


def test_a_mask_quick_look_decodes_each_chunk_once(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    from cnnpipe.pipeline.nightly.report import QUICKLOOK_PX, mask_preview

    rng = np.random.default_rng(3)
    mask = rng.integers(0, 5, (2000, 1700), dtype=np.uint8)
    mask[:300, :200] = 255  # no data
    arr = zarr.create_array(str(tmp_path / "m.zarr"), shape=mask.shape, chunks=(512, 512),
                            dtype="uint8", fill_value=255)
    arr[...] = mask
    reads: list[str] = []
    get = zarr.storage.LocalStore.get

    async def counting_get(self: Any, key: str, *args: Any, **kwargs: Any) -> Any:
        reads.append(key)
        return await get(self, key, *args, **kwargs)

    monkeypatch.setattr(zarr.storage.LocalStore, "get", counting_get)
    small, step = mask_preview(zarr.open_array(str(tmp_path / "m.zarr"), mode="r"))
    assert step == -(-2000 // QUICKLOOK_PX)
    want = mask[::step, ::step].astype(np.float32)
    want[want == 255] = np.nan
    np.testing.assert_array_equal(small, want)
    chunks = [k for k in reads if k.startswith("c/")]
    assert sorted(chunks) == sorted(set(chunks)), "a chunk was read more than once"
    assert len(chunks) == 4 * 4


def test_each_inputs_quick_looks_are_made_when_it_is_done(
    tmp_path: Path, models: list[Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    from cnnpipe.pipeline.nightly import job

    _exposures(tmp_path / "incoming" / NIGHT, corrupt=False)
    config = NightlyConfig.from_toml(_config(tmp_path, models[:1], cluster={"inputs_at_once": 1}))
    order: list[str] = []
    started, looks = job.event, job.quicklooks

    def event(name: str, *args: Any, **fields: Any) -> None:
        if name == "input_started":
            order.append("started " + Path(str(fields["input"])).name)
        started(name, *args, **fields)

    def quicklooks(store: str, folder: Path, *, prefix: str) -> Any:
        order.append("quick-looks " + prefix.split("-")[0])
        return looks(store, folder, prefix=prefix)

    monkeypatch.setattr(job, "event", event)
    monkeypatch.setattr(job, "quicklooks", quicklooks)
    report = run_nightly(config, NIGHT)
    assert report.exit_code == 0
    names = [o.input for o in report.outcomes]
    assert len(names) == 4
    # one input at a time: each one's quick-looks before the next input starts
    want = []
    for n in sorted(Path(p).name for p in names):
        want += [f"started {n}", "quick-looks " + n.split(".")[0]]
    assert order == want
    for o in report.outcomes:
        assert o.quicklooks
        assert all(Path(q).read_bytes()[:4] == b"\x89PNG" for q in o.quicklooks)


def test_a_night_stopped_by_an_error_keeps_the_quick_looks_of_its_finished_inputs(
    tmp_path: Path, models: list[Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    from cnnpipe.errors import ModelError
    from cnnpipe.pipeline import runner

    _exposures(tmp_path / "incoming" / NIGHT, corrupt=False)
    config = NightlyConfig.from_toml(_config(tmp_path, models[:1], cluster={"inputs_at_once": 1}))
    real_run, calls = runner.run, []

    def run(rc: Any, **kwargs: Any) -> Any:
        calls.append(rc.inputs[0])
        if len(calls) == 2:
            raise ModelError("the model file was replaced mid-night")
        return real_run(rc, **kwargs)

    monkeypatch.setattr(runner, "run", run)
    with pytest.raises(ModelError):
        run_nightly(config, NIGHT)
    report = json.loads((config.reports / f"{NIGHT}.json").read_text())
    (done,) = [o for o in report["inputs"] if o["status"] == "done"]
    assert Path(done["input"]).name == Path(calls[0]).name
    assert done["quicklooks"], "the finished input lost its quick-looks"
    assert all(Path(q).read_bytes()[:4] == b"\x89PNG" for q in done["quicklooks"])


def test_the_report_gives_the_invocations_throughput(tmp_path: Path, models: list[Path]) -> None:
    _exposures(tmp_path / "incoming" / NIGHT, corrupt=False)
    config = NightlyConfig.from_toml(_config(tmp_path, models[:1]))
    report = run_nightly(config, NIGHT, plots=False)
    assert report.exit_code == 0
    data = json.loads((config.reports / f"{NIGHT}.json").read_text())
    # 70x90, an MEF of two 40x50 images, 60x64 (Rice), 48x64 (gzip)
    assert sorted(o["pixels"] for o in data["inputs"]) == [3072, 3840, 4000, 6300]
    t = data["throughput"]
    assert t["inputs"] == 4
    assert t["mpix"] == pytest.approx(17212 / 1e6)
    assert 0 < t["seconds"] < 600
    assert t["mpix_per_s"] == pytest.approx(t["mpix"] / t["seconds"])
    md = (config.reports / f"{NIGHT}.md").read_text()
    assert f"- this invocation: 0.0 Mpix of 4 input(s) in {t['seconds']:.1f} s" in md
    # a rerun processes nothing: no throughput, and the earlier inputs keep their pixels
    run_nightly(config, NIGHT, plots=False)
    again = json.loads((config.reports / f"{NIGHT}.json").read_text())
    assert again["throughput"] is None
    assert sorted(o["pixels"] for o in again["inputs"]) == [3072, 3840, 4000, 6300]
    assert "this invocation:" not in (config.reports / f"{NIGHT}.md").read_text()
