"""The zoo: trained artifacts shipped with the repository (``zoo/<name>/``), listed and found by
what they were made for, from their headers and cards.

* :func:`zoo_cards` — one row per zoo model (agents and classifiers), :func:`zoo_networks` one per
  explainer network (mask networks, RExL agents) with the model it explains: what ``xrl zoo`` prints;
* :func:`zoo_artifacts` — every artifact of every kind (agents, DIGR students, classifiers, mask
  networks, RExL agents) with its format and card, read without loading weights;
* :func:`find_network` — the zoo explainer network (VisionMask, Stalder, RExL) trained for the
  agent with a given weights fingerprint (``model.fingerprint()``);
* :func:`network_for` — the same, remembered for the process, or an error saying why (what
  explainers use when given no network).

Nothing here loads weights: checking that every artifact loads (``xrl zoo --verify``,
:func:`xrl.agents.load.verify_zoo`) is done where loading lives, one floor up.

Run folders' checkpoints (``checkpoint.*``) are not artifacts: a run still training rewrites them.
The zoo folder is ``$XRL_ZOO`` or the repository's ``zoo/``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from xrl.artifacts import FORMATS, ArtifactError, card_path, read_card, read_header

ZOO_DIR = Path(os.environ.get("XRL_ZOO", Path(__file__).resolve().parents[2] / "zoo"))

#: explainer kinds :func:`find_network` knows -> (artifact format, method recorded in the file)
NETWORK_KINDS = {
    "visionmask": ("xrl.mask_network", "visionmask"),
    "stalder_explainer": ("xrl.mask_network", "stalder_explainer"),
    "rexl": ("xrl.rexl_agent", None),
}
#: what :func:`network_for` says the zoo lacks
NETWORK_NOUNS = {
    "visionmask": "visionmask network for this agent",
    "stalder_explainer": "stalder_explainer network for this agent",
    "rexl": "RExL agent for this model",
}


def _zoo(zoo_dir: str | os.PathLike | None) -> Path:
    zoo = Path(zoo_dir) if zoo_dir is not None else ZOO_DIR
    if not zoo.is_dir():
        raise ValueError(f"zoo folder {str(zoo)!r} does not exist (set XRL_ZOO or pass a folder)")
    return zoo


def zoo_artifacts(zoo_dir: str | os.PathLike | None = None, *, errors: list | None = None) -> list[dict]:
    """Every artifact in the zoo, sorted by path: ``path`` (the ``.pt``), ``name`` (its folder
    relative to the zoo), ``format``, ``kind`` (agent, classifier, mask_network, rexl_agent),
    ``header`` (the file's settings, no weights) and ``card``. An artifact is a ``.pt`` with a
    card beside it, other than a run's checkpoints (``checkpoint.pt``, ``checkpoints/``) and
    hidden files. An unreadable file or card raises its
    :class:`~xrl.artifacts.ArtifactError`, or is left out and its message appended to ``errors``."""
    zoo = _zoo(zoo_dir)
    rows = []
    for path in sorted(zoo.rglob("*.pt")):
        inside = path.relative_to(zoo).parts
        if (
            path.stem == "checkpoint"
            or "checkpoints" in inside[:-1]
            or any(p.startswith(".") for p in inside)
            or not card_path(path).exists()
        ):
            continue
        try:
            header, card = read_header(path), read_card(path)
        except ArtifactError as err:
            if errors is None:
                raise
            errors.append(str(err))
            continue
        rows.append(
            {
                "path": path,
                "name": str(path.parent.relative_to(zoo)),
                "format": header["format"],
                "kind": FORMATS[header["format"]][0],
                "header": {k: v for k, v in header.items() if k != "state_dict"},
                "card": card,
            }
        )
    return rows


def _explains(row: dict) -> str | None:
    """The weights fingerprint of the model an explainer network was trained for."""
    header = row["header"]
    if row["format"] == "xrl.mask_network":
        return (header.get("agent") or {}).get("fingerprint")
    if row["format"] == "xrl.rexl_agent":
        return header.get("model_fingerprint")
    return None


def find_networks(kind: str, agent_fingerprint: str, *, zoo_dir: str | os.PathLike | None = None) -> list[Path]:
    """Every zoo network of ``kind`` (``visionmask``, ``stalder_explainer``, ``rexl``) trained for
    the agent whose weights fingerprint is ``agent_fingerprint``, sorted by path (for ``rexl``:
    dataset-specific agents first, then class-specific ones by class)."""
    if kind not in NETWORK_KINDS:
        raise ValueError(f"unknown network kind {kind!r}; known: {', '.join(NETWORK_KINDS)}")
    fmt, method = NETWORK_KINDS[kind]
    found = [
        row
        for row in zoo_artifacts(zoo_dir)
        if row["format"] == fmt
        and (method is None or row["header"].get("method") == method)
        and _explains(row) == agent_fingerprint
    ]
    if kind == "rexl":
        found.sort(key=lambda r: (r["header"].get("mode") != "ds", r["header"].get("classes") or [], str(r["path"])))
    return [row["path"] for row in found]


def find_network(kind: str, agent_fingerprint: str, *, zoo_dir: str | os.PathLike | None = None) -> Path | None:
    """The zoo network of ``kind`` made for the agent with weights fingerprint
    ``agent_fingerprint`` (``model.fingerprint()``), or None. For ``rexl`` the dataset-specific
    agent is preferred (class-specific ones: :func:`find_networks`). Reads no weights.

    Example::

        path = find_network("visionmask", model.fingerprint())   # zoo/.../visionmask.pt or None
    """
    found = find_networks(kind, agent_fingerprint, zoo_dir=zoo_dir)
    return found[0] if found else None


_FOUND: dict[tuple, str | None] = {}


def network_for(kind: str, fingerprint: str) -> str:
    """The path of the zoo's ``kind`` network made for the model with weights fingerprint
    ``fingerprint`` (:func:`find_network`), remembered per (kind, fingerprint, zoo folder) for
    this process (it reads the header of every zoo file: about a second, and a bench builds
    explainers often); a ``ValueError`` saying why when there is none (no zoo folder, or no such
    network). What the explainers run on a zoo network (``visionmask``, ``stalder_explainer``,
    ``rexl``) use when given none."""
    key = (kind, fingerprint, str(ZOO_DIR))
    if key not in _FOUND:
        path = find_network(kind, fingerprint)  # ValueError when there is no zoo folder (not remembered)
        _FOUND[key] = None if path is None else str(path)
    found = _FOUND[key]
    if found is None:
        raise ValueError(f"the zoo has no {NETWORK_NOUNS[kind]} (weights fingerprint {fingerprint})")
    return found


# ------------------------------------------------------------------ the listing of xrl zoo


def _score_text(score: Any, card: Any = None, key: str = "score") -> str:
    """A card's measured score in words: success rate and/or mean return over N episodes, or a
    classifier's validation accuracy. A score that is not an object of numbers is refused naming
    the card."""
    numbers = ("val_accuracy", "mean_return", "std_return", "success_rate")
    if not isinstance(score, dict) or any(
        k in score and (isinstance(score[k], bool) or not isinstance(score[k], (int, float, type(None))))
        for k in numbers
    ):
        raise ValueError(
            f"{card}: {key} is {json.dumps(score)[:80]}; expected an object of numbers like "
            '{"mean_return": 0.9, "std_return": 0.1, "episodes": 10}'
        )
    if "val_accuracy" in score:
        return f"validation accuracy {score['val_accuracy']:.3f}"
    if "mean_return" not in score:
        return ""
    text = (
        f"return {score['mean_return']:.4g} ± {score.get('std_return', float('nan')):.3g} "
        f"over {score.get('episodes', '?')} episodes"
    )
    if score.get("success_rate") is not None:  # share of positive returns: goal reached, game won
        text += f", {score['success_rate']:.0%} positive"
    return text


def _env_text(env: dict | None) -> str:
    """``pong version=v4``: an env and its settings, from a card's ``env``."""
    if not env:
        return ""
    settings = env.get("settings") or {}
    return env.get("name", "") + (" " + ",".join(f"{k}={v}" for k, v in settings.items()) if settings else "")


def _named(zoo: Path, text: str | None) -> str:
    """A model as a card names it (a zoo name or a path), as its zoo name where the path is in ``zoo``."""
    if not text:
        return ""
    path = Path(text)
    for base in (Path.cwd(), zoo.parent):
        try:
            folder = (path if path.is_absolute() else base / path).resolve().parent.relative_to(zoo.resolve())
        except ValueError:
            continue
        return str(folder)
    return str(text)


def zoo_cards(zoo_dir: str | os.PathLike | None = None) -> list[dict]:
    """One row per zoo model (a folder with ``agent.json`` or ``classifier.json``), sorted by name:
    ``name, kind, env, arch, trained, planned, finished, score, score_sampled, teacher, command, path``.

    ``trained`` counts what the card says was trained (PPO timesteps, DIGR updates or classifier
    epochs) and ``planned`` what its command asks for (None where the card does not say);
    ``finished`` is False for a run stopped short of its plan (its folder keeps the checkpoint
    that the card's command resumes); ``teacher`` is the agent a DIGR student learned from (else
    ""). The explainer networks are :func:`zoo_networks`."""
    zoo = _zoo(zoo_dir)
    rows = []
    for path in sorted([*zoo.glob("*/agent.json"), *zoo.glob("*/classifier.json")]):
        card = read_card(path.with_suffix(".pt"))
        classifier = path.name == "classifier.json"
        env_text = _env_text(card.get("env")) if card.get("env") else card.get("settings", {}).get("data", "")
        if classifier:
            trained = planned = card.get("settings", {}).get("epochs")  # score.epoch: the best one
        elif "updates" in card:
            trained, planned = card["updates"], card.get("updates_planned")
        else:
            trained, planned = card.get("timesteps"), card.get("timesteps_planned")
        rows.append(
            {
                "name": path.parent.name,
                "kind": "classifier" if classifier else card.get("algo", "agent"),
                "env": env_text,
                "arch": card.get("arch") or card.get("settings", {}).get("arch", ""),
                "trained": trained,
                "planned": planned,
                "finished": not (planned and trained is not None and trained < planned),
                "score": _score_text(card.get("score") or {}, path),
                "score_sampled": _score_text(
                    card.get("score_sampled") or {}, path, "score_sampled"
                ),  # since 2026-12-02
                "teacher": (card.get("digr") or {}).get("teacher") or _named(zoo, card.get("teacher")),
                "command": card.get("command", ""),
                "path": str(path),
            }
        )
    return rows


def _network_score(row: dict, settings: dict) -> str:
    """An explainer network's card score in words: a mask network's validation accuracy (the
    share of states whose masked state keeps the agent's action), a RExL agent's training return
    (with the default reward scale: minus the deletion AUC over grid cells, docs/rexl.md)."""
    card = row["card"]
    if row["format"] == "xrl.mask_network":
        scores = card.get("scores") or {}
        accuracy = (scores.get("val") or {}).get("accuracy")
        if accuracy is None:
            return ""
        return f"validation accuracy {accuracy:.3f} (best epoch {scores.get('best_epoch', '?')})"
    value = (card.get("score") or {}).get("mean_return_last_20_updates")
    if value is None:
        return ""
    if not settings.get("reward_scale"):
        return f"training return {value:.3f}, minus the deletion AUC over cells (last 20 updates)"
    return f"training return {value:.4g} (last 20 updates)"


def zoo_networks(zoo_dir: str | os.PathLike | None = None) -> list[dict]:
    """One row per explainer network in the zoo (VisionMask and Stalder Explainer mask networks,
    RExL agents), sorted by path: ``name`` (its folder), ``kind`` (``visionmask``,
    ``stalder_explainer``, ``rexl-ds``, ``rexl-cs``, ``rexl-is``), ``explains`` (the zoo model it
    was trained for, found by the weights fingerprint it records; else the model its card names),
    ``env``, ``arch``, ``trained`` and ``planned`` (``unit``: epochs or steps), ``finished``,
    ``score``, ``command``, ``path``. Reads headers and cards, no weights."""
    zoo = _zoo(zoo_dir)
    artifacts = zoo_artifacts(zoo)
    models = {
        row["card"].get("fingerprint"): row["name"]
        for row in artifacts
        if row["kind"] in ("agent", "classifier") and row["card"].get("fingerprint")
    }
    rows = []
    for row in artifacts:
        if row["format"] not in ("xrl.mask_network", "xrl.rexl_agent"):
            continue
        header, card = row["header"], row["card"]
        settings = card.get("settings") if isinstance(card.get("settings"), dict) else {}
        if row["format"] == "xrl.mask_network":
            kind, arch = header.get("method", "mask_network"), header.get("arch") or settings.get("arch", "")
            named = (card.get("agent") or {}).get("source") or settings.get("agent")
            trained, planned, unit = card.get("epochs_done"), settings.get("epochs"), "epochs"
        else:
            kind = f"rexl-{header.get('mode', '?')}"
            arch = f"{settings.get('extractor', 'trunk')}, grid {header.get('grid', '?')}"
            named = settings.get("model")
            trained, planned, unit = (card.get("score") or {}).get("steps"), settings.get("total_steps"), "steps"
        rows.append(
            {
                "name": row["name"],
                "kind": kind,
                "explains": models.get(_explains(row)) or _named(zoo, named),
                "env": _env_text(card.get("env")) or settings.get("data", ""),
                "arch": arch,
                "trained": trained,
                "planned": planned,
                "unit": unit,
                "finished": not (planned and trained is not None and trained < planned),
                "score": _network_score(row, settings),
                "command": card.get("command", ""),
                "path": str(row["path"]),
            }
        )
    return rows


__all__ = [
    "ZOO_DIR",
    "ArtifactError",
    "find_network",
    "find_networks",
    "network_for",
    "zoo_artifacts",
    "zoo_cards",
    "zoo_networks",
]
