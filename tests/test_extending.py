"""docs/extending.md, end to end: its example plugin package works from outside the repository.

The ``# file: PATH`` blocks of the page are extracted into a temporary
directory outside the repository and used the ways the page says: trained
through ``ntm --plugin`` and through the installed ``ntm.plugins`` entry
point, registered after ``ntm`` was imported, re-imported, and tested with
the plugin's own ``ntm.testing`` tests. The test also measures what adding
each variant touched: one new file each, and no change in the repository
(``pytest tests/test_extending.py -s`` prints one line per variant). Plugins
that are broken in the usual ways must fail with one line and status 2.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "extending.md"
NTM = Path(sys.executable).parent / "ntm"
PACKAGE = "my_plugin"
VARIANTS = {"transporter": "token-affine", "predictor": "mlp", "sampler": "mean", "data": "ring"}
"""The variant the page adds to each slot."""
BLOCK = re.compile(r"^```[\w-]*\n# file: (\S+)\n.*?^```", re.M | re.S)
TINY = [
    "--train.steps", "3", "--train.batch-size", "64", "--train.warmup-steps", "0", "--train.log-every", "1",
    "--predictor.width", "32", "--eval.num-examples", "64", "--eval.num-points", "64",
]
OURS = [f"{slot}:{name}" for slot, name in VARIANTS.items()]


# -- helpers ------------------------------------------------------------------------------------
def toml(text: str) -> dict:
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        tomllib = pytest.importorskip("tomli")
    return tomllib.loads(text)


def doc_blocks() -> dict[str, str]:
    """``path -> text`` of every ``# file: PATH`` block of the page (the marker line included)."""
    blocks: dict[str, str] = {}
    for match in BLOCK.finditer(DOC.read_text()):
        path = match.group(1)
        assert path not in blocks, f"docs/extending.md has two blocks for {path}"
        text = match.group(0).split("\n", 1)[1]
        blocks[path] = text[: text.rindex("```")]
    return blocks


def env(pythonpath: Path | None = None) -> dict[str, str]:
    out = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    out["OMP_NUM_THREADS"] = os.environ.get("NTM_TEST_THREADS", "1")
    if pythonpath is not None:
        out["PYTHONPATH"] = str(pythonpath)
    return out


def run(args: list, cwd: Path, pythonpath: Path | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([str(a) for a in args], cwd=cwd, env=env(pythonpath), capture_output=True, text=True,
                          timeout=timeout)


def repo_state() -> dict[str, str] | None:
    """``git status --porcelain`` line -> hash of the file's content (``None`` outside a git checkout)."""
    if not (REPO / ".git").exists() or shutil.which("git") is None:
        return None
    status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=all"], cwd=REPO,
                            capture_output=True, text=True, check=True).stdout
    state = {}
    for line in status.splitlines():
        path = REPO / line[3:].split(" -> ")[-1].strip('"')
        state[line] = hashlib.sha1(path.read_bytes()).hexdigest() if path.is_file() else ""
    return state


def package_files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in (root / PACKAGE).rglob("*") if p.is_file()
                  and "__pycache__" not in p.parts)


def install(root: Path, site: Path) -> None:
    """What ``pip install`` of the plugin's pyproject.toml puts on the path: the wheel, built offline, unpacked."""
    src, wheels = site.parent / "build-src", site.parent / "wheels"
    shutil.copytree(root, src, ignore=shutil.ignore_patterns("__pycache__"))
    built = run([sys.executable, "-m", "pip", "wheel", "--no-build-isolation", "--no-index", "--no-deps",
                 "--no-cache-dir", "-q", "-w", wheels, src], cwd=src)
    if built.returncode == 0:
        with zipfile.ZipFile(next(wheels.glob("*.whl"))) as whl:
            whl.extractall(site)
        return
    # no setuptools to build with: write the distribution metadata the declaration gives, by hand
    project = toml((root / "pyproject.toml").read_text())["project"]
    info = site / f"{project['name'].replace('-', '_')}-{project['version']}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {project['name']}\nVersion: {project['version']}\n")
    lines = []
    for group, eps in project["entry-points"].items():
        lines += [f"[{group}]", *(f"{k} = {v}" for k, v in eps.items()), ""]
    (info / "entry_points.txt").write_text("\n".join(lines))
    shutil.copytree(root / PACKAGE, site / PACKAGE, ignore=shutil.ignore_patterns("__pycache__"))


