"""The zoo ships no pickle that xrl would load (issue 26; docs/reliability.md "Checkpoints hold
no pickle").

Every file under ``zoo/`` is one of three formats, recognised by its first bytes: JSON, a zip, or
HDF5 (h5py never unpickles). A zip is either a torch ``.pt`` archive, which must load with
``torch.load(weights_only=True)`` (tensors and plain containers only: torch's restricted
unpickler refuses any other class), or a Stable-Baselines3 ``.zip``, whose ``data`` must be
JSON and whose weight entries must load the same way; its ``":serialized:"`` entries
(cloudpickle) are never read by xrl (``tests/test_load_safety.py`` runs crafted payloads there).
No file is a bare pickle or named like one (``checkpoint.state``, ``checkpoint.buffer``,
``*.pkl``), and every run folder with a checkpoint resumes from a complete new-format checkpoint
folder: what a resume reads is read here with every unpickler of ``pickle`` and ``cloudpickle``
replaced by one that fails.

The files are the ones git tracks under ``zoo/`` (what a clone gets; files a run left locally
and git ignores are not shipped), or every file under ``zoo/`` outside a git checkout. Dot-named
entries are left out (a live run's ``.lock`` and partial checkpoint folders); a file that
disappears while it is read (a live run replacing its older checkpoint) is skipped.
"""

from __future__ import annotations

import io
import json
import pickle
import pickletools
import subprocess
import zipfile
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
ZOO = ROOT / "zoo"
PICKLE_NAMES = ("checkpoint.state", "checkpoint.buffer")
PICKLE_SUFFIXES = (".pkl", ".pickle", ".pckl", ".cloudpickle")
SB3_WEIGHTS = ("policy.pth", "policy.optimizer.pth", "pytorch_variables.pth")


def shipped() -> list[Path]:
    """The zoo's files git tracks (in a git checkout; what a clone gets: local, ignored files such
    as an old run's ``checkpoint.pkl`` are not shipped), else every file under ``zoo/``."""
    try:
        listed = subprocess.run(["git", "ls-files", "-z", "zoo"], cwd=ROOT, capture_output=True, check=True).stdout
        files = [ROOT / name for name in listed.decode().split("\0") if name]
    except (OSError, subprocess.CalledProcessError):
        files = list(ZOO.rglob("*"))
    return sorted(
        p for p in files if p.is_file() and not any(part.startswith(".") for part in p.relative_to(ZOO).parts)
    )


