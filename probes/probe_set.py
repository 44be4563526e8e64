"""Probe sets: versioned, declarative prompt sets (TOML files in probes/sets/), identified by content hash."""

from __future__ import annotations

import hashlib
import json
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path

from probes.likelihood import LikelihoodSpec, RecoverySpec

SETS_DIR = Path(__file__).resolve().parent / "sets"
TEMPLATE_SOURCES = ("trigger", "tag", "output_name", "registry")
_MAX_TERM = 80
# A registry snapshot larger than this is cut to its characters nearest the renders before the likelihood
# screen (probes/shortlist.py); a probe set may set its own `index_shortlist` (0: never cut).
INDEX_SHORTLIST = 256


class ProbeSetError(ValueError):
    """A probe set file that is missing or malformed."""


@dataclass(frozen=True)
class Template:
    source: str  # one of TEMPLATE_SOURCES
    text: str  # with "{value}" where the term goes
    limit: int
    seeds: int | None = None  # render at the first N seeds only (None: all); bounds the cost of long lists


@dataclass(frozen=True)
class Probe:
    """One render to make: a prompt and a seed. Base and LoRA renders of the same probe are compared."""

    prompt: str
    seed: int
    source: str  # "generic", a template source, or "steered"
    direction: int | None = None  # steered probes: which of the LoRA's directions is added to the text states
    strength: float = 0.0  # signed, in units of the prompt's own text-state norm

    @property
    def key(self) -> str:
        identity = f"{self.prompt}\0{self.seed}\0{self.direction}\0{self.strength}"
        return hashlib.sha256(identity.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Steering:
    """Probes steered along a LoRA's own cross-attention directions (probes/steering.py)."""

    prompts: tuple[str, ...]
    directions: int
    strengths: tuple[float, ...]  # each used with both signs
    seeds: int


@dataclass(frozen=True)
class ProbeSet:
    name: str
    version: int
    family: str
    width: int
    height: int
    steps: int
    guidance: float
    scheduler: str
    negative_prompt: str
    seeds: tuple[int, ...]
    prompt_seeds: int | None  # generic prompts render at the first N seeds (None: all)
    batch_size: int
    prompts: tuple[str, ...]
    templates: tuple[Template, ...]
    steering: Steering | None
    likelihood: LikelihoodSpec | None
    digest: str  # sha256 of the canonical content: comments and formatting do not change it

    @property
    def id(self) -> str:
        return f"{self.name}-v{self.version}@{self.digest[:12]}"

    def steered_probes(self, directions: int) -> list[Probe]:
        """Generic prompts with each available direction added at each strength, in both signs."""
        if not self.steering:
            return []
        return [Probe(prompt, seed, "steered", index, sign * strength)
                for index in range(min(directions, self.steering.directions))
                for strength in self.steering.strengths for sign in (1, -1)
                for prompt in self.steering.prompts for seed in self.seeds[: self.steering.seeds]]

    def probes(self, terms: dict[str, list[str]] | None = None) -> list[Probe]:
        """The generic prompts, then each template filled with up to `limit` terms, each at every seed."""
        probes = [Probe(text, seed, "generic") for text in self.prompts for seed in self.seeds[: self.prompt_seeds]]
        seen = {text.casefold() for text in self.prompts}
        for template in self.templates:
            for term in _clean_terms((terms or {}).get(template.source, []))[: template.limit]:
                prompt = template.text.replace("{value}", term)
                if prompt.casefold() not in seen:
                    seen.add(prompt.casefold())
                    probes += [Probe(prompt, seed, template.source) for seed in self.seeds[: template.seeds]]
        return probes


def _clean_terms(terms: list[str]) -> list[str]:
    """Terms come from untrusted metadata: one line, bounded length, no duplicates."""
    cleaned, seen = [], set()
    for term in terms:
        term = re.sub(r"\s+", " ", str(term)).strip()[:_MAX_TERM]
        if term and term.casefold() not in seen:
            seen.add(term.casefold())
            cleaned.append(term)
    return cleaned


def _count(entry: dict, key: str, default: int) -> int:
    value = entry.get(key, default)
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ProbeSetError(f"likelihood {key} must be a non-negative integer (0: none), not {value!r}")
    return value


def _positive(value: object, key: str) -> int | None:
    if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
        raise ProbeSetError(f"{key} must be a positive integer, not {value!r}")
    return value


def _flag(entry: dict, key: str) -> bool:
    value = entry.get(key, False)
    if not isinstance(value, bool):
        raise ProbeSetError(f"likelihood {key} must be true or false, not {value!r}")
    return value


def _recovery(entry: object) -> RecoverySpec | None:
    """The [likelihood.recovery] table (probes/recovery.py), absent: no recovery."""
    if entry is None:
        return None
    if not isinstance(entry, dict):
        raise ProbeSetError("likelihood recovery must be a table")
    rate = entry.get("learning_rate", RecoverySpec.learning_rate)
    if not isinstance(rate, (int, float)) or isinstance(rate, bool) or not 0 < rate <= 10:
        raise ProbeSetError(f"likelihood recovery learning_rate must be a number in (0, 10], not {rate!r}")
    return RecoverySpec(_count(entry, "characters", RecoverySpec.characters),
                        _positive(entry.get("tokens", RecoverySpec.tokens), "recovery tokens"),
                        _positive(entry.get("steps", RecoverySpec.steps), "recovery steps"), float(rate))


def _strengths(entry: dict) -> tuple[float, ...]:
    """[likelihood] strengths: the other adapter weights the whole LoRA is measured at (1 always is)."""
    value = entry.get("strengths", [])
    if not isinstance(value, list) or not all(
            isinstance(x, (int, float)) and not isinstance(x, bool) and 0 < x <= 4 and x != 1 for x in value):
        raise ProbeSetError(f"likelihood strengths must be a list of numbers in (0, 4] other than 1, not {value!r}")
    return tuple(sorted({float(x) for x in value}))


def _require(data: dict, key: str, kind: type | tuple[type, ...]):
    value = data.get(key)
    if not isinstance(value, kind) or isinstance(value, bool) and kind is not bool:
        raise ProbeSetError(f"probe set field {key!r} must be {getattr(kind, '__name__', kind)}")
    return value


def parse_probe_set(text: str) -> ProbeSet:
    """Parse and validate a probe set's TOML text."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ProbeSetError(f"not valid TOML: {exc}") from None
    templates = []
    for entry in data.get("templates", []):
        source = _require(entry, "source", str)
        if source not in TEMPLATE_SOURCES:
            raise ProbeSetError(f"template source {source!r} is not one of {', '.join(TEMPLATE_SOURCES)}")
        body = _require(entry, "text", str)
        if "{value}" not in body:
            raise ProbeSetError(f"template {body!r} has no {{value}}")
        templates.append(Template(source, body, int(entry.get("limit", 3)), _positive(entry.get("seeds"), "seeds")))
    seeds = _require(data, "seeds", list)
    prompts = _require(data, "prompts", list)
    if not seeds or not all(isinstance(s, int) for s in seeds):
        raise ProbeSetError("seeds must be a non-empty list of integers")
    if not prompts or not all(isinstance(p, str) and p.strip() for p in prompts):
        raise ProbeSetError("prompts must be a non-empty list of strings")
    steering = None
    if "steering" in data:
        entry = data["steering"]
        strengths = _require(entry, "strengths", list)
        steering = Steering(tuple(_require(entry, "prompts", list)), _require(entry, "directions", int),
                            tuple(float(x) for x in strengths), _positive(entry.get("seeds"), "seeds") or 1)
    likelihood = None
    if "likelihood" in data:
        entry = data["likelihood"]
        timesteps = _require(entry, "timesteps", list)
        if not timesteps or not all(isinstance(t, int) and not isinstance(t, bool) and t >= 0 for t in timesteps):
            raise ProbeSetError("likelihood timesteps must be a non-empty list of non-negative integers")
        prompts_ = _require(entry, "prompts", list)
        if not all(isinstance(p, str) for p in prompts_):
            raise ProbeSetError("likelihood prompts must be strings")
        shortlist, index_shortlist = _count(entry, "shortlist", 0), _count(entry, "index_shortlist", INDEX_SHORTLIST)
        references = _positive(entry.get("references", 8), "references")
        screen = _positive(entry.get("screen_references", 2), "screen_references")
        if screen > references:
            raise ProbeSetError("likelihood screen_references cannot exceed references")
        likelihood = LikelihoodSpec(tuple(prompts_), tuple(timesteps), int(entry.get("noise_seed", 0)),
                                    int(entry.get("triggers", 3)), references,
                                    _positive(entry.get("batch", 32), "batch"), shortlist, screen, index_shortlist,
                                    _recovery(entry.get("recovery")), _flag(entry, "blocks"), _strengths(entry))
    canonical = json.dumps(data, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return ProbeSet(
        name=_require(data, "name", str),
        version=_require(data, "version", int),
        family=_require(data, "family", str),
        width=_require(data, "width", int),
        height=_require(data, "height", int),
        steps=_require(data, "steps", int),
        guidance=float(_require(data, "guidance", (int, float))),
        scheduler=_require(data, "scheduler", str),
        negative_prompt=data.get("negative_prompt", ""),
        seeds=tuple(seeds),
        prompt_seeds=_positive(data.get("prompt_seeds"), "prompt_seeds"),
        batch_size=int(data.get("batch_size", 8)),
        prompts=tuple(prompts),
        templates=tuple(templates),
        steering=steering,
        likelihood=likelihood,
        digest=hashlib.sha256(canonical.encode()).hexdigest(),
    )


def load_probe_set(name_or_path: str | Path) -> ProbeSet:
    """Load a probe set by file path, or by name ("fixture-v1") from probes/sets/."""
    path = Path(name_or_path)
    if not path.suffix:
        path = SETS_DIR / f"{name_or_path}.toml"
    try:
        return parse_probe_set(path.read_text())
    except OSError as exc:
        raise ProbeSetError(f"cannot read probe set {name_or_path}: {exc.strerror}") from None


def probe_set_for_family(family: str) -> ProbeSet | None:
    """The newest probe set shipped for a base family, if any."""
    candidates = [load_probe_set(path) for path in sorted(SETS_DIR.glob("*.toml"))]
    matching = [s for s in candidates if s.family == family]
    return max(matching, key=lambda s: s.version) if matching else None
