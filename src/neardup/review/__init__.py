"""The review web app (``neardup review``) and the static one-file report (``neardup report``).

>>> from neardup.review import create_app, write_report      # doctest: +SKIP
>>> app = create_app("cat.duckdb")                             # serve with uvicorn on 127.0.0.1
"""

from __future__ import annotations

from .app import create_app
from .report import write_report

__all__ = ["create_app", "write_report"]
