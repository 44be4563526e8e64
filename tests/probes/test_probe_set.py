"""Probe sets are data: validated on load, identified by their content, expanded with a LoRA's own terms."""

from __future__ import annotations

import pytest

from probes.probe_set import SETS_DIR, ProbeSetError, load_probe_set, parse_probe_set, probe_set_for_family


@pytest.mark.parametrize("path", sorted(SETS_DIR.glob("*.toml")), ids=lambda p: p.stem)
def test_shipped_probe_sets_load(path):
    probe_set = load_probe_set(path)
    assert path.stem == f"{probe_set.name}-v{probe_set.version}"
    assert probe_set.id.startswith(path.stem + "@")
    generic_seeds = len(probe_set.seeds[: probe_set.prompt_seeds])
    assert len(probe_set.probes()) == len(probe_set.prompts) * generic_seeds


def test_identity_is_the_content_not_the_formatting():
    text = (SETS_DIR / "fixture-v1.toml").read_text()
    same = parse_probe_set("# a new comment\n" + text)
    changed = parse_probe_set(text.replace("steps = 15", "steps = 16"))
    original = parse_probe_set(text)
    assert same.id == original.id
    assert changed.id != original.id


def test_templates_are_filled_from_terms_deduplicated_and_bounded():
    probe_set = load_probe_set("fixture-v1")
    terms = {"trigger": ["pkmnyel", "PKMNYEL", "x" * 500, "a\nb"], "registry": ["Ultraman", "a figure"],
             "tag": []}
    probes = probe_set.probes(terms)
    prompts = {p.prompt for p in probes}
    assert {"pkmnyel", "pkmnyel, a portrait", "a b, a portrait"} <= prompts
    assert max(len(p.prompt) for p in probes) < 120
    assert sum(p.prompt == "pkmnyel" for p in probes) == len(probe_set.seeds)  # case duplicates dropped
    assert sum(p.prompt == "a portrait" for p in probes) == probe_set.prompt_seeds
    assert [p.source for p in probes if p.prompt == "Ultraman"] == ["registry"]  # registry names: one seed
    assert sum(p.prompt == "a figure" for p in probes) == probe_set.prompt_seeds  # no duplicate of a generic prompt
    assert len({p.key for p in probes}) == len(probes)


def test_the_likelihood_table_is_read_with_defaults():
    table = "[likelihood]\nprompts=['a character']\ntimesteps=[300, 600]"
    spec = parse_probe_set(_MINIMAL + "seeds=[1]\n" + table).likelihood
    assert spec.prompts == ("a character",) and spec.timesteps == (300, 600)
    assert (spec.noise_seed, spec.triggers, spec.references) == (0, 3, 8)
    assert (spec.shortlist, spec.screen_references) == (0, 2)  # no screen unless a set asks for one
    assert parse_probe_set(_MINIMAL + "seeds=[1]").likelihood is None
    assert spec.recovery is None and not spec.blocks  # no recovery, no merge parts unless a set asks for them
    assert spec.strengths == ()  # measured as published only


def test_other_strengths_are_read_sorted_and_deduplicated():
    table = "[likelihood]\nprompts=['a character']\ntimesteps=[300]\nstrengths=[2, 0.5, 2.0]"
    assert parse_probe_set(_MINIMAL + "seeds=[1]\n" + table).likelihood.strengths == (0.5, 2.0)
    assert load_probe_set("fixture-v3").likelihood.strengths == (0.5, 2.0)
    assert load_probe_set("fixture-v2").likelihood.strengths == ()  # v2 stays what it measured


def test_the_recovery_table_is_read_with_defaults():
    table = "[likelihood]\nprompts=['a character']\ntimesteps=[300]\n[likelihood.recovery]\n"
    spec = parse_probe_set(_MINIMAL + "seeds=[1]\n" + table + "steps=3").likelihood.recovery
    assert (spec.characters, spec.tokens, spec.steps, spec.learning_rate) == (3, 4, 3, 0.1)
    assert load_probe_set("fixture-v2").likelihood.recovery.characters > 0
    assert load_probe_set("fixture-v2").likelihood.blocks
    assert load_probe_set("fixture-v1").likelihood.recovery is None  # v1 stays what it measured


