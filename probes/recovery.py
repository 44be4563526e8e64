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

    def gains(self, characters: Sequence[Sequence[str]],
              base_model: Callable[[], AbstractContextManager]) -> list[tuple[tuple[float, ...], str]]:
        """Per character (its reference paths, at least 2): per reference, the relative error cut under the LoRA's
        recovered trigger against the base's; and the vocabulary pieces nearest the LoRA's fitted tokens. Call
        with the LoRA applied. The characters are fitted together, each on its own soft prompts: one batch of
        UNet calls instead of one per character, the same fits (the noise is shared, the losses add)."""
        keys = [tuple(paths) for paths in characters]
        missing = [key for key in dict.fromkeys(keys) if key not in self._base]
        if missing:
            with base_model():
                self._base.update(zip(missing, self._cross_fitted(missing)[0], strict=True))
        errors, tokens = self._cross_fitted(keys)
        return [(tuple(round(float(g), 5) for g in (self._base[key] - lora) / np.maximum(self._base[key], 1e-8)),
                 self._nearest(fitted)) for key, lora, fitted in zip(keys, errors, tokens, strict=True)]

    def _cross_fitted(self, characters: list[tuple[str, ...]]) -> tuple[list[np.ndarray], list[torch.Tensor]]:
        """Per character, one soft prompt fitted on its even references and one on its odd, each scored on the
        other half: errors out of sample in the order of its paths, and its two fits. As many characters are
        fitted in one batch as the likelihood probe's batch holds references."""
        errors, tokens, batch = [], [], []
        for number, paths in enumerate(characters):
            batch.append(paths)
            rows = sum(map(len, batch))
            if number == len(characters) - 1 or rows + len(characters[number + 1]) > self.probe.spec.batch:
                batch_errors, batch_tokens = self._cross_fitted_batch(batch)
                errors += batch_errors
                tokens += batch_tokens
                batch = []
        return errors, tokens

    def _cross_fitted_batch(self, characters: list[tuple[str, ...]]) -> tuple[list[np.ndarray], list[torch.Tensor]]:
        paths = [path for group in characters for path in group]
        starts = np.cumsum([0] + [len(group) for group in characters])
        # Two groups of rows a character, its even references and its odd: group k is fitted by soft prompt k.
        groups = [rows for start, end in zip(starts, starts[1:], strict=False)
                  for rows in (list(range(start, end, 2)), list(range(start + 1, end, 2)))]
        with torch.inference_mode(False), torch.enable_grad():
            latents = torch.stack([self.probe._latent(p) for p in paths]).clone()  # out of inference mode
            noised = self.probe.noised(latents)
            tokens = self._fit(noised, groups)
            with torch.no_grad():
                crossed = [groups[k ^ 1] for k in range(len(groups))]  # each half scored under the other's tokens
                errors = self._errors(tokens, noised, crossed)
        out = np.zeros(len(paths))
        for rows, values in zip(crossed, errors, strict=True):
            out[rows] = values.float().cpu().numpy()
        return ([out[start:end] for start, end in zip(starts, starts[1:], strict=False)],
                [tokens[2 * k: 2 * k + 2] for k in range(len(characters))])

    def _fit(self, noised, groups) -> torch.Tensor:
        """One soft prompt a group of rows, fitted together by Adam: (groups, tokens, width). Each prompt's
        gradient is its own group's loss alone (the losses add)."""
        table = self._pipe.text_encoder.get_input_embeddings().weight
        start = table.detach().float().mean(0)  # the mean token: no word favoured at the start
        tokens = start.expand(len(groups), self.spec.tokens, -1).clone().requires_grad_(True)
        optimizer = torch.optim.Adam([tokens], lr=self.spec.learning_rate)
        # Fitted at the noisiest timestep alone (half the cost; where the prompt decides most), scored at all.
        noisiest = [max(noised, key=lambda n: int(n[2][0]))]
        for _ in range(self.spec.steps):
            loss = sum(e.mean() for e in self._errors(tokens, noisiest, groups))
            (gradient,) = torch.autograd.grad(loss, [tokens])  # no weight gradients: the models stay frozen
            tokens.grad = gradient
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        return tokens.detach()

    def _errors(self, tokens: torch.Tensor, noised, groups) -> list[torch.Tensor]:
        """Mean denoising error of each group's rows under its own soft prompt, over the timesteps."""
        states = self._states(tokens)
        unet = self._pipe.unet
        rows = [i for group in groups for i in group]
        context = torch.cat([states[k].expand(len(group), -1, -1) for k, group in enumerate(groups)])
        total = 0.0
        for noisy, noise, timestep in noised:
            predicted = unet(noisy[rows], timestep[rows], encoder_hidden_states=context.to(noisy.dtype)).sample
            total = total + ((predicted.float() - noise[rows].float()) ** 2).mean(dim=(1, 2, 3))
        return list((total / len(noised)).split([len(group) for group in groups]))

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
