"""A researcher's own samplers, tables and expert families, registered without editing this package.

EXPERTMERGE_PLUGINS names them, comma-separated: "module" (imported; it registers at import) or
"module:function" (imported, then function() is called). The CLI loads them before it reads its arguments,
the workflow before it validates config.yaml; jobs inherit the variable (a SLURM job too: sbatch exports
the environment by default).
"""
from __future__ import annotations

import importlib
import os

ENVIRONMENT_VARIABLE = "EXPERTMERGE_PLUGINS"
_loaded: set[str] = set()


def load_plugins(names: str | None = None) -> list[str]:
    """Import (and call) each plugin of `names` (default: $EXPERTMERGE_PLUGINS) once; the entries loaded."""
    text = os.environ.get(ENVIRONMENT_VARIABLE, "") if names is None else names
    entries = [entry.strip() for entry in text.split(",") if entry.strip()]
    for entry in entries:
        if entry in _loaded:
            continue
        module_name, _, function_name = entry.partition(":")
        try:
            module = importlib.import_module(module_name)
        except ImportError as error:
            raise ValueError(f"{ENVIRONMENT_VARIABLE}: cannot import plugin {module_name!r} ({error})") from None
        if function_name:
            function = getattr(module, function_name, None)
            if not callable(function):
                raise ValueError(f"{ENVIRONMENT_VARIABLE}: plugin {module_name!r} has no function {function_name!r}")
            function()
        _loaded.add(entry)
    return entries