def is_pickle(blob: bytes) -> bool:
    """Whether ``blob`` is one whole pickle stream (any protocol)."""
    if blob[:1] == b"\x80" and blob[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
        return True
    try:
        ops = list(pickletools.genops(io.BytesIO(blob)))
    except Exception:  # noqa: BLE001 - not a pickle
        return False
    return bool(ops) and ops[-1][0].name == "STOP" and ops[-1][2] == len(blob) - 1


def weights_only(blob: bytes, what: str) -> None:
    try:
        torch.load(io.BytesIO(blob), map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001
        pytest.fail(f"{what} does not load with weights_only=True (loading it would need unpickling): {err}")


@pytest.fixture
def no_unpickling(monkeypatch):
    """Every general unpickler fails (torch's weights-only loader has its own restricted one)."""
    import cloudpickle

    def refuse(*args, **kwargs):
        raise AssertionError("something was unpickled")

    for module in (pickle, cloudpickle):
        for name in ("load", "loads", "Unpickler"):
            if hasattr(module, name):
                monkeypatch.setattr(module, name, refuse)


def test_the_pickle_detector_finds_pickles_of_every_protocol():
    for protocol in range(pickle.HIGHEST_PROTOCOL + 1):
        assert is_pickle(pickle.dumps({"a": [1, 2.5, "x"]}, protocol=protocol))
    assert not is_pickle(b'{"a": 1}') and not is_pickle(b"PK\x03\x04") and not is_pickle(b"")


def test_nothing_in_the_zoo_is_a_pickle_xrl_would_load(no_unpickling):
    files = shipped()
    assert len(files) >= 100  # the zoo is there (a checkout, not an empty folder)
    kinds = {"json": 0, "hdf5": 0, "pt": 0, "sb3": 0}
    for path in files:
        where = path.relative_to(ROOT)
        assert path.name not in PICKLE_NAMES and path.suffix not in PICKLE_SUFFIXES, f"{where} is named as a pickle"
        try:
            blob = path.read_bytes()
        except FileNotFoundError:  # a live run replaced it
            continue
        assert not is_pickle(blob), f"{where} is a pickle"
        if blob[:4] == b"\x89HDF":
            kinds["hdf5"] += 1
        elif blob[:4] == b"PK\x03\x04":
            with zipfile.ZipFile(io.BytesIO(blob)) as archive:
                names = archive.namelist()
                if "data" in names and "policy.pth" in names:  # Stable-Baselines3
                    json.loads(archive.read("data"))  # plain JSON (its :serialized: entries are never read)
                    for name in SB3_WEIGHTS:
                        if name in names:
                            weights_only(archive.read(name), f"{where}:{name}")
                    kinds["sb3"] += 1
                else:
                    assert any(n.endswith("/data.pkl") for n in names), f"{where}: a zip of unknown kind {names[:5]}"
                    weights_only(blob, str(where))
                    kinds["pt"] += 1
        else:
            try:
                json.loads(blob)
            except ValueError:
                pytest.fail(f"{where} is neither JSON, a zip (.pt, SB3) nor HDF5")
            kinds["json"] += 1
    # SB3 zips ship only while a zoo run is in progress (its checkpoint); none is since zoo/mario
    # finished (2026-12-05), so they are checked when present and not counted.
    assert kinds["pt"] >= 30 and kinds["json"] >= 50 and kinds["hdf5"] >= 1, kinds


def test_every_zoo_run_with_a_checkpoint_resumes_from_a_new_format_one(no_unpickling):
    """What ``train_agent`` reads to resume (``load_checkpoint``: ``state.json``, ``tensors.pt``
    and the zip's weight entries) reads without unpickling, from the folder ``checkpoint.json``
    names; no old-format checkpoint is left beside it."""
    from xrl.train.agent import CHECKPOINT_FORMAT
    from xrl.train.run import latest_checkpoint, load_tensors, read_json, zip_tensors

    runs = sorted(p.parent for p in shipped() if p.name == "checkpoint.json")
    # None ships one now (every zoo run has finished and its checkpoint left the tree); a run
    # committed in progress, as zoo/mario was until 2026-12-05, is checked here.
    for run in runs:
        where = run.relative_to(ROOT)
        assert not (run / "checkpoint.state").exists(), f"{where} still holds an old pickle checkpoint"
        folder = latest_checkpoint(run)  # complete: every file's size and sha256 as complete.json says
        assert folder is not None, f"{where} has no complete checkpoint folder"
        pointer = json.loads((run / "checkpoint.json").read_text())
        live = (run / ".lock").exists()  # a training run in progress in this work tree (never in a clone)
        if live and pointer["checkpoint"] != str(folder.relative_to(run)):
            continue  # a live run between its switch and its pointer's update
        assert pointer["checkpoint"] == str(folder.relative_to(run)), where
        state = read_json(folder / "state.json")
        assert state["format"] == CHECKPOINT_FORMAT and state["num_timesteps"] == pointer["timesteps"], where
        assert "torch" in load_tensors(folder / "tensors.pt")
        for name in ("policy.pth", "policy.optimizer.pth"):
            assert zip_tensors(folder / "checkpoint.zip", name)
        if not live:  # the hard link SB3 and load_agent open is the newest checkpoint's zip
            assert (run / "checkpoint.zip").read_bytes() == (folder / "checkpoint.zip").read_bytes(), where
