"""Textual-inversion embeddings bundled in a kohya LoRA, with the fixture world's real base model: the bundled
token means its vectors while the LoRA is on, the base reads the words it knows without it, and nothing stays."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from gate.intake import inspect_file
from probes.contract import UnsupportedLora
from probes.probe_set import Probe
from tests.conftest import world_lora

PAIR = "red square"  # the words whose vectors the bundled token "zqpair" carries


def _vectors(engine, words: str) -> torch.Tensor:
    pipe = engine.renderer.pipe
    ids = pipe.tokenizer(words, add_special_tokens=False)["input_ids"]
    return pipe.text_encoder.get_input_embeddings().weight[ids].detach().clone()


@pytest.fixture(scope="module")
def bundled(engine, world):
    """A fixture kohya LoRA with a two-vector embedding for the token "zqpair" bundled in, as sd-scripts saves it."""
    lora = world_lora(world, format="kohya", kind="style")
    state = load_file(world.path(lora["path"]))
    assert len(_vectors(engine, PAIR)) == 2
    return {**state, "bundle_emb.zqpair.string_to_param.*": _vectors(engine, PAIR)}


def _render(engine, prompt: str) -> np.ndarray:
    return engine.renderer.render([Probe(prompt, 7, "generic")], engine.probe_set)


def test_the_bundled_token_means_its_vectors_while_the_lora_is_on(engine, bundled):
    with engine.renderer.lora(dict(bundled)):
        tokenizer = engine.renderer.pipe.tokenizer
        assert "zqpair_1" in tokenizer.get_vocab()  # two vectors, two tokens
        assert "zqpair" not in tokenizer.tokenize("a xzqpairx")  # a whole word only, never inside one
        bundled_words = _render(engine, "a zqpair on a white background")
        plain_words = _render(engine, f"a {PAIR} on a white background")
    assert np.array_equal(bundled_words, plain_words)
    # Without the bundle the token is letters to the base model, and draws something else.
    assert not np.array_equal(_render(engine, "a zqpair on a white background"),
                              _render(engine, f"a {PAIR} on a white background"))


def test_without_the_lora_and_after_it_the_base_reads_the_words_it_knows(engine, bundled):
    pipe = engine.renderer.pipe
    tokenizer, table, size = pipe.tokenizer, pipe.text_encoder.get_input_embeddings(), len(pipe.tokenizer)
    before = _render(engine, "a zqpair on a white background")
    with engine.renderer.lora(dict(bundled)):
        with engine.renderer.without_lora():
            assert pipe.tokenizer is tokenizer
            assert np.array_equal(_render(engine, "a zqpair on a white background"), before)
        assert pipe.tokenizer is not tokenizer
    assert pipe.tokenizer is tokenizer and len(tokenizer) == size
    assert pipe.text_encoder.get_input_embeddings() is table
    assert np.array_equal(_render(engine, "a zqpair on a white background"), before)


@pytest.mark.parametrize(("token", "vectors", "complaint"), [
    ("zqwide", torch.ones(1, 7), "width 7"),
    ("red", torch.ones(1, 64), "already in the base model's vocabulary"),  # a word: it would change "a red ..."
    ("zqlong", torch.ones(300, 64), "more than 256 embedding vectors"),
])
def test_an_embedding_the_base_cannot_take_is_unsupported_and_loads_nothing(engine, bundled, token, vectors,
                                                                           complaint):
    state = {**bundled, f"bundle_emb.{token}.string_to_param.*": vectors}
    table = engine.renderer.pipe.text_encoder.get_input_embeddings()
    with pytest.raises(UnsupportedLora, match=complaint), engine.renderer.lora(state):
        pass
    assert not any(engine.renderer.pipe.get_list_adapters().values())
    assert engine.renderer.pipe.text_encoder.get_input_embeddings() is table


def test_intake_lists_the_tokens_and_the_gate_screens_and_probes_them(scanner, bundled, tmp_path):
    character = next(iter(scanner.characters.values()))
    token = character.names[0].replace(" ", "_")
    path = tmp_path / "bundled.safetensors"
    save_file({**bundled, f"bundle_emb.{token}.string_to_param.*": torch.ones(1, 64)}, path)
    inspection = inspect_file(path)
    assert inspection.ok and sorted(inspection.to_dict()["lora"]["embeddings"]) == sorted(["zqpair", token])
    hits = scanner.name_hits(inspection, "plain.safetensors")
    assert [(hit.character_id, hit.field) for hit in hits] == [(character.id, "embedded tokens")]
    triggers = scanner.probe_request(scanner.screen(path, inspection=inspection))["terms"]["trigger"]
    assert {"zqpair", token} <= set(triggers)
