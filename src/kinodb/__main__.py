"""``python -m kinodb``: the ``kino`` command line."""

from __future__ import annotations

from kinodb._cli.main import entry

if __name__ == "__main__":
    entry()
