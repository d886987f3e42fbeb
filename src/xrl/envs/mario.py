"""Super Mario Bros (gym-super-mario-bros on the nes-py emulator; optional extra ``mario``) as a
Gymnasium env with xrl's image layout and the ``SIMPLE_MOVEMENT`` action set.

gym-super-mario-bros ships the ROM but, as released (7.4.0 with nes-py 8.2.1), does not run
under numpy 2 and speaks the old gym API. xrl fixes it at run time, without editing the installed
packages (:func:`patch_nes_py`, idempotent):

* nes-py reads the iNES header as ``uint8`` and multiplies it (``16 * header[4] * 2**10``): under
  numpy 2 that overflows (``OverflowError: Python integer 1024 out of bounds for uint8``). The
  patched ``ROM.header`` returns the same 16 bytes as ``int64``.
* gym-super-mario-bros computes positions from RAM bytes (``ram[0x6d] * 0x100 + ram[0x86]``),
  which overflows ``uint8`` the same way. The env's RAM is given a view (:class:`IntRAM`, same
  memory; :func:`_int_ram_env`) whose single-byte reads are Python ints, so sums and differences are exact (under
  numpy 1 they wrapped: moving left gave an x reward of 0 instead of −1).
* gym's passive env checker uses ``np.bool8``, gone in numpy 2; xrl never goes through
  ``gym.make`` (it builds ``SuperMarioBrosEnv`` directly), so the checker never runs.

:class:`MarioEnv` is a ``gymnasium.Env``: ``reset(seed=, options=) -> (obs, info)``,
``step(a) -> (obs, reward, terminated, truncated, info)``. One step holds a button combination
of the ``actions`` set (``"simple"`` = ``SIMPLE_MOVEMENT``, 7 actions, the default; ``"right_only"``;
``"complex"``) for ``frame_skip`` = 4 NES frames, rewards summed (gym-super-mario-bros'
reward: x progress + clock penalty − 25 on death, clipped to [−15, 15] per frame); the
observation is the max of the last two screens, gray and 84×84 (:mod:`xrl.envs.screens`),
``frame_stack`` of them stacked oldest first, ``(4, 84, 84)`` uint8. ``render()`` gives the last
NES screen ``(240, 256, 3)``. At reset a random number of 0..``noop_max`` NOOP frames (drawn from
the seeded env RNG) are played, since the emulator itself is deterministic. One life on one
stage (``stage="1-1"``): the episode terminates when Mario dies or reaches the flag, and is
truncated after ``max_steps`` steps.
"""

from __future__ import annotations

import contextlib
import io

import gymnasium as gym
import numpy as np

from xrl.envs import screens
from xrl.envs.registry import ENVS, EXTRAS, FAMILIES, import_extra

NAME = "mario"
FRAME_SKIP = 4
#: ``actions`` setting -> gym-super-mario-bros action set
ACTION_SETS = {"simple": "SIMPLE_MOVEMENT", "right_only": "RIGHT_ONLY", "complex": "COMPLEX_MOVEMENT"}


class IntRAM(np.ndarray):
    """A view of the emulator's RAM (same memory) whose single-byte reads are Python ints."""

    def __getitem__(self, key):
        value = super().__getitem__(key)
        return int(value) if isinstance(value, np.integer) else value


def _int_header(self) -> np.ndarray:
    """The 16 bytes of the iNES header as int64 (nes-py's uint8 overflows under numpy 2)."""
    return self.raw_data[:16].astype(np.int64)


def patch_nes_py():
    """Import nes-py with its ROM header fixed for numpy 2 (idempotent); returns ``nes_py``."""
    with contextlib.redirect_stderr(io.StringIO()):  # old gym's "unmaintained" notice on import
        nes_py = import_extra("nes_py", "mario", NAME)
    from nes_py import _rom

    if _rom.ROM.header.fget is not _int_header:
        _rom.ROM.header = property(_int_header)
    return nes_py


def _int_ram_env(cls: type) -> type:
    """``cls`` (a nes-py env) whose ``ram`` is an :class:`IntRAM` view from construction on (the
    constructor already reads positions from RAM)."""

    class IntRAMEnv(cls):
        def _ram_buffer(self):
            return super()._ram_buffer().view(IntRAM)

    IntRAMEnv.__name__ = IntRAMEnv.__qualname__ = f"IntRAM{cls.__name__}"
    return IntRAMEnv


