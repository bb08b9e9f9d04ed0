"""Import optional dependencies on first use, with an actionable error."""

from __future__ import annotations

import contextlib
import importlib
import importlib.machinery
import importlib.util
import os
import re
import sys
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
    cause = f"{type(exc).__name__}: {' '.join(str(exc).split()) or type(exc).__name__}"
    shadow = _shadowing(module, exc)
    if shadow is not None:
        name, path, stdlib = shadow
        what = os.path.dirname(path) if os.path.basename(path).startswith("__init__.") else path
        real = "the standard library's" if stdlib else "the installed"
        return MissingExtraError(
            f"{module} fails to import ({cause}): {what} is imported as {name!r} in place of {real} "
            f"{name!r}, because it is found first on sys.path (which starts with the current "
            f"directory, or the script's); rename {what}"
        )
    return MissingExtraError(
        f"{module} is installed but fails to import ({cause}); upgrade or reinstall it for this "
        f"environment (pip install --upgrade --force-reinstall {_distribution(module)!r}; "
        f"kinodb[{extra}] lists the versions it works with)"
    )


# Distributions of the import names kinodb uses, where the package metadata cannot tell
# (a namespace such as google holds several distributions; a copy installed without metadata).
_DISTRIBUTIONS = {
    "google.protobuf": "protobuf", "grpc": "grpcio", "grpc_tools": "grpcio-tools", "PIL": "pillow",
    "cv2": "opencv-python-headless", "av": "av", "h5py": "h5py", "onnxruntime": "onnxruntime",
    "onnx": "onnx", "yaml": "pyyaml", "pyarrow": "pyarrow", "torch": "torch", "simplejpeg": "simplejpeg",
    "isal": "isal", "matplotlib": "matplotlib", "tqdm": "tqdm", "numpy": "numpy",
}  # fmt: skip


def _distribution(module: str) -> str:
    """The name pip installs ``module`` under (``grpc``: ``grpcio``), from the installed
    packages' metadata, else `_DISTRIBUTIONS`, else the module's top-level name."""
    from importlib import metadata  # deferred, as below: only an import that failed needs them

    top = module.split(".")[0]
    known = _DISTRIBUTIONS.get(module) or _DISTRIBUTIONS.get(top)
    try:
        found = list(dict.fromkeys(metadata.packages_distributions().get(top, [])))
    except Exception:  # unreadable metadata of some other package: the table decides
        found = []
    if len(found) > 1:  # a namespace package (google): the distribution holding this module
        found = [name for name in found if _holds(name, module)] or found
    if len(found) == 1:
        return found[0]
    return known or (found[0] if found else top)


def _holds(distribution: str, module: str) -> bool:
    """Whether ``distribution``'s recorded files include ``module``."""
    from importlib import metadata

    stem = module.replace(".", "/")
    try:
        files = metadata.distribution(distribution).files or []
    except Exception:
        return False
    return any(f.as_posix().startswith(f"{stem}/") or f.as_posix() == f"{stem}.py" for f in files)


def _shadowing(module: str, exc: BaseException) -> tuple[str, str, bool] | None:
    """``(name, file, in the standard library)`` of a module that failed ``module``'s import
    because a file of the same name outside the installed packages (a ``concurrent.py`` in
    the current directory) was imported in place of an installed one; None if nothing
    points at one."""
    text = str(exc)
    names = re.findall(r"'([A-Za-z_][\w.]*)' is not a package", text)
    names += re.findall(r"from '([A-Za-z_][\w.]*)' \(", text)  # cannot import name X from 'Y' (file)
    failed = exc.name if isinstance(exc, ImportError) and exc.name else ""
    for dotted in (module, failed):
        parts = dotted.split(".") if dotted else []
        names += [".".join(parts[: i + 1]) for i in range(len(parts))]
    for name in dict.fromkeys(names):
        path = _module_file(name)
        if path is None or _installed(path):
            continue
        copy = _installed_copy(name)
        if copy is not None:
            return name, path, _under(copy, _stdlib_roots()) and not _in_site_packages(copy)
    return None


def _module_file(name: str) -> str | None:
    """The file module ``name`` was (or would be) imported from, without importing it anew."""
    mod = sys.modules.get(name)
    if mod is not None:
        found = getattr(mod, "__file__", None)
        return os.path.abspath(found) if isinstance(found, str) else None
    parent = name.rpartition(".")[0]
    if parent and parent not in sys.modules:
        return None
    try:
        spec = importlib.util.find_spec(name)
    except Exception:  # a parent that fails to import, a broken finder
        return None
    if spec is None or not spec.has_location or not spec.origin:
        return None
    return os.path.abspath(spec.origin)


def _stdlib_roots() -> list[str]:
    import sysconfig

    paths = sysconfig.get_paths()
    return list(dict.fromkeys(os.path.realpath(paths[k]) for k in ("stdlib", "platstdlib") if k in paths))


def _install_roots() -> list[str]:
    """The folders installed modules live in: the standard library and site-packages."""
    import site
    import sysconfig

    paths = sysconfig.get_paths()
    roots = _stdlib_roots() + [paths[k] for k in ("purelib", "platlib") if k in paths]
    with contextlib.suppress(Exception):  # site's functions are missing in some embedded Pythons
        roots += [*site.getsitepackages(), site.getusersitepackages()]
    return list(dict.fromkeys(os.path.realpath(r) for r in roots))


def _under(path: str, roots: list[str]) -> bool:
    real = os.path.realpath(path)
    return any(real.startswith(root + os.sep) for root in roots)


def _in_site_packages(path: str) -> bool:
    return bool(set(os.path.realpath(path).split(os.sep)) & {"site-packages", "dist-packages"})


def _installed(path: str) -> bool:
    """Whether ``path`` lies in the standard library or in a site-packages folder."""
    return _in_site_packages(path) or _under(path, _install_roots())


def _installed_copy(name: str) -> str | None:
    """Where the standard library or site-packages holds a module ``name`` (found there by
    the path finder, not imported), or None."""
    paths = _install_roots()
    parts = name.split(".")
    for i in range(len(parts)):
        try:
            spec = importlib.machinery.PathFinder.find_spec(".".join(parts[: i + 1]), paths)
        except Exception:  # an unreadable folder
            return None
        if spec is None:
            return None
        locations = list(spec.submodule_search_locations or [])
        if i == len(parts) - 1:
            if spec.has_location and spec.origin:
                return spec.origin
            return locations[0] if locations else None
        if not locations:
            return None
        paths = locations
    return None
