"""Trigger discovery: find the words a LoRA responds to when its metadata does not say.

Many character LoRAs only draw their subject when prompted with a trigger word, and a stripped file does
not declare it. What the LoRA learned is visible in how it changes the text conditioning the UNet
attends to: for every token in the vocabulary, compare the cross-attention keys and values it produces
with the adapter on and off (this covers text-encoder and UNet LoRAs alike). The tokens that move most
are the trigger's pieces; a greedy search then orders them into the phrase that moves the most.
"""

from __future__ import annotations

import torch

MAX_PIECES = 6
SHORTLIST = 12


def _attention_modules(unet) -> list:
    return [module for name, module in unet.named_modules() if name.endswith("attn2") and hasattr(module, "to_k")]


class TriggerFinder:
    """Scores token sequences by how much an active adapter changes the UNet's cross-attention inputs."""

    def __init__(self, pipe):
        self.pipe = pipe
        self.tokenizer = pipe.tokenizer
        self.attention = _attention_modules(pipe.unet)
        self.device = pipe.unet.device

    def _encode(self, sequences: list[list[int]]) -> torch.Tensor:
        bos, eos = self.tokenizer.bos_token_id, self.tokenizer.eos_token_id
        width = max(len(s) for s in sequences) + 2
        rows = [[bos, *s, eos] + [eos] * (width - len(s) - 2) for s in sequences]
        ids = torch.tensor(rows, device=self.device)
        return self.pipe.text_encoder(ids)[0]

    @torch.inference_mode()
    def score(self, sequences: list[list[int]]) -> torch.Tensor:
        """Relative change of keys and values over the sequence's own positions, summed over layers."""
        self.pipe.disable_lora()
        base_states = self._encode(sequences)
        base = [(m.to_k(base_states), m.to_v(base_states)) for m in self.attention]
        self.pipe.enable_lora()
        states = self._encode(sequences)
        total = torch.zeros(len(sequences), device=self.device)
        lengths = torch.tensor([len(s) for s in sequences], device=self.device)
        positions = torch.arange(states.shape[1], device=self.device)[None, :]
        mask = ((positions >= 1) & (positions <= lengths[:, None])).float()  # the sequence, not bos/eos
        for module, (key, value) in zip(self.attention, base, strict=True):
            for projection, before in ((module.to_k, key), (module.to_v, value)):
                change = (projection(states) - before).norm(dim=-1) / before.norm(dim=-1).clamp_min(1e-6)
                total += (change * mask).sum(dim=1) / mask.sum(dim=1)
        return total

    def find(self, candidates: int = 2, batch: int = 512) -> list[str]:
        """Up to `candidates` phrases: the best greedy sequence of top tokens, then the single best token."""
        if not self.attention or self.tokenizer is None or getattr(self.pipe, "text_encoder", None) is None:
            return []
        special = set(self.tokenizer.all_special_ids)
        vocabulary = [i for i in sorted(self.tokenizer.get_vocab().values()) if i not in special]
        scores = torch.cat([self.score([[i] for i in vocabulary[s : s + batch]])
                            for s in range(0, len(vocabulary), batch)])
        shortlist = [vocabulary[i] for i in scores.topk(min(SHORTLIST, len(vocabulary))).indices.tolist()]
        best, best_score = [shortlist[0]], float(scores.max())
        for _ in range(MAX_PIECES - 1):
            options = [best + [t] for t in shortlist] + [[t] + best for t in shortlist]
            option_scores = self.score(options)
            top = int(option_scores.argmax())
            if float(option_scores[top]) <= best_score:
                break
            best, best_score = options[top], float(option_scores[top])
        phrases = [self.tokenizer.decode(best), self.tokenizer.decode([shortlist[0]])]
        unique = []
        for phrase in (p.strip() for p in phrases):
            if phrase and phrase not in unique:
                unique.append(phrase)
        return unique[:candidates]