def test_sd15_v3_renders_and_measures_as_v2_and_adds_what_finds_hidden_characters():
    v2, v3 = load_probe_set("sd15-v2"), load_probe_set("sd15-v3")
    assert v3.id != v2.id and v3.version == 3
    assert [(p.prompt, p.seed) for p in v3.probes({})] == [(p.prompt, p.seed) for p in v2.probes({})]
    assert (v3.likelihood.timesteps, v3.likelihood.references) == (v2.likelihood.timesteps, v2.likelihood.references)
    assert v2.likelihood.strengths == () and not v2.likelihood.blocks and v2.likelihood.recovery is None
    assert v3.likelihood.strengths == (0.5, 2.0) and v3.likelihood.blocks and v3.likelihood.recovery.characters == 2


def test_family_lookup():
    assert probe_set_for_family("fixture").name == "fixture"
    assert probe_set_for_family("sd15").family == "sd15"
    assert probe_set_for_family("no-such-family") is None


_MINIMAL = 'name="x"\nversion=1\nfamily="f"\nwidth=1\nheight=1\nsteps=1\nguidance=1\nscheduler="s"\nprompts=["a"]\n'


@pytest.mark.parametrize("bad", [
    "name = 1", "not toml [", _MINIMAL + "seeds=[]",
    _MINIMAL + "seeds=[1]\n[likelihood]\nprompts=['a']\ntimesteps=[]",
    _MINIMAL + "seeds=[1]\n[likelihood]\nprompts=['a']\ntimesteps=[-5]",
    _MINIMAL + "seeds=[1]\n[likelihood]\nprompts=[1]\ntimesteps=[300]",
    _MINIMAL + "seeds=[1]\n[likelihood]\nprompts=['a']\ntimesteps=[300]\nreferences=0",
    _MINIMAL + "seeds=[1]\n[likelihood]\nprompts=['a']\ntimesteps=[300]\nshortlist=-1",
    _MINIMAL + "seeds=[1]\n[likelihood]\nprompts=['a']\ntimesteps=[300]\nshortlist=true",
    _MINIMAL + "seeds=[1]\n[likelihood]\nprompts=['a']\ntimesteps=[300]\nreferences=2\nscreen_references=3",
    _MINIMAL + "seeds=[1]\n[likelihood]\nprompts=['a']\ntimesteps=[300]\nrecovery=3",
    _MINIMAL + "seeds=[1]\n[likelihood]\nprompts=['a']\ntimesteps=[300]\nblocks='yes'",
    _MINIMAL + "seeds=[1]\n[likelihood]\nprompts=['a']\ntimesteps=[300]\nstrengths=2",
    _MINIMAL + "seeds=[1]\n[likelihood]\nprompts=['a']\ntimesteps=[300]\nstrengths=[1.0]",
    _MINIMAL + "seeds=[1]\n[likelihood]\nprompts=['a']\ntimesteps=[300]\nstrengths=[0]",
    _MINIMAL + "seeds=[1]\n[likelihood]\nprompts=['a']\ntimesteps=[300]\nstrengths=[5]",
    _MINIMAL + "seeds=[1]\n[likelihood]\nprompts=['a']\ntimesteps=[300]\nstrengths=[true]",
    _MINIMAL + "seeds=[1]\n[likelihood]\nprompts=['a']\ntimesteps=[300]\nstrengths=['double']",
    _MINIMAL + "seeds=[1]\n[likelihood]\nprompts=['a']\ntimesteps=[300]\n[likelihood.recovery]\ntokens=0",
    _MINIMAL + "seeds=[1]\n[likelihood]\nprompts=['a']\ntimesteps=[300]\n[likelihood.recovery]\nsteps=-1",
    _MINIMAL + "seeds=[1]\n[likelihood]\nprompts=['a']\ntimesteps=[300]\n[likelihood.recovery]\ncharacters=-1",
    _MINIMAL + "seeds=[1]\n[likelihood]\nprompts=['a']\ntimesteps=[300]\n[likelihood.recovery]\n"
               "learning_rate='fast'",
    _MINIMAL + "seeds=[1]\n[likelihood]\nprompts=['a']\ntimesteps=[300]\n[likelihood.recovery]\n"
               "learning_rate=0",
])
def test_malformed_probe_sets_are_refused(bad):
    with pytest.raises(ProbeSetError):
        parse_probe_set(bad)