# -- the plugin package, from the page --------------------------------------------------------------
@pytest.fixture(scope="module")
def plugin(tmp_path_factory) -> Path:
    """The page's blocks written under a fresh directory outside the repository; returns that directory."""
    root = tmp_path_factory.mktemp("my-plugin")
    assert not root.resolve().is_relative_to(REPO)
    for path, text in doc_blocks().items():
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_text(text)
    return root


LATE = r'''
"""Register the plugin after ntm, the model and the experiment config exist; validate; reload."""
import contextlib, importlib, inspect, io, json, runpy, sys
from pathlib import Path

import ntm.experiments.cli, ntm.experiments.config, ntm.model  # every slot is declared before the plugin exists
from ntm.experiments.config import Experiment
from ntm.data import DATA_SOURCES
from ntm.model import NTMConfig
from ntm.predictors import PREDICTORS
from ntm.samplers import SAMPLERS
from ntm.transporters import TRANSPORTERS

names = json.loads(sys.argv[1])
t, p, s, d = names["transporter"], names["predictor"], names["sampler"], names["data"]
registries = {"transporter": TRANSPORTERS, "predictor": PREDICTORS, "sampler": SAMPLERS, "data": DATA_SOURCES}
before = {slot: reg.names() for slot, reg in registries.items()}
importlib.import_module(sys.argv[2])
added = {slot: [n for n in reg.names() if n not in before[slot]] for slot, reg in registries.items()}
root = Path.cwd().resolve()
files = {}
for slot, new in added.items():
    for name in new:
        entry = registries[slot].get(name)
        defined = {Path(inspect.getfile(c)).resolve().relative_to(root).as_posix() for c in (entry.cls, entry.config_cls)}
        files[f"{slot}:{name}"] = sorted(defined)

def cfg(slot):
    return registries[slot].get(names[slot]).config_cls

# NTMConfig, from instances and from data
model = NTMConfig(transporter=cfg("transporter")(), predictor=cfg("predictor")())
dumped = model.model_dump(mode="json")
assert (dumped["transporter"]["name"], dumped["predictor"]["name"]) == (t, p), dumped
assert NTMConfig.model_validate(dumped) == model
# Experiment, from the data a config file holds
exp = Experiment.model_validate({"name": "late", "data": {"name": d}, "sampler": {"name": s},
                                 "model": {"transporter": {"name": t}, "predictor": {"name": p}}})
assert [type(c) for c in (exp.model.transporter, exp.model.predictor, exp.sampler, exp.data)] == \
    [cfg("transporter"), cfg("predictor"), cfg("sampler"), cfg("data")]
assert Experiment.model_validate_json(exp.model_dump_json()) == exp
# the command line
out = io.StringIO()
with contextlib.redirect_stdout(out):
    rc = ntm.experiments.cli.main(["train", "toy-ntm", f"transporter:{t}", f"predictor:{p}", f"sampler:{s}", f"data:{d}",
                               "--dry-run"])
assert rc == 0, rc
parsed = json.loads(out.getvalue())
cli = [parsed["model"]["transporter"]["name"], parsed["model"]["predictor"]["name"], parsed["sampler"]["name"],
       parsed["data"]["name"]]
# the page's Python example
out = io.StringIO()
with contextlib.redirect_stdout(out):
    runpy.run_path("examples/from_python.py", run_name="__main__")
example = out.getvalue()
# re-importing (importlib.reload, twice) is a no-op; a config made before the reload still validates
old = cfg("transporter")()
modules = sorted({registries[slot].get(n).cls.__module__ for slot, n in names.items()}) + [sys.argv[2]]
for _ in range(2):
    for m in modules:
        importlib.reload(sys.modules[m])
after = {slot: reg.names() for slot, reg in registries.items()}
assert after == {slot: before[slot] + added[slot] for slot in registries}, after
current = getattr(sys.modules[cfg("transporter").__module__], cfg("transporter").__qualname__)
assert cfg("transporter") is current and cfg("transporter") is not type(old)
assert type(NTMConfig(transporter=old).transporter) is current
print(json.dumps({"added": added, "files": files, "cli": cli, "example": example, "reloaded": modules}))
'''