class MarioEnv(gym.Env):
    """Super Mario Bros as a Gymnasium env (module docstring). Settings are keyword arguments."""

    metadata = {"render_modes": ["rgb_array"], "render_fps": 60 // FRAME_SKIP}

    def __init__(
        self,
        *,
        stage: str = "1-1",
        actions: str = "simple",
        frame_stack: int = 4,
        noop_max: int = 30,
        max_steps: int = 5000,
    ) -> None:
        patch_nes_py()
        smb = import_extra("gym_super_mario_bros.smb_env", "mario", NAME)
        action_sets = import_extra("gym_super_mario_bros.actions", "mario", NAME)
        from nes_py.wrappers import JoypadSpace

        world, _, level = stage.partition("-") if isinstance(stage, str) else ("", "", "")
        if not (world.isdigit() and level.isdigit() and 1 <= int(world) <= 8 and 1 <= int(level) <= 4):
            raise ValueError(f"stage must be 'W-S' with world 1..8 and stage 1..4, got {stage!r}")
        for key, value, low in (
            ("frame_stack", frame_stack, 1),
            ("noop_max", noop_max, 0),
            ("max_steps", max_steps, 1),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"{key} must be an int >= {low}, got {value!r}")
        if actions not in ACTION_SETS:
            raise ValueError(f"actions must be one of {sorted(ACTION_SETS)}, got {actions!r}")
        combos = getattr(action_sets, ACTION_SETS[actions])
        self.stage, self.actions, self.frame_stack, self.noop_max, self.max_steps = (
            stage,
            actions,
            frame_stack,
            noop_max,
            max_steps,
        )
        self.nes = _int_ram_env(smb.SuperMarioBrosEnv)(rom_mode="vanilla", target=(int(world), int(level)))
        # the button combinations as NES controller bytes, with nes-py's own button bits
        self.buttons = [sum(JoypadSpace._button_map[b] for b in combo) for combo in combos]
        self.action_names = tuple("+".join(combo) for combo in combos)
        self.action_space = gym.spaces.Discrete(len(self.buttons))
        self.observation_space = gym.spaces.Box(
            0, 255, (frame_stack, screens.SCREEN_SIZE, screens.SCREEN_SIZE), dtype=np.uint8
        )
        self.frames = np.zeros(self.observation_space.shape, dtype=np.uint8)
        self.screen = np.zeros((240, 256, 3), dtype=np.uint8)
        self.t = 0

    def _push(self, pooled: np.ndarray) -> np.ndarray:
        self.frames = np.concatenate([self.frames[1:], screens.gray(pooled)[None]])
        return self.frames.copy()

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[np.ndarray, dict]:
        super().reset(seed=seed)
        self.nes.reset()  # the emulator restores the state saved after the start screen
        info = self.nes._get_info()
        for _ in range(int(self.np_random.integers(self.noop_max + 1)) if self.noop_max else 0):
            _, _, done, info = self.nes.step(0)
            if done:  # cannot happen in the first NOOPs of a stage, but never step a done env
                self.nes.reset()
        self.screen = self.nes.screen.copy()
        self.frames[:] = screens.gray(self.screen)  # the first screen fills the stack
        self.t = 0
        return self.frames.copy(), dict(info)

    def step(self, action) -> tuple[np.ndarray, float, bool, bool, dict]:
        if not self.action_space.contains(action):
            raise ValueError(f"action must be an int in [0, {self.action_space.n}), got {action!r}")
        total, done = 0.0, False
        last: list[np.ndarray] = []
        for i in range(FRAME_SKIP):
            screen, reward, done, info = self.nes.step(self.buttons[int(action)])
            total += reward
            if done or i >= FRAME_SKIP - 2:  # the emulator reuses its screen buffer: copy
                last = [*last[-1:], screen.copy()]
            if done:
                break
        self.screen = last[-1]
        self.t += 1
        obs = self._push(np.maximum(last[0], last[-1]))  # max of the last two screens
        truncated = not done and self.t >= self.max_steps
        return obs, float(total), bool(done), bool(truncated), dict(info)

    def render(self) -> np.ndarray:
        """The last NES screen ``(240, 256, 3)`` uint8."""
        return self.screen

    def __getstate__(self):
        # the emulator lives in C++ memory behind a raw pointer: a pickled copy would alias it in
        # this process and crash in another, so refuse; callers then start new episodes
        raise TypeError("a running NES emulator cannot be pickled; make a new env instead")

    def close(self) -> None:
        if getattr(self.nes, "_env", None) is not None:
            self.nes.close()


@ENVS.register(NAME)
def make_mario(**settings) -> MarioEnv:
    """Super Mario Bros (extra mario), one life on stage 1-1, SIMPLE_MOVEMENT (7 actions); 84×84 gray, 4-frame stack, frame skip 4; settings: stage, actions, frame_stack, noop_max, max_steps"""
    env = MarioEnv(**settings)
    env.xrl_spec = {
        "name": NAME,
        "settings": {
            "stage": env.stage,
            "actions": env.actions,
            "frame_stack": env.frame_stack,
            "noop_max": env.noop_max,
            "max_steps": env.max_steps,
        },
    }
    return env


EXTRAS[NAME] = FAMILIES[NAME] = "mario"
