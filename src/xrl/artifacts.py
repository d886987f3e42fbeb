"""One layer for every trained artifact on disk: reading, writing, identifying and checking it.

Every artifact is a torch file (``.pt``) holding one dict — a **format** name and **version**, the
**constructor settings** needed to rebuild the network, its **weights** (``state_dict``) — and,
beside it, a **card** (the same stem, ``.json``): what it is, how it was made, its score, the
artifact's **sha256** and its weights **fingerprint**.

=====================  ===================  ======================================================
format                 file                 constructor settings
=====================  ===================  ======================================================
``xrl.agent``          ``agent.pt``         ``algo``, ``arch``, ``obs_shape``, ``n_actions``
                                            (DIGR students are agents)
``xrl.classifier``     ``classifier.pt``    ``arch``, ``size``, ``class_names``
``xrl.mask_network``   ``<method>.pt``      ``method``, ``arch``, ``input_shape``, ``n_maps``,
                                            ``reference``, ``agent`` (VisionMask, Stalder)
``xrl.rexl_agent``     ``rexl.pt``          ``grid``, ``mode``, ``classes``, ``n_classes``, the
                                            explained model's fingerprint, the extractor's
=====================  ===================  ======================================================

Reading never runs code from the file: :func:`load_payload` is ``torch.load(weights_only=True)``
(plain containers, numbers, strings and tensors only), :func:`read_header` the same without
reading the weights (tensors mapped onto the ``meta`` device), and cards are JSON. Files
written before a format had a ``version`` are version 1. Every problem is an
:class:`ArtifactError` (a ``ValueError``) of one line naming the file, what was found and what
was expected. :func:`open_artifact` reads what a loader needs of a file in one go: its format,
its card and its payload (with or without the weights). The layer imports only torch, numpy and the standard library (and
:mod:`xrl.files`), so every floor above it can use it. Details: ``docs/artifacts.md``.
"""

from __future__ import annotations

import hashlib
import json
import os
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from xrl.files import atomic_path, write_json

#: format name -> (kind, newest version this xrl reads and writes)
FORMATS: dict[str, tuple[str, int]] = {
    "xrl.agent": ("agent", 1),
    "xrl.classifier": ("classifier", 1),
    "xrl.mask_network": ("mask_network", 1),
    "xrl.rexl_agent": ("rexl_agent", 1),
}
#: what writes each format (for error messages)
#: what each format is called in messages
NOUNS = {
    "xrl.agent": "an xrl agent checkpoint",
    "xrl.classifier": "an xrl classifier",
    "xrl.mask_network": "an xrl mask network",
    "xrl.rexl_agent": "a RExL agent",
}
WRITERS = {
    "xrl.agent": "xrl train agent / xrl train digr",
    "xrl.classifier": "xrl train classifier",
    "xrl.mask_network": "xrl train visionmask / stalder-explainer",
    "xrl.rexl_agent": "xrl train rexl",
}
SB3_ZIP = "sb3.zip"
"""the pseudo-format of a Stable-Baselines3 ``.zip`` (read by :mod:`xrl.agents.load` without pickle)"""


class ArtifactError(ValueError):
    """A file that is not the artifact it should be, in one line: ``<path> <found>; expected
    <expected>`` (``found`` is a phrase such as ``is not valid JSON (...)``)."""

    def __init__(self, path: str | os.PathLike[str], found: str, expected: str) -> None:
        self.path, self.found, self.expected = str(path), found, expected
        super().__init__(f"{path} {found}; expected {expected}")


# ------------------------------------------------------------------ identity


