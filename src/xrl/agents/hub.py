"""Agents on the Hugging Face Hub: ``xrl.load_agent("hf://ORG/REPO")`` (``--agent hf://ORG/REPO``).

Offline first: files come through ``huggingface_hub``'s own download and cache
(``snapshot_download``), so a filled cache works without a network. The cache is the one the
Hub's environment variables name when the call is made (``HF_HUB_CACHE``, else ``HF_HOME/hub``,
else ``~/.cache/huggingface/hub``); ``HF_HUB_OFFLINE=1`` reads the cache only.

Names: ``hf://ORG/REPO`` (the ``main`` revision) or ``hf://ORG/REPO@REVISION`` (a branch, tag or
commit). The repo is read as rl-baselines3-zoo lays it out (``sb3/ppo-PongNoFrameskip-v4``):

- the agent ``ALGO-ENV_ID.zip`` (the repo's name + ``.zip``; else its only ``.zip``), a
  Stable-Baselines3 or sb3-contrib model read like any SB3 ``.zip`` (no unpickling;
  :func:`xrl.agents.load.sb3_policy`); a repo holding one CleanRL ``.cleanrl_model`` instead
  (CleanRL's ``ENV_ID-EXP_NAME-seedN`` repos) is read as CleanRL's (:mod:`xrl.agents.cleanrl`);
- ``config.yml`` (rl-zoo's hyperparameters) and ``env_kwargs.yml``, read as data with a YAML
  safe loader: nothing is imported or run. rl-zoo writes ``config.yml`` as an
  ``!!python/object/apply:collections.OrderedDict`` of ``[key, value]`` pairs; that one tag is
  read as a plain dict of the pairs; any other Python tag is refused.

The env the agent plays (``model.info["env"]``, so ``collect``/``explain``/``serve`` need no
``--env``) is built from ``ENV_ID`` (the repo name after ``ALGO-``), ``config.yml``'s
``env_wrapper`` and ``frame_stack``, and ``env_kwargs.yml``:

- an ALE ``GameNoFrameskip-v4`` xrl knows (``pong``, ``breakout``, ...) with only SB3's
  ``AtariWrapper`` (frame skip 4, 84×84; its ``noop_max`` and ``terminal_on_life_loss``, default
  30 and True, as rl-zoo trained) and no env kwargs: xrl's own game, ``version="v4"`` (SB3's
  ``AtariWrapper``, zero-padded stack as ``VecFrameStack``): the RAM ground truth stays available;
- any other id: ``gym:ENV_ID`` (:mod:`xrl.envs.gym_env`) with ``atari="sb3"`` and the
  ``AtariWrapper``'s arguments when it has that wrapper, the ``frame_stack`` (zero-padded) and
  ``env_kwargs``;
- another ``env_wrapper``, or ``normalize`` (VecNormalize statistics, a pickle): the env is not
  rebuilt (``info["env"]`` is None; pass ``--env``), and the card says why.

A card is written beside the cached agent file (``<file stem>.json``, the artifact layer's
:func:`~xrl.artifacts.card_path`): ``source`` (the ``hf://`` name), ``repo``, ``revision`` (the
commit the cache resolved), ``file``, ``sha256`` of the file, the weights ``fingerprint``, ``env``
and the ``config``/``env_kwargs`` it was built from, so a result names exactly which agent it
explains. A read-only cache leaves the card unwritten (the Model still carries it).
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml  # type: ignore[import-untyped]

from xrl.agents.model import Model
from xrl.artifacts import ArtifactError, card_path, sha256

SCHEME = "hf://"
_ATARI_WRAPPER = "stable_baselines3.common.atari_wrappers.AtariWrapper"
_ORDERED_DICT = "tag:yaml.org,2002:python/object/apply:collections.OrderedDict"


def parse(name: str) -> tuple[str, str | None]:
    """``hf://ORG/REPO[@REVISION]`` -> ``(ORG/REPO, REVISION or None)``."""
    match = re.fullmatch(r"hf://([\w.-]+/[\w.-]+)(?:@([\w./-]+))?", str(name).strip())
    if not match:
        raise ValueError(f"{name!r} is not a Hub agent name; expected hf://ORG/REPO or hf://ORG/REPO@REVISION")
    return match.group(1), match.group(2)


