"""Airflow compatibility imports: ``import airflow...`` in a DAG file resolves to ketch.

With ``[core] airflow_compat = true``, the processes that import DAG files (the DAG
processor's parse child, the task try, the fork server, ``ketch dags check-airflow``)
install :class:`AirflowCompatFinder` on ``sys.meta_path`` before importing one, unless a
real Airflow is importable: a real ``airflow`` package is never shadowed (the finder is
also last on ``sys.meta_path``, so one that appears later still wins).

The shim modules are listed in :mod:`ketch.airflow_compat.table`; their names resolve
lazily (module ``__getattr__``) to ketch's objects. Any other ``airflow.*`` module
imports as a placeholder whose every name is an ImportError naming the symbol and what to
use in ketch instead.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import os
import sys
from types import ModuleType
from typing import Any

from ketch.airflow_compat import table

ROOT = "airflow"


def _is_shim_name(fullname: str) -> bool:
    return fullname == ROOT or fullname.startswith(ROOT + ".")


class AirflowCompatFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Finds every ``airflow`` / ``airflow.*`` module and builds it from the table."""

    def find_spec(
        self, fullname: str, path: Any = None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if not _is_shim_name(fullname):
            return None
        spec = importlib.util.spec_from_loader(fullname, self, is_package=True)
        if spec is not None:
            spec.submodule_search_locations = []
        return spec

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        return None  # the default module

    def exec_module(self, module: ModuleType) -> None:
        name = module.__name__
        module.__path__ = []
        module.__file__ = None
        module.__ketch_airflow_compat__ = True  # type: ignore[attr-defined]
        if table.known_module(name):
            module.__doc__ = f"ketch's Airflow compatibility shim for {name}"
        else:
            module.__doc__ = f"{name} is outside ketch's Airflow subset"
        module.__getattr__ = _module_getattr(module)  # type: ignore[method-assign]
        module.__dir__ = lambda: sorted(table.MODULES.get(name, {}))  # type: ignore[method-assign]


def _module_getattr(module: ModuleType) -> Any:
    name = module.__name__

    def __getattr__(attr: str) -> Any:
        if attr == "__all__":
            names = []
            for candidate in table.MODULES.get(name, {}):
                try:
                    table.resolve(name, candidate)
                except ImportError:
                    continue
                names.append(candidate)
            return names
        if attr.startswith("__") and attr.endswith("__"):
            raise AttributeError(attr)
        value = table.resolve(name, attr)  # ImportError with a suggestion when missing
        setattr(module, attr, value)
        return value

    return __getattr__


_finder: AirflowCompatFinder | None = None


def is_installed() -> bool:
    return _finder is not None and _finder in sys.meta_path


def real_airflow_importable() -> bool:
    """Whether ``import airflow`` finds a real Airflow (asked without the shim)."""
    module = sys.modules.get(ROOT)
    if module is not None:
        return not getattr(module, "__ketch_airflow_compat__", False)
    was_installed = is_installed()
    if was_installed:
        sys.meta_path.remove(_finder)  # type: ignore[arg-type]
    try:
        return importlib.util.find_spec(ROOT) is not None
    except (ImportError, ValueError):
        return False
    finally:
        if was_installed:
            sys.meta_path.append(_finder)  # type: ignore[arg-type]


def install() -> bool:
    """Put the finder on ``sys.meta_path`` (last) unless a real Airflow is importable.
    Returns whether the shim is active."""
    global _finder
    if is_installed():
        return True
    if real_airflow_importable():
        return False
    _finder = AirflowCompatFinder()
    sys.meta_path.append(_finder)
    return True


def uninstall() -> None:
    """Remove the finder and the shim modules already imported (tests)."""
    global _finder
    if _finder is not None and _finder in sys.meta_path:
        sys.meta_path.remove(_finder)
    _finder = None
    for name in [n for n in sys.modules if _is_shim_name(n)]:
        if getattr(sys.modules[name], "__ketch_airflow_compat__", False):
            del sys.modules[name]


def enabled() -> bool:
    """``[core] airflow_compat``, read as cheaply as the other DAG defaults: from the JSON
    the DAG processor and executors hand their children, else from the settings."""
    from ketch.authoring import _defaults

    raw = os.environ.get(_defaults.PARSE_DEFAULTS_ENV)
    if raw:
        return bool(_defaults.parse_defaults().get("airflow_compat", False))
    from ketch.config import get_settings

    return bool(get_settings().core.airflow_compat)


def install_if_enabled() -> bool:
    """Install the finder when ``[core] airflow_compat`` is on; whether it is active."""
    if is_installed():
        return True
    return enabled() and install()


__all__ = [
    "AirflowCompatFinder",
    "enabled",
    "install",
    "install_if_enabled",
    "is_installed",
    "real_airflow_importable",
    "uninstall",
]
