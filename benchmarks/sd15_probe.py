"""An SD 1.5-sized probe, timed through the production renderer and embedder (a GPU benchmark).

No SD 1.5 weights can be downloaded here, so the model is SD 1.5's architecture with random weights:
the 860M-parameter UNet, the KL autoencoder and a CLIP ViT-L text encoder, saved in the diffusers
layout and loaded by `probes.render.Renderer` like any local model directory; the embedder is a CLIP
ViT-L/14 vision tower loaded by `probes.embed.ImageEmbedder`. Time per step does not depend on the
weights' values. The LoRAs are SD 1.5-shaped (rank 16 on every attention projection of the UNet and the
text encoder) in the kohya and the peft layouts.

Rows, all in one run on one device: the naive way (a fresh pipeline loaded per LoRA, base and LoRA
renders made again, one prompt at a time) against the gate's (pipeline resident, adapter swapped in and
deleted, base renders cached per probe set, prompts batched), for the probe set's generic prompts and
for its expansion for a LoRA with a trigger, tags, a name and a registry of ten characters (what the set's
templates take of them). Then the likelihood
probe per LoRA against a registry of `--characters` (random reference images): every character in full, and
with the probe set's screen.

    python -m benchmarks.sd15_probe [--loras 4] [--naive-loras 1] [--characters 100] [--work DIR] [--tiny]

`--tiny` swaps in a small configuration of the same architecture, to check the script on a CPU.
"""

from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from safetensors.torch import load_file

from fixtures.worldgen.export import kohya_state_dict, peft_state_dict, write_safetensors
from probes.denoise import LikelihoodProbe
from probes.embed import ImageEmbedder
from probes.likelihood import ReferenceSet
from probes.probe_set import SETS_DIR, load_probe_set
from probes.render import Renderer

# The set these tables timed; sd15-v3, the newest, adds the likelihood variants and is not timed here.
PROBE_SET = SETS_DIR / "sd15-v2.toml"
TOKENIZER = Path(__file__).resolve().parents[1] / "fixtures" / "world" / "base" / "tokenizer"
UNET_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")
TEXT_TARGETS = ("q_proj", "k_proj", "v_proj", "out_proj")
# A LoRA's own metadata and the registry expand the probe set beyond its generic prompts.
TERMS = {
    "trigger": ["zxqhero"],
    "tag": ["1boy", "red cape", "silver armor"],
    "output_name": ["zxqhero_v2"],
    "registry": [f"Character {name}" for name in "ABCDEFGHIJ"],
}


def sd15_configs(tiny: bool) -> dict:
    """SD 1.5's component configurations (v1-inference.yaml in diffusers' terms), or a small variant."""
    unet = dict(sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
                block_out_channels=(320, 640, 1280, 1280), attention_head_dim=8, cross_attention_dim=768,
                down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
                up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3)
    vae = dict(in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2, sample_size=512,
               block_out_channels=(128, 256, 512, 512),
               down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4)
    text = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                max_position_embeddings=77, hidden_act="quick_gelu", projection_dim=768)
    vision = dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                  image_size=224, patch_size=14, projection_dim=768)
    if tiny:
        unet.update(block_out_channels=(32, 32, 64, 64), layers_per_block=1, attention_head_dim=4,
                    cross_attention_dim=64, sample_size=8)
        vae.update(block_out_channels=(8, 8, 16, 16), layers_per_block=1, norm_num_groups=4, sample_size=64)
        text.update(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
                    projection_dim=64)
        vision.update(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
                      projection_dim=64)
    return {"unet": unet, "vae": vae, "text": text, "vision": vision}


def build_models(work: Path, tiny: bool, device: str) -> tuple[Path, Path]:
    """Write the random SD 1.5-shaped pipeline and a CLIP ViT-L/14 embedder as local model directories."""
    import diffusers
    import transformers

    configs = sd15_configs(tiny)
    base_dir, embedder_dir = work / "sd15-random", work / "clip-vit-l14-random"
    if (base_dir / "model_index.json").exists() and (embedder_dir / "config.json").exists():
        return base_dir, embedder_dir
    torch.manual_seed(0)
    tokenizer = transformers.CLIPTokenizer.from_pretrained(TOKENIZER, model_max_length=77)
    with torch.device(device):  # initialise on the device: 1.1B parameters initialise slowly on a CPU
        unet = diffusers.UNet2DConditionModel(**configs["unet"])
        vae = diffusers.AutoencoderKL(**configs["vae"])
        text_encoder = transformers.CLIPTextModel(
            transformers.CLIPTextConfig(vocab_size=len(tokenizer), **configs["text"]))
        vision = transformers.CLIPVisionModelWithProjection(transformers.CLIPVisionConfig(**configs["vision"]))
    scheduler = diffusers.PNDMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                        skip_prk_steps=True, steps_offset=1)
    pipeline = diffusers.StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                                 scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                                 requires_safety_checker=False)
    pipeline.to(torch.float16 if device == "cuda" else torch.float32).save_pretrained(base_dir)
    vision.save_pretrained(embedder_dir)
    size = configs["vision"]["image_size"]
    transformers.CLIPImageProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size}
                                    ).save_pretrained(embedder_dir)
    return base_dir, embedder_dir


