import os
import sys

sys.path.insert(0, os.path.dirname(__file__))

import pytest  # noqa: E402


@pytest.fixture
def db(tmp_path):
    return tmp_path / "cat.duckdb"
