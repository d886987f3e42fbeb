"""Load trained artifacts: agents as :class:`~xrl.agents.model.Model` (SB3 ``.zip`` files — PPO,
A2C, DQN —, xrl agent checkpoints ``agent.pt`` including DIGR students, classifiers
``classifier.pt``, zoo names and run folders), and every other artifact kind through
:func:`load` (mask networks, RExL agents), dispatched by the format marker the file carries
(:mod:`xrl.artifacts`); :func:`verify_zoo` checks that every zoo artifact loads and matches its card.

Nothing in a file runs when it is loaded: xrl files are read with ``torch.load(weights_only=True)``
and an SB3 ``.zip`` is rebuilt from its ``policy.pth`` (weights only) and the plain JSON fields of
its ``data`` — the policy class, spaces and network settings —, ignoring the pickled
(``":serialized:"``) entries. ``trust=True`` (CLI ``--trust-pickle``) lets Stable-Baselines3 unpickle
them, for zips that cannot be rebuilt otherwise: that runs code from the file (docs/artifacts.md).
"""

from __future__ import annotations

import contextlib
import contextvars
import importlib
import io
import json
import math
import os
import re
import zipfile
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch
from torch import nn

from xrl.compat import quiet_old_gym

quiet_old_gym()  # before Stable-Baselines3, which imports the old gym when installed
from stable_baselines3 import A2C, DQN, PPO  # noqa: E402
from stable_baselines3.common.base_class import BaseAlgorithm  # noqa: E402
from stable_baselines3.common.policies import ActorCriticPolicy, BasePolicy  # noqa: E402

from xrl._version import __version__  # noqa: E402
from xrl.agents.heads import QuantileMeans, RecurrentActorScores, scores_of  # noqa: E402
from xrl.agents.model import Model  # noqa: E402
from xrl.agents.nets import ARCHS  # noqa: E402
from xrl.artifacts import (  # noqa: E402
    SB3_ZIP,
    ArtifactError,
    card_path,
    fingerprint,
    load_payload,
    loadable_format,
    open_artifact,
    read_card,
    read_header,
    save_payload,
    sha256,
    write_card,
)
from xrl.files import write_json  # noqa: E402
from xrl.ops import resolve_device  # noqa: E402
from xrl.zoo import ZOO_DIR, zoo_artifacts, zoo_cards  # noqa: E402,F401 (zoo_cards: re-exported)

CHECKPOINT_FORMAT = "xrl.agent"
CLASSIFIER_FORMAT = "xrl.classifier"
#: whether ``trust=None`` means trusted (set by :func:`trusting_pickle`, the CLI's ``--trust-pickle``)
_TRUSTED: contextvars.ContextVar[bool] = contextvars.ContextVar("xrl_trust_pickle", default=False)


@contextlib.contextmanager
def trusting_pickle():
    """Within this block ``load_agent(..., trust=None)`` (the default) trusts SB3 ``.zip`` files
    with pickled entries: what ``xrl --trust-pickle`` does for one command. Runs code from them."""
    token = _TRUSTED.set(True)
    try:
        yield
    finally:
        _TRUSTED.reset(token)


_SB3_ALGOS = {"ppo": PPO, "a2c": A2C, "dqn": DQN}


def model_from_policy(policy: BasePolicy, *, action_names=None, info: dict | None = None) -> Model:
    """Wrap an SB3 policy (PPO/A2C actor-critic or DQN; sb3-contrib's QR-DQN, TRPO, RecurrentPPO:
    :mod:`xrl.agents.heads` says what each scores) as a Model."""
    space = policy.observation_space
    if not isinstance(space, gym.spaces.Box) or len(space.shape) != 3:
        raise ValueError(f"xrl explains image observations (C, H, W); this policy observes {space}")
    if space.shape[0] > space.shape[-1]:
        raise ValueError(
            f"observation space {space.shape} looks channels-last; xrl expects (C, H, W) "
            "(SB3 wraps such envs in VecTransposeImage: use the transposed space)"
        )
    normalized = getattr(policy, "normalize_images", True) and space.dtype == np.uint8
    input_range = _input_range(space, normalized)
    policy.set_training_mode(False)
    net, value_net, kind = scores_of(policy)
    if isinstance(net, (QuantileMeans, RecurrentActorScores)):  # sb3-contrib's
        info = {**(info or {}), "recurrent": isinstance(net, RecurrentActorScores)}
    return Model(
        net,
        input_shape=space.shape,
        action_names=action_names,
        n_actions=int(policy.action_space.n),
        score_kind=kind,
        value_net=value_net,
        obs_scale=255.0 if normalized else 1.0,
        input_range=input_range,
        info=info,
    )


