"""LLaMA-Factory's `dataset_info.json` registry, so its users' data folders load unchanged.

Each entry names a local file (`file_name`, relative to the registry's folder and inside it: absolute paths and `..`
are refused; a folder means every data file in it), its `formatting` (alpaca | sharegpt), a `columns` mapping,
sharegpt `tags` and `ranking` (preference pairs).
Entries that live only on a hub (`hf_hub_url`, `ms_hub_url`, `om_hub_url`, `script_url`, `cloud_file_name`) raise
`NotSupportedError`: chatforge never downloads. Multimodal columns (images/videos/audios) are not supported either.

How an entry maps to chatforge formats:
- alpaca entries whose columns map only `prompt` (no `response`), and `.txt` files, are raw text (pretraining),
  one document per line/record — e.g. `wiki_demo`, `c4_demo`;
- alpaca with `ranking` -> preference pairs from instruction/input + chosen/rejected strings;
- sharegpt -> conversations (tags decide the role/content keys), with `ranking` -> preference pairs;
- a `kto_tag` column is kept per conversation in `meta["kto_label"]`.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath, PureWindowsPath

from chatforge.data.formats import COLUMN_KEYS, MULTIMODAL_KEYS, TAG_KEYS, Layout
from chatforge.errors import ChatforgeError, DataError, NotSupportedError

HUB_KEYS = ("hf_hub_url", "ms_hub_url", "om_hub_url", "script_url", "cloud_file_name")
KNOWN_KEYS = {"file_name", "formatting", "ranking", "columns", "tags", "split", "subset", "folder", "num_samples"}
KNOWN_KEYS |= set(HUB_KEYS) | {"file_sha1"}


@dataclass
class DatasetSpec:
    """One registry entry, as written in dataset_info.json (paths resolved against the registry's folder)."""

    name: str
    registry: Path  # the dataset_info.json it came from
    file_name: str | None = None
    formatting: str = "alpaca"
    ranking: bool = False
    columns: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    hub: dict[str, str] = field(default_factory=dict)  # hub/script sources, which chatforge does not fetch

    @property
    def path(self) -> Path | None:
        return self.registry.parent / self.file_name if self.file_name else None

    def files(self) -> list[Path]:
        """The local files of this dataset; NotSupportedError for hub-only entries, ChatforgeError if missing."""
        path = self.path
        if path is None or not path.exists():
            if self.hub:
                sources = ", ".join(f"{k}={v}" for k, v in self.hub.items())
                missing = f" and its file {path} is absent" if path else ""
                raise NotSupportedError(
                    f"dataset {self.name!r} in {self.registry} lives on a hub ({sources}){missing}; chatforge does "
                    "not download datasets: download the file yourself and set file_name to it"
                )
            if path is None:
                raise ChatforgeError(f"dataset {self.name!r} in {self.registry} has no file_name")
            raise ChatforgeError(f"dataset {self.name!r} in {self.registry}: file {path} does not exist")
        if path.is_dir():
            from chatforge.data.readers import EXTENSIONS, _ext

            files = sorted(p for p in path.rglob("*") if p.is_file() and _ext(p) in EXTENSIONS)
            if not files:
                raise ChatforgeError(f"dataset {self.name!r}: folder {path} holds no .json/.jsonl/.txt files")
            return files
        return [path]

    def layout(self, overrides: dict[str, str] | None = None) -> Layout:
        """The chatforge format and column mapping this entry means (see the module docstring)."""
        multimodal = sorted(set(self.columns) & set(MULTIMODAL_KEYS))
        if multimodal:
            raise NotSupportedError(
                f"dataset {self.name!r} has {', '.join(multimodal)} columns; chatforge trains text-only models"
            )
        columns = {**self.columns, **(overrides or {})}
        path = self.path
        is_text = path is not None and path.suffix.lower() == ".txt" and not path.is_dir()
        if self.formatting == "alpaca" and not self.ranking and set(columns) == {"prompt"}:
            is_text = True
        if is_text:
            return Layout.make("text", {"prompt": columns.get("prompt", "text")})
        if self.formatting == "sharegpt":
            return Layout.make("sharegpt", {**columns, **self.tags}, ranking=self.ranking)
        return Layout.make("alpaca", columns, ranking=self.ranking)


def load_dataset_info(path: str | Path, *, root: str | Path | None = None) -> dict[str, DatasetSpec]:
    """Parse dataset_info.json (the file, or the folder holding it) into DatasetSpecs, checking every entry.

    Every `file_name` must lie inside `root` (LLaMA-Factory's dataset_dir; default: the registry's own folder), so a
    registry from elsewhere cannot make chatforge read arbitrary files; absolute paths are refused.
    """
    path = Path(path)
    if path.is_dir():
        path = path / "dataset_info.json"
    if root is not None and not Path(root).is_dir():
        raise ChatforgeError(f"data.dataset_dir {root} is not a folder")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ChatforgeError(f"{path}: no such dataset_info.json") from None
    except json.JSONDecodeError as e:
        raise DataError(f"malformed JSON: {e.msg}", file=str(path), line=e.lineno, reason="malformed_json") from None
    except UnicodeDecodeError as e:
        raise DataError(f"not UTF-8 text ({e.reason} at byte {e.start})", file=str(path), reason="encoding") from None
    except (RecursionError, ValueError) as e:
        what = "nested too deeply" if isinstance(e, RecursionError) else str(e).split(":")[0]
        raise DataError(f"cannot parse JSON: {what}", file=str(path), reason="malformed_json") from None
    except OSError as e:
        raise ChatforgeError(f"{path}: cannot read: {e.strerror or e}") from None
    if not isinstance(raw, dict):
        raise DataError("dataset_info.json must be an object of name -> entry", file=str(path), reason="wrong_type")
    specs = {}
    for name, entry in raw.items():
        specs[name] = _spec(name, entry, path, Path(root) if root is not None else None)
    return specs


def _spec(name: str, entry: object, registry: Path, root: Path | None = None) -> DatasetSpec:
    def bad(message: str, key: str | None = None) -> DataError:
        return DataError(message, file=str(registry), field=f"{name}.{key}" if key else name, reason="dataset_info")

    if not isinstance(entry, dict):
        raise bad("an entry must be an object")
    unknown = sorted(set(entry) - KNOWN_KEYS)
    if unknown:
        raise bad(f"unknown key(s) {unknown}; known: {', '.join(sorted(KNOWN_KEYS))}")
    formatting = entry.get("formatting", "alpaca")
    if formatting not in ("alpaca", "sharegpt"):
        raise bad(f"formatting must be 'alpaca' or 'sharegpt', not {formatting!r}", "formatting")
    ranking = entry.get("ranking", False)
    if not isinstance(ranking, bool):
        raise bad(f"ranking must be true/false, not {ranking!r}", "ranking")
    columns = entry.get("columns", {})
    if not isinstance(columns, dict) or not all(isinstance(v, str) for v in columns.values()):
        raise bad("columns must map column keys to field names", "columns")
    unknown = sorted(set(columns) - set(COLUMN_KEYS) - set(MULTIMODAL_KEYS))
    if unknown:
        raise bad(f"unknown column key(s) {unknown}; known: {', '.join(COLUMN_KEYS + MULTIMODAL_KEYS)}", "columns")
    tags = entry.get("tags", {})
    if not isinstance(tags, dict) or not all(isinstance(v, str) for v in tags.values()):
        raise bad("tags must map tag keys to strings", "tags")
    unknown = sorted(set(tags) - set(TAG_KEYS))
    if unknown:
        raise bad(f"unknown tag key(s) {unknown}; known: {', '.join(TAG_KEYS)}", "tags")
    file_name = entry.get("file_name")
    if file_name is not None and not isinstance(file_name, str):
        raise bad("file_name must be a string", "file_name")
    if file_name is not None:
        # Like LLaMA-Factory's dataset_dir, the registry's folder is the data root: an entry may not point outside it
        # (a shared dataset_info.json must not make chatforge read ~/.ssh or ../../anything).
        parts = PurePosixPath(file_name.replace("\\", "/"))
        if parts.is_absolute() or PureWindowsPath(file_name).drive or not file_name.strip():
            raise bad(f"file_name {file_name!r} must be a path relative to the registry's folder", "file_name")
        target = os.path.normpath(os.path.join(os.path.abspath(registry.parent), str(parts)))
        base = os.path.abspath(root if root is not None else registry.parent)
        if os.path.commonpath([target, base]) != base:
            where = f"data.dataset_dir {root}" if root is not None else f"the registry's folder {registry.parent}"
            hint = "" if root is not None else " (set data.dataset_dir to a folder holding both to allow it)"
            raise bad(f"file_name {file_name!r} points outside {where}{hint}", "file_name")
    hub = {k: str(entry[k]) for k in HUB_KEYS if k in entry}
    if file_name is None and not hub:
        raise bad("an entry needs file_name (or a hub url)")
    return DatasetSpec(name, registry, file_name, formatting, ranking, dict(columns), dict(tags), hub)
