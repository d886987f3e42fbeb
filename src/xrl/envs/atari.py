"""Atari 2600 games (ALE) with the standard deep-RL preprocessing, in two documented versions.

Every game gives observations ``(frame_stack, 84, 84)`` uint8, channels first, frames ordered
oldest → newest (``obs[-1]`` is the current screen), and ``env.render()`` returns the raw
``(210, 160, 3)`` RGB screen for display. Rewards are the game's score changes, never clipped
(training code clips), so an episode's return is the game score. Names are lowercase game names
(``pong``, ``breakout``, ``ms-pacman``...); :func:`register_atari` adds more.

Settings (keyword arguments of :func:`make_atari` / ``make_env``; every one, defaults included,
is recorded in ``env.unwrapped.xrl_spec["settings"]`` so the env can be rebuilt exactly):

``version`` = ``"v5"`` (default): Machado et al. (2018) evaluation protocol.
    ``ALE/<Game>-v5`` with ``frameskip=1`` in the ALE, then gymnasium's ``AtariPreprocessing``:
    a random number of 1..``noop_max`` NOOPs at reset, the action repeated 4 frames, max-pool of
    the last two frames, ALE grayscale palette, 84×84 ``INTER_AREA`` resize; then gymnasium's
    ``FrameStackObservation`` (at reset the first screen is repeated to fill the stack).
    Sticky actions on by default (``repeat_action_probability=0.25``, applied per frame by ALE).
    No FIRE at reset.

``version`` = ``"v4"``: the rl-zoo / Stable-Baselines3 ``AtariWrapper`` protocol, so agents trained
    with rl-zoo or SB3 ``make_atari_env`` see exactly the inputs they were trained on.
    ``<Game>NoFrameskip-v4`` then SB3's own ``AtariWrapper`` (``clip_reward=False``): NOOP reset
    (1..``noop_max``), the action repeated 4 frames with a max-pool of the last two *RGB* frames
    (channel by channel, then OpenCV ``RGB2GRAY``, which equals ALE's grayscale; so pixels where the
    two frames have different colours differ from v5's gray-then-max), FIRE then action 2 after
    every reset when the game has a FIRE action (``FireResetEnv``), 84×84 ``INTER_AREA``.
    Sticky actions off by default. The stack is padded with zeros at reset, as
    SB3's ``VecFrameStack`` does. rl-zoo agents see a channels-last ``(84, 84, 4)`` stack that
    SB3's ``VecTransposeImage`` turns into ``(4, 84, 84)`` before the network; xrl produces the
    channels-first stack directly, same frame order, so the network input is identical.

Other settings, same meaning in both versions:

- ``sticky_actions``: ``None`` = the version's default (v5 True, v4 False); True sets ALE's
  ``repeat_action_probability=0.25``, False sets 0.0.
- ``full_action_space``: all 18 ALE actions instead of the game's minimal set (default False).
- ``frame_stack``: number of stacked frames (default 4).
- ``noop_max``: maximum number of NOOPs at reset, 0 to disable (default 30).
- ``terminal_on_life_loss``: end an episode when a life is lost (default False, for evaluation;
  rl-zoo trains with True). Then returns are per life, not the game score. In v5 the next
  ``reset`` restarts the game; in v4 (SB3 ``EpisodicLifeEnv``) it continues the same game.
- ``frame_stack_padding``: ``"reset"`` (repeat the first screen) or ``"zero"``; ``None`` = the
  version's default (v5 ``"reset"``, v4 ``"zero"``).
- ``labels``: put RAM ground truth (84×84 int8) in ``info["labels"]``: ball and paddles (Pong and
  Breakout), Ms. Pac-Man and the ghosts (MsPacman), the submarine, its torpedo, sharks, enemy
  submarines and divers (Seaquest), the cannon, live aliens and bullets (SpaceInvaders);
  :mod:`xrl.envs.atari_objects`. Default False.
- ``infinite``: Breakout only, "BreakoutInfinite" (FLS appendix 6.2): the bricks keep respawning
  instead of stopping after two walls (864 points). Default False.

Both versions truncate an episode after 108 000 emulator frames (27 000 agent steps).

Example::

    >>> from xrl.envs import make_env
    >>> env = make_env("pong", version="v4")
    >>> obs, info = env.reset(seed=0)
    >>> obs.shape, obs.dtype
    ((4, 84, 84), dtype('uint8'))
    >>> env.render().shape
    (210, 160, 3)
"""

