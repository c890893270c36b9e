"""A persistent cache of VLM generations, so that a rerun asks no question twice.

An entry's key is the SHA-256 of the backend's model id, its output-affecting settings, the prompt
and the images; its value is the answer text exactly as the backend returned it. Entries persist
into the analysis store (group ``vlm_generations``: string arrays ``keys`` and ``answers``) or into
a JSON file. Requests and answers hold no credentials, so none can reach the cache.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Iterable

import h5py
import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    from ...store.store import AnalysisStore
    from .base import VLMRequest

logger = logging.getLogger(__name__)

#: Store group that holds the generations.
STORE_GROUP = "vlm_generations"
#: Bumped when the key derivation changes (old entries then simply miss).
KEY_VERSION = 1


def _update(digest: "hashlib._Hash", part: bytes) -> None:
    # Length-prefixed, so that no two different part sequences hash alike.
    digest.update(len(part).to_bytes(8, "little"))
    digest.update(part)


def generation_key(model_id: str, request: "VLMRequest", settings: dict | None = None) -> str:
    """The cache key of one request to one model.

    Parameters
    ----------
    model_id : the backend's model id.
    request : prompt and images.
    settings : output-affecting generation settings of the backend (e.g. ``max_new_tokens``).

    Returns
    -------
    str
        Hex SHA-256 over the key version, ``model_id``, ``settings`` (canonical JSON), the prompt, and,
        per image, its mode, size and decoded pixel bytes. Pixels rather than an encoded PNG, because
        PNG bytes depend on the Pillow/zlib version and would make keys silently miss after an upgrade.
    """
    digest = hashlib.sha256()
    _update(digest, f"crp_csp.vlm.generation/{KEY_VERSION}".encode())
    _update(digest, str(model_id).encode("utf-8"))
    _update(digest, json.dumps(settings or {}, sort_keys=True, default=str).encode("utf-8"))
    _update(digest, request.prompt.encode("utf-8"))
    _update(digest, str(len(request.images)).encode())
    for image in request.images:
        image.load()
        _update(digest, f"{image.mode}:{image.size[0]}x{image.size[1]}".encode())
        _update(digest, image.tobytes())
    return digest.hexdigest()


class GenerationCache:
    """Cache of generations, in memory, persisted to an analysis store or a JSON file.

    Parameters
    ----------
    target : an :class:`~crp_csp.store.AnalysisStore` (entries go into its group ``vlm_generations``),
        the path of an existing ``.h5``/``.hdf5`` analysis store, the path of a JSON file (created on
        the first save), or None for a cache that lives in memory only.

    Notes
    -----
    :meth:`save` writes all new entries at once (``propose_candidates`` calls it once per call), merging
    them with what the file holds by then, so that concurrent or earlier runs lose nothing.
    """

    def __init__(self, target: "AnalysisStore | str | os.PathLike | None" = None):
        from ...store.store import AnalysisStore

        self.store: AnalysisStore | None = None
        self.json_path: Path | None = None
        if isinstance(target, AnalysisStore):
            self.store = target
        elif target is not None:
            path = Path(target)
            if path.suffix.lower() in (".h5", ".hdf5"):
                self.store = AnalysisStore(path)
            else:
                self.json_path = path
        self._entries: dict[str, str] = self._load()
        self._pending: dict[str, str] = {}

    @classmethod
    def from_store(cls, store: "AnalysisStore") -> "GenerationCache":
        """A cache persisted in ``store``'s group ``vlm_generations``."""
        return cls(store)

    @classmethod
    def from_json(cls, path: str | os.PathLike) -> "GenerationCache":
        """A cache persisted in the JSON file ``path``."""
        cache = cls(None)
        cache.json_path = Path(path)
        cache._entries = cache._load()
        return cache

    def __repr__(self) -> str:
        where = self.store.path if self.store is not None else self.json_path
        return f"GenerationCache({str(where) if where else 'memory'!r}, entries={len(self)}, unsaved={len(self._pending)})"

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: str) -> bool:
        return key in self._entries

    def key(self, model_id: str, request: "VLMRequest", settings: dict | None = None) -> str:
        """See :func:`generation_key`."""
        return generation_key(model_id, request, settings)

    def get(self, key: str) -> str | None:
        """The cached answer under ``key``, or None."""
        return self._entries.get(key)

    def put(self, key: str, answer: str) -> None:
        """Remember ``answer`` under ``key`` (persisted on the next :meth:`save`)."""
        if not isinstance(answer, str):
            raise TypeError(f"a cached answer is a str, got {type(answer).__name__}")
        self._entries[key] = answer
        self._pending[key] = answer

    @property
    def unsaved(self) -> int:
        """Entries added since the last save."""
        return len(self._pending)

    # persistence -----------------------------------------------------------------------------------

    def _load(self) -> dict[str, str]:
        if self.store is not None:
            return self._load_store()
        if self.json_path is not None:
            return self._load_json()
        return {}

    def _load_store(self) -> dict[str, str]:
        assert self.store is not None
        if not self.store.has(STORE_GROUP):
            return {}
        arrays, _ = self.store.read_group(STORE_GROUP)
        keys, answers = arrays.get("keys"), arrays.get("answers")
        if keys is None or answers is None or len(keys) != len(answers):
            raise ValueError(
                f"group {STORE_GROUP!r} of {self.store.path} is not a generation cache (needs equal-length "
                "'keys' and 'answers'); delete the group to start afresh"
            )
        return {_text(key): _text(answer) for key, answer in zip(keys, answers)}

    def _load_json(self) -> dict[str, str]:
        assert self.json_path is not None
        if not self.json_path.exists():
            return {}
        try:
            data = json.loads(self.json_path.read_text(encoding="utf-8"))
            entries = data["entries"]
        except (ValueError, KeyError, TypeError) as error:
            raise ValueError(f"{self.json_path} is not a generation cache ({error}); delete it to start afresh") from None
        if not isinstance(entries, dict) or not all(isinstance(v, str) for v in entries.values()):
            raise ValueError(f"{self.json_path} is not a generation cache (entries must map keys to strings)")
        return dict(entries)

    def save(self) -> int:
        """Persist the entries added since the last save, merged with what the target holds now.

        Returns
        -------
        int
            Number of entries written (0 when nothing was new or the cache is memory-only).
        """
        if self.store is None and self.json_path is None:
            self._pending.clear()
            return 0
        if not self._pending:
            return 0
        merged = self._load()
        merged.update(self._pending)
        if self.store is not None:
            keys = sorted(merged)
            string = h5py.string_dtype(encoding="utf-8")
            self.store.write_group(
                STORE_GROUP,
                {"keys": np.array(keys, dtype=string), "answers": np.array([merged[k] for k in keys], dtype=string)},
                {"key_version": KEY_VERSION, "description": "VLM generations: sha256 key -> answer text"},
            )
        else:
            assert self.json_path is not None
            _write_json_atomic(self.json_path, {"key_version": KEY_VERSION, "entries": merged})
        written = len(self._pending)
        logger.debug("saved %d new VLM generations (%d in all)", written, len(merged))
        self._entries = merged
        self._pending.clear()
        return written

    def update(self, items: Iterable[tuple[str, str]]) -> None:
        """:meth:`put` every (key, answer) pair."""
        for key, answer in items:
            self.put(key, answer)


def _text(value) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def _write_json_atomic(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(temporary, "w", encoding="utf-8") as handle:
            json.dump(data, handle, ensure_ascii=False, indent=0, sort_keys=True)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    finally:
        if temporary.exists():
            temporary.unlink()
