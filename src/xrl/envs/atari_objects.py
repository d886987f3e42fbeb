"""Ground truth for Atari from the emulator RAM: where the player and the objects it meets are, as per-pixel
label maps at the observation's 84×84 resolution (:mod:`xrl.envs.labels`: 1 important,
0 unimportant, -1 excluded), so ``localization`` scores Atari agents as it does Red-Fetch-Green.

RAM addresses from AtariARI (Anand et al. 2019, ``atariari/benchmark/ram_annotations.py``):
Pong ``ball_x = 49, ball_y = 54, player_y = 51, enemy_y = 50``; Breakout ``ball_x = 99,
ball_y = 101, player_x = 72``; MsPacman ``player_x = 10, player_y = 16``, ghosts
``enemy_{sue, inky, pinky, blinky}_x = 6..9``, ``_y = 12..15``. The offsets turning them into screen pixels (210×160) were fitted
on rendered frames (ALE 0.12, colours of each object) and are checked by
``tests/test_atari_ground_truth.py``; where the drawn position jitters by one screen line
relative to RAM (Pong's ball and player paddle), the box holds both lines.

Label map of one step (``info["labels"]`` when the env is made with ``labels=True``):

* important: every observation pixel whose source area (``INTER_AREA``) overlaps the ball or a
  paddle on the newest screen (Pong: both paddles and the ball; Breakout: the paddle and ball);
* excluded: a ring of ``margin`` pixels around them (the newest frame is the max of the last two
  screens, and resizing blurs edges), the same objects on the older frames of the stack (the
  agent sees them; their role is uncertain), and for Breakout the rows of bricks (the agent aims
  at them; also uncertain);
* unimportant: everything else.

MsPacman (:class:`PixelLabels`): the sprites' drawn position jitters by up to 4 screen pixels
around RAM's (animation frames), and the ghosts flicker (each is drawn on about half the
frames), so boxes from RAM alone would be loose. Instead RAM gives each object (Ms. Pac-Man and
the four ghosts) an *envelope* (14 rows × 12 columns that held every drawn pixel of it in
seeded play, ``tests/test_atari_ground_truth.py``), and within it the pixels of the object's own
colour on the newest screen are important; the rest of each envelope (a ghost not drawn on this
frame, blue frightened ghosts, the jitter) is excluded, as are a 1-pixel ring and the
envelopes of the older frames; the maze, dots and score are unimportant.

Seaquest and SpaceInvaders (:class:`PixelLabels`, same rules): RAM gives each object an
envelope, and the *object pixels* inside it on the newest screen are important. Object pixels
are found without RAM: in Seaquest whatever in the sea (rows 45..152) is not water (the sharks
change colour from wave to wave), in SpaceInvaders whatever is not black above the ground but
the scores, the lives count and the shields. Object pixels outside every envelope (an explosion
whose RAM slot is already cleared, Seaquest's surface patrol submarine of later waves, which
AtariARI does not map) are excluded, never unimportant.

* Seaquest: AtariARI ``player_x = 70, player_y = 97, player_missile_x = 103,
  enemy_obstacle_x = 30..33, diver_or_enemy_missile_x = 71..74`` (one per lane, lane 0 the
  lowest); which of a lane's three enemies (at x, x + 16, x + 32) exist is bit 2, 1, 0 of RAM
  ``36..39`` (from OCAtari, Delfosse et al. 2023, ``ocatari/ram/seaquest.py``). Important: the
  submarine (16 × 11), its torpedo, the sharks and enemy submarines, the divers and enemy
  torpedoes (a lane's envelope is 14 rows high: sharks bob).
* SpaceInvaders: AtariARI ``player_x = 28, enemies_x = 26``; the aliens' row offset ``16``,
  which aliens are alive (RAM ``18..23``, one byte per row from the bottom, bit j the j-th
  column) and the bullets (cannon ``x = 87, y = 85``; aliens ``x = 83, 84, y = 81, 82``) from
  OCAtari (``ocatari/ram/spaceinvaders.py``). Important: the cannon, every alien alive, the
  bullets. The bullets flicker (the cannon's and the aliens' are drawn on alternate frames), so
  a bullet's envelope holds where it is on the newest two screens, and it is excluded where the
  newest screen does not draw it. The shields are excluded (uncertain, as Breakout's bricks).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple

import gymnasium as gym
import numpy as np

from xrl.envs.labels import EXCLUDED, IMPORTANT, UNIMPORTANT, LabelsInInfo

SCREEN = (210, 160)
PONG_ROWS = (34, 194)  # the playing field between the walls
BREAKOUT_COLUMNS = (8, 152)  # between the side walls
BREAKOUT_BRICK_ROWS = (57, 93)


class Box(NamedTuple):
    """Screen pixels ``top <= row < bottom``, ``left <= column < right``."""

    top: int
    bottom: int
    left: int
    right: int

    def clip(self, rows: tuple[int, int] = (0, SCREEN[0]), columns: tuple[int, int] = (0, SCREEN[1])) -> Box | None:
        box = Box(
            max(self.top, rows[0]), min(self.bottom, rows[1]), max(self.left, columns[0]), min(self.right, columns[1])
        )
        return box if box.top < box.bottom and box.left < box.right else None


def pong_objects(ram: np.ndarray) -> dict[str, Box]:
    """Ball and paddles of Pong on the screen (objects not on the field are left out)."""
    ram = ram.astype(int)
    boxes = {
        "player": Box(ram[51] - 14, ram[51] + 3, 140, 144).clip(PONG_ROWS),
        "enemy": Box(ram[50] - 15, ram[50] + 1, 16, 20).clip(PONG_ROWS),
        "ball": Box(ram[54] - 15, ram[54] - 10, ram[49] - 49, ram[49] - 47).clip(PONG_ROWS) if ram[54] else None,
    }
    return {k: v for k, v in boxes.items() if v is not None}


def breakout_objects(ram: np.ndarray) -> dict[str, Box]:
    """Paddle and ball of Breakout on the screen (no ball between serves)."""
    ram = ram.astype(int)
    boxes = {
        "player": Box(189, 193, ram[72] - 47, ram[72] - 31).clip(columns=BREAKOUT_COLUMNS),
        "ball": Box(ram[101] + 9, ram[101] + 13, ram[99] - 49, ram[99] - 47).clip((0, 196), BREAKOUT_COLUMNS)
        if ram[101]
        else None,
    }
    return {k: v for k, v in boxes.items() if v is not None}


#: xrl game name -> (RAM -> boxes, screen regions always excluded)
GAMES: dict[str, tuple[Callable[[np.ndarray], dict[str, Box]], tuple[Box, ...]]] = {
    "pong": (pong_objects, ()),
    "breakout": (breakout_objects, (Box(BREAKOUT_BRICK_ROWS[0], BREAKOUT_BRICK_ROWS[1], *BREAKOUT_COLUMNS),)),
}


#: MsPacman object -> (RGB colour on screen, RAM address of x, RAM address of y)
MSPACMAN_OBJECTS = {
    "player": ((210, 164, 74), 10, 16),
    "sue": ((180, 122, 48), 6, 12),
    "inky": ((84, 184, 153), 7, 13),
    "pinky": ((198, 89, 179), 8, 14),
    "blinky": ((200, 72, 72), 9, 15),
}
MSPACMAN_MAZE_ROWS = (0, 172)  # above the lives and fruit shown at the bottom


def mspacman_envelope(x: int, y: int) -> Box | None:
    """The screen area that holds a MsPacman sprite whose RAM position is ``(x, y)``."""
    return Box(y - 1, y + 13, x - 14, x - 2).clip(MSPACMAN_MAZE_ROWS)


def mspacman_masks(ram: np.ndarray, screen: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Screen masks ``(210, 160)`` bool: (important, uncertain) as in the module docstring."""
    ram = ram.astype(int)
    important = np.zeros(SCREEN, dtype=bool)
    envelopes = np.zeros(SCREEN, dtype=bool)
    for colour, xa, ya in MSPACMAN_OBJECTS.values():
        box = mspacman_envelope(ram[xa], ram[ya])
        if box is None:
            continue
        area = (slice(box.top, box.bottom), slice(box.left, box.right))
        envelopes[area] = True
        important[area] |= (screen[area] == np.asarray(colour, np.uint8)).all(-1)
    return important, envelopes & ~important


