"""Screening images, not LoRA files: training sets before a hub trains, preview images, generated images.

The same registry as the LoRA probes, with the image embedder (the probes' embedder unless one is named): each
image is embedded as its views (the whole and crops of it), matched against every registered character's
references under image-level thresholds (calibrated on negative images), and a set is judged by how many of its
images match one character against what chance gives clean sets of its size."""