def _input_range(space: gym.spaces.Box, normalized: bool) -> tuple[float, float] | None:
    """The states' range: [0, 1] for uint8 images SB3 divides by 255, else the space's bounds
    when finite (None: not checked)."""
    if normalized:
        return 0.0, 1.0
    low, high = float(np.min(space.low)), float(np.max(space.high))
    return (low, high) if np.isfinite(low) and np.isfinite(high) and low < high else None


def save_agent(algo: BaseAlgorithm, path: str | os.PathLike, *, arch: str, card: dict) -> Path:
    """Write an xrl checkpoint (``.pt``) of a trained SB3 model and its card (``.json``) atomically."""
    return save_policy(algo.policy, path, algo=type(algo).__name__.lower(), arch=arch, card=card)


def save_policy(policy: BasePolicy, path: str | os.PathLike, *, algo: str, arch: str, card: dict) -> Path:
    """Write an xrl checkpoint of an SB3 policy (``algo``: ``"ppo"``, ``"a2c"`` or ``"dqn"``, how
    :func:`build_policy` rebuilds it) and its card, atomically. The card records the file's
    sha256 and the loaded Model's weights fingerprint (what datasets and explainer networks
    made with the agent record)."""
    path = Path(path)
    save_payload(
        path,
        CHECKPOINT_FORMAT,
        {
            "algo": algo,
            "arch": arch,
            "obs_shape": list(policy.observation_space.shape),
            "n_actions": int(policy.action_space.n),
        },
        policy.state_dict(),
    )
    card = {**card, "xrl_version": __version__, "arch": arch}
    try:  # the fingerprint of the Model a loader builds from the file (the caller's RNG untouched)
        with torch.random.fork_rng(devices=[]):
            weights = _load_checkpoint(path, "cpu", {"card": card}).fingerprint()
    except ValueError:  # weights that do not fit ``arch``: the file is written, loading it will say why
        weights = None
    write_card(path, card, weights_fingerprint=weights, fmt=CHECKPOINT_FORMAT)
    return path


def resolve(path_or_name: str | os.PathLike) -> Path:
    """The file a zoo name, a run folder or a path means: a run folder (``zoo/NAME`` or the
    ``--out`` of a trainer) means its ``agent.pt`` (else its only other artifact)."""
    path = Path(path_or_name)
    if path.is_dir():
        if (path / "agent.pt").exists():
            return path / "agent.pt"
        others = [
            path / f"{n}.pt"
            for n in ("classifier", "rexl", "visionmask", "stalder_explainer")
            if (path / f"{n}.pt").exists()
        ]
        if len(others) == 1:
            return others[0]
        hint = (
            f"; the run is unfinished, its latest checkpoint is {path / 'checkpoint.zip'}"
            if (path / "checkpoint.zip").exists()
            else ""
        )
        raise ValueError(f"folder {str(path)!r} has no agent.pt (a finished training run writes one){hint}")
    if path.exists():
        return path
    for name in ("agent.pt", "classifier.pt", "rexl.pt"):
        zoo = ZOO_DIR / str(path_or_name) / name
        if zoo.exists():
            return zoo
    if not ZOO_DIR.is_dir():
        where = "$XRL_ZOO" if "XRL_ZOO" in os.environ else "the zoo folder"
        raise ValueError(
            f"no agent file {str(path_or_name)!r}, and no zoo to look the name up in: {where} {str(ZOO_DIR)!r} "
            "is not a folder; set XRL_ZOO to a zoo folder or give an SB3 .zip or an xrl .pt path"
        )
    known = sorted(p.parent.name for p in ZOO_DIR.glob("*/agent.pt"))
    raise ValueError(
        f"no agent file {str(path_or_name)!r} and no zoo agent of that name; zoo agents: "
        f"{', '.join(known) or '(none)'}; or give an SB3 .zip or an xrl .pt path"
    )


