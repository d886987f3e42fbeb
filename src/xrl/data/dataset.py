"""StateDataset: an agent's rollouts on disk (HDF5), the input of explainers, metrics and reports.

One row per environment step; N rows, E episodes::

    states           uint8   (N, C, H, W)  observations in the model's input layout
    frames           uint8   (N, h, w, 3)  ``env.render()`` frames for display
    actions          int64   (N,)          the action taken
    scores           float32 (N, K)        the model's scores (logits / Q-values) for the state
    episode          int32   (N,)          episode index (collect resets it with seed + episode)
    step             int32   (N,)          step within the episode
    labels           int8    (N, H, W)     optional ground truth: 1 important, 0 unimportant,
                                           -1 excluded (see :mod:`xrl.envs.labels`)
    recurrent        float32 (N, *S)       a recurrent agent's recurrent state each state was
                                           scored with (``S = model.recurrent_shape``, carried
                                           from the episode's start); absent for other agents
    episode_returns  float64 (E,)          sum of rewards of each episode
    episode_lengths  int32   (E,)          rows of each episode
    saliency/<name>  float32 (N, H, W)     optional stored saliency, one dataset per method
                                           (attribute ``settings``: how it was made, JSON)

Attributes: ``format`` = ``"xrl.StateDataset"``, ``format_version`` (2 for a file with
``recurrent``, so an xrl that cannot use it refuses it; else 1), ``xrl_version``,
``complete``, ``n_episodes`` and, as JSON, ``env`` (``{"name", "settings"}``), ``agent``
(source, card, weights fingerprint, ...), ``action_names`` and ``collect`` (seed, sampling, cap).

Writing: :class:`StateDatasetWriter` puts each finished episode in its own file inside the
folder ``<out>.partial/`` (renamed into place when the episode ends) and merges them into
``<out>`` in one rename at the end. HDF5 rewrites chunks and metadata in place, so a single
growing file killed midway can lose episodes it already held; one file per episode cannot.

Example::

    with StateDataset.open("pong.h5") as ds:
        states = ds.states([0, 5, 9])      # (3, C, H, W) float, the model's input
        ds.add_saliency("gradient", maps)  # (N, H, W)
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import h5py
import numpy as np
import torch

from xrl._version import __version__
from xrl.envs.labels import EXCLUDED
from xrl.errors import SettingTypeError
from xrl.files import atomic_path, check_free, write_json

FORMAT = "xrl.StateDataset"
FORMAT_VERSION = 2
#: the version written for a dataset without recurrent states (what every xrl reads)
PLAIN_VERSION = 1
#: JSON attributes that identify a collection (a resumed one must match them all)
META_KEYS = ("env", "agent", "action_names", "collect")
#: datasets with one row per step
_ROWS = ("states", "frames", "actions", "scores", "episode", "step", "labels", "recurrent")
_OPTIONAL = ("labels", "recurrent")
_EPISODES = ("episode_returns", "episode_lengths")
_EXPECTED = (
    "expected an xrl StateDataset: an HDF5 file with attribute format='xrl.StateDataset' as written by xrl.data.collect"
)
_CHUNK_BYTES = 1 << 18  # ~256 KiB chunks: reading one state decompresses little
_COPY_BYTES = 1 << 26  # rows copied at once when merging episodes

log = logging.getLogger(__name__)

Index = int | slice | Sequence[int] | np.ndarray | torch.Tensor | None


def partial_path(out: str | os.PathLike[str]) -> Path:
    """The folder holding a collection bound for ``out`` until it is complete."""
    return Path(f"{os.fspath(out)}.partial")


def _json(value: Any) -> str:
    return json.dumps(value, sort_keys=True)


def meta_differences(stored: Mapping[str, str], wanted: Mapping[str, Any]) -> list[str]:
    """Names in :data:`META_KEYS` whose stored JSON differs from ``wanted`` (plain values). The
    agent's file path is not compared: the same weights (fingerprint) loaded from another place
    (another clone, a copy) are the same agent."""

    def comparable(key: str, value: Any) -> Any:
        if key == "agent" and isinstance(value, Mapping):
            return {k: v for k, v in value.items() if k != "source"}
        return value

    def stored_value(key: str) -> Any:
        try:
            return json.loads(stored[key])
        except (KeyError, TypeError, ValueError):
            return None

    return [k for k in META_KEYS if _json(comparable(k, stored_value(k))) != _json(comparable(k, wanted[k]))]


class StateDataset:
    """A read handle on a dataset file; use :meth:`open`.

    Arrays come back as numpy (``torch`` for :meth:`states`), always with a leading row axis:
    ``idx`` may be ``None`` (all rows), an int (one row, kept as a batch of 1), a slice, or a
    sequence / array / tensor of row indices in any order (duplicates and negatives allowed).
    """

    def __init__(self, path: Path, file: h5py.File) -> None:
        self.path = path
        self._file: h5py.File | None = file
        self._pid = os.getpid()
        attrs = file.attrs
        self._meta = {k: str(attrs[k]) for k in META_KEYS}
        self.xrl_version = str(attrs["xrl_version"])
        self.n_episodes = int(attrs["n_episodes"])
        self.episode_returns = file["episode_returns"][()]
        self.episode_lengths = file["episode_lengths"][()]
        self.state_shape = tuple(file["states"].shape[1:])
        self._n = int(file["states"].shape[0])

    @classmethod
    def open(cls, path: str | os.PathLike[str]) -> StateDataset:
        """Open ``path`` read-only after checking it is a whole xrl StateDataset.

        Raises ``FileNotFoundError`` for a missing file and ``ValueError`` (saying what was
        expected) for a folder, a non-HDF5, foreign, newer, truncated, corrupt or incomplete file.
        """
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"no dataset file at {path}; {_EXPECTED}")
        if path.is_dir():
            hint = (
                " (the folder of an interrupted collection: run the same collect call again to resume it)"
                if path.suffix == ".partial"
                else ""
            )
            raise ValueError(f"{path} is a folder{hint}; {_EXPECTED}")
        try:
            file = h5py.File(path, "r")
        except OSError as err:
            if not h5py.is_hdf5(path):
                raise ValueError(f"{path} is not an HDF5 file; {_EXPECTED}") from None
            raise ValueError(
                f"{path} cannot be read: truncated or corrupt ({err}); {_EXPECTED}. Collect it again."
            ) from err
        try:
            _check(file, path)
            return cls(path, file)
        except (OSError, RuntimeError, KeyError) as err:  # HDF5 read errors inside a damaged file
            file.close()
            raise ValueError(f"{path} is truncated or corrupt ({err}); {_EXPECTED}. Collect it again.") from err
        except BaseException:
            file.close()
            raise

    def _h5(self) -> h5py.File:
        # Reopen lazily: after close(), after add_saliency replaced the file, or in a forked worker.
        if self._file is None or self._pid != os.getpid():
            self._file = h5py.File(self.path, "r")
            self._pid = os.getpid()
        return self._file

    def close(self) -> None:
        if self._file is not None and self._pid == os.getpid():
            self._file.close()
        self._file = None

    def __enter__(self) -> StateDataset:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __len__(self) -> int:
        return self._n

    def __repr__(self) -> str:
        return (
            f"StateDataset({str(self.path)!r}, env={self.env['name']!r}, rows={self._n}, "
            f"episodes={self.n_episodes}, saliency={self.saliency_methods})"
        )

    # -- metadata ----------------------------------------------------------------------------

    @property
    def env(self) -> dict[str, Any]:
        """``{"name", "settings"}``: ``xrl.make_env(env["name"], **env["settings"])``."""
        return _json_object(self._meta["env"])

    @property
    def agent(self) -> dict[str, Any]:
        """The agent: ``source`` (path or zoo name), ``card``, ``fingerprint`` of its weights, ..."""
        return _json_object(self._meta["agent"])

    @property
    def action_names(self) -> list[str]:
        names: list[str] = json.loads(self._meta["action_names"])
        return names

    @property
    def collect_settings(self) -> dict[str, Any]:
        """How the rollouts were made: ``seed``, ``sample``, ``max_steps``."""
        return _json_object(self._meta["collect"])

    @property
    def meta(self) -> dict[str, str]:
        """The identifying attributes as stored (JSON strings), see :func:`meta_differences`."""
        return dict(self._meta)

    @property
    def has_labels(self) -> bool:
        return "labels" in self._h5()

    @property
    def saliency_methods(self) -> list[str]:
        group = self._h5().get("saliency")
        return sorted(group) if group is not None else []

    # -- data --------------------------------------------------------------------------------

    def _read(self, name: str, idx: Index = None) -> np.ndarray:
        try:
            return _read_rows(self._h5()[name], idx)
        except (OSError, RuntimeError, KeyError) as err:  # a damaged chunk inside the file (HDF5 names no file)
            raise ValueError(
                f"{self.path} is truncated or corrupt ({name}: {err}); {_EXPECTED}. Collect it again."
            ) from err

    def states(self, idx: Index = None, *, device: torch.device | str | None = None) -> torch.Tensor:
        """The model's input ``(n, C, H, W)`` float32: stored uint8 over the agent's ``obs_scale``."""
        scale = float(self.agent.get("obs_scale", 255.0))
        return torch.from_numpy(self.raw_states(idx)).to(device=device, dtype=torch.float32) / scale

    def raw_states(self, idx: Index = None) -> np.ndarray:
        """Stored observations ``(n, C, H, W)`` uint8."""
        return self._read("states", idx)

    def frames(self, idx: Index = None) -> np.ndarray:
        """Display frames ``(n, h, w, 3)`` uint8."""
        return self._read("frames", idx)

    def labels(self, idx: Index = None) -> np.ndarray | None:
        """Ground-truth label maps ``(n, H, W)`` int8, or ``None`` when the env has none."""
        return self._read("labels", idx) if self.has_labels else None

    @property
    def has_recurrent(self) -> bool:
        """The dataset records a recurrent agent's recurrent state of each row."""
        return "recurrent" in self._h5()

    def recurrent(self, idx: Index = None) -> np.ndarray | None:
        """The recurrent state ``(n, *model.recurrent_shape)`` float32 each state was scored with
        (a recurrent agent's dataset), or ``None`` when the dataset has none."""
        return self._read("recurrent", idx) if self.has_recurrent else None

    @property
    def actions(self) -> np.ndarray:
        return self._read("actions")

    @property
    def scores(self) -> np.ndarray:
        return self._read("scores")

    @property
    def episode(self) -> np.ndarray:
        return self._read("episode")

    @property
    def step(self) -> np.ndarray:
        return self._read("step")

    def saliency(self, method: str, idx: Index = None) -> np.ndarray:
        """Stored saliency of ``method`` ``(n, H, W)`` float32."""
        if method not in self.saliency_methods:
            known = ", ".join(self.saliency_methods) or "(none)"
            raise ValueError(f"no saliency stored for {method!r} in {self.path}; stored: {known}")
        return self._read(f"saliency/{method}", idx)

    def saliency_settings(self, method: str) -> dict[str, Any]:
        """The settings stored with ``saliency/<method>`` (``{}`` when none were given)."""
        self.saliency(method, [])  # unknown methods fail with the list of stored ones
        return _json_object(self._h5()[f"saliency/{method}"].attrs.get("settings", "{}"))

    def add_saliency(
        self,
        method: str,
        maps: np.ndarray | torch.Tensor,
        *,
        settings: Mapping[str, Any] | None = None,
        overwrite: bool = False,
        compression: str | None = "gzip",
    ) -> None:
        """Store ``maps`` ``(N, H, W)`` (one per state, in row order) as ``saliency/<method>``,
        with the explainer's ``settings`` (JSON) so a reader knows how they were made.

        Written to a copy of the file that then replaces it in one rename, so a kill midway
        leaves the previous file intact (the price is one copy of the file).
        """
        if not isinstance(method, str) or not method or "/" in method:
            raise ValueError(f"method must be a non-empty name without '/', got {method!r}")
        if isinstance(maps, torch.Tensor):
            maps = maps.detach().cpu().numpy()
        maps = np.asarray(maps)
        expected = (self._n, *self.state_shape[1:])
        if maps.shape != expected:
            raise ValueError(
                f"saliency maps must have shape {expected} (one (H, W) map per state, in row order), got {maps.shape}"
            )
        if not np.issubdtype(maps.dtype, np.number) or not np.isfinite(maps).all():
            raise ValueError(f"saliency maps must be finite numbers (got dtype {maps.dtype})")
        if method in self.saliency_methods and not overwrite:
            raise ValueError(f"saliency for {method!r} is already stored; pass overwrite=True to replace it")
        with atomic_path(self.path) as tmp:
            shutil.copyfile(self.path, tmp)
            with h5py.File(tmp, "r+") as file:
                group = file.require_group("saliency")
                if method in group:
                    del group[method]
                dset = _create(group, method, maps.shape, np.float32, compression)
                dset[...] = maps
                dset.attrs["settings"] = _json(dict(settings or {}))
            self.close()  # the rename must not happen under an open handle