def envelope_masks(envelopes: list[Box], objects: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(important, uncertain) screen masks from RAM envelopes and the screen's object pixels
    ``objects`` (bool): object pixels inside an envelope are important; the rest of each envelope
    and object pixels that no envelope explains are uncertain."""
    inside = np.zeros(SCREEN, dtype=bool)
    for box in envelopes:
        inside[box.top : box.bottom, box.left : box.right] = True
    important = objects & inside
    return important, (inside | objects) & ~important


SEAQUEST_SEA = (45, 153)  # rows from the surface to the sea bed
SEAQUEST_COLUMNS = (8, 160)  # right of the black HMOVE bar
SEAQUEST_WATER = ((0, 28, 136), (24, 59, 157))  # water and the surface waves


def seaquest_envelopes(ram: np.ndarray) -> dict[str, Box]:
    """Screen areas of Seaquest's submarine, its torpedo, and the sharks, enemy submarines, divers
    and enemy torpedoes of the four lanes (lane 0 the lowest) whose RAM places them on screen."""
    ram = ram.astype(int)
    x, y = ram[70], ram[97]
    boxes = {"player": Box(y + 33, y + 44, x, x + 16)}
    if 0 < ram[103] < 160:
        boxes["torpedo"] = Box(y + 37, y + 43, ram[103], ram[103] + 8)
    for lane in range(4):
        top = 137 - 24 * lane
        for bit, offset in ((4, 0), (2, 16), (1, 32)):  # the lane's group: left, middle, right enemy
            if ram[36 + lane] & bit:
                left = (ram[30 + lane] + offset) % 256
                boxes[f"enemy{lane}_{offset}"] = Box(top, top + 14, left, left + 8)
        if 0 < ram[71 + lane] < 160:  # a diver, or the torpedo of the lane's enemy submarine
            boxes[f"diver{lane}"] = Box(top, top + 14, ram[71 + lane], ram[71 + lane] + 8)
    clipped = {k: b.clip(SEAQUEST_SEA, SEAQUEST_COLUMNS) for k, b in boxes.items()}
    return {k: b for k, b in clipped.items() if b is not None}


def seaquest_objects(screen: np.ndarray) -> np.ndarray:
    """Seaquest's object pixels (bool ``(210, 160)``): everything in the sea that is not water."""
    objects = np.zeros(SCREEN, dtype=bool)
    sea = screen[SEAQUEST_SEA[0] : SEAQUEST_SEA[1], SEAQUEST_COLUMNS[0] : SEAQUEST_COLUMNS[1]]
    water = np.zeros(sea.shape[:2], dtype=bool)
    for colour in SEAQUEST_WATER:
        water |= (sea == np.asarray(colour, np.uint8)).all(-1)
    objects[SEAQUEST_SEA[0] : SEAQUEST_SEA[1], SEAQUEST_COLUMNS[0] : SEAQUEST_COLUMNS[1]] = ~water
    objects[55] = False  # the black line under the surface
    return objects


def seaquest_masks(ram: np.ndarray, screen: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Screen masks ``(210, 160)`` bool: (important, uncertain) as in the module docstring."""
    return envelope_masks(list(seaquest_envelopes(ram).values()), seaquest_objects(screen))


SPACE_INVADERS_FIELD = (0, 195)  # above the ground
SPACE_INVADERS_SCORE_ROWS = (0, 30)  # the scores (and the flying saucer's path)
SPACE_INVADERS_GREEN = (50, 132, 50)  # the cannon, and the first player's score
SPACE_INVADERS_YELLOW = (162, 134, 56)  # the second player's score and the lives count (HUD)
SPACE_INVADERS_SHIELD = (181, 83, 40)
SPACE_INVADERS_SAUCER = (151, 25, 122)  # the flying saucer (its own colour, above the aliens)
#: the three shields (screen boxes; they erode but never move)
SPACE_INVADERS_SHIELDS = tuple(Box(157, 175, 42 + 32 * i, 50 + 32 * i) for i in range(3))


def space_invaders_envelopes(ram: np.ndarray) -> dict[str, Box]:
    """Screen areas of SpaceInvaders' laser cannon, every alien alive and the three bullets."""
    ram = ram.astype(int)
    boxes = {"player": Box(185, 195, ram[28] - 2, ram[28] + 7)}  # it lags a column when moving
    x, y = ram[26], ram[16]
    for row in range(6):  # from the top; RAM 23 holds the top row, 18 the bottom one
        for column in range(6):  # bit j: the j-th alien from the left is alive
            if ram[23 - row] >> column & 1:
                top, left = 31 + 2 * y + 18 * row, x - 1 + 16 * column
                boxes[f"alien{row}{column}"] = Box(top, top + 10, left, left + 8)
    for name, xa, ya in (("bullet", 87, 85), ("bomb1", 83, 81), ("bomb2", 84, 82)):
        # bullets flicker (the cannon's on one frame, the aliens' on the other) and move up to 4
        # rows a frame: the envelope holds where they are drawn on the newest two screens
        boxes[name] = Box(2 * ram[ya] - 3, 2 * ram[ya] + 17, ram[xa] - 2, ram[xa] - 1)
    clipped = {k: b.clip(SPACE_INVADERS_FIELD) for k, b in boxes.items()}
    return {k: b for k, b in clipped.items() if b is not None}


def space_invaders_objects(screen: np.ndarray) -> np.ndarray:
    """SpaceInvaders' object pixels (bool ``(210, 160)``): everything not black above the ground,
    but the scores, the lives count and the shields."""
    objects = (screen != 0).any(-1)
    for colour in (SPACE_INVADERS_YELLOW, SPACE_INVADERS_SHIELD):
        objects &= ~(screen == np.asarray(colour, np.uint8)).all(-1)
    objects[SPACE_INVADERS_FIELD[1] :] = False
    rows = slice(*SPACE_INVADERS_SCORE_ROWS)
    objects[rows] &= ~(screen[rows] == np.asarray(SPACE_INVADERS_GREEN, np.uint8)).all(-1)
    return objects


def space_invaders_masks(ram: np.ndarray, screen: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Screen masks ``(210, 160)`` bool: (important, uncertain) as in the module docstring."""
    important, uncertain = envelope_masks(list(space_invaders_envelopes(ram).values()), space_invaders_objects(screen))
    saucer = (screen == np.asarray(SPACE_INVADERS_SAUCER, np.uint8)).all(-1)  # its colour alone finds it
    important, uncertain = important | saucer, uncertain & ~saucer
    for box in SPACE_INVADERS_SHIELDS:
        area = (slice(box.top, box.bottom), slice(box.left, box.right))
        uncertain[area] |= ~important[area]
    return important, uncertain


#: xrl game name -> (RAM, screen) -> (important, uncertain) screen masks
PIXEL_GAMES: dict[str, Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]] = {
    "ms-pacman": mspacman_masks,
    "seaquest": seaquest_masks,
    "space-invaders": space_invaders_masks,
}


def to_grid(box: Box, size: tuple[int, int] = (84, 84), margin: int = 0) -> tuple[slice, slice]:
    """The observation pixels whose source area overlaps ``box`` (grown by ``margin`` pixels)."""
    h, w = size
    sy, sx = SCREEN[0] / h, SCREEN[1] / w
    top, bottom = int(np.floor(box.top / sy)) - margin, int(np.ceil(box.bottom / sy)) + margin
    left, right = int(np.floor(box.left / sx)) - margin, int(np.ceil(box.right / sx)) + margin
    return slice(max(top, 0), min(bottom, h)), slice(max(left, 0), min(right, w))


def label_map(
    now: dict[str, Box],
    before: Sequence[dict[str, Box]] = (),
    always_excluded: tuple[Box, ...] = (),
    size: tuple[int, int] = (84, 84),
    margin: int = 1,
) -> np.ndarray:
    """Labels ``(H, W)`` int8 from the objects on the newest screen and on older ones (module docstring)."""
    labels = np.full(size, UNIMPORTANT, dtype=np.int8)
    for box in always_excluded:
        labels[to_grid(box, size)] = EXCLUDED
    for boxes in before:
        for box in boxes.values():
            labels[to_grid(box, size, margin)] = EXCLUDED
    for box in now.values():
        labels[to_grid(box, size, margin)] = EXCLUDED
    for box in now.values():
        labels[to_grid(box, size)] = IMPORTANT
    return labels


class ObjectLabels(LabelsInInfo):
    """Adds ``info["labels"]`` (84×84 int8) from the RAM after every ``reset`` and ``step``.

    ``frame_stack``: the objects of the last ``frame_stack - 1`` steps are excluded too (they are
    on the older frames of the observation)."""

    def __init__(self, env: gym.Env, game: str, *, frame_stack: int = 4, margin: int = 1) -> None:
        super().__init__(env)
        if game not in GAMES:
            raise ValueError(f"RAM ground truth exists for {', '.join(sorted(GAMES))}, not {game!r}")
        self.objects, self.always_excluded = GAMES[game]
        self.frame_stack, self.margin = frame_stack, margin
        self.history: list[dict[str, Box]] = []
        self.size = tuple(env.observation_space.shape[-2:])

    def boxes(self) -> dict[str, Box]:
        """The objects on the current screen."""
        return self.objects(self.env.unwrapped.ale.getRAM())

    def _labels(self, obs: np.ndarray, fresh: bool) -> np.ndarray:
        now = self.boxes()
        if fresh:
            self.history = []
        labels = label_map(now, self.history, self.always_excluded, self.size, self.margin)
        self.history = ([now] + self.history)[: max(self.frame_stack - 1, 0)]
        return labels


class PixelLabels(LabelsInInfo):
    """Adds ``info["labels"]`` (84×84 int8) from RAM and the newest screen after every ``reset``
    and ``step`` (MsPacman; module docstring), with :func:`xrl.envs.screens.object_labels`."""

    def __init__(self, env: gym.Env, game: str, *, frame_stack: int = 4, margin: int = 1) -> None:
        super().__init__(env)
        if game not in PIXEL_GAMES:
            raise ValueError(f"pixel ground truth exists for {', '.join(sorted(PIXEL_GAMES))}, not {game!r}")
        self.masks, self.frame_stack, self.margin = PIXEL_GAMES[game], frame_stack, margin
        self.history: list[np.ndarray] = []
        self.size = tuple(env.observation_space.shape[-2:])

    def _labels(self, obs: np.ndarray, fresh: bool) -> np.ndarray:
        from xrl.envs.screens import object_labels

        ale = self.env.unwrapped.ale
        important, uncertain = self.masks(ale.getRAM(), ale.getScreenRGB())
        if fresh:
            self.history = []
        labels = object_labels(important, uncertain, self.history, self.size, self.margin)
        self.history = ([important | uncertain] + self.history)[: max(self.frame_stack - 1, 0)]
        return labels


def breakout_score(ram: np.ndarray) -> int:
    """Breakout's score: RAM 76 (hundreds) and 77 (tens and units), binary-coded decimal."""

    def bcd(value: int) -> int:
        return (int(value) >> 4) * 10 + (int(value) & 15)

    return bcd(ram[76]) * 100 + bcd(ram[77])


class BreakoutInfinite(gym.Wrapper):
    """Breakout whose bricks keep respawning (FLS appendix 6.2): Breakout's bricks are cleared at
    most twice (864 points) and then stop coming back; as the authors did, the score in RAM is set
    back by 432 (one wall) whenever it reaches 864, which lets the game respawn the wall.

    Wraps the frame-level ALE env (``frameskip=1``) so the score is checked after every emulator
    frame. ALE computes rewards as RAM score differences, so the frame after a rewrite would give
    -432; the wrapper adds the 432 back, and rewards (returns) stay the points actually scored."""

    WALL = 432

    def __init__(self, env: gym.Env) -> None:
        super().__init__(env)
        self.owed = 0

    def reset(self, **kwargs):
        self.owed = 0
        return self.env.reset(**kwargs)

    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(action)
        reward, self.owed = reward + self.owed, 0
        ale = self.env.unwrapped.ale
        score = breakout_score(ale.getRAM())
        if score >= 2 * self.WALL:
            hundreds, rest = divmod(score - self.WALL, 100)
            ale.setRAM(76, (hundreds // 10) << 4 | hundreds % 10)
            ale.setRAM(77, (rest // 10) << 4 | rest % 10)
            self.owed = self.WALL
        return obs, reward, terminated, truncated, info
