"""Settings declared once, as dataclasses: the flags of every ``xrl`` command and training, their
help (the string under each field), the checks of types and ranges, ``KEY=VALUE`` settings and
the command line a card records (:func:`command`). The model is CleanRL's ``tyro`` style: a
command *is* its dataclass; ``xrl.cli`` registers each with :func:`add_command` and calls the
handler with the filled dataclass (docs/architecture.md#commands).

Field metadata read here: ``flag`` (the flag's name and the namespace attribute, default the
field's name), ``cli=False`` (no flag), ``switch`` (a bare ``store_true`` flag), ``required``,
``choices``, ``positional`` (an argument without dashes), ``type`` (an argparse type: parses and
checks one value, e.g. :func:`at_least_1`), ``metavar``. ``dict`` fields are repeatable
``--flag KEY=VALUE`` settings (values read as JSON); ``list`` fields are repeatable flags.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import math
import re
import shlex
import types
import typing
from collections.abc import Callable
from typing import Any


class SettingsError(ValueError):
    """A setting of a training run is of the wrong type or out of range (one line, names it)."""


# ------------------------------------------------------------------ settings


def _flag(f: dataclasses.Field) -> str:
    return "--" + _dest(f).replace("_", "-")


def _dest(f: dataclasses.Field) -> str:
    """The attribute the CLI's namespace holds the field in: its flag's name (``timesteps`` for
    ``total_timesteps``), as the hand-written flags had it."""
    return f.metadata.get("flag", f.name)


def _kinds(cls) -> dict[str, tuple]:
    """Each field's accepted types from its annotation: ``int``, ``float``, ``bool``, ``str``,
    ``dict`` and ``X | None``."""
    hints = typing.get_type_hints(cls)
    out = {}
    for f in dataclasses.fields(cls):
        hint = hints[f.name]
        args = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,)
        out[f.name] = tuple(a for a in args if a is not type(None)), type(None) in args
    return out


def _type_error(cls, f, value, expected: str) -> SettingsError:
    return SettingsError(f"{_flag(f)} ({f.name}) must be {expected}, got {value!r}")


def check_settings(args) -> None:
    """Refuse a setting of the wrong type (``seed=1.7``, ``radius=true`` for a number,
    ``--n-envs 0``) or out of the range the dataclass declares in ``LIMITS``
    (``{"name": ">=1" | ">0" | ">=0" | "0..1"}``), before anything is written."""
    cls = type(args)
    limits = getattr(cls, "LIMITS", {})
    for f in dataclasses.fields(cls):
        value = getattr(args, f.name)
        (kinds, optional) = _kinds(cls)[f.name]
        if value is None:
            if not optional:
                raise _type_error(cls, f, value, "set")
            continue
        kind = kinds[0] if kinds else object
        if kind is bool and not isinstance(value, bool):
            raise _type_error(cls, f, value, "true or false")
        if kind is int and (isinstance(value, bool) or not isinstance(value, int)):
            raise _type_error(cls, f, value, "an integer")
        if kind is float and (isinstance(value, bool) or not isinstance(value, (int, float))):
            raise _type_error(cls, f, value, "a number")
        if kind is str and not isinstance(value, str):
            raise _type_error(cls, f, value, "a string")
        if kind is dict and not isinstance(value, dict):
            raise _type_error(cls, f, value, "KEY=VALUE settings")
        rule = limits.get(f.name)
        if rule is not None and not _within(value, rule):
            raise SettingsError(f"{_flag(f)} ({f.name}) must be {_RULES[rule][1]}, got {value!r}")


_RULES = {
    ">=1": (lambda v: v >= 1, "at least 1"),
    ">0": (lambda v: v > 0, "positive"),
    ">=0": (lambda v: v >= 0, "0 or more"),
    "0..1": (lambda v: 0 <= v <= 1, "in [0, 1]"),
}


def _within(value, rule: str) -> bool:
    return bool(_RULES[rule][0](value))


def check_pairs(flag: str, given: dict, types: dict) -> None:
    """Refuse unknown keys and values of the wrong type in ``--FLAG KEY=VALUE`` settings whose
    defaults ``types`` give (``--dqn buffer_size=abc``)."""
    for key, value in given.items():
        if key not in types:
            raise SettingsError(f"--{flag} {key}: unknown setting; known: {', '.join(types)}")
        default = types[key]
        if isinstance(default, bool):
            ok = isinstance(value, bool)
        elif isinstance(default, int):
            ok = isinstance(value, int) and not isinstance(value, bool)
        elif isinstance(default, float):
            ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        else:
            ok = True
        if not ok:
            raise SettingsError(f"--{flag} {key}={value}: expected {type(default).__name__} like {default!r}")


# ------------------------------------------------------------------ flags and the card's command


def _value(text: str, lists: bool = False):
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        if lists and "," in text:
            return [_value(x, lists) for x in text.split(",")]
        return text


def parse_pairs(pairs: list[str] | None, flag: str = "set", lists: bool = False) -> dict:
    """``["radius=4", "score=kl"]`` -> ``{"radius": 4, "score": "kl"}`` (values read as JSON;
    with ``lists``, a value that is not JSON and holds commas is a list: ``seeds=1,2``)."""
    out = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise SettingsError(f"--{flag} takes KEY=VALUE, got {pair!r}")
        out[key.strip()] = _value(value, lists)
    return out


def _bool(text: str) -> bool:
    if text.lower() in ("true", "1", "yes"):
        return True
    if text.lower() in ("false", "0", "no"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def _typed(kind, name: str):
    def parse(text: str):
        try:
            return kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {name}, got {text!r}") from None

    parse.__name__ = name
    return parse


def field_docs(cls) -> dict[str, str]:
    """The string literal under each dataclass field (the CleanRL-style docs), on one line."""
    return dict(_field_docs(cls))


@functools.cache
def _field_docs(cls) -> dict[str, str]:
    import ast

    docs = {}
    for klass in reversed(cls.__mro__):  # a subclass's doc of a field it redeclares wins
        if not dataclasses.is_dataclass(klass):
            continue
        body = _class_node(klass).body
        for node, after in zip(body, body[1:]):
            if (
                isinstance(node, ast.AnnAssign)
                and isinstance(node.target, ast.Name)
                and isinstance(after, ast.Expr)
                and isinstance(after.value, ast.Constant)
            ):
                docs[node.target.id] = " ".join(str(after.value.value).split())
    return docs


def _class_node(klass):
    """The ``ast.ClassDef`` of a class, parsed from its own lines (``inspect.getsource`` parses
    the whole module for every class: 1.5 s for the command line's settings classes). A module-
    level class is found by its last ``class Name`` line; any other falls back to
    ``inspect.getsource``."""
    import ast
    import inspect
    import linecache
    import textwrap

    file = inspect.getsourcefile(klass)
    if file is not None and klass.__qualname__ == klass.__name__:
        lines = linecache.getlines(file)
        starts = [i for i, line in enumerate(lines) if re.match(rf"class {klass.__name__}\b", line)]
        if starts:
            block = "".join(inspect.getblock(lines[starts[-1] :]))
            node = ast.parse(textwrap.dedent(block)).body[0]
            if isinstance(node, ast.ClassDef):
                return node
    return ast.parse(inspect.getsource(klass)).body[0]


def _parse(f: dataclasses.Field, kind) -> Callable[[str], Any]:
    """The argparse type of one field: its ``metadata["type"]``, else by its annotation."""
    if "type" in f.metadata:
        return f.metadata["type"]
    return {bool: _bool, int: _typed(int, "an integer"), float: _typed(float, "a number")}.get(kind, str)


def _default(f: dataclasses.Field) -> Any:
    """A field's default value (its factory called)."""
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return f.default


def _help(f: dataclasses.Field, docs: dict[str, str], default) -> str:
    text = docs.get(f.name, "").replace("%", "%%")
    if default is None or default is False or isinstance(default, (list, dict)):
        return text
    return text + f" (default {default})"


def add_flags(parser: argparse.ArgumentParser, cls, skip=("progress",)) -> None:
    """One ``--flag`` per field of a settings dataclass (its one-line doc as help): the flag is
    the field's name with dashes, or ``metadata["flag"]``; fields without a default (or with
    ``metadata["required"]``) are required; booleans take true/false, ``metadata["switch"]``
    ones are bare switches; dict fields are repeatable ``KEY=VALUE`` flags, list fields repeatable
    flags; ``metadata["positional"]`` makes an argument without dashes (see the module doc)."""
    docs = field_docs(cls)
    kinds = _kinds(cls)
    # a command's own flags first, then the shared --device (OnDevice)
    for f in sorted(dataclasses.fields(cls), key=lambda f: f.name == "device"):
        if f.name in skip or f.metadata.get("cli") is False:
            continue
        help_ = docs.get(f.name, "").replace("%", "%%")  # argparse formats help with %
        if f.metadata.get("switch"):  # a flag without a value (e.g. --export-only)
            parser.add_argument(_flag(f), dest=_dest(f), action="store_true", help=help_)
            continue
        missing = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        required = missing or f.metadata.get("required", False)
        kind = kinds[f.name][0][0] if kinds[f.name][0] else str
        kind = typing.get_origin(kind) or kind  # list[str] -> list
        if f.metadata.get("positional"):  # optional when the field has a default
            optional: dict[str, Any] = {} if required else {"nargs": "?", "default": f.default}
            parser.add_argument(_dest(f), type=_parse(f, kind), help=help_, **optional)
            continue
        if kind is dict or (kind is list and f.metadata.get("append", True)):
            metavar = f.metadata.get("metavar", "KEY=VALUE" if kind is dict else None)
            each: dict[str, Any] = {} if kind is dict else {"type": f.metadata.get("type", str)}
            parser.add_argument(
                _flag(f), dest=_dest(f), action="append", metavar=metavar, required=required,
                help=help_ + " (repeatable)", **each,
            )  # fmt: skip
            continue
        default = None if required else _default(f)
        choices = f.metadata.get("choices")
        parser.add_argument(
            _flag(f),
            dest=_dest(f),
            type=_parse(f, kind),
            required=required,
            default=default,
            choices=choices,
            metavar=f.metadata.get("metavar") or (None if choices else _flag(f)[2:].upper().replace("-", "_")),
            help=_help(f, docs, default) if not required else help_,
        )


def from_flags(cls, ns: argparse.Namespace):
    """The dataclass ``cls`` filled from the flags :func:`add_flags` made for it (a repeatable
    flag given no time takes the field's default)."""
    values = {}
    for f in dataclasses.fields(cls):
        if not hasattr(ns, _dest(f)):
            continue
        value = getattr(ns, _dest(f))
        kind = _kinds(cls)[f.name][0][:1]
        if kind == (dict,):
            value = parse_pairs(value, _flag(f)[2:], lists=f.metadata.get("lists", False))
        elif value is None and f.default_factory is not dataclasses.MISSING:
            value = f.default_factory()
        values[f.name] = value
    return cls(**values)


# ------------------------------------------------------------------ argparse types of one value


def number(kind: Callable[[str], Any], test: Callable[[Any], bool], expected: str) -> Callable[[str], Any]:
    """An argparse type: ``kind(text)`` that passes ``test``, else one line saying what was expected."""

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            value = None
        if value is None or not test(value):
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
        return value

    parse.__name__ = expected
    return parse


at_least_1 = number(int, lambda v: v >= 1, "an integer of at least 1")
positive = number(float, lambda v: v > 0 and v != float("inf"), "a positive number")
fraction = number(float, lambda v: 0 <= v <= 1, "a number in [0, 1]")


def eps_list(text: str) -> list[float]:
    """``--eps 0,0.01,0.1``: comma-separated finite radii of at least 0."""
    try:
        values = [float(e) for e in text.split(",") if e.strip()]
    except ValueError:
        values = []
    if not values or not all(math.isfinite(v) and v >= 0 for v in values):
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers of at least 0, got {text!r}")
    return values


eps_list.__name__ = "comma-separated numbers"

_DEVICE = re.compile(r"auto|cpu|cuda(:\d+)?")


def device_name(text: str) -> str:
    """``--device``: ``auto``, ``cpu``, ``cuda`` or ``cuda:N`` (whether it is there is checked when the
    command starts: :func:`xrl.ops.resolve_device`)."""
    if not _DEVICE.fullmatch(text.strip().lower()):
        raise argparse.ArgumentTypeError(f"expected auto, cpu, cuda or cuda:N, got {text!r}")
    return text.strip().lower()


device_name.__name__ = "a device"


@dataclasses.dataclass(kw_only=True)
class OnDevice:
    """The setting every command that computes shares (issue 40; docs/architecture.md#devices)."""

    device: str = dataclasses.field(default="auto", metadata={"type": device_name, "metavar": "auto|cpu|cuda|cuda:N"})
    """where the model and the states compute: auto (CUDA when available, else the CPU), cpu, cuda or cuda:N"""


# ------------------------------------------------------------------ commands


def add_command(sub, name: str, cls, handler: Callable[[Any], Any], help: str, skip=("progress",)):
    """One subcommand whose flags are ``cls``'s fields; the handler is called with ``cls`` filled
    from them (:func:`run_command`)."""
    parser = sub.add_parser(name, help=help, description=help)
    add_flags(parser, cls, skip=skip)
    parser.set_defaults(fn=handler, settings_cls=cls)
    return parser


def run_command(ns: argparse.Namespace):
    """Call the handler :func:`add_command` registered with the dataclass filled from ``ns``."""
    return ns.fn(from_flags(ns.settings_cls, ns))


def command(prog: str, args, *, always=(), pair_defaults: dict | None = None, skip=("progress",), order=None) -> str:
    """The command that remakes ``args``: ``prog`` and a flag for each field that differs from
    the dataclass default (and each field in ``always``), spelled as :func:`add_flags` spells it.
    ``pair_defaults``: for dict fields, the values a key may be left out at; ``order``: field
    names in the order to write them (default the dataclass's)."""
    parts = [prog]
    fields = {f.name: f for f in dataclasses.fields(args)}
    for f in (fields[name] for name in (order or fields)):
        if f.name in skip or f.metadata.get("cli") is False or f.metadata.get("switch"):
            continue
        value = getattr(args, f.name)
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        if f.name not in always and value == default:
            continue
        if isinstance(value, dict):
            skipped = (pair_defaults or {}).get(f.name, {})
            parts += [
                f"{_flag(f)} " + shlex.quote(f"{k}={v if isinstance(v, str) else json.dumps(v)}")
                for k, v in value.items()
                if k not in skipped or skipped[k] != v
            ]
        elif value is not None:
            parts.append(f"{_flag(f)} " + shlex.quote(str(value).lower() if isinstance(value, bool) else str(value)))
    return " ".join(parts)
