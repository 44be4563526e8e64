"""The model libraries' console noise, off by default: load progress bars, diffusers' "No LoRA keys associated
to CLIPTextModel" for every UNet-only LoRA, transformers' notes about torchvision. A moderator or an operator
reading the gate's log saw those instead of the gate's own lines. Errors still show; an operator who wants the
libraries' chatter back sets TRANSFORMERS_VERBOSITY or DIFFUSERS_VERBOSITY, which are left alone."""

from __future__ import annotations

import logging
import os


def quiet_libraries() -> None:
    import diffusers.utils.logging as diffusers_logging
    import transformers.utils.logging as transformers_logging

    for library, variable in ((diffusers_logging, "DIFFUSERS_VERBOSITY"), (transformers_logging,
                                                                          "TRANSFORMERS_VERBOSITY")):
        if not os.environ.get(variable):
            library.set_verbosity(logging.ERROR)
            library.disable_progress_bar()
