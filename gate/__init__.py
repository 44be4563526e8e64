"""LoRA Gate: an upload gate that decides what an uploaded LoRA is and what it makes a model draw."""

__version__ = "0.1.0"
