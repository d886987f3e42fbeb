"""The exception of a setting of the wrong type that a user gave (a flag, a spec entry, an env or
method setting, a file's field).

:class:`SettingTypeError` is a ``TypeError`` for Python callers (``pytest.raises(TypeError)``,
``except TypeError`` keep working) and a ``ValueError`` for the command line: ``xrl`` prints
``ValueError`` as one line with exit status 2 and treats a plain ``TypeError`` as a bug, with its
traceback (``xrl.cli.EXPECTED``). Raise it where a value from outside the program has the wrong
type; keep ``TypeError`` for a Python caller's misuse of the API (a module where a Model is
expected, say).
"""


class SettingTypeError(TypeError, ValueError):
    """A user's setting of the wrong type (module docstring)."""
