"""Defaults shared by the library and the command line, in a module that imports nothing.

The command line shows these in ``--help`` without importing the catalog (DuckDB, numpy,
pyarrow) or the policy kernels (numba), so that help and read-only commands start at once.
:mod:`neardup.catalog` and :mod:`neardup.policy` re-export them; this is the one definition.
"""

#: The catalog file a command opens when no ``--db`` is given.
DEFAULT_DB = "neardup.duckdb"

#: Quality keys of the default master policy, in order (see :mod:`neardup.policy`).
QUALITY_POLICY = "border,content,jpeg_quality,central,colour,sharpness,clipped"
#: The default master policy: the seed's score first, then quality, then brightness (the seed's last
#: key), then the oldest file (byte-identical copies tie on everything else; the copy is the later file).
DEFAULT_POLICY = f"score,{QUALITY_POLICY},brightness,modified"
