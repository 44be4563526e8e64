"""Which LoRAs declare no trigger while adapting the text encoder (gate.detection.scanner.undeclared_trigger),
read from real safetensors files by intake."""

from __future__ import annotations

from fixtures.lora_transforms import Lora, read_lora, write_lora
from gate.detection.scanner import undeclared_trigger
from gate.intake import inspect_file
from tests.conftest import world_lora


def _stripped(world, tmp_path, **wanted):
    lora = world_lora(world, **wanted)
    source = read_lora(world.path(lora["path"]))
    return write_lora(Lora(source.format, source.modules, {}, source.dtype), tmp_path / f"{lora['id']}.safetensors")


def test_a_text_encoder_lora_stripped_of_its_metadata_declares_no_trigger(world, tmp_path):
    for lora_format in ("kohya", "peft"):  # both layouts name the text encoder's modules their own way
        path = _stripped(world, tmp_path, kind="character", text_encoder=True, format=lora_format)
        inspection = inspect_file(path)
        assert undeclared_trigger(inspection)
        assert not undeclared_trigger(inspection, {"trigger_words": ["zqx"]})  # the hub's page declares one


def test_a_declared_trigger_or_a_unet_only_lora_is_not_undeclared(world, tmp_path):
    honest = world_lora(world, kind="character", text_encoder=True, metadata_style="honest")
    assert not undeclared_trigger(inspect_file(world.path(honest["path"])))
    unet_only = _stripped(world, tmp_path, kind="character", text_encoder=False)
    assert not undeclared_trigger(inspect_file(unet_only))
