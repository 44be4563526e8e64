"""Recovering a trigger nobody declared: a soft prompt fitted to a character's references.

A trigger-word LoRA draws its character only under its trigger, and an infringer strips the trigger from the
metadata. Searching the vocabulary for it fails (measured on the fixture world: the prompts that change the
LoRA's cross-attention or its noise prediction most are not the trigger, and under them the LoRA is no better at
the character than under a generic prompt). What the trigger is *for* can be searched instead: a few free token
embeddings in the prompt's first places (where a trigger stands), fitted by gradient descent so that the model
denoises one half of a character's references as well as it can, then scored on the other half, and the other
way round. Both models get the same search: the base model's fit (cached per character, the base never changes)
against the LoRA's. A LoRA that learnt the character behind some trigger can be steered to it, and beats the
base on references it was never fitted to; a style, a concept or another character's LoRA cannot.

The fitted tokens are continuous, so they are not a word: the evidence names the vocabulary pieces nearest to
them, as a hint for a moderator, and says the gain was measured under a recovered trigger.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager

import numpy as np
import torch

from probes.likelihood import RecoverySpec
from probes.probe_set import ProbeSetError


class TriggerRecovery:
    """Soft-prompt fits on the likelihood probe's resident pipeline (probes/denoise.py)."""

    def __init__(self, probe, spec: RecoverySpec):
        self.probe, self.spec = probe, spec  # probe: the LikelihoodProbe whose latents and noising it shares
        if spec.tokens + 2 > self._pipe.tokenizer.model_max_length:
            raise ProbeSetError(f"likelihood recovery tokens ({spec.tokens}) leave no room for the start and end "
                                f"tokens in this model's {self._pipe.tokenizer.model_max_length}")
        self._base: dict[tuple[str, ...], np.ndarray] = {}  # reference paths -> the base's out-of-sample errors

    @property
    def _pipe(self):
        return self.probe.renderer.pipe

    def gains(self, paths: Sequence[str],
              base_model: Callable[[], AbstractContextManager]) -> tuple[tuple[float, ...], str]:
        """Per reference, the relative error cut under the LoRA's recovered trigger against the base's; and the
        vocabulary pieces nearest the LoRA's fitted tokens. Call with the LoRA applied."""
        paths = tuple(paths)
        with base_model():
            if paths not in self._base:
                self._base[paths], _ = self._cross_fitted(paths)
        lora, tokens = self._cross_fitted(paths)
        base = self._base[paths]
        return tuple(round(float(g), 5) for g in (base - lora) / np.maximum(base, 1e-8)), self._nearest(tokens)

    def _cross_fitted(self, paths: tuple[str, ...]) -> tuple[np.ndarray, torch.Tensor]:
        """Fit one soft prompt on the even references and one on the odd, each scored on the other half: errors
        out of sample, in the order of `paths`."""
        with torch.inference_mode(False), torch.enable_grad():
            latents = torch.stack([self.probe._latent(p) for p in paths]).clone()  # out of inference mode
            halves = (list(range(0, len(paths), 2)), list(range(1, len(paths), 2)))
            noised = self.probe.noised(latents)
            tokens = self._fit(noised, halves)
            with torch.no_grad():
                crossed = (halves[1], halves[0])  # each half scored under the other half's tokens
                errors = self._errors(tokens, noised, crossed)
        out = np.zeros(len(paths))
        for half, values in zip(crossed, errors, strict=True):
            out[half] = values.float().cpu().numpy()
        return out, tokens

    def _fit(self, noised, halves) -> torch.Tensor:
        """Two soft prompts (one per half), fitted together by Adam: (2, tokens, width)."""
        table = self._pipe.text_encoder.get_input_embeddings().weight
        start = table.detach().float().mean(0)  # the mean token: no word favoured at the start
        tokens = start.expand(2, self.spec.tokens, -1).clone().requires_grad_(True)
        optimizer = torch.optim.Adam([tokens], lr=self.spec.learning_rate)
        # Fitted at the noisiest timestep alone (half the cost; where the prompt decides most), scored at all.
        noisiest = [max(noised, key=lambda n: int(n[2][0]))]
        for _ in range(self.spec.steps):
            loss = sum(e.mean() for e in self._errors(tokens, noisiest, halves))
            (gradient,) = torch.autograd.grad(loss, [tokens])  # no weight gradients: the models stay frozen
            tokens.grad = gradient
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        return tokens.detach()

    def _errors(self, tokens: torch.Tensor, noised, halves) -> list[torch.Tensor]:
        """Mean denoising error of each half's references under its own soft prompt, over the timesteps."""
        states = self._states(tokens)
        unet = self._pipe.unet
        totals = [0.0, 0.0]
        rows = [i for half in halves for i in half]
        context = torch.cat([states[h].expand(len(half), -1, -1) for h, half in enumerate(halves)])
        for noisy, noise, timestep in noised:
            predicted = unet(noisy[rows], timestep[rows], encoder_hidden_states=context.to(noisy.dtype)).sample
            per_row = ((predicted.float() - noise[rows].float()) ** 2).mean(dim=(1, 2, 3))
            totals[0] = totals[0] + per_row[: len(halves[0])]
            totals[1] = totals[1] + per_row[len(halves[0]):]
        return [total / len(noised) for total in totals]

    def _states(self, tokens: torch.Tensor) -> torch.Tensor:
        """The text encoder's states for "<start> soft tokens <end>", the soft tokens where a trigger stands."""
        tokenizer, encoder = self._pipe.tokenizer, self._pipe.text_encoder
        length = tokenizer.model_max_length
        ids = torch.full((len(tokens), length), tokenizer.pad_token_id, dtype=torch.long)
        ids[:, 0] = tokenizer.bos_token_id
        ids[:, 1 + self.spec.tokens] = tokenizer.eos_token_id
        ids[:, 1:1 + self.spec.tokens] = tokenizer.bos_token_id  # placeholders, replaced by the hook below
        device = encoder.device

        def soft(module, inputs, output):
            output = output.clone()
            output[:, 1:1 + self.spec.tokens] = tokens.to(output.device, output.dtype)
            return output

        with _hooked(encoder.get_input_embeddings(), soft):
            return encoder(ids.to(device))[0]

    def _nearest(self, tokens: torch.Tensor) -> str:
        """The vocabulary pieces nearest (by cosine) the first fit's tokens, joined as a prompt would read."""
        table = self._pipe.text_encoder.get_input_embeddings().weight.detach().float()
        tokenizer = self._pipe.tokenizer
        special = {tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id}
        similarity = torch.nn.functional.normalize(tokens[0].float().to(table.device), dim=-1) @ \
            torch.nn.functional.normalize(table, dim=-1).T
        similarity[:, sorted(i for i in special if i is not None)] = -2
        return tokenizer.decode(similarity.argmax(-1).tolist()).strip()


@contextlib.contextmanager
def _hooked(module: torch.nn.Module, hook):
    handle = module.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()
