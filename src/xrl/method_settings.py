"""Check a method's settings against its constructor before anything runs: one line naming the
setting, what was expected and the default (``--setting greydanus.radius=abc``, serve's requests).

Below the command line and the server, which both use it (:func:`check_method_settings`).
"""

from __future__ import annotations

import inspect
import json
import math

_KINDS = {
    "bool": (bool, "true or false"),
    "int": (int, "an integer"),
    "float": (float, "a number"),
    "str": (str, "text"),
    "None": (type(None), "null"),
}


def _settings_of(cls) -> tuple[dict, bool]:
    """The keyword settings of a registered class's constructor (following ``**kwargs`` up the
    MRO) as ``{name: inspect.Parameter}``, and whether the chain ends open (``**kwargs`` kept)."""

    params: dict = {}
    open_ = False
    for klass in cls.__mro__:
        init = klass.__dict__.get("__init__")
        if init is None:
            continue
        if klass is object:
            break
        sig = list(inspect.signature(init).parameters.values())[2:]  # self, model
        for p in sig:
            if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD) and p.default is not p.empty:
                params.setdefault(p.name, p)
        open_ = any(p.kind is p.VAR_KEYWORD for p in sig)
        if not open_:
            break
    return params, open_


def check_method_settings(registry, methods: dict[str, dict], flag: str) -> None:
    """Refuse a ``--FLAG METHOD.KEY=VALUE`` setting the method does not have, or whose value is
    not of the type its constructor declares (``greydanus.radius=abc``, ``radius=true``,
    ``seed=1.7``), before anything runs: one line naming it, what was expected and the default."""
    import re

    for method, settings in methods.items():
        params, open_ = _settings_of(registry.get(method))
        for key, value in settings.items():
            shown = value if isinstance(value, str) else json.dumps(value)
            if key not in params:
                if open_:
                    continue
                raise ValueError(
                    f"--{flag} {method}.{key}: {method} has no setting {key!r}; known: "
                    f"{', '.join(sorted(params)) or 'none'}"
                )
            p = params[key]
            words = set(
                re.findall(
                    r"[A-Za-z_]\w*",
                    p.annotation
                    if isinstance(p.annotation, str)
                    else getattr(p.annotation, "__name__", "")
                    if p.annotation is not p.empty
                    else "",
                )
            )
            if not words and p.default is not None:
                words = {type(p.default).__name__}
            if not words or not words <= set(_KINDS):
                continue  # a type this check does not know (tuples, tensors, callables): the method checks it
            kinds = {_KINDS[w][0] for w in words}
            ok = (
                (isinstance(value, bool) and bool in kinds)
                or (not isinstance(value, bool) and isinstance(value, int) and bool(kinds & {int, float}))
                or (isinstance(value, float) and float in kinds)
                or (isinstance(value, str) and str in kinds)
                or (value is None and type(None) in kinds)
            )
            if not ok:
                expected = " or ".join(_KINDS[w][1] for w in sorted(words, key=list(_KINDS).index))
                raise ValueError(f"--{flag} {method}.{key}={shown}: expected {expected} (default {p.default!r})")
            if isinstance(value, float) and not math.isfinite(value):
                raise ValueError(f"--{flag} {method}.{key}={shown}: expected a finite number (default {p.default!r})")
