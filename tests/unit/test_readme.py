"""The README's configuration table names every setting, and only real ones."""

from __future__ import annotations

import re
from pathlib import Path

from streamrec.config import Settings

README = Path(__file__).resolve().parents[2] / "README.md"


def test_configuration_table_matches_settings():
    names = set(re.findall(r"^\| `STREAMREC_([A-Z_]+)` \|", README.read_text(), flags=re.M))
    fields = {f.upper() for f in Settings.model_fields}
    assert fields - names == set(), "settings missing from the README table"
    assert names - fields <= {"LOG_LEVEL"}, "README documents settings that do not exist"


def test_quick_start_commands_exist():
    text = README.read_text()
    makefile = (README.parent / "Makefile").read_text()
    for target in ("demo", "test"):
        assert f"make {target}" in text
        assert re.search(rf"^{target}:", makefile, flags=re.M)