from __future__ import annotations

import functools
from typing import Any

import gymnasium as gym
from gymnasium.wrappers import AtariPreprocessing, FrameStackObservation, ReshapeObservation

from xrl.envs import atari_objects
from xrl.envs.registry import ENVS, FAMILIES
from xrl.errors import SettingTypeError

SCREEN_SIZE = 84
FRAME_SKIP = 4
VERSIONS = ("v5", "v4")
_STICKY_PROBABILITY = 0.25
_DEFAULT_STICKY = {"v5": True, "v4": False}
_DEFAULT_PADDING = {"v5": "reset", "v4": "zero"}

GAMES: dict[str, str] = {}
"""xrl name -> ALE game name as in the gymnasium ids (``"ms-pacman"`` -> ``"MsPacman"``)."""


def register_atari(name: str, game: str) -> None:
    """Register the ALE game ``game`` (e.g. ``"Qbert"``) as the xrl environment ``name``."""
    GAMES[name] = game
    FAMILIES[name] = "atari"
    builder = functools.partial(make_atari, name)
    builder.__doc__ = (
        f"Atari {game} (ALE v5 or NoFrameskip-v4), 84×84 grayscale, frame skip 4, "
        "4-frame stack; settings: version, sticky_actions, frame_stack, noop_max, ..."
    )
    ENVS.register(name)(builder)


def ale_id(name: str, version: str = "v5") -> str:
    """The gymnasium id behind the xrl game ``name``: ``ALE/<Game>-v5`` or ``<Game>NoFrameskip-v4``."""
    if name not in GAMES:
        raise ValueError(f"unknown Atari game {name!r}; known games: {', '.join(sorted(GAMES))}")
    if version not in VERSIONS:
        raise ValueError(f"version must be one of {VERSIONS}, got {version!r}")
    game = GAMES[name]
    return f"ALE/{game}-v5" if version == "v5" else f"{game}NoFrameskip-v4"


@functools.cache
def _register_ale() -> None:
    """Register the ALE ids with gymnasium: ale-py is imported on the first Atari env, not at
    ``import xrl``. Without ale-py, :func:`make_atari` says so (the ids stay unregistered)."""
    try:
        import ale_py
    except ImportError:
        return
    gym.register_envs(ale_py)


def make_atari(
    name: str,
    *,
    version: str = "v5",
    sticky_actions: bool | None = None,
    full_action_space: bool = False,
    frame_stack: int = 4,
    noop_max: int = 30,
    terminal_on_life_loss: bool = False,
    frame_stack_padding: str | None = None,
    labels: bool = False,
    infinite: bool = False,
) -> gym.Env:
    """Build the Atari game ``name`` with the settings described in the module docstring.

    Returns an env with observations ``(frame_stack, 84, 84)`` uint8 and raw RGB ``render()``;
    the resolved settings are stored in ``env.unwrapped.xrl_spec``.
    """
    env_id = ale_id(name, version)
    settings: dict[str, Any] = {
        "version": version,
        "sticky_actions": _DEFAULT_STICKY[version] if sticky_actions is None else sticky_actions,
        "full_action_space": full_action_space,
        "frame_stack": frame_stack,
        "noop_max": noop_max,
        "terminal_on_life_loss": terminal_on_life_loss,
        "frame_stack_padding": _DEFAULT_PADDING[version] if frame_stack_padding is None else frame_stack_padding,
        "labels": labels,
        "infinite": infinite,
    }
    _check_settings(name, settings)
    env = _ale_env(env_id, settings)
    env = _preprocessed(env, settings)
    env = FrameStackObservation(env, frame_stack, padding_type=settings["frame_stack_padding"])  # (S, 84, 84)
    if labels and name in atari_objects.PIXEL_GAMES:
        env = atari_objects.PixelLabels(env, name, frame_stack=frame_stack)
    elif labels:
        env = atari_objects.ObjectLabels(env, name, frame_stack=frame_stack)
    env.unwrapped.xrl_spec = {"name": name, "settings": settings}
    return env


