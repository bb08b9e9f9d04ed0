"""Import optional dependencies on first use, with an actionable error."""

from __future__ import annotations

import importlib
from types import ModuleType

from kinodb.errors import MissingExtraError


def require(module: str, *, extra: str) -> ModuleType:
    """Import ``module`` or raise `MissingExtraError` naming the pip extra to install."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingExtraError(
            f"{module} is required for this feature but is not installed; "
            f"install it with: pip install 'kinodb[{extra}]'"
        ) from exc