def _random_factors(module: torch.nn.Module, targets: tuple[str, ...], rank: int,
                    generator: torch.Generator) -> dict[str, torch.Tensor]:
    """'<path>.lora_A.weight' / '.lora_B.weight' for every targeted linear layer, in float16."""
    state = {}
    for name, layer in module.named_modules():
        if isinstance(layer, torch.nn.Linear) and name.endswith(targets):
            state[f"{name}.lora_A.weight"] = (torch.randn(rank, layer.in_features, generator=generator) / 32).half()
            state[f"{name}.lora_B.weight"] = (torch.randn(layer.out_features, rank, generator=generator) / 32).half()
    return state


def write_loras(work: Path, base_dir: Path, count: int, rank: int = 16) -> list[Path]:
    """SD 1.5-shaped LoRAs with random weights, alternately in the kohya and the peft layout."""
    import diffusers
    import transformers

    unet = diffusers.UNet2DConditionModel.from_pretrained(base_dir / "unet", local_files_only=True)
    text_encoder = transformers.CLIPTextModel.from_pretrained(base_dir / "text_encoder", local_files_only=True)
    paths = []
    for number in range(count):
        generator = torch.Generator().manual_seed(number)
        unet_state = _random_factors(unet, UNET_TARGETS, rank, generator)
        text_state = _random_factors(text_encoder, TEXT_TARGETS, rank, generator)
        layout = "kohya" if number % 2 == 0 else "peft"
        state = (kohya_state_dict(unet_state, text_state, rank, rank) if layout == "kohya"
                 else peft_state_dict(unet_state, text_state))
        path = work / f"lora_{number}_{layout}.safetensors"
        write_safetensors(path, {key: value.contiguous() for key, value in state.items()}, None)
        paths.append(path)
    return paths


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def gate_seconds(renderer: Renderer, embedder: ImageEmbedder, probe_set, probes, loras: list[Path]) -> list[float]:
    """Per LoRA: load the file, swap the adapter in, render the probes batched, embed, delete the adapter.
    The base renders are cached (computed once per probe set, before this is called)."""
    times = []
    for path in loras:
        _sync()
        started = time.perf_counter()
        with renderer.lora(load_file(path)):
            images = renderer.render(probes, probe_set)
        embedder.embed(renderer.render_base(probes, probe_set))  # cached renders; embedding is what remains
        embedder.embed(images)
        _sync()
        times.append(time.perf_counter() - started)
    return times