def cache_dir() -> Path:
    """The Hub cache the environment names now (``HF_HUB_CACHE``, ``HF_HOME/hub``, the default)."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"])
    home = os.environ.get("HF_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "huggingface"
    )
    return Path(home) / "hub"


def offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def snapshot(repo_id: str, revision: str | None) -> Path:
    """The repo's files (agents and YAML only) in the local cache, downloaded if needed and allowed."""
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        raise ImportError("hf:// agents need huggingface_hub: pip install huggingface-hub") from None
    try:
        folder = snapshot_download(
            repo_id,
            revision=revision,
            cache_dir=cache_dir(),
            local_files_only=offline(),
            allow_patterns=["*.zip", "*.yml", "*.yaml", "*.cleanrl_model"],
        )
    except Exception as err:  # not cached offline, unknown repo, no network
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        where = f"the Hub cache {cache_dir()}" + (" (HF_HUB_OFFLINE is set)" if offline() else "")
        raise ValueError(
            f"hf://{repo_id}{'@' + revision if revision else ''}: not found in {where} nor downloadable "
            f"({type(err).__name__}: {first[:200]}); expected an rl-zoo repo (ALGO-ENV_ID.zip, config.yml) "
            "in the cache (HF_HUB_CACHE / HF_HOME) or a reachable Hub"
        ) from None
    return Path(str(folder))


class _ZooLoader(yaml.SafeLoader):
    """YAML's safe loader plus rl-zoo's OrderedDict tag, read as a plain dict (nothing imported)."""


def _ordered_dict(loader: yaml.SafeLoader, node: yaml.Node) -> dict:
    if isinstance(node, yaml.SequenceNode):
        args = loader.construct_sequence(node, deep=True)
    elif isinstance(node, yaml.MappingNode):
        args = loader.construct_mapping(node, deep=True).get("args", [])
    else:
        args = []
    pairs = args[0] if args else []
    if not (isinstance(pairs, list) and all(isinstance(p, list) and len(p) == 2 for p in pairs)):
        raise yaml.constructor.ConstructorError(None, None, "an OrderedDict of [key, value] pairs", node.start_mark)
    return {str(k): v for k, v in pairs}


_ZooLoader.add_constructor(_ORDERED_DICT, _ordered_dict)


def read_yaml(path: Path) -> dict:
    """A YAML file of rl-zoo settings as a dict (``{}`` when absent), read as data only."""
    if not path.exists():
        return {}
    try:
        data = yaml.load(path.read_text(), Loader=_ZooLoader)  # noqa: S506 (a SafeLoader subclass)
    except yaml.YAMLError as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ArtifactError(
            path, f"is not plain YAML ({first[:150]})", "rl-zoo settings: plain YAML (the OrderedDict tag allowed)"
        ) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ArtifactError(path, f"holds a YAML {type(data).__name__}", "a mapping of settings")
    return data


def _wrappers(value: Any) -> list[tuple[str, dict]]:
    """rl-zoo's ``env_wrapper`` (a name, a ``{name: kwargs}``, or a list of those) as (name, kwargs) pairs."""
    if value is None:
        return []
    items = value if isinstance(value, list) else [value]
    out: list[tuple[str, dict]] = []
    for item in items:
        if isinstance(item, str):
            out.append((item, {}))
        elif isinstance(item, dict) and len(item) == 1:
            name, kwargs = next(iter(item.items()))
            out.append((str(name), dict(kwargs or {})))
        else:
            out.append((repr(item), {}))
    return out


def zoo_env(env_id: str, config: dict, env_kwargs: dict) -> tuple[dict | None, str]:
    """The ``{"name", "settings"}`` of the env an rl-zoo agent played, and how it was found (or
    why it was not rebuilt)."""
    if config.get("normalize"):
        return None, "config.yml normalizes observations (VecNormalize statistics: a pickle xrl does not read)"
    wrappers = _wrappers(config.get("env_wrapper"))
    frame_stack = int(config.get("frame_stack") or 1)
    if any(name != _ATARI_WRAPPER for name, _ in wrappers) or len(wrappers) > 1:
        names = ", ".join(name for name, _ in wrappers)
        return None, f"env_wrapper {names} is not one xrl rebuilds (only {_ATARI_WRAPPER})"
    atari = wrappers[0][1] if wrappers else None
    from xrl.envs.atari import GAMES

    game = re.fullmatch(r"(\w+)NoFrameskip-v4", env_id)
    known = {v: k for k, v in GAMES.items()}
    if (
        atari is not None
        and game
        and game.group(1) in known
        and not env_kwargs
        and set(atari) <= {"noop_max", "terminal_on_life_loss", "clip_reward", "frame_skip", "screen_size"}
        and atari.get("frame_skip", 4) == 4
        and atari.get("screen_size", 84) == 84
    ):
        settings = {
            "version": "v4",
            "sticky_actions": False,
            "full_action_space": False,
            "frame_stack": frame_stack,
            "noop_max": int(atari.get("noop_max", 30)),
            "terminal_on_life_loss": bool(atari.get("terminal_on_life_loss", True)),
            "frame_stack_padding": "zero",
            "labels": False,
            "infinite": False,
        }
        return {"name": known[game.group(1)], "settings": settings}, "xrl's Atari game, SB3 AtariWrapper (v4)"
    settings = {
        "wrappers": [],
        "atari": "sb3" if atari is not None else None,
        "atari_kwargs": dict(atari or {}),
        "resize": None,
        "gray": False,
        "frame_stack": frame_stack,
        "frame_stack_padding": "zero",
        **env_kwargs,
    }
    return {"name": f"gym:{env_id}", "settings": settings}, "gym:ENV_ID from config.yml"


