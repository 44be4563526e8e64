"""Turn a LoRA's untrusted __metadata__ (kohya ss_*, modelspec.*) into a typed record, field by field."""

from __future__ import annotations

import json
import math
from collections import Counter
from dataclasses import asdict, dataclass, field

_MODELSPEC = {
    "title": "modelspec.title", "architecture": "modelspec.architecture", "author": "modelspec.author",
    "description": "modelspec.description", "license": "modelspec.license", "date": "modelspec.date",
    "usage_hint": "modelspec.usage_hint",
}
_KOHYA_TEXT = {
    "output_name": "ss_output_name", "network_module": "ss_network_module",
    "base_model_version": "ss_base_model_version", "base_model_name": "ss_sd_model_name",
    "training_comment": "ss_training_comment", "session_id": "ss_session_id",
    "resolution": "ss_resolution", "claimed_model_hash": "sshs_model_hash",
}
_KOHYA_INT = {"network_dim": "ss_network_dim", "num_train_images": "ss_num_train_images",
              "epochs": "ss_num_epochs", "steps": "ss_max_train_steps"}
_MAX_TAGS = 50
_MAX_DEPTH = 16  # nested JSON in metadata deeper than this is kept raw: nothing legitimate nests so deep


@dataclass
class LoraMetadata:
    """What a LoRA says about itself. Every field may be a lie; parse failures become warnings, not refusals."""

    title: str | None = None
    output_name: str | None = None
    trigger_phrases: list[str] = field(default_factory=list)
    tags: list[str] = field(default_factory=list)
    architecture: str | None = None
    author: str | None = None
    description: str | None = None
    license: str | None = None
    date: str | None = None
    usage_hint: str | None = None
    network_module: str | None = None
    network_dim: int | None = None
    network_alpha: float | None = None
    network_args: dict | None = None
    base_model_version: str | None = None
    base_model_name: str | None = None
    training_comment: str | None = None
    session_id: str | None = None
    resolution: str | None = None
    num_train_images: int | None = None
    epochs: int | None = None
    steps: int | None = None
    claimed_model_hash: str | None = None
    tag_frequency: dict[str, dict[str, int]] = field(default_factory=dict)
    top_tags: list[tuple[str, int]] = field(default_factory=list)
    dataset_dirs: dict[str, dict] = field(default_factory=dict)
    other: dict[str, str] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)

    def texts(self) -> list[str]:
        """Every human-written string a screener should read (names, titles, triggers, tags, folders)."""
        values = [self.title, self.output_name, self.description, self.usage_hint, self.training_comment,
                  *self.trigger_phrases, *self.tags, *self.dataset_dirs, *(t for t, _ in self.top_tags)]
        return [v for v in values if v]


def _split_list(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def _refuse_constant(name: str) -> None:
    raise ValueError(f"{name} is not valid JSON")


def _depth(value: object) -> int:
    depth, level = 0, [value]
    while level:
        depth += 1
        level = [child for item in level if isinstance(item, dict | list)
                 for child in (item.values() if isinstance(item, dict) else item)]
        if depth > _MAX_DEPTH:
            break
    return depth


def _json(raw: str, key: str, warnings: list[str]) -> object:
    try:
        value = json.loads(raw, parse_constant=_refuse_constant)
        # Some trainers double-encode: a JSON string that holds JSON.
        if isinstance(value, str):
            value = json.loads(value, parse_constant=_refuse_constant)
    except (ValueError, RecursionError):
        warnings.append(f"{key} is not valid JSON; kept raw")
        return None
    if _depth(value) > _MAX_DEPTH:
        warnings.append(f"{key} nests deeper than {_MAX_DEPTH} levels; kept raw")
        return None
    return value


def _tag_frequency(raw: str, warnings: list[str]) -> dict[str, dict[str, int]]:
    parsed = _json(raw, "ss_tag_frequency", warnings)
    if parsed is None:
        return {}
    if not isinstance(parsed, dict):
        warnings.append("ss_tag_frequency is not an object")
        return {}
    result: dict[str, dict[str, int]] = {}
    for folder, tags in parsed.items():
        if not isinstance(tags, dict):
            warnings.append(f"ss_tag_frequency[{folder[:40]!r}] is not an object")
            continue
        result[str(folder)] = {
            str(tag).strip(): count for tag, count in tags.items()
            if isinstance(count, int) and not isinstance(count, bool) and count > 0
        }
    return result


def parse_metadata(raw: dict[str, str]) -> LoraMetadata:
    """Extract the known fields; keep everything else raw under `other`."""
    meta = LoraMetadata()
    warnings = meta.warnings
    used = set()
    for attr, key in {**_MODELSPEC, **_KOHYA_TEXT}.items():
        if raw.get(key, "").strip():
            setattr(meta, attr, raw[key])
            used.add(key)
    for attr, key in _KOHYA_INT.items():
        if key in raw:
            used.add(key)
            try:
                setattr(meta, attr, int(float(raw[key])))
            except (ValueError, OverflowError):
                warnings.append(f"{key}={raw[key][:40]!r} is not a number")
    if "ss_network_alpha" in raw:
        used.add("ss_network_alpha")
        try:
            meta.network_alpha = float(raw["ss_network_alpha"])
            if not math.isfinite(meta.network_alpha):
                raise ValueError
        except ValueError:
            meta.network_alpha = None
            warnings.append(f"ss_network_alpha={raw['ss_network_alpha'][:40]!r} is not a finite number")
    if "ss_network_args" in raw:
        used.add("ss_network_args")
        args = _json(raw["ss_network_args"], "ss_network_args", warnings)
        meta.network_args = args if isinstance(args, dict) else None
    if raw.get("modelspec.trigger_phrase"):
        used.add("modelspec.trigger_phrase")
        meta.trigger_phrases = _split_list(raw["modelspec.trigger_phrase"])
    if raw.get("modelspec.tags"):
        used.add("modelspec.tags")
        meta.tags = _split_list(raw["modelspec.tags"])
    if "ss_tag_frequency" in raw:
        used.add("ss_tag_frequency")
        meta.tag_frequency = _tag_frequency(raw["ss_tag_frequency"], warnings)
        totals: Counter[str] = Counter()
        for tags in meta.tag_frequency.values():
            totals.update(tags)
        meta.top_tags = totals.most_common(_MAX_TAGS)
    if "ss_dataset_dirs" in raw:
        used.add("ss_dataset_dirs")
        dirs = _json(raw["ss_dataset_dirs"], "ss_dataset_dirs", warnings)
        if isinstance(dirs, dict):
            meta.dataset_dirs = {str(k): v for k, v in dirs.items() if isinstance(v, dict)}
    meta.other = {k: v for k, v in raw.items() if k not in used}
    return meta