def naive_seconds(base_dir: Path, embedder: ImageEmbedder, probe_set, probes, loras: list[Path],
                  device: str) -> list[float]:
    """Per LoRA: a fresh pipeline from disk, base and LoRA renders made again, one prompt at a time."""
    single = replace(probe_set, batch_size=1)
    times = []
    for path in loras:
        _sync()
        started = time.perf_counter()
        renderer = Renderer(base_dir, device)
        base = renderer.render(probes, single)
        renderer.pipe.load_lora_weights(load_file(path), adapter_name="lora")
        images = renderer.render(probes, single)
        embedder.embed(list(base) + list(images))
        _sync()
        times.append(time.perf_counter() - started)
        del renderer
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--loras", type=int, default=4, help="LoRAs timed per gate row (the first is a warm-up)")
    parser.add_argument("--naive-loras", type=int, default=1)
    parser.add_argument("--work", type=Path, default=Path("/tmp/sd15_probe"))
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--tiny", action="store_true", help="a small model of the same architecture (CPU check)")
    parser.add_argument("--characters", type=int, default=100,
                        help="registered characters for the likelihood rows (0: skip them)")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)

    started = time.perf_counter()
    base_dir, embedder_dir = build_models(args.work, args.tiny, args.device)
    loras = write_loras(args.work, base_dir, args.loras + 1)
    setup = time.perf_counter() - started
    probe_set = load_probe_set(PROBE_SET)
    if args.tiny:
        probe_set = replace(probe_set, width=64, height=64, steps=3)
    full = probe_set.probes(TERMS)
    generic = [probe for probe in full if probe.source == "generic"]

    mark = time.perf_counter()
    renderer = Renderer(base_dir, args.device)
    embedder = ImageEmbedder(embedder_dir, args.device)
    load = time.perf_counter() - mark
    mark = time.perf_counter()
    renderer.render_base(full, probe_set)
    base_once = time.perf_counter() - mark

    rows: list[tuple[str, int, list[float]]] = []
    for label, probes in (("generic prompts", generic), ("expanded (trigger, tags, name; the set's templates)", full)):
        for batch in sorted({probe_set.batch_size, 16, len(probes)}):
            variant = replace(probe_set, batch_size=batch)
            gate_seconds(renderer, embedder, variant, probes, loras[:1])  # warm-up: kernels, allocator
            rows.append((f"gate, {label}, batch {batch}", len(probes),
                         gate_seconds(renderer, embedder, variant, probes, loras[1:])))
    naive = naive_seconds(base_dir, embedder, probe_set, generic, loras[1 : 1 + args.naive_loras], args.device)
    naive_row = ("naive, generic prompts, fresh pipeline, no cache, batch 1", len(generic), naive)

    device_name = torch.cuda.get_device_name() if args.device == "cuda" else "CPU"
    print(f"\nSD 1.5-sized probe ({'tiny variant' if args.tiny else 'UNet 860M, 512x512'}), probe set "
          f"{probe_set.id}, {probe_set.steps} steps, guidance {probe_set.guidance}, {probe_set.scheduler}, "
          f"on {device_name}, torch {torch.__version__}")
    print(f"setup {setup:.1f} s (not timed below); pipeline and embedder load {load:.1f} s once per worker; "
          f"base renders for the full set {base_once:.1f} s once per probe set\n")
    naive_per_render = statistics.median(naive) / naive_row[1]
    print(f"| {'design':<62} | {'renders':>7} | {'s per LoRA (median)':>19} | {'renders/s':>9} | {'vs naive':>8} |")
    print(f"|{'-' * 64}|{'-' * 9}|{'-' * 21}|{'-' * 11}|{'-' * 10}|")
    for name, count, times in [naive_row, *rows]:
        seconds = statistics.median(times)
        print(f"| {name:<62} | {count:>7} | {seconds:>19.2f} | {count / seconds:>9.1f} "
              f"| {naive_per_render * count / seconds:>7.1f}x |")
    print("\n'vs naive' compares time per probe render (the naive way's own count differs per row).")
    if probe_set.likelihood and args.characters:
        likelihood_rows(renderer, probe_set, loras, args.work, args.characters)


def _references(work: Path, characters: int, per_character: int, size: tuple[int, int]) -> list[ReferenceSet]:
    """A registry of random-pixel reference images: the probe's time does not depend on what they show."""
    generator = np.random.default_rng(0)
    directory = work / "references"
    directory.mkdir(exist_ok=True)
    registry = []
    for c in range(characters):
        paths = []
        for r in range(per_character):
            path = directory / f"c{c:04d}_{r}.png"
            if not path.exists():
                Image.fromarray(generator.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(path)
            paths.append(str(path))
        registry.append(ReferenceSet(f"c{c:04d}", f"Character {c}", tuple(paths)))
    return registry


def likelihood_rows(renderer: Renderer, probe_set, loras: list[Path], work: Path, characters: int,
                    variants: list | None = None) -> None:
    """The likelihood probe per LoRA against a registry of `characters`: every character in full (the
    baseline) and with the probe set's screen, or the given (label, spec) variants, in the same run; the base
    errors of the generic and name prompts are measured once beforehand, as a running worker holds them."""
    spec = probe_set.likelihood
    size = (probe_set.width, probe_set.height)
    registry = _references(work, characters, spec.references, size)
    mark = time.perf_counter()
    LikelihoodProbe(renderer, spec, size).base_errors(registry, [])  # VAE encodes and base errors, once
    once = time.perf_counter() - mark
    rows = []
    variants = variants or [("every character in full (no screen)", replace(spec, shortlist=0)),
                            (f"screened on {spec.screen_references}, the strongest {spec.shortlist} in full", spec)]
    for label, variant in variants:
        probe = LikelihoodProbe(renderer, variant, size)
        probe.base_errors(registry, [])
        times = []
        for path in loras:  # the first is a warm-up
            _sync()
            started = time.perf_counter()
            with renderer.lora(load_file(path)):
                probe.gains(registry, TERMS["trigger"], renderer.without_lora)
            _sync()
            times.append(time.perf_counter() - started)
        rows.append((label, statistics.median(times[1:] or times)))
    print(f"\nlikelihood probe, {characters} characters x {spec.references} references, timesteps "
          f"{list(spec.timesteps)}, batch {spec.batch}; base errors for the registry measured once: {once:.1f} s\n")
    print(f"| {'likelihood probe per LoRA':<58} | {'s per LoRA (median)':>19} | {'vs first':>8} |")
    print(f"|{'-' * 60}|{'-' * 21}|{'-' * 10}|")
    for label, seconds in rows:
        print(f"| {label:<58} | {seconds:>19.2f} | {rows[0][1] / seconds:>7.2f}x |")


if __name__ == "__main__":
    main()
