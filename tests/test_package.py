"""``import kinodb`` loads only the standard library; its public names load on first use."""

from __future__ import annotations

import subprocess
import sys


def _run(code: str) -> str:
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.strip()


def test_import_kinodb_and_the_cli_entry_load_no_numpy() -> None:
    # What the console scripts import before their Ctrl-C handling starts.
    code = "import sys, kinodb, kinodb._cli.main; print('numpy' in sys.modules)"
    assert _run(code) == "False"


def test_every_public_name_loads_on_first_use() -> None:
    code = (
        "import kinodb\n"
        "ns = {}\n"
        "exec('from kinodb import *', ns)\n"
        "print(sorted(k for k in ns if not k.startswith('__')) == sorted(n for n in kinodb.__all__ "
        "if not n.startswith('__')), callable(kinodb.open), kinodb.Database.__name__)"
    )
    assert _run(code) == "True True Database"


def test_kinodb_merge_stays_the_function_when_its_module_loads() -> None:
    for first in ("import kinodb.merge", "from kinodb.merge import merge", "import kinodb; kinodb.merge"):
        code = f"{first}\nimport kinodb, kinodb.merge, types\nprint(type(kinodb.merge).__name__)"
        assert _run(code) == "function", first


def test_an_unknown_name_is_an_attribute_error() -> None:
    code = "import kinodb\ntry:\n    kinodb.nope\nexcept AttributeError as e:\n    print(e)"
    assert _run(code) == "module 'kinodb' has no attribute 'nope'"


def test_the_documented_submodules_load_as_attributes() -> None:
    # The docs call kinodb.ingest.ingest(...), kinodb.export.export(...) and kinodb.kql.parse(...)
    # after a plain `import kinodb`.
    code = (
        "import kinodb\n"
        "print(callable(kinodb.ingest.ingest), callable(kinodb.ingest.verify), callable(kinodb.export.export), "
        "callable(kinodb.kql.parse))"
    )
    assert _run(code) == "True True True True"