def _json_object(text: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(text)
    return data


def _read_rows(dset: h5py.Dataset, idx: Index) -> np.ndarray:
    n = dset.shape[0]
    out: np.ndarray
    if idx is None:
        out = dset[()]
        return out
    if isinstance(idx, slice):
        rows = np.arange(n)[idx]
    else:
        rows = np.asarray(idx.cpu() if isinstance(idx, torch.Tensor) else idx).reshape(-1)
        if rows.dtype == np.bool_ or not (rows.size == 0 or np.issubdtype(rows.dtype, np.integer)):
            raise SettingTypeError(f"row indices must be integers, got dtype {rows.dtype}")
        if rows.size and (rows.min() < -n or rows.max() >= n):
            raise IndexError(f"row index out of range for a dataset of {n} rows")
        rows = np.where(rows < 0, rows + n, rows)
    if rows.size == 0:
        return np.empty((0, *dset.shape[1:]), dtype=dset.dtype)
    if np.all(np.diff(rows) == 1):  # contiguous: one plain slice
        out = dset[rows[0] : rows[-1] + 1]
        return out
    unique, inverse = np.unique(rows, return_inverse=True)  # h5py wants increasing indices
    out = dset[unique][inverse]
    return out


def _check(file: h5py.File, path: Path) -> None:
    fmt = file.attrs.get("format")
    if fmt != FORMAT:
        raise ValueError(f"{path} is an HDF5 file but not an xrl StateDataset (format attribute {fmt!r}); {_EXPECTED}")
    version = int(file.attrs.get("format_version", -1))
    if version > FORMAT_VERSION:
        raise ValueError(
            f"{path} is StateDataset format version {version}; this xrl "
            f"({__version__}) reads up to {FORMAT_VERSION}: upgrade xrl"
        )
    if not bool(file.attrs.get("complete", False)):
        raise ValueError(f"{path} is an incomplete StateDataset; {_EXPECTED}. Collect it again.")
    missing = [k for k in (*_ROWS, *_EPISODES) if k not in file and k not in _OPTIONAL]
    missing += [k for k in ("n_episodes", "xrl_version", *META_KEYS) if k not in file.attrs]
    if missing:
        raise ValueError(f"{path} lacks {', '.join(missing)}; {_EXPECTED}")
    n = int(file["episode_lengths"][()].sum())
    lengths = {k: file[k].shape[0] for k in _ROWS if k in file}
    lengths.update({f"saliency/{k}": v.shape[0] for k, v in file.get("saliency", {}).items()})
    n_episodes = int(file.attrs["n_episodes"])
    if any(r != n for r in lengths.values()) or {file[k].shape[0] for k in _EPISODES} != {n_episodes}:
        raise ValueError(
            f"{path} is inconsistent: {n} rows in {n_episodes} episodes, but dataset lengths {lengths}; {_EXPECTED}"
        )
    if n == 0:
        raise ValueError(f"{path} holds no states (0 rows); {_EXPECTED}. Collect it again with at least one step.")
    for k in lengths:  # read the last row of each: catches a file cut inside its data
        file[k][n - 1]
    _check_meta(file, path)
    scores = file["scores"][()]
    if not np.issubdtype(scores.dtype, np.floating) or not np.isfinite(scores).all():
        bad: np.ndarray | list[int] = (
            np.flatnonzero(~np.isfinite(scores).all(axis=tuple(range(1, scores.ndim)))) if scores.size else []
        )
        found = (
            f"{len(bad)} rows with NaN or infinite scores, the first row {int(bad[0])}" if len(bad) else scores.dtype
        )
        raise ValueError(f"{path} has {found}; expected finite float scores (the agent's outputs). Collect it again.")


def _check_meta(file: h5py.File, path: Path) -> None:
    """The identifying attributes are JSON of the expected shape (never unpickled: a pickled or
    garbage attribute is refused naming it)."""
    expected = {
        "env": 'an object {"name": "<env name>", "settings": {...}}',
        "agent": "an object",
        "action_names": "a list of action names",
        "collect": "an object",
    }
    for key in META_KEYS:
        raw = file.attrs[key]
        try:
            text = raw.decode() if isinstance(raw, bytes) else raw
            if not isinstance(text, str):
                raise ValueError
            value = json.loads(text)
        except (ValueError, UnicodeDecodeError):
            shown = repr(raw)[:60]
            raise ValueError(f"{path} has attribute {key} = {shown}, not JSON; expected {expected[key]}") from None
        ok = {
            "env": isinstance(value, dict)
            and isinstance(value.get("name"), str)
            and bool(value["name"])
            and isinstance(value.get("settings"), dict),
            "agent": isinstance(value, dict),
            "action_names": isinstance(value, list) and all(isinstance(a, str) for a in value),
            "collect": isinstance(value, dict),
        }[key]
        if not ok:
            raise ValueError(f"{path} has attribute {key} = {json.dumps(value)[:80]}; expected {expected[key]}")


def _create(group: h5py.Group, name: str, shape: tuple[int, ...], dtype: Any, compression: str | None) -> h5py.Dataset:
    """A chunked, compressed dataset of ``shape`` that can grow along its first axis."""
    row_shape = tuple(shape[1:])
    row_bytes = max(1, int(np.prod(row_shape, dtype=np.int64)) * np.dtype(dtype).itemsize)
    chunk_rows = int(np.clip(_CHUNK_BYTES // row_bytes, 1, 4096))
    if compression not in ("gzip", "lzf", None):
        raise ValueError(f"compression must be 'gzip', 'lzf' or None, got {compression!r}")
    opts = {"compression_opts": 4} if compression == "gzip" else {}
    return group.create_dataset(
        name,
        shape=shape,
        dtype=dtype,
        maxshape=(None, *row_shape),
        chunks=(chunk_rows, *row_shape),
        compression=compression,
        **opts,
    )


def _row_shapes(file: h5py.File) -> dict[str, tuple[int, ...]]:
    """Row shapes of a collection's per-step datasets (``labels`` only if it has them)."""
    return {k: file[k].shape[1:] for k in _ROWS if k in file}


class _Piece(NamedTuple):
    """One file of committed episodes in a ``.partial`` folder."""

    path: Path
    first: int  # first episode index
    returns: np.ndarray
    lengths: np.ndarray


class StateDatasetWriter:
    """Write a StateDataset episode by episode, resumably; ``finalize()`` makes ``out``.

    Steps are appended to the current episode's file in ``<out>.partial/``; ``end_episode``
    renames it into place (committed). Opening a writer where ``<out>.partial/`` of the same
    collection (same :data:`META_KEYS`) exists continues after its last committed episode; one of
    another collection is refused unless ``restart=True``.

    Example::

        with StateDatasetWriter(out, env=..., agent=..., action_names=..., collect=...) as w:
            w.append(states=s, frames=f, actions=a, scores=q, labels=None)  # any number of rows
            w.end_episode(21.0)                                            # commit the episode
            w.finalize()                                                   # -> out
    """

    def __init__(
        self,
        out: str | os.PathLike[str],
        *,
        env: Mapping[str, Any],
        agent: Mapping[str, Any],
        action_names: Sequence[str],
        collect: Mapping[str, Any] | None = None,
        compression: str | None = "gzip",
        restart: bool = False,
    ) -> None:
        self.out = Path(out)
        self.dir = partial_path(out)
        self.compression = compression
        self._n_actions = len(action_names)
        wanted = {"env": env, "agent": agent, "action_names": list(action_names), "collect": dict(collect or {})}
        try:
            self._meta = {k: _json(wanted[k]) for k in META_KEYS}
        except TypeError as err:
            raise ValueError(f"dataset metadata must be JSON-serialisable: {err}") from err
        meta_file = self.dir / "meta.json"
        if self.dir.exists() and not meta_file.exists():
            # killed before meta.json was in place, it holds at most our hidden temp file
            if not self.dir.is_dir() or any(not p.name.startswith(".") for p in self.dir.iterdir()):
                raise ValueError(
                    f"{self.dir} exists and is not the folder of an interrupted xrl collection; move it away"
                )
            shutil.rmtree(self.dir)
        if self.dir.exists() and restart:
            shutil.rmtree(self.dir)
        if self.dir.exists():  # an interrupted collection: read what it committed
            stored = json.loads(meta_file.read_text())
            differ = meta_differences(stored, wanted)
            if differ:
                details = "; ".join(f"{k}: stored {stored.get(k)}, asked {self._meta[k]}" for k in differ)
                raise ValueError(
                    f"{self.dir} holds an interrupted collection with other settings "
                    f"({details}); delete it or pass overwrite=True to start again"
                )
            self._pieces = self._scan()
            self._layout = self._read_layout()
        else:  # a new one: nothing committed yet
            self._pieces, self._layout = [], None
            self.dir.mkdir(parents=True)
            write_json(meta_file, self._meta)
        self._tmp = self.dir / "episode.tmp"
        self._tmp.unlink(missing_ok=True)  # the episode a kill interrupted
        self._file: h5py.File | None = None  # the current episode's, once it has rows
        self._rows = 0  # rows in the current episode

    def _read_layout(self) -> dict[str, tuple[int, ...]] | None:
        """Row shapes of the per-step datasets (``labels`` only if the collection has them)."""
        if not self._pieces:
            return None
        with h5py.File(self._pieces[0].path, "r") as file:
            return _row_shapes(file)

    def _scan(self) -> list[_Piece]:
        """The committed pieces, contiguous from episode 0."""
        found = {}
        for path in self.dir.glob("[0-9]*.h5"):
            with h5py.File(path, "r") as file:
                found[int(path.stem)] = _Piece(
                    path, int(path.stem), file["episode_returns"][()], file["episode_lengths"][()]
                )
        pieces, first = [], 0
        while first in found:
            pieces.append(found.pop(first))
            first += len(pieces[-1].returns)
        for piece in found.values():  # cannot happen unless files were removed by hand
            log.warning("ignoring %s: the episodes before it are missing", piece.path)
        return pieces

    @property
    def n_episodes(self) -> int:
        """Committed episodes."""
        return sum(len(p.returns) for p in self._pieces)

    @property
    def n_rows(self) -> int:
        """Rows in committed episodes."""
        return int(sum(p.lengths.sum() for p in self._pieces))

    @property
    def episode_returns(self) -> np.ndarray:
        return np.concatenate([p.returns for p in self._pieces] or [np.zeros(0)])

    def start_from(self, dataset: str | os.PathLike[str]) -> None:
        """Continue a complete dataset of the same collection (to add episodes to it)."""
        if self._pieces:
            raise ValueError("start_from needs an empty collection")
        with StateDataset.open(dataset) as ds:  # everything the copy is read once, from it
            differ = meta_differences(ds.meta, {k: json.loads(v) for k, v in self._meta.items()})
            piece = _Piece(self.dir / f"{0:07d}.h5", 0, ds.episode_returns, ds.episode_lengths)
            layout = _row_shapes(ds._h5())
        if differ:
            raise ValueError(f"{dataset} is another collection (different {', '.join(differ)})")
        with atomic_path(piece.path) as tmp:
            shutil.copyfile(dataset, tmp)
        self._pieces, self._layout = [piece], layout

    def truncate(self, n_episodes: int) -> None:
        """Forget the committed episodes from ``n_episodes`` on."""
        if self._file is not None:
            raise ValueError("an episode is in progress; truncate before appending")
        keep = []
        for piece in self._pieces:
            if piece.first + len(piece.returns) <= n_episodes:
                keep.append(piece)
            elif piece.first < n_episodes:
                raise ValueError(
                    f"{piece.path} holds episodes {piece.first}.."
                    f"{piece.first + len(piece.returns) - 1}; cannot keep {n_episodes}"
                )
            else:
                piece.path.unlink()
        self._pieces = keep

    def append(
        self,
        *,
        states: np.ndarray,
        frames: np.ndarray,
        actions: np.ndarray,
        scores: np.ndarray,
        labels: np.ndarray | None = None,
        recurrent: np.ndarray | None = None,
    ) -> None:
        """Add ``T`` steps to the current episode.

        ``states (T, C, H, W)`` uint8, ``frames (T, h, w, 3)`` uint8, ``actions (T,)`` integers,
        ``scores (T, K)``, ``labels (T, H, W)`` or ``None`` (then stored as -1, excluded, if
        the collection has labels), ``recurrent (T, *S)`` (a recurrent agent's state of each
        step) or ``None``: given at every step of a collection or at none.
        """
        states, frames = np.asarray(states), np.asarray(frames)
        n = len(states)
        if n == 0:
            raise ValueError("append needs at least one step")
        if states.dtype != np.uint8 or states.ndim != 4:
            raise ValueError(f"states must be uint8 (T, C, H, W), got {states.dtype} {states.shape}")
        if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
            raise ValueError(f"frames must be uint8 (T, h, w, 3), got {frames.dtype} {frames.shape}")
        data = {
            "states": states,
            "frames": frames,
            "actions": np.asarray(actions).astype(np.int64, casting="same_kind"),
            "scores": np.asarray(scores, dtype=np.float32),
            "episode": np.full(n, self.n_episodes, dtype=np.int32),
            "step": np.arange(self._rows, self._rows + n, dtype=np.int32),
        }
        layout = self._layout
        if labels is not None:
            data["labels"] = np.asarray(labels).astype(np.int8, casting="same_kind")
        elif layout is not None and "labels" in layout:
            data["labels"] = np.full((n, *states.shape[2:]), EXCLUDED, dtype=np.int8)
        if recurrent is not None:
            data["recurrent"] = np.asarray(recurrent, dtype=np.float32)
        if layout is not None and ("recurrent" in data) != ("recurrent" in layout):
            raise ValueError("recurrent states must be given at every step of a collection or at none")
        if layout is not None and "labels" in data and "labels" not in layout:
            raise ValueError(
                "labels appeared after steps without any; an env must give info['labels'] from the first step or never"
            )
        bad = {k: v.shape for k, v in data.items() if len(v) != n}
        if bad or data["scores"].shape[1:] != (self._n_actions,):
            raise ValueError(
                f"every array needs {n} rows and scores (T, K={self._n_actions}); got {bad or data['scores'].shape}"
            )
        if "labels" in data and data["labels"].shape[1:] != states.shape[2:]:
            raise ValueError(
                f"labels must be (T, H, W) = (T, {states.shape[2]}, {states.shape[3]}), got {data['labels'].shape}"
            )
        for name, value in data.items():
            if layout is not None and layout[name] != value.shape[1:]:
                raise ValueError(f"{name} rows of shape {value.shape[1:]} do not match the collection's {layout[name]}")
        check_free(  # before HDF5 writes: a write failing for want of space leaves HDF5 in a state it cannot close
            self.dir,
            sum(v.nbytes for v in data.values()) + 2**16,
            f"step {self._rows} of episode {self.n_episodes}",
            f"the {self.n_episodes} finished episodes are kept in {self.dir}: free space and run the same "
            "collection again to resume",
        )
        self._layout = {k: v.shape[1:] for k, v in data.items()}
        if self._file is None:
            self._file = h5py.File(self._tmp, "w")
            for name, value in data.items():  # lzf: fast; finalize compresses for keeps
                _create(self._file, name, (0, *value.shape[1:]), value.dtype, "lzf")
        for name, value in data.items():
            dset = self._file[name]
            dset.resize(self._rows + n, axis=0)
            dset[self._rows :] = value
        self._rows += n

    def end_episode(self, episode_return: float) -> None:
        """Commit the current episode (its file is renamed into place)."""
        if self._file is None:
            raise ValueError("an episode needs at least one step; call append first")
        first = self.n_episodes
        self._file["episode_returns"] = np.array([episode_return], dtype=np.float64)
        self._file["episode_lengths"] = np.array([self._rows], dtype=np.int32)
        self._file.close()
        path = self.dir / f"{first:07d}.h5"
        os.replace(self._tmp, path)
        self._pieces.append(
            _Piece(path, first, np.array([episode_return], dtype=np.float64), np.array([self._rows], dtype=np.int32))
        )
        self._file, self._rows = None, 0

    def finalize(self) -> Path:
        """Merge the committed episodes into ``out`` (one atomic rename) and remove the folder."""
        if self._file is not None:
            raise ValueError("an episode is in progress; call end_episode before finalize")
        if not self._pieces:
            raise ValueError("no episode was written; nothing to finalize")
        n, n_episodes = self.n_rows, self.n_episodes
        check_free(
            self.out.parent,
            sum(p.path.stat().st_size for p in self._pieces),
            f"merging {n_episodes} episodes into {self.out.name}",
            f"the {n_episodes} finished episodes are kept in {self.dir}: free space and run the same collection "
            "again to finish",
        )
        with atomic_path(self.out) as tmp, h5py.File(tmp, "w") as file:
            file.attrs.update(
                {
                    "format": FORMAT,
                    "format_version": FORMAT_VERSION if "recurrent" in (self._layout or {}) else PLAIN_VERSION,
                    "xrl_version": __version__,
                    "complete": False,
                    "n_episodes": n_episodes,
                    **self._meta,
                }
            )
            with h5py.File(self._pieces[0].path, "r") as first:
                for name in (*_ROWS, *_EPISODES):
                    if name in first:
                        size = n_episodes if name in _EPISODES else n
                        _create(file, name, (size, *first[name].shape[1:]), first[name].dtype, self.compression)
            row = 0
            for piece in self._pieces:
                with h5py.File(piece.path, "r") as source:
                    _copy_rows(source, file, row, piece.first)
                row += int(piece.lengths.sum())
            file.attrs["complete"] = True
        shutil.rmtree(self.dir)
        return self.out

    def close(self) -> None:
        """Stop without finalizing: ``<out>.partial/`` keeps the committed episodes (the episode in
        progress is dropped)."""
        if self._file is not None:
            file, self._file, self._rows = self._file, None, 0
            try:
                file.close()
            except (OSError, RuntimeError):  # its writes failed (a full disk): the episode is dropped anyway
                pass
            self._tmp.unlink(missing_ok=True)

    def __enter__(self) -> StateDatasetWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _copy_rows(source: h5py.File, target: h5py.File, row: int, episode: int) -> None:
    """Copy one piece into ``target`` at ``row`` / ``episode``, a block of rows at a time."""
    for name in (*_ROWS, *_EPISODES):
        if (name in source) != (name in target):
            raise ValueError(f"{source.filename}: {name} is in some episodes but not in others")
        if name not in source:
            continue
        src, dst = source[name], target[name]
        if src.shape[1:] != dst.shape[1:]:
            raise ValueError(f"{source.filename}: {name} rows {src.shape[1:]} != {dst.shape[1:]}")
        at = episode if name in _EPISODES else row
        block = max(1, _COPY_BYTES // max(1, src[:1].nbytes))
        for lo in range(0, src.shape[0], block):
            values = src[lo : lo + block]
            dst[at + lo : at + lo + len(values)] = values
