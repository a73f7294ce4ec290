"""A checkpoint directory from someone else never runs code: a DCP ``.metadata`` whose pickle would create a marker
file is refused in one line (exit 2) by every command that reads checkpoints, and the marker never appears."""

from __future__ import annotations

import json
import pickle

import pytest

from ntm.experiments.cli import main
from ntm.train.checkpoint import CheckpointManager
from ntm.train.checkpoint.dcp import file_digests
from tests.faults.payloads import payloads

SMALL = ["--transporter.width", "16", "--transporter.num-heads", "2", "--predictor.width", "16", "--predictor.depth", "1",
         "--train.warmup-steps", "0", "--train.sample-every", "0", "--eval.num-examples", "8"]


PAYLOADS = payloads("os.system", "Path.touch", "exec")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("malicious") / "run"
    assert main(["train", "toy-ntm", *SMALL, "--run-dir", str(run_dir), "--train.steps", "2"]) == 0
    return run_dir


@pytest.mark.parametrize("payload", list(PAYLOADS.values()), ids=list(PAYLOADS))
@pytest.mark.parametrize("command", ["sample", "eval", "export", "resume"])
def test_a_metadata_pickle_that_runs_code_is_refused(run, tmp_path, capsys, payload, command):
    import shutil

    shared = tmp_path / "shared"
    shutil.copytree(run, shared)
    latest = CheckpointManager(shared / "checkpoints").latest_path()
    marker = tmp_path / "MARKER"
    (latest / ".metadata").write_bytes(pickle.dumps(payload(marker)))
    # whoever shares the directory rewrites meta.json's checksums too: the unpickler, not the checksum, must refuse
    meta = json.loads((latest / "meta.json").read_text())
    (latest / "meta.json").write_text(json.dumps({**meta, "files": file_digests(latest)}))
    capsys.readouterr()
    args = {"sample": ["sample", "--run", str(shared)], "eval": ["eval", "--run", str(shared)],
            "export": ["export", "--run", str(shared)],
            "resume": ["train", "toy-ntm", *SMALL, "--run-dir", str(shared), "--train.steps", "3", "--resume"]}[command]
    status = main(args)
    err = capsys.readouterr().err.strip().splitlines()
    assert not marker.exists()
    assert status == 2 and len(err) == 1, err
    assert "refused" in err[0] and str(latest) in err[0]