@pytest.fixture(scope="module")
def late(plugin, tmp_path_factory) -> dict:
    """Report of :data:`LATE` run in a fresh interpreter on the plugin (registers after ``ntm`` is imported)."""
    script = tmp_path_factory.mktemp("late") / "late.py"
    script.write_text(LATE)
    proc = run([sys.executable, script, json.dumps(VARIANTS), PACKAGE], cwd=plugin, pythonpath=plugin)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


# -- tests --------------------------------------------------------------------------------------------
def test_the_page_holds_a_plugin_package_of_one_file_per_variant(plugin):
    blocks = doc_blocks()
    variant_files = [f"{PACKAGE}/{f}" for f in ("affine.py", "mlp.py", "mean.py", "ring.py")]
    assert set(blocks) == {"pyproject.toml", f"{PACKAGE}/__init__.py", *variant_files,
                           "examples/from_python.py", "tests/test_my_plugin.py"}
    assert package_files(plugin) == sorted([f"{PACKAGE}/__init__.py", *variant_files])
    declared = toml(blocks["pyproject.toml"])["project"]["entry-points"]["ntm.plugins"]
    assert declared == {PACKAGE: PACKAGE}


def test_adding_each_variant_is_one_new_file_and_no_edit_of_ntm(plugin, late, tmp_path):
    before = repo_state()
    layout = package_files(plugin)

    # ntm --plugin MODULE, the module found in the working directory (no PYTHONPATH)
    run_dir = tmp_path / "runs" / "plugin"
    proc = run([NTM, "--plugin", PACKAGE, "train", "toy-ntm", "transporter:token-affine", "predictor:mlp",
                *TINY, "--run-dir", run_dir], cwd=plugin)
    assert proc.returncode == 0, proc.stderr[-4000:]
    final = json.loads((run_dir / "final.json").read_text())
    assert final["steps"] == 3 and final["nll_traj_bpd"] is not None
    config = json.loads((run_dir / "config.json").read_text())
    assert config["model"]["transporter"]["name"] == "token-affine" and config["model"]["predictor"]["name"] == "mlp"

    # installed from its pyproject.toml: the ntm.plugins entry point alone, from another directory, no --plugin
    site, elsewhere = tmp_path / "site", tmp_path / "elsewhere"
    elsewhere.mkdir()
    install(plugin, site)
    run_dir = tmp_path / "runs" / "entry-point"
    proc = run([NTM, "train", "toy-ntm", *OURS, "--data.radii", "1", "2", *TINY, "--run-dir", run_dir],
               cwd=elsewhere, pythonpath=site)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert json.loads((run_dir / "final.json").read_text())["steps"] == 3
    config = json.loads((run_dir / "config.json").read_text())
    assert [config["model"]["transporter"]["name"], config["model"]["predictor"]["name"], config["sampler"]["name"],
            config["data"]["name"]] == list(VARIANTS.values())
    assert config["data"]["radii"] == [1.0, 2.0]

    # what it touched: nothing in the repository, one file of the plugin per variant
    after = repo_state()
    edited = 0 if before is None else len(set(before.items()) ^ set(after.items()))
    assert after == before, f"the repository changed: {sorted(set(before.items()) ^ set(after.items()))}"
    assert package_files(plugin) == layout
    new_files = {slot: late["files"][f"{slot}:{name}"] for slot, name in VARIANTS.items()}
    assert late["added"] == {slot: [name] for slot, name in VARIANTS.items()}
    assert layout == sorted([f"{PACKAGE}/__init__.py", *(f for files in new_files.values() for f in files)])
    print()
    for slot, name in VARIANTS.items():
        files = new_files[slot]
        assert len(files) == 1, f"{slot} {name} is defined in {files}"
        print(f"{slot} {name}: {len(files)} new file ({files[0]}), {edited} files of ntm edited")


def test_the_plugins_own_tests_pass_the_ntm_testing_checks(plugin):
    tests = (plugin / "tests" / "test_my_plugin.py").read_text()
    for check in ("check_transporter", "check_predictor", "check_sampler", "check_data_source"):
        assert f"{check}(" in tests, check
    proc = run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_my_plugin.py"], cwd=plugin)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert f"{tests.count('def test_')} passed" in proc.stdout, proc.stdout[-2000:]