def fingerprint(weights: nn.Module | Mapping[str, torch.Tensor]) -> str:
    """A 16-hex-digit hash of a module's (or a ``state_dict``'s) weights: every entry's name,
    dtype, shape and bytes, in order. Two modules with the same fingerprint compute the same
    function; datasets, mask networks and RExL agents record the fingerprint of the agent they
    were made with (``Model.fingerprint()``)."""
    state = weights.state_dict() if isinstance(weights, nn.Module) else weights
    if not isinstance(state, Mapping):
        raise TypeError(f"fingerprint takes an nn.Module or a state_dict, got {type(weights).__name__}")
    digest = hashlib.sha256()
    for key, tensor in state.items():
        tensor = tensor.detach().cpu().contiguous()
        digest.update(f"{key}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:16]


def sha256(path: str | os.PathLike[str]) -> str:
    """The sha256 of a file's bytes (hex), read in 1 MB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# ------------------------------------------------------------------ cards


def card_path(path: str | os.PathLike[str]) -> Path:
    """The card of an artifact: the same stem with ``.json``."""
    return Path(path).with_suffix(".json")


def read_card(path: str | os.PathLike[str], *, required: bool = False) -> dict[str, Any]:
    """The card beside artifact ``path`` (``{}`` when there is none and it is not ``required``);
    refused when it is not a JSON object or its ``env`` is not ``{"name", "settings"}``."""
    card = card_path(path)
    if not card.exists():
        if required:
            raise ArtifactError(card, "does not exist", f"the card (.json) written beside {Path(path).name}")
        return {}
    try:
        data = json.loads(card.read_text())
    except UnicodeDecodeError as err:
        raise ArtifactError(card, f"is not text ({err.reason})", "a JSON card") from None
    except json.JSONDecodeError as err:
        raise ArtifactError(
            card, f"is not valid JSON ({err.msg} at line {err.lineno} column {err.colno})", "a JSON card"
        ) from None
    except OSError as err:
        raise ArtifactError(card, f"is unreadable ({err.strerror})", "a JSON card") from None
    if not isinstance(data, dict):
        raise ArtifactError(card, f"holds a JSON {type(data).__name__}", "a JSON object (the card's fields)")
    env = data.get("env")
    if env is not None and not (
        isinstance(env, dict) and isinstance(env.get("name"), str) and isinstance(env.get("settings", {}), dict)
    ):
        raise ArtifactError(
            card, f"has 'env' = {json.dumps(env)[:60]}", '\'env\': {"name": "<registered env>", "settings": {...}}'
        )
    return data


# ------------------------------------------------------------------ payloads


def _check_version(path: Path, payload: dict[str, Any], fmt: str) -> None:
    version = payload.get("version", 1)  # files written before a format carried a version
    newest = FORMATS[fmt][1]
    if isinstance(version, bool) or not isinstance(version, int) or not 1 <= version <= newest:
        raise ArtifactError(
            path, f"is {fmt} version {version!r}", f"a version from 1 to {newest} (a newer xrl wrote it? upgrade xrl)"
        )


def _torch_load(path: Path, **kwargs: Any) -> Any:
    if not path.is_file():
        raise ArtifactError(path, "does not exist" if not path.exists() else "is not a file", "an xrl artifact (.pt)")
    try:
        return torch.load(path, weights_only=True, **kwargs)
    except Exception as err:  # not a torch file, truncated, or holding arbitrary objects
        detail = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        if "Weights only load failed" in str(err) or "Unsupported global" in str(err):
            detail = "it holds Python objects other than weights (loading it would run code)"
        raise ArtifactError(
            path,
            f"is not a readable xrl checkpoint ({detail[:200]})",
            "an xrl artifact saved with torch.save (weights and plain settings only)",
        ) from None


def _checked(path: Path, payload: Any, expected: str | tuple[str, ...] | None) -> dict[str, Any]:
    formats = (expected,) if isinstance(expected, str) else tuple(expected or FORMATS)
    if not isinstance(payload, dict):
        raise ArtifactError(
            path,
            f"holds a {type(payload).__name__}, not an xrl artifact",
            f"a dict with format {' or '.join(map(repr, formats))}",
        )
    fmt = payload.get("format")
    if fmt not in formats:
        what = " or ".join(NOUNS.get(f, f) for f in formats)
        found = f"format {fmt!r}" if fmt is not None else "no 'format' marker"
        writers = "; ".join(f"'{f}' written by {WRITERS[f]}" for f in formats if f in WRITERS)
        raise ArtifactError(path, f"is not {what} ({found})", f"format {writers}")
    _check_version(path, payload, fmt)
    if "state_dict" in payload and not isinstance(payload["state_dict"], dict):
        raise ArtifactError(path, f"has a {type(payload['state_dict']).__name__} as 'state_dict'", "a dict of tensors")
    return payload


def load_payload(path: str | os.PathLike[str], expected: str | tuple[str, ...] | None = None) -> dict[str, Any]:
    """An artifact's dict (settings and weights on the CPU), checked: format among ``expected``
    (default: any xrl format), a version this xrl reads. Nothing in the file runs."""
    path = Path(path)
    return _checked(path, _torch_load(path, map_location="cpu"), expected)


def read_header(path: str | os.PathLike[str], expected: str | tuple[str, ...] | None = None) -> dict[str, Any]:
    """An artifact's dict without reading its weights (tensors are shapes on the ``meta``
    device): enough to know its format, settings and shapes."""
    path = Path(path)
    try:
        payload = _torch_load(path, map_location="meta", mmap=True)
    except ArtifactError:
        payload = _torch_load(path, map_location="meta")  # files torch cannot map
    return _checked(path, payload, expected)


def format_of(path: str | os.PathLike[str]) -> str:
    """The format of a file: an xrl format name, or :data:`SB3_ZIP` for a Stable-Baselines3
    ``.zip``; refused with what was found otherwise. Reads no weights and runs nothing."""
    path = Path(path)
    if not path.is_file():
        raise ArtifactError(
            path, "does not exist" if not path.exists() else "is not a file", "an xrl artifact (.pt) or an SB3 .zip"
        )
    if zipfile.is_zipfile(path):
        try:
            with zipfile.ZipFile(path) as z:
                names = set(z.namelist())
        except (zipfile.BadZipFile, OSError) as err:
            raise ArtifactError(path, f"is a damaged zip ({err})", "an xrl artifact (.pt) or an SB3 .zip") from None
        if {"data", "policy.pth"} <= names:
            return SB3_ZIP
        if not any(n.endswith("data.pkl") for n in names):
            raise ArtifactError(
                path,
                f"is not a loadable SB3 PPO/A2C/DQN model (a zip holding {sorted(names)[:5]})",
                "an SB3 model (.zip with 'data' and 'policy.pth') or an xrl artifact (.pt)",
            )
    elif path.suffix == ".zip":
        raise ArtifactError(path, "is not a zip file", "an SB3 model saved with model.save()")
    return str(read_header(path)["format"])


def loadable_format(path: str | os.PathLike[str]) -> str:
    """:func:`format_of` as loaders report it: a ``.pt`` torch cannot read is expected to be an xrl
    checkpoint (the wording users and tests know)."""
    path = Path(path)
    try:
        return format_of(path)
    except ArtifactError as err:
        if path.suffix == ".pt" and "readable" in err.found:
            raise ArtifactError(
                path, err.found, "an xrl checkpoint saved by xrl (weights and plain settings)"
            ) from None
        raise


@dataclass(frozen=True)
class Artifact:
    """A file read for a loader (:func:`open_artifact`): everything the loader dispatches on and builds from."""

    path: Path
    format: str
    """an xrl format name, or :data:`SB3_ZIP`"""
    card: dict[str, Any]
    """its card (``{}`` when it has none)"""
    payload: dict[str, Any] | None
    """its settings and weights (:func:`load_payload`), or settings and shapes alone
    (:func:`read_header`) when read without weights; None for an SB3 zip (its loader reads it)"""


def open_artifact(
    path: str | os.PathLike[str],
    *,
    weights: bool = True,
    formats: tuple[str, ...] = (SB3_ZIP, *FORMATS),
    wanted: str = "an artifact",
    expected: str = "an xrl artifact or an SB3 .zip",
) -> Artifact:
    """Read ``path`` for a loader, in this order (so the first problem found is reported): its
    format (:func:`loadable_format`), refused when not among ``formats`` (``<path> is <kind>, not
    <wanted>; expected <expected>``), its card (:func:`read_card`), its payload (with the weights
    unless ``weights`` is False). Nothing in the file runs."""
    path = Path(path)
    fmt = loadable_format(path)
    if fmt not in formats:
        raise ArtifactError(path, f"is {NOUNS.get(fmt, fmt)}, not {wanted}", expected)
    card = read_card(path)
    if fmt == SB3_ZIP:
        return Artifact(path, fmt, card, None)
    return Artifact(path, fmt, card, load_payload(path, fmt) if weights else read_header(path, fmt))


def save_payload(
    path: str | os.PathLike[str],
    fmt: str,
    settings: Mapping[str, Any],
    state_dict: Mapping[str, torch.Tensor],
    *,
    card: Mapping[str, Any] | None = None,
    weights_fingerprint: str | None = None,
) -> Path:
    """Write artifact ``path`` = ``{"format", "version", **settings, "state_dict"}`` atomically
    and, when ``card`` is given, its card with ``format``, ``sha256`` of the file written and
    ``fingerprint`` (``weights_fingerprint``, default the fingerprint of ``state_dict``)."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown artifact format {fmt!r}; known: {', '.join(FORMATS)}")
    clash = {"format", "version", "state_dict"} & set(settings)
    if clash:
        raise ValueError(f"settings may not hold {sorted(clash)} (the artifact layer writes them)")
    path = Path(path)
    weights = {k: v.detach().cpu() for k, v in state_dict.items()}
    payload = {"format": fmt, "version": FORMATS[fmt][1], **settings, "state_dict": weights}
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
    if card is not None:
        write_card(path, card, weights_fingerprint=weights_fingerprint or fingerprint(weights), fmt=fmt)
    return path


def write_card(
    path: str | os.PathLike[str],
    card: Mapping[str, Any],
    *,
    weights_fingerprint: str | None = None,
    fmt: str | None = None,
) -> Path:
    """Write the card of artifact ``path`` (atomically) with the artifact's ``sha256`` (of the
    file as it is now), and its ``fingerprint`` and ``format`` when given."""
    path = Path(path)
    fields = dict(card)
    fields["sha256"] = sha256(path)
    if weights_fingerprint is not None:
        fields["fingerprint"] = weights_fingerprint
    if fmt is not None:
        fields["format"] = fmt
    write_json(card_path(path), fields)
    return card_path(path)