def load_agent(
    path_or_name: str | os.PathLike,
    *,
    device: str | torch.device = "cpu",
    trust: bool | None = None,
    weights: bool = True,
) -> Model:
    """A Model from a zoo name, a run folder, an SB3 ``.zip``, an xrl agent checkpoint (``.pt``,
    DIGR students included) or an xrl classifier (``classifier.pt``), by the file's format marker.

    A run folder (``zoo/NAME`` or the ``--out`` of ``xrl train agent``) means its ``agent.pt``.
    ``trust=True`` lets Stable-Baselines3 unpickle a ``.zip`` (runs code from the file; only for
    files from a trusted source that cannot be rebuilt from their weights and JSON; None: False
    unless inside :func:`trusting_pickle`). ``weights=False`` builds the network from the file's settings without reading its weights
    (freshly initialised ones stand in; ``model.info["weights"] == "not loaded"``, and
    ``model.fingerprint()`` is the one its card records): what checking a bench spec needs.
    ``device``: where the model's weights go, ``"auto"`` (CUDA when available), ``"cpu"``,
    ``"cuda"``, ``"cuda:N"`` or a ``torch.device`` (:func:`xrl.ops.resolve_device`).
    """
    device = str(resolve_device(device))
    trust = _TRUSTED.get() if trust is None else bool(trust)
    foreign = _foreign(path_or_name, device=device, trust=trust, weights=weights)  # hf://, CleanRL (docs/agents.md)
    if foreign is not None:
        return foreign
    path = resolve(path_or_name)
    if path.suffix not in (".zip", ".pt"):
        raise ValueError(
            f"agent files are SB3 .zip, xrl .pt checkpoints or CleanRL .cleanrl_model files, got {path.name!r}"
        )
    artifact = open_artifact(  # format, card and payload, read once
        path,
        weights=weights,
        formats=(SB3_ZIP, CHECKPOINT_FORMAT, CLASSIFIER_FORMAT),
        wanted="an agent",
        expected="an agent or a classifier (xrl.load(path) loads every kind; explainers take "
        "this file as their network= / agent= setting)",
    )
    card = artifact.card
    info = {"env": card.get("env"), "card": card, "source": str(path)}
    if not weights:
        info.update(weights="not loaded", fingerprint=card.get("fingerprint"))
    # stand-in weights: RNG untouched; the networks are built on the device they go to (docs/architecture.md#devices)
    with torch.random.fork_rng(devices=[]) if not weights else contextlib.nullcontext(), torch.device(device):
        if artifact.format != CLASSIFIER_FORMAT:
            if artifact.format == SB3_ZIP:
                policy = _sb3_zip_policy(path, device, trust=trust, weights=weights)
            else:
                policy = _checkpoint_policy(path, artifact.payload or {}, weights=weights)
            model = model_from_policy(policy.to(device), action_names=card.get("action_names"), info=info)
        else:
            from xrl.agents.classifier import classifier_model, classifier_net

            net = classifier_net(path, artifact.payload or {}, weights=weights)
            model = classifier_model(path, artifact.payload or {}, net, card, weights=weights)
    want = card.get("fingerprint")
    if weights and isinstance(want, str) and want and (have := model.fingerprint()) != want:
        raise ArtifactError(  # a flipped byte among the weights loads without complaint otherwise
            path,
            f"holds weights whose fingerprint {have} differs from the one its card records ({want})",
            "the weights the card was written for: the file is damaged or was changed after its card "
            "(a retrained file gets a new card; xrl zoo --update-sha256 records the zoo's)",
        )
    return model.to(device)