def _agent_file(folder: Path, repo_name: str) -> Path:
    named = folder / f"{repo_name}.zip"
    if named.exists():
        return named
    for pattern in ("*.zip", "*.cleanrl_model"):
        found = sorted(p for p in folder.glob(pattern) if p.exists())
        if len(found) == 1:
            return found[0]
    listed = sorted(p.name for p in folder.iterdir())
    raise ValueError(
        f"{folder}: no agent file {repo_name}.zip (rl-zoo's ALGO-ENV_ID.zip) and not exactly one .zip or "
        f".cleanrl_model; the cached repo holds {listed[:10]}"
    )


def load_hub_agent(
    name: str,
    *,
    load_file: Callable[..., Model],
    device: str = "cpu",
    trust: bool | None = None,
    weights: bool = True,
) -> Model:
    """The agent ``hf://ORG/REPO[@REVISION]`` (module docstring) as a Model, with its env and card.
    ``load_file`` loads the repo's agent file (:func:`xrl.agents.load.load_agent`, which calls this:
    passed in, so this module stays below the loader)."""
    from xrl.files import write_json

    repo_id, revision = parse(name)
    folder = snapshot(repo_id, revision)
    repo_name = repo_id.split("/")[1]
    file = _agent_file(folder, repo_name)
    config = read_yaml(folder / "config.yml")
    env_kwargs = read_yaml(folder / "env_kwargs.yml")
    card_file = card_path(file)
    if card_file.is_symlink():  # a file of the repo itself: never overwritten
        raise ValueError(f"{card_file} is a file of the repo; xrl writes its card there and will not replace it")
    if file.suffix == ".cleanrl_model":
        from xrl.agents.cleanrl import env_id_of, load_cleanrl

        model = load_cleanrl(file, device=device)
        cleanrl = re.fullmatch(r"(.+-v\d+)-(\w+)-seed\d+", repo_name)
        env_id = env_id_of(file, {}) or (cleanrl.group(1) if cleanrl else None)
        env, how = (model.info["env"], "CleanRL's Atari pipeline") if model.info["env"] else (None, "")
        if env is None and env_id:
            from xrl.agents.cleanrl import env_spec

            env, how = env_spec(env_id, model.input_shape[0]), "CleanRL's Atari pipeline, env id from the repo name"
    else:
        algo_env = re.fullmatch(r"([\w]+)-(.+)", repo_name)
        env_id = algo_env.group(2) if algo_env else None
        env, how = zoo_env(env_id, config, env_kwargs) if env_id else (None, "the repo name is not ALGO-ENV_ID")
        model = load_file(file, device=device, trust=trust, weights=weights)
    previous = model.info.get("card") or {}
    names = previous.get("action_names")
    if not names and env is not None:  # ALE's meanings of the actions, for an Atari game
        from xrl.agents.cleanrl import _action_names
        from xrl.envs.atari import GAMES

        gym_id = env["name"][4:] if env["name"].startswith("gym:") else f"{GAMES.get(env['name'], '')}NoFrameskip-v4"
        names = _action_names(gym_id, model.n_actions)
    if names:
        model.action_names = [str(n) for n in names]
    card = {
        "format": "hf",
        "source": f"{SCHEME}{repo_id}" + (f"@{revision}" if revision else ""),
        "repo": repo_id,
        "revision": folder.name,
        "file": file.name,
        "sha256": sha256(file),
        "fingerprint": model.fingerprint() if weights else previous.get("fingerprint"),
        "env": env,
        "env_from": how,
        "config": config,
        "env_kwargs": env_kwargs,
        "action_names": names or None,
    }
    try:
        write_json(card_file, card)
    except OSError:
        pass  # a read-only cache: the Model carries the card
    model.info.update(env=env, card=card, source=card["source"], file=str(file))
    return model
