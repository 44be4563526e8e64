"""Turn evidence into a verdict: allow, quarantine or block, with every reason listed.

The policy is data: a character's rights holder chooses block or quarantine for clear matches.
Uncertain evidence goes to quarantine for a person, never silently to allow or to block.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import StrEnum

from gate.detection.matching import CharacterMatch, Thresholds
from gate.detection.screening import NameHit
from gate.detection.sensitivity import effect, read_at, residuals
from probes.likelihood import CharacterGain

_PAST = {"block": "blocked", "quarantine": "quarantined"}


class Verdict(StrEnum):
    ALLOW = "allow"
    QUARANTINE = "quarantine"
    BLOCK = "block"

    @property
    def severity(self) -> int:
        return {"allow": 0, "quarantine": 1, "block": 2}[self.value]


@dataclass
class Reason:
    kind: str  # blocklist, visual_match, likelihood_match, metadata_name, not_probed, nothing_shown, ...
    verdict: Verdict
    message: str
    character_id: str | None = None
    details: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"kind": self.kind, "verdict": str(self.verdict), "character": self.character_id,
                "message": self.message, **self.details}


@dataclass
class Decision:
    verdict: Verdict
    reasons: list[Reason]

    def to_dict(self) -> dict:
        return {"verdict": str(self.verdict), "reasons": [r.to_dict() for r in self.reasons]}


@dataclass(frozen=True)
class CharacterPolicy:
    character_id: str
    name: str
    policy: Verdict  # block or quarantine


def decide(
    *,
    matches: list[CharacterMatch],
    name_hits: list[NameHit],
    characters: dict[str, CharacterPolicy],
    thresholds: Thresholds,
    blocklisted: str | None = None,
    not_probed: str | None = None,
    not_probed_verdict: Verdict = Verdict.QUARANTINE,
    cleared: frozenset[str] | set[str] = frozenset(),
    likelihood: list[CharacterGain] | tuple[CharacterGain, ...] = (),
    near_duplicates: Sequence = (),
    repeat_offender: dict | None = None,
    undeclared_trigger: bool = False,
    probed: bool = True,
    previews: Sequence[Reason] = (),
) -> Decision:
    """Combine every signal into one verdict, keeping every reason: the blocklist, what could not be probed,
    render matches, likelihood gains and names; then repeat infringement (near-duplicates of flagged LoRAs, an
    uploader's history), which a moderator's earlier clearing does not lift.

    `probed` is False for a LoRA decided without rendering (the blocklist, a repeat): no reason then says what
    a probe did or did not show. A name alone allows, unless the LoRA also adapts the text encoder without
    declaring a trigger (`undeclared_trigger`): then the probes may never have said the word that switches it
    on, and the name is a strong hint with missing evidence, so a person looks (quarantine, never block).
    `previews`: reasons from the upload's preview images, judged as a set (gate.images.previews)."""
    reasons: list[Reason] = []
    if blocklisted:
        reasons.append(
            Reason("blocklist", Verdict.BLOCK, f"the tensor content matches a blocked upload ({blocklisted})")
        )
    if not_probed:
        reasons.append(Reason("not_probed", not_probed_verdict, f"could not be probed: {not_probed}"))

    named: dict[str, list[NameHit]] = {}
    for hit in name_hits:
        named.setdefault(hit.character_id, []).append(hit)
    for match in matches:
        character = characters.get(match.character_id)
        if character is None:
            continue
        hits = named.get(match.character_id)
        quarantine_count, block_count = thresholds.needed_matches(match.rendered)
        needed = 1 if hits else quarantine_count
        strong = match.matched >= block_count and match.best_score >= thresholds.block_score
        if strong:
            verdict, certainty = character.policy, "clear"
        elif match.matched >= needed:
            verdict, certainty = Verdict.QUARANTINE, "possible"
        else:
            continue
        also = f"; its metadata names it too ({_where(hits)})" if hits else ""
        reasons.append(Reason(
            "visual_match", verdict,
            f"{certainty} match with {character.name}: {match.matched} of {match.rendered} probe renders, "
            f"best similarity {match.best_score:.3f} (base {match.best_score - match.best_lift:.3f}){also}",
            match.character_id,
            {"matched": match.matched, "rendered": match.rendered, "best_score": round(match.best_score, 4),
             "best_lift": round(match.best_lift, 4), "certainty": certainty},
        ))
    # A name is told once per character: on its visual reason where there is one, else on its likelihood one.
    told = {r.character_id for r in reasons if r.kind == "visual_match" and named.get(r.character_id)}
    reasons += _likelihood_reasons(likelihood, characters, thresholds,
                                   {cid: hits for cid, hits in named.items() if cid not in told})
    seen_visual = {r.character_id for r in reasons if r.kind in ("visual_match", "likelihood_match")}
    for character_id, hits in named.items():
        if character_id in seen_visual or character_id not in characters:
            continue
        name = characters[character_id].name
        details = {"fields": [hit.field for hit in hits], "alias": hits[0].name}
        if not probed:
            reasons.append(Reason("metadata_name", Verdict.ALLOW,
                                  f"metadata names {name} ({_where(hits)}); no probe ran, the file was decided "
                                  "without rendering", character_id, details))
            continue
        if undeclared_trigger:
            reasons.append(Reason(
                "metadata_name", Verdict.QUARANTINE,
                f"metadata names {name} ({_where(hits)}) and the LoRA adapts the text encoder without declaring a "
                "trigger: no probe render shows it, but the probes may never have said the word that draws it",
                character_id, {**details, "undeclared_trigger": True},
            ))
            continue
        reasons.append(Reason(
            "metadata_name", Verdict.ALLOW,
            f"metadata names {name} ({_where(hits)}) but no probe render shows it", character_id, details,
        ))
    reasons += previews  # what the hub's preview images show (gate.images.previews), probes or not
    _apply_cleared(reasons, cleared)
    reasons += _repeat_reasons(near_duplicates, repeat_offender)
    if probed and not any(r.verdict != Verdict.ALLOW or r.kind != "metadata_name" for r in reasons):
        reasons.append(_nothing_shown(matches, likelihood, characters, thresholds))
    verdict = max((r.verdict for r in reasons), key=lambda v: v.severity, default=Verdict.ALLOW)
    return Decision(verdict, reasons)


def _nothing_shown(matches, likelihood, characters: dict[str, CharacterPolicy], thresholds: Thresholds) -> Reason:
    """An allowed LoRA's own reason: what the probes found, measured against what it would have taken."""
    quarantine_count, _ = thresholds.needed_matches(matches[0].rendered) if matches else (
        thresholds.quarantine_matches, 0)
    parts = []
    known = [m for m in matches if m.character_id in characters]
    if known:
        top = known[0]
        parts.append(f"at most {top.matched} of {top.rendered} probe renders matched one character "
                     f"({characters[top.character_id].name}), where {quarantine_count} are needed")
    else:
        parts.append(f"no probe render matched a character (a render matches from similarity "
                     f"{thresholds.render_score:.3f}, {thresholds.lift:.3f} above its base render)")
    gains = [g for g in likelihood if g.character_id in characters and not g.screened]
    if gains and thresholds.likelihood_quarantine is not None:
        top = max(gains, key=lambda g: g.gain)
        parts.append(f"the strongest likelihood gain is {top.gain:+.1%} for {characters[top.character_id].name} "
                     f"(a gain quarantines from {thresholds.likelihood_quarantine:.1%})")
    details = {"matched": known[0].matched if known else 0, "needed": quarantine_count}
    return Reason("nothing_shown", Verdict.ALLOW, "no registered character shown: " + "; ".join(parts), None,
                  details)


def _likelihood_reasons(gains, characters: dict[str, CharacterPolicy], thresholds: Thresholds,
                        named: dict[str, list[NameHit]]) -> list[Reason]:
    """Characters whose references the LoRA made markedly likelier (probes/likelihood.py)."""
    if thresholds.likelihood_quarantine is None:
        return []
    judged = [(g, *judged_by(g, thresholds)) for g in gains if g.character_id in characters]
    over = [(g, value, quarantine, block, own) for g, value, quarantine, block, own in judged if value >= quarantine]
    # A LoRA that makes most characters likelier has learnt something they share (a drawing style), not one
    # of them: uncertain, so a person looks, and no policy applies automatically. Screened gains count here;
    # only those measured on all references (the calibration's footing) become reasons.
    broad = len(over) > max(2, len(characters) // 2)
    reasons = []
    for gain, value, quarantine, block, own in (row for row in over if not row[0].screened):
        character = characters[gain.character_id]
        clear = not broad and block is not None and value >= block
        verdict, certainty = (character.policy, "clear") if clear else (Verdict.QUARANTINE, "possible")
        also = f"; {len(over)} characters gained, so it may be a shared style" if broad else ""
        if named.get(gain.character_id):
            also += f"; its metadata names it too ({_where(named[gain.character_id])})"
        reasons.append(Reason(
            "likelihood_match", verdict,
            f"{certainty} match with {character.name}: with the LoRA the base model denoises its references "
            f"{value:.0%} better ({_conditioning(gain, own)}; possible from {quarantine:.0%}, "
            f"clear from {block or 0:.0%}){also}",
            gain.character_id,
            {"gain": round(value, 4), "prompt": gain.prompt, "reference_gains": list(gain.reference_gains),
             "certainty": certainty, **_how_measured(gain, own)},
        ))
    residual = _residual_reason(gains, characters, thresholds, {r.character_id for r in reasons}, named)
    return reasons + ([residual] if residual else [])


def _residual_reason(gains, characters: dict[str, CharacterPolicy], thresholds: Thresholds, found: set[str],
                     named: dict[str, list[NameHit]]) -> Reason | None:
    """The character a LoRA favours once what it does to every character is fitted out (a style merged in
    moves them all; gate.detection.sensitivity): a possible match, for a person, never a policy applied."""
    if thresholds.likelihood_residual is None or not thresholds.likelihood_sensitivity:
        return None
    measured = {g.character_id: g for g in gains if g.character_id in characters}
    # The whole LoRA's gains: what the sensitivities were fitted on (a part's is judged by its own thresholds).
    whole = {cid: g.of_whole for cid, g in measured.items()}
    left = residuals(whole, thresholds.likelihood_sensitivity, thresholds.likelihood_effect_reach)
    if not left:
        return None
    top = max(left, key=left.get)
    gain = measured[top]
    if left[top] < thresholds.likelihood_residual or top in found or gain.screened:
        return None
    also = f"; its metadata names it too ({_where(named[top])})" if named.get(top) else ""
    share = read_at(effect(whole, thresholds.likelihood_sensitivity), thresholds.likelihood_effect_reach)
    scaled = (f"{left[top] / share:.0%} read at {share:.0%}, as the LoRA moves the registry {1 / share:.1f} times "
              f"as far as the furthest clean LoRA did; " if share < 0.995 else "")
    return Reason(
        "likelihood_match", Verdict.QUARANTINE,
        f"possible match with {characters[top].name}: the LoRA favours its references over the other characters' "
        f"by {left[top]:.0%} more than what it does to every character explains ({scaled}its own gain "
        f"{gain.of_whole:+.0%}, {_conditioning(gain, own=False)}; possible from "
        f"{thresholds.likelihood_residual:.0%}), as when a style is merged into a character LoRA{also}",
        top,
        {"gain": round(gain.of_whole, 4), "residual": round(left[top], 4), "residual_read_at": round(share, 4),
         "prompt": gain.prompt, "reference_gains": list(gain.reference_gains), "certainty": "possible",
         **_how_measured(gain, own=False)},
    )


def judged_by(gain, thresholds: Thresholds) -> tuple[float, float, float | None, bool]:
    """(gain, quarantine, block, own) a character's gain is judged by: a variant's (a part alone, the whole at
    another strength) against the variants' thresholds, the whole LoRA's as published against the whole's; where
    both were measured, whichever clears its own more. `own`: the value judged is this measurement's (on its
    part, at its strength), not the whole's beside it."""
    whole = (gain.of_whole, thresholds.likelihood_quarantine, thresholds.likelihood_block, False)
    if not gain.variant or thresholds.likelihood_variant_quarantine is None:
        return whole
    variant = (gain.gain, thresholds.likelihood_variant_quarantine, thresholds.likelihood_variant_block, True)
    return max(whole, variant, key=lambda row: row[0] - row[1])


def _conditioning(gain, own: bool = True) -> str:
    """What the gain was measured under: a prompt, or a trigger the probe recovered (probes/recovery.py); and
    on which part of the LoRA, where one group of its rank components alone showed it (probes/blocks.py), or at
    which strength, where the LoRA applied at another weight showed it. `own`: see judged_by."""
    if gain.recovered:
        said = (f"under a recovered trigger: a soft prompt fitted to half its references and scored on the rest, "
                f"nearest vocabulary pieces {gain.prompt!r}")
    else:
        said = f"prompt {gain.prompt!r}"
    if gain.part and own:
        said += f"; measured on {gain.part} of the LoRA, switched on alone, as a merge's parts are"
    elif gain.strength != 1.0 and own:
        said += (f"; with the LoRA applied at strength {gain.strength:g}, as its users can load it (at 1: "
                 f"{gain.of_whole:+.0%})")
    return said


def _how_measured(gain, own: bool = True) -> dict:
    """The details a moderator's tools read: the recovered trigger, the part and the strength, where there is
    one."""
    return ({"recovered_trigger": gain.prompt} if gain.recovered else {}) | (
        {"part": gain.part} if gain.part and own else {}) | (
        {"strength": gain.strength} if gain.strength != 1.0 and own and not gain.part else {})


def _repeat_reasons(near_duplicates: Sequence, repeat_offender: dict | None) -> list[Reason]:
    """Repeat infringement raises a verdict to quarantine at least: a person looks at a re-upload of flagged
    weights (whole or merged in) and at uploads of an uploader with a history of blocks."""
    reasons = []
    for match in near_duplicates[:3]:
        what = "the same weight change as" if match.kind == "near_duplicate" else "merged in it: the weights of"
        source = f"upload {match.upload_id}" if match.upload_id else "a blocklist entry"
        reasons.append(Reason(
            "near_duplicate", Verdict.QUARANTINE,
            f"{what} {source} ({_PAST[match.verdict]}, tensor hash {match.tensor_hash[:16]}…): similarity "
            f"{match.similarity:.3f}, containment {match.containment:.3f}",
            match.character_id, match.to_dict()))
    if repeat_offender:
        history = repeat_offender
        reasons.append(Reason(
            "repeat_offender", Verdict.QUARANTINE,
            f"uploader {history['uploader']!r} has {history['blocked']} blocked uploads",
            None, {"uploader": history["uploader"], "hub": history["hub"], "blocked": history["blocked"]}))
    return reasons


def _apply_cleared(reasons: list[Reason], cleared: frozenset[str] | set[str]) -> None:
    """Issue 7's feedback: a moderator allowed these weights as a false positive of a character ('*': of a
    reason without one), so the same quarantine-level evidence no longer quarantines them. Block-level
    evidence (a clear match under a block policy, the blocklist) still counts."""
    for reason in reasons:
        if reason.verdict == Verdict.QUARANTINE and (reason.character_id or "*") in cleared:
            reason.verdict = Verdict.ALLOW
            reason.message += " (cleared: a moderator allowed these weights before on the same evidence)"
            reason.details["cleared"] = True


def _where(hits: list[NameHit]) -> str:
    return "; ".join(f"{hit.field}: {hit.text[:60]!r}" for hit in hits[:3])