def test_a_variant_registered_after_ntm_was_imported_validates_everywhere(late):
    """NTMConfig, Experiment.model_validate and the CLI (--dry-run) accept it; reloading the plugin twice raises nothing."""
    assert late["cli"] == list(VARIANTS.values())
    assert "{'name': 'token-affine', 'max_log_scale': 3.0}" in late["example"]
    assert "torch.Size([16, 2, 1])" in late["example"]
    assert late["reloaded"][-1] == PACKAGE and len(late["reloaded"]) == 5


BAD_PLUGINS = {
    "broken": ("import not_a_module_anyone_has\n", ["ModuleNotFoundError", "not_a_module_anyone_has"]),
    "not_config": (
        "from ntm.transporters.base import TRANSPORTERS, Transporter\n"
        "class PlainConfig:\n"
        "    pass\n"
        "@TRANSPORTERS.register('plain', PlainConfig)\n"
        "class Plain(Transporter):\n"
        "    pass\n",
        ["TypeError", "must subclass ComponentConfig", "not_config.PlainConfig"],
    ),
    "clash": (
        "from ntm.transporters.base import TRANSPORTERS, Transporter, TransporterConfig\n"
        "class MyTarFlowConfig(TransporterConfig):\n"
        "    pass\n"
        "@TRANSPORTERS.register('tarflow', MyTarFlowConfig)\n"
        "class MyTarFlow(Transporter):\n"
        "    def forward(self, x, t, cond=None):\n"
        "        return x, x.new_zeros(x.shape[0])\n"
        "    def inverse(self, u, t, cond=None, method=None):\n"
        "        return u\n",
        ["RegistryError", "'tarflow' is taken by ntm.transporters.tarflow.TarFlow",
         "ntm.transporters.tarflow.TarFlowConfig", "cannot register clash.MyTarFlow (clash.MyTarFlowConfig)"],
    ),
}


def test_a_broken_plugin_fails_in_one_line_with_status_2(tmp_path):
    """A module that does not import, a config that is not a ComponentConfig, a taken name (all at once, in parallel)."""
    procs = {}
    for name, (source, _) in BAD_PLUGINS.items():
        (tmp_path / f"{name}.py").write_text(source)
        procs[name] = subprocess.Popen([str(NTM), "--plugin", name, "train", "toy-ntm"], cwd=tmp_path, env=env(),
                                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for name, proc in procs.items():
        out, err = proc.communicate(timeout=120)
        lines = err.strip().splitlines()
        assert proc.returncode == 2, (name, proc.returncode, err[-3000:])
        assert "Traceback" not in err and len(lines) == 1, (name, err[-3000:])
        assert lines[0].startswith(f"ntm train: error: plugin {name!r} could not be loaded: "), lines[0]
        for part in BAD_PLUGINS[name][1]:
            assert part in lines[0], (name, part, lines[0])


def test_a_file_plugin_inside_a_package_is_the_same_module_as_the_package(tmp_path, monkeypatch):
    """``--plugin pkg/mod.py`` and ``--plugin pkg.mod`` import one module: loading both is not a clash."""
    import sys as _sys

    from ntm.experiments.plugins import load_plugins
    from ntm.transporters import TRANSPORTERS

    package = tmp_path / "filepkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "same.py").write_text(
        "from ntm.transporters.identity import IdentityConfig, IdentityTransporter\n"
        "from ntm.transporters import TRANSPORTERS\n"
        "class SameConfig(IdentityConfig):\n"
        "    pass\n"
        "@TRANSPORTERS.register('same-file', SameConfig)\n"
        "class Same(IdentityTransporter):\n"
        "    pass\n"
    )
    (tmp_path / "json.py").write_text("VALUE = 1\n")  # a loose file named like a stdlib module
    monkeypatch.chdir(tmp_path)
    try:
        load_plugins([str(package / "same.py"), "filepkg.same", "json.py"], installed=False)
        assert TRANSPORTERS.get("same-file").cls.__module__ == "filepkg.same"
        import json as stdlib_json

        assert hasattr(stdlib_json, "dumps") and _sys.modules["json"] is stdlib_json
    finally:
        if "same-file" in TRANSPORTERS:
            TRANSPORTERS.unregister("same-file")
        _sys.modules.pop("filepkg.same", None)
        _sys.modules.pop("filepkg", None)
