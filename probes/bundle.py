"""Textual-inversion embeddings bundled in a kohya LoRA ("bundle_emb.<token>.string_to_param.*", or ".clip_l" and
".clip_g" for SDXL). They are applied with the LoRA, so that its trigger token means what the uploader trained,
and removed with it: the pipeline's own tokenizer and embedding table are put back, never edited in place, so
the base returns bit for bit.
"""

from __future__ import annotations

import copy

import torch
from tokenizers import AddedToken

from gate.intake.layout import BUNDLE_RE
from probes.contract import UnsupportedLora

# Which tokenizer and text encoder each bundled part belongs to.
_ENCODERS = {"string_to_param.*": ("tokenizer", "text_encoder"), "clip_l": ("tokenizer", "text_encoder"),
             "clip_g": ("tokenizer_2", "text_encoder_2")}

Bundle = dict[tuple[str, str], dict[str, torch.Tensor]]  # (tokenizer, text encoder) -> {token: vectors}
# More vectors than any real bundle holds: a hostile file must not make a worker grow its vocabulary for minutes.
MAX_TOKENS = 256


def split_bundle(state_dict: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], Bundle]:
    """The LoRA's own tensors, and its bundled embeddings grouped by the text encoder they extend."""
    lora: dict[str, torch.Tensor] = {}
    bundle: Bundle = {}
    for name, tensor in state_dict.items():
        found = BUNDLE_RE.match(name)
        if found:
            group = bundle.setdefault(_ENCODERS[found["part"]], {})
            if found["token"] in group:
                raise UnsupportedLora(f"the LoRA bundles two embeddings for {found['token']!r} in one text encoder")
            group[found["token"]] = tensor
        else:
            lora[name] = tensor
    return lora, bundle


class BundledEmbeddings:
    """A bundle made ready for one pipeline: `apply()` swaps in tokenizers with the bundle's tokens and text
    encoder tables with their vectors, `lift()` puts the pipeline's own objects back. A multi-vector embedding
    becomes "tok", "tok_1", ..., which diffusers' prompt conversion expands wherever "tok" is typed. Raises
    UnsupportedLora, before anything changes, for an embedding the base model cannot take."""

    def __init__(self, pipe, bundle: Bundle) -> None:
        self.pipe = pipe
        self._swaps = []  # (tokenizer attribute, own tokenizer, extended one, encoder, own table, extended one)
        for (tokenizer_name, encoder_name), embeddings in bundle.items():
            tokenizer, encoder = getattr(pipe, tokenizer_name, None), getattr(pipe, encoder_name, None)
            if tokenizer is None or encoder is None:
                raise UnsupportedLora(f"the LoRA bundles an embedding for {encoder_name}, which this base model lacks")
            table = encoder.get_input_embeddings()
            extended, weight = _extend(tokenizer, table.weight, embeddings)
            self._swaps.append((tokenizer_name, tokenizer, extended, encoder, table,
                                torch.nn.Embedding.from_pretrained(weight, freeze=True)))

    def apply(self) -> None:
        for tokenizer_name, _, extended, encoder, _, table in self._swaps:
            setattr(self.pipe, tokenizer_name, extended)
            encoder.set_input_embeddings(table)

    def lift(self) -> None:
        for tokenizer_name, tokenizer, _, encoder, table, _ in reversed(self._swaps):
            setattr(self.pipe, tokenizer_name, tokenizer)
            encoder.set_input_embeddings(table)


def _extend(tokenizer, weight: torch.Tensor, embeddings: dict[str, torch.Tensor]):
    """A copy of `tokenizer` with the tokens added, and a new table holding their vectors (the old one kept)."""
    if any(v.numel() == 0 or v.dim() > 2 for v in embeddings.values()):  # intake refuses these; a worker too
        raise UnsupportedLora("a bundled embedding is empty or not [width] / [vectors, width]")
    shaped = {token: v.reshape(-1, v.shape[-1]) if v.dim() else v.reshape(1, 1) for token, v in embeddings.items()}
    if sum(len(vectors) for vectors in shaped.values()) > MAX_TOKENS:
        raise UnsupportedLora(f"the LoRA bundles more than {MAX_TOKENS} embedding vectors")
    vocabulary = tokenizer.get_vocab()
    names = []
    for token, vectors in shaped.items():
        if vectors.shape[-1] != weight.shape[1]:
            raise UnsupportedLora(f"the bundled embedding {token!r} has width {vectors.shape[-1]}; this base "
                                  f"model's text encoder takes {weight.shape[1]}")
        if len(vectors) > tokenizer.model_max_length - 2:
            raise UnsupportedLora(f"the bundled embedding {token!r} has {len(vectors)} vectors, more than a "
                                  "prompt holds")
        parts = [token] + [f"{token}_{index}" for index in range(1, len(vectors))]
        # A token that is already a word of the base would change every prompt that uses the word (a probe's
        # "figure", say): the LoRA could blind its own probes. CLIP's vocabulary marks a word's end with "</w>".
        if any(part in vocabulary or f"{part.lower()}</w>" in vocabulary or part in names for part in parts):
            raise UnsupportedLora(f"the bundled embedding's token {token!r} is already in the base model's vocabulary")
        names += parts
    extended = copy.deepcopy(tokenizer)
    # single_word: the token matches a whole word only, never the inside of one ("ody" in "body").
    if extended.add_tokens([AddedToken(name, single_word=True) for name in names]) != len(names):
        raise UnsupportedLora("the bundled embeddings' tokens cannot all be added to the base model's vocabulary")
    ids = extended.convert_tokens_to_ids(names)
    grown = torch.zeros(max(weight.shape[0], max(ids) + 1), weight.shape[1], dtype=weight.dtype, device=weight.device)
    grown[: weight.shape[0]] = weight
    grown[ids] = torch.cat(list(shaped.values())).to(weight.dtype).to(weight.device)
    return extended, grown
