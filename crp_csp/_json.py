"""Writing result objects as JSON."""
from __future__ import annotations

import json
import os


def dump_json(data, path: str | os.PathLike | None = None) -> str:
    """``data`` as indented JSON text, also written to ``path`` when given."""
    text = json.dumps(data, indent=1)
    if path is not None:
        with open(path, "w", encoding="utf-8") as handle:
            handle.write(text)
    return text
