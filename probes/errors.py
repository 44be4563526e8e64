"""Outcomes of the GPU side that the gate must understand without importing torch."""


class UnsupportedLora(Exception):
    """The LoRA cannot be applied to this base model; the outcome is 'unsupported', not a crash."""

    code = "lora_unsupported"

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message
