"""Import optional dependencies on first use, with an actionable error."""

from __future__ import annotations

import importlib
from types import ModuleType

from kinodb.errors import MissingExtraError


def require(module: str, *, extra: str) -> ModuleType:
    """Import ``module`` or raise `MissingExtraError` naming the pip extra to install.

    A module that is installed but fails to import (a build for another NumPy, a broken
    install) is told apart from a missing one: reinstalling the extra would not help.
    """
    try:
        mod = importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if exc.name is not None and (exc.name == module or module.startswith(f"{exc.name}.")):
            raise _missing(module, extra) from exc
        raise _broken(module, extra, exc) from exc
    except Exception as exc:  # ImportError, or what a module raises at import (ValueError, ...)
        raise _broken(module, extra, exc) from exc
    if getattr(mod, "__file__", None) is None and hasattr(mod, "__path__"):
        # A namespace package: only a folder named like the package (a test folder
        # called torch, say) was found on sys.path.
        raise _missing(module, extra, shadow=list(getattr(mod, "__path__", [])))
    return mod


def _missing(module: str, extra: str, *, shadow: list[str] | None = None) -> MissingExtraError:
    found = f" (only a folder of that name was found: {', '.join(shadow)})" if shadow else ""
    return MissingExtraError(
        f"{module} is required for this feature but is not installed{found}; "
        f"install it with: pip install 'kinodb[{extra}]'"
    )


def _broken(module: str, extra: str, exc: BaseException) -> MissingExtraError:
    top = module.split(".")[0]
    cause = " ".join(str(exc).split()) or type(exc).__name__
    return MissingExtraError(
        f"{module} is installed but fails to import ({type(exc).__name__}: {cause}); upgrade or "
        f"reinstall it for this environment (pip install --upgrade --force-reinstall {top!r}; "
        f"kinodb[{extra}] lists the versions it works with)"
    )