def _check_settings(name: str, settings: dict) -> None:
    """Refuse settings of the wrong type or range, and labels or ``infinite`` for a game without them."""
    for key in ("sticky_actions", "full_action_space", "terminal_on_life_loss", "labels", "infinite"):
        if not isinstance(settings[key], bool):
            raise SettingTypeError(f"{key} must be a bool, got {settings[key]!r}")
    for key, low in (("frame_stack", 1), ("noop_max", 0)):
        number = settings[key]
        if isinstance(number, bool) or not isinstance(number, int) or number < low:
            raise ValueError(f"{key} must be an int >= {low}, got {number!r}")
    if settings["frame_stack_padding"] not in ("reset", "zero"):
        raise ValueError(f"frame_stack_padding must be 'reset' or 'zero', got {settings['frame_stack_padding']!r}")
    labelled = sorted([*atari_objects.GAMES, *atari_objects.PIXEL_GAMES])
    if settings["labels"] and name not in labelled:
        raise ValueError(f"labels=True: RAM ground truth exists for {', '.join(labelled)}, not {name!r}")
    if settings["infinite"] and name != "breakout":
        raise ValueError(f"infinite=True is BreakoutInfinite; it applies to breakout, not {name!r}")


def _ale_env(env_id: str, settings: dict) -> gym.Env:
    """The ALE env ``env_id`` at every frame (no frame skip), rendering RGB; BreakoutInfinite when asked."""
    _register_ale()
    try:
        gym.spec(env_id)
    except gym.error.Error as err:
        raise ValueError(f"{env_id} is not registered; is ale-py (which ships the ROMs) installed?") from err
    env = gym.make(
        env_id,
        frameskip=1,  # frame skipping is done (with max-pooling) by the preprocessing (_preprocessed)
        repeat_action_probability=_STICKY_PROBABILITY if settings["sticky_actions"] else 0.0,
        full_action_space=settings["full_action_space"],
        render_mode="rgb_array",
    )
    if settings["infinite"]:
        env = atari_objects.BreakoutInfinite(env)  # frame level: the score is checked every frame
    return env


def _preprocessed(env: gym.Env, settings: dict) -> gym.Env:
    """Frame skip 4 with max-pooling, no-op starts, 84×84 grayscale ``(84, 84)``: gymnasium's
    ``AtariPreprocessing`` for v5, SB3's ``AtariWrapper`` for v4."""
    if settings["version"] == "v5":
        return AtariPreprocessing(
            env,
            noop_max=settings["noop_max"],
            frame_skip=FRAME_SKIP,
            screen_size=SCREEN_SIZE,
            terminal_on_life_loss=settings["terminal_on_life_loss"],
            grayscale_obs=True,
        )  # (84, 84)
    # SB3 itself, not a re-implementation: its grayscale and FIRE reset differ from gymnasium's.
    from xrl.compat import quiet_old_gym

    quiet_old_gym()
    from stable_baselines3.common.atari_wrappers import AtariWrapper

    env = AtariWrapper(
        env,
        noop_max=settings["noop_max"],
        frame_skip=FRAME_SKIP,
        screen_size=SCREEN_SIZE,
        terminal_on_life_loss=settings["terminal_on_life_loss"],
        clip_reward=False,
    )  # (84, 84, 1)
    return ReshapeObservation(env, (SCREEN_SIZE, SCREEN_SIZE))


def action_names(env: gym.Env) -> list[str]:
    """The ALE meaning of each action index of ``env`` (e.g. ``["NOOP", "FIRE", "RIGHT", ...]``)."""
    meanings = getattr(env.unwrapped, "get_action_meanings", None)
    if meanings is None:
        raise TypeError(f"{env.unwrapped!r} is not an ALE environment; it has no action meanings")
    return list(meanings())


for _name, _game in {
    "pong": "Pong",
    "breakout": "Breakout",
    "seaquest": "Seaquest",
    "ms-pacman": "MsPacman",
    "enduro": "Enduro",
    "space-invaders": "SpaceInvaders",
    "beam-rider": "BeamRider",
}.items():
    register_atari(_name, _game)