def _foreign(path_or_name, **kwargs) -> Model | None:
    """The agents of other projects (docs/agents.md): ``hf://ORG/REPO`` (rl-zoo on the Hugging
    Face Hub, :mod:`xrl.agents.hub`) and CleanRL ``.cleanrl_model`` files (:mod:`xrl.agents.cleanrl`)."""
    text = str(path_or_name)
    if text.startswith("hf://"):
        from xrl.agents.hub import load_hub_agent

        return load_hub_agent(text, load_file=load_agent, **kwargs)
    if text.endswith(".cleanrl_model"):
        from xrl.agents.cleanrl import load_cleanrl

        return load_cleanrl(resolve(text), device=kwargs.get("device", "cpu"))
    return None


def load(
    path_or_name: str | os.PathLike,
    *,
    model: Model | None = None,
    device: str | torch.device = "cpu",
    trust: bool | None = None,
):
    """Any xrl artifact, by its format marker: a :class:`Model` for agents, DIGR students,
    classifiers and SB3 ``.zip`` files; a :class:`~xrl.agents.mask_nets.MaskNetwork` for VisionMask
    and Stalder networks; a :class:`~xrl.agents.rexl.RExLAgent` (its record as ``.record``) for a
    RExL agent, built for ``model`` (default: the zoo agent with the recorded weights
    fingerprint, else the model its card names). ``device`` as in :func:`load_agent`."""
    device = str(resolve_device(device))
    if str(path_or_name).startswith("hf://") or str(path_or_name).endswith(".cleanrl_model"):
        return load_agent(path_or_name, device=device, trust=trust)
    path = resolve(path_or_name)
    fmt = loadable_format(path)
    if fmt == "xrl.mask_network":
        from xrl.agents.mask_nets import load_mask_network

        return load_mask_network(path).to(device)
    if fmt == "xrl.rexl_agent":
        from xrl.agents.rexl import load_rexl_agent

        if model is None:
            model = _rexl_model(path)
        agent, record = load_rexl_agent(path, model)
        agent.record = record  # type: ignore[assignment]
        return agent.to(device)
    return load_agent(path, device=device, trust=trust)


load_artifact = load


def _rexl_model(path: Path) -> Model:
    """The model a RExL agent explains: the zoo model whose card records its fingerprint, else
    the one its card's settings name."""
    wanted = read_header(path, "xrl.rexl_agent").get("model_fingerprint")
    for row in zoo_artifacts():
        if row["kind"] in ("agent", "classifier") and row["card"].get("fingerprint") == wanted:
            return load_agent(row["path"])
    named = (read_card(path).get("settings") or {}).get("model")
    if not named:
        raise ArtifactError(
            path,
            f"explains a model (weights {wanted}) found neither in the zoo nor in its card",
            "model= the model it was trained for",
        )
    candidate = Path(named) if Path(named).exists() else ZOO_DIR.parent / named
    return load_agent(candidate if candidate.exists() else named)


def _sb3_zip_policy(path: Path, device: str, *, trust: bool = False, weights: bool = True) -> BasePolicy:
    """The policy of an SB3 ``.zip``: rebuilt without unpickling (:func:`sb3_policy`), or, trusted
    and with its weights, loaded by Stable-Baselines3 itself."""
    if not zipfile.is_zipfile(path):
        raise ArtifactError(path, "is not a zip file", "an SB3 model saved with model.save()")
    if not trust or not weights:
        return sb3_policy(path, device=device, weights=weights)
    # trusted: Stable-Baselines3 unpickles the ``:serialized:`` entries (runs code from the file).
    # Schedules pickled by other Python versions cannot always be rebuilt; they are not needed.
    custom = {
        "learning_rate": 0.0,
        "lr_schedule": lambda _: 0.0,
        "clip_range": lambda _: 0.0,
        "exploration_schedule": lambda _: 0.0,
    }
    errors = []
    from xrl.agents.heads import algorithms

    for name, algo in {**_SB3_ALGOS, **algorithms()}.items():
        try:
            loaded = algo.load(path, device=device, custom_objects=custom)
        except Exception as err:  # wrong algorithm class: try the next one
            errors.append(f"{name}: {type(err).__name__}: {err}")
            continue
        return loaded.policy
    raise ValueError(f"{path} is not a loadable SB3 (or sb3-contrib) model:\n  " + "\n  ".join(errors))


# ------------------------------------------------------------------ SB3 zips without pickle

_TRUST = "if you trust the file, load it with trust=True (CLI --trust-pickle), which runs code from it"
#: packages whose classes a zip's plain JSON may name (imported from the installed package, not the file)
_CLASS_PACKAGES = ("stable_baselines3.", "sb3_contrib.", "xrl.", "torch.nn.")


def _named_class(path: Path, text: str, base: type, what: str) -> type:
    """The class a plain-JSON repr such as ``"<class 'pkg.mod.Name'>"`` names, imported from an
    installed package among :data:`_CLASS_PACKAGES` and a subclass of ``base``."""
    match = re.fullmatch(r"<class '([\w.]+)\.(\w+)'>", str(text).strip())
    if not match or not match.group(1).startswith(_CLASS_PACKAGES) or "._" in match.group(1):
        raise ArtifactError(
            path,
            f"names {what} {str(text)[:80]}",
            f"a class of {', '.join(p.rstrip('.') for p in _CLASS_PACKAGES)}; {_TRUST}",
        )
    try:
        cls = getattr(importlib.import_module(match.group(1)), match.group(2))
    except (ImportError, AttributeError):
        raise ArtifactError(
            path,
            f"names {what} {match.group(1)}.{match.group(2)}, which this install lacks",
            f"a class of an installed package; {_TRUST}",
        ) from None
    if not (isinstance(cls, type) and issubclass(cls, base)):
        raise ArtifactError(path, f"names {what} {match.group(1)}.{match.group(2)}", f"a {base.__name__} subclass")
    return cls


def _plain(entry) -> dict:
    """The plain JSON fields of an SB3 ``data`` entry (the pickled ones left out)."""
    return {k: v for k, v in entry.items() if not k.startswith(":")} if isinstance(entry, dict) else {}


def _bound(text, dtype: np.dtype):
    """A Box bound from its JSON: a number, a list, or numpy's (possibly elided) repr of a constant array."""
    if isinstance(text, (int, float, list)):
        return np.asarray(text, dtype=dtype)
    values = set(re.findall(r"-?(?:inf|\d+\.?\d*(?:e[-+]?\d+)?)", str(text)))
    if len(values) == 1:
        return np.asarray(float(values.pop()), dtype=dtype).item()
    return None


def _spaces(path: Path, data: dict) -> tuple[gym.spaces.Box, gym.spaces.Discrete]:
    obs, act = data.get("observation_space"), data.get("action_space")
    if "Box" not in str(_get(obs, ":type:")) or "Discrete" not in str(_get(act, ":type:")):
        known = all(str(_get(e, ":type:")).startswith("<class 'gymnasium.spaces.") for e in (obs, act))
        raise ArtifactError(
            path,
            f"observes {_get(obs, ':type:')} and acts in {_get(act, ':type:')}",
            "a Box observation space and a Discrete action space (what xrl explains)"
            + ("" if known else f"; if its spaces are those, pickled as another class: {_TRUST}"),
        )
    obs, act = _plain(obs), _plain(act)
    try:
        dtype = np.dtype(obs["dtype"])
        shape = tuple(int(v) for v in obs["_shape"])
        low, high = _bound(obs.get("low"), dtype), _bound(obs.get("high"), dtype)
        if low is None or high is None:  # a bound varying per pixel: only uint8 images are rebuilt
            if dtype != np.uint8:
                raise ValueError("per-element bounds")
            low, high = 0, 255
        n = int(act["n"])
        if int(act.get("start", 0)) != 0:
            raise ValueError("a Discrete space not starting at 0")
    except (KeyError, TypeError, ValueError) as err:
        raise ArtifactError(
            path,
            f"has observation/action spaces its JSON does not describe ({err})",
            f"'dtype', '_shape', 'low', 'high' and 'n' in plain JSON; {_TRUST}",
        ) from None
    if not (0 < len(shape) <= 3 and all(0 < v <= MAX_SIDE for v in shape) and math.prod(shape) <= MAX_OBS_VALUES):
        raise ArtifactError(
            path,
            f"has observation shape {list(shape)}",
            f"at most 3 axes of at most {MAX_SIDE}, {MAX_OBS_VALUES:,} values in all",
        )
    if not 1 <= n <= MAX_ACTIONS:
        raise ArtifactError(path, f"has {n} actions", f"an action count in [1, {MAX_ACTIONS}]")
    return gym.spaces.Box(low, high, shape, dtype=dtype), gym.spaces.Discrete(n)


def _get(entry, key):
    return entry.get(key) if isinstance(entry, dict) else None


#: how torch's legacy (non-zip) format begins: a pickled magic number (weights_only reads it)
_LEGACY_TORCH = b"\x80\x02\x8a\x0al\xfc\x9cF\xf9 j\xa8P\x19."


def sb3_policy(path: str | os.PathLike, *, device: str = "cpu", weights: bool = True) -> BasePolicy:
    """The policy of an SB3 ``.zip`` rebuilt without unpickling anything: its class, spaces and
    keyword arguments from the plain JSON of ``data`` (``":serialized:"`` entries ignored), its
    weights from ``policy.pth`` (``torch.load(weights_only=True)``; not read when ``weights`` is
    False: the policy keeps its fresh initialisation)."""
    path = Path(path)
    expected = "an SB3 model (.zip with 'data' and 'policy.pth', saved by model.save())"
    try:
        with zipfile.ZipFile(path) as z:
            members = set(z.namelist())
            if not {"data", "policy.pth"} <= members:
                raise ArtifactError(
                    path, f"is not a loadable SB3 PPO/A2C/DQN model (it holds {sorted(members)[:6]})", expected
                )
            data = json.loads(z.read("data"))
            if not weights:  # not read; but a bare pickle in its place is refused here as the load would
                with z.open("policy.pth") as f:
                    head = f.read(16)
                if head.startswith(b"\x80") and not head.startswith(_LEGACY_TORCH):
                    raise ArtifactError(
                        path,
                        "holds a policy.pth that is a pickle, not torch's weights format (loading it would run code)",
                        f"weights only; {_TRUST}",
                    )
            state = (
                torch.load(io.BytesIO(z.read("policy.pth")), map_location=device, weights_only=True) if weights else {}
            )
    except ArtifactError:
        raise
    except (zipfile.BadZipFile, OSError, EOFError, json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ArtifactError(path, f"is a damaged SB3 zip ({type(err).__name__}: {err})", expected) from None
    except Exception as err:  # torch refuses policy.pth: not weights only, or damaged
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise ArtifactError(
            path, f"holds a policy.pth that is not plain weights ({first[:150]})", f"weights only; {_TRUST}"
        ) from None
    if not isinstance(data, dict) or not isinstance(state, dict):
        raise ArtifactError(path, "holds 'data' or 'policy.pth' of the wrong type", expected)
    cls_entry = _plain(data.get("policy_class"))
    init = re.match(r"<function (\w+)\.__init__", str(cls_entry.get("__init__", "")))
    module = cls_entry.get("__module__")
    if not (init and isinstance(module, str)):
        raise ArtifactError(
            path, "does not name its policy class in plain JSON", f"an SB3 policy_class entry; {_TRUST}"
        )
    policy_class = _named_class(path, f"<class '{module}.{init.group(1)}'>", BasePolicy, "policy class")
    kwargs = {}
    for key, value in _plain(data.get("policy_kwargs")).items():
        if key in ("optimizer_class", "optimizer_kwargs"):  # training only
            continue
        if key in ("features_extractor_class", "activation_fn"):
            value = _named_class(path, value, nn.Module, key)
        elif isinstance(value, str) and value.startswith("<"):
            raise ArtifactError(path, f"has policy_kwargs {key} = {value[:60]!r}", f"plain JSON values; {_TRUST}")
        kwargs[key] = value
    obs_space, act_space = _spaces(path, data)
    try:  # rebuilt to be explained: no optimizer (its settings were skipped above)
        policy = policy_class(obs_space, act_space, lambda _: 0.0, **kwargs, optimizer_class=_no_optimizer)
        if weights:
            policy.load_state_dict(state)
    except Exception as err:
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise ArtifactError(
            path,
            f"could not be rebuilt from its JSON and weights ({type(err).__name__}: {first[:200]})",
            f"a policy its plain JSON describes; {_TRUST}",
        ) from None
    return policy.to(device)


def build_policy(arch: str, obs_shape, n_actions: int, algo: str = "ppo", *, init: bool = True) -> BasePolicy:
    """An untrained SB3 policy of a registered architecture. ``init=False`` (a policy to load a
    state_dict into) skips SB3's orthogonal initialisation (``ortho_init=False``): its QR
    decompositions took half of a load's time, for weights that are overwritten; and it gets no
    optimizer (:func:`_no_optimizer`)."""
    obs_space = gym.spaces.Box(0, 255, tuple(obs_shape), dtype=np.uint8)
    act_space = gym.spaces.Discrete(int(n_actions))
    kwargs = ARCHS.get(arch).policy_kwargs()
    loading: dict = {} if init else {"optimizer_class": _no_optimizer}
    if algo == "dqn":
        from stable_baselines3.dqn.policies import DQNPolicy

        return DQNPolicy(obs_space, act_space, lambda _: 0.0, **{**loading, **kwargs})
    return ActorCriticPolicy(
        obs_space, act_space, lambda _: 0.0, **{**({} if init else {"ortho_init": False}), **loading, **kwargs}
    )


def _no_optimizer(params, **settings) -> None:
    """The optimizer of a policy rebuilt to be loaded and explained, not trained: none
    (``policy.optimizer`` is None). A torch optimizer's first construction in a process imports
    ``torch._dynamo`` (1.5-2.5 s on this machine): every command that loaded an agent paid it."""
    return None


def _fits(arch: str, payload: dict) -> bool:
    """Whether the checkpoint's weights load into architecture ``arch``."""
    try:
        build_policy(arch, payload["obs_shape"], payload["n_actions"], payload["algo"], init=False).load_state_dict(
            payload["state_dict"]
        )
    except Exception:
        return False
    return True


def _load_checkpoint(path: Path, device: str, info: dict, *, weights: bool = True) -> Model:
    """The Model of the agent checkpoint ``path`` (read here: what :func:`save_policy` checks)."""
    payload = load_payload(path, CHECKPOINT_FORMAT) if weights else read_header(path, CHECKPOINT_FORMAT)
    policy = _checkpoint_policy(path, payload, weights=weights)
    return model_from_policy(policy.to(device), action_names=info["card"].get("action_names"), info=info)


def _checkpoint_policy(path: Path, payload: dict, *, weights: bool = True) -> BasePolicy:
    """The SB3 policy of an agent checkpoint's payload (its settings checked; its weights loaded
    unless ``weights`` is False), on the CPU or the current default device."""
    _check_agent_header(path, payload)
    policy = build_policy(payload["arch"], payload["obs_shape"], payload["n_actions"], payload["algo"], init=False)
    try:
        if weights:
            policy.load_state_dict(payload["state_dict"])
    except RuntimeError as err:
        fits = [a for a in ARCHS.names() if a != payload["arch"] and _fits(a, payload)]
        hint = (
            f"the weights fit architecture {fits[0]!r}"
            if fits
            else f"they fit no registered architecture ({', '.join(ARCHS.names())})"
        )
        detail = [line.strip() for line in str(err).splitlines()[1:3] if line.strip()]
        raise ValueError(
            f"{path}: its weights do not fit architecture {payload['arch']!r} with observations "
            f"{payload['obs_shape']}; {hint}. torch: {' '.join(detail)[:300]}"
        ) from err
    return policy


#: sane bounds on the sizes an agent file declares, checked before a network is built from them (a
#: crafted obs_shape or n_actions would otherwise ask for terabytes): 4096x4096 pixels, 65,536 actions
MAX_SIDE, MAX_OBS_VALUES, MAX_ACTIONS = 4096, 3 * 4096 * 4096, 65536


def _check_agent_header(path: Path, payload: dict) -> None:
    """The constructor settings of an agent checkpoint, each of the expected type."""
    shape, n, algo, arch = (payload.get(k) for k in ("obs_shape", "n_actions", "algo", "arch"))
    if not (
        isinstance(shape, (list, tuple))
        and len(shape) == 3
        and all(isinstance(v, int) and not isinstance(v, bool) and 0 < v <= MAX_SIDE for v in shape)
        and shape[0] * shape[1] * shape[2] <= MAX_OBS_VALUES
    ):
        raise ArtifactError(
            path,
            f"has obs_shape {shape!r}",
            f"obs_shape [C, H, W] of positive integers of at most {MAX_SIDE}, {MAX_OBS_VALUES:,} values in all",
        )
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= MAX_ACTIONS:
        raise ArtifactError(path, f"has n_actions {n!r}", f"n_actions an integer >= 1 (at most {MAX_ACTIONS})")
    if algo not in _SB3_ALGOS:
        raise ArtifactError(path, f"has algo {algo!r}", f"algo one of {', '.join(_SB3_ALGOS)}")
    if arch not in ARCHS.names():
        raise ArtifactError(path, f"has arch {arch!r}", f"a registered architecture ({', '.join(ARCHS.names())})")


# ------------------------------------------------------------------ the zoo checked by loading it
# (``xrl zoo --verify`` / ``--update-sha256``; the listing, which reads no weights, is xrl.zoo)


def verify_zoo(
    zoo_dir: str | os.PathLike | None = None, *, load: bool = True, unchecked: list | None = None
) -> list[str]:
    """Problems found in the zoo, one line each (an empty list when every artifact is sound): a
    file whose sha256 differs from its card's, a file that does not load (``load``), loaded
    weights whose fingerprint differs from the card's. Artifacts whose card records no sha256
    (written before cards did) cannot be checked: their paths are appended to ``unchecked``."""
    problems: list[str] = []
    for row in zoo_artifacts(zoo_dir, errors=problems):
        path, card = row["path"], row["card"]
        if not card.get("sha256"):
            if unchecked is not None:
                unchecked.append(path)
        elif sha256(path) != card["sha256"]:
            problems.append(
                f"{path}: its sha256 is {sha256(path)}, its card records {card['sha256']} "
                "(the file changed or is damaged)"
            )
        if not load:
            continue
        try:
            loaded = load_artifact(path)
        except (ValueError, TypeError, OSError, RuntimeError) as err:
            problems.append(f"{path}: does not load: {err}")
            continue
        want, have = card.get("fingerprint"), weights_fingerprint(path, loaded)
        if want and have != want:
            problems.append(f"{path}: weights fingerprint {have}, its card records {want}")
    return problems


def weights_fingerprint(path: str | os.PathLike, loaded=None) -> str:
    """What an artifact's card records as ``fingerprint``: for models (agents, classifiers) the
    loaded Model's (what datasets and explainer networks record), for other kinds that of the
    weights stored in the file."""
    if callable(getattr(loaded, "fingerprint", None)):
        return loaded.fingerprint()
    return fingerprint(load_payload(path)["state_dict"])


def update_zoo_sha256(zoo_dir: str | os.PathLike | None = None, *, skip: tuple[str, ...] = ()) -> list[Path]:
    """Record each artifact's sha256 (and, for models, its weights fingerprint) in its card;
    folders named in ``skip`` are left alone. Returns the cards changed."""
    changed = []
    for row in zoo_artifacts(zoo_dir):
        if row["name"].split("/")[0] in skip:
            continue
        path, card = row["path"], dict(row["card"])
        fields = {
            "sha256": sha256(path),
            "format": row["format"],
            "fingerprint": weights_fingerprint(path, load_artifact(path)),
        }
        if any(card.get(k) != v for k, v in fields.items()):
            write_json(card_path(path), {**card, **fields})
            changed.append(card_path(path))
    return changed
