"""Image embedders loaded through transformers from a local directory: the fixture world's now, CLIP,
SigLIP or DINOv2 in production, through the same code."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from probes.contract import embedder_id
from probes.render import pick_device
from probes.views import (
    REFERENCE_VIEW_COUNT,
    VIEW_COUNT,
    floored,
    image_views,
    reference_views,
    reference_views_id,
    views_id,
)


class ImageEmbedder:
    """Embeds uint8 RGB images (each h, w, 3; sizes may differ) to L2-normalised vectors (n, d)."""

    def __init__(self, model_dir: str | Path, device: str | None = None, batch_size: int = 64):
        import transformers

        self.device, _ = pick_device(device)
        self.model_dir = Path(model_dir)
        config = transformers.AutoConfig.from_pretrained(self.model_dir, local_files_only=True)
        # The saved architecture decides the class: AutoModel would drop a projection head.
        architecture = (config.architectures or ["AutoModel"])[0]
        model_class = getattr(transformers, architecture, transformers.AutoModel)
        self.model = model_class.from_pretrained(self.model_dir, local_files_only=True).to(self.device).eval()
        self.processor = transformers.AutoImageProcessor.from_pretrained(self.model_dir, local_files_only=True)
        self.batch_size = batch_size

    @torch.inference_mode()
    def embed(self, images) -> np.ndarray:
        vectors = []
        for start in range(0, len(images), self.batch_size):
            batch = list(images[start : start + self.batch_size])
            inputs = self.processor(images=batch, return_tensors="pt").to(self.device)
            vectors.append(self._features(inputs["pixel_values"]).float().cpu().numpy())
        if not vectors:
            return np.zeros((0, 0), np.float32)
        matrix = np.concatenate(vectors)
        return matrix / np.maximum(np.linalg.norm(matrix, axis=1, keepdims=True), 1e-12)

    def _features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        if hasattr(self.model, "get_image_features"):  # CLIPModel, SiglipModel
            features = self.model.get_image_features(pixel_values=pixel_values)
            return features if isinstance(features, torch.Tensor) else features.pooler_output
        output = self.model(pixel_values=pixel_values)
        for field in ("image_embeds", "pooler_output"):
            value = getattr(output, field, None)
            if value is not None:
                return value
        return output.last_hidden_state[:, 0]


VIEW_BYTES = 64 * 2**20  # the views held before they are embedded: 64 fixture images' 1,216, or 5 big ones'


class ImageScreeningEmbedder:
    """The image embedder as image screening uses it: a reference as its reference views, a screened image as its
    views (probes/views.py), each image's view vectors stacked into one row."""

    def __init__(self, model_dir: str | Path, device: str | None = None, loaded: ImageEmbedder | None = None):
        self.embedder = loaded or ImageEmbedder(model_dir, device)  # `loaded`: the same model, already resident
        self.reference_id = reference_views_id(embedder_id(model_dir))
        self.vectors_id = views_id(self.reference_id)

    def references(self, images) -> np.ndarray:
        """(n, REFERENCE_VIEW_COUNT * d): every reference view of every image; a crop less similar than
        REFERENCE_VIEW_FLOOR to its whole is the whole again (the row keeps its shape)."""
        rows = self._stacked(images, reference_views, REFERENCE_VIEW_COUNT)
        if not len(rows):
            return rows
        return floored(rows.reshape(len(rows), REFERENCE_VIEW_COUNT, -1)).reshape(len(rows), -1)

    def images(self, images) -> np.ndarray:
        """(n, VIEW_COUNT * d): every view of every image."""
        return self._stacked(images, image_views, VIEW_COUNT)

    def _stacked(self, images, views_of, count: int) -> np.ndarray:
        """Each image's views' vectors in one row, embedded as views pile up to VIEW_BYTES (many small images'
        views at once, a few big ones')."""
        if not len(images):
            return np.zeros((0, 0), np.float32)
        rows, views, held = [], [], 0
        for number, image in enumerate(images):
            views += views_of(image)
            held += sum(view.nbytes for view in views[-count:])
            if held >= VIEW_BYTES or number == len(images) - 1:
                rows.append(self.embedder.embed(views).reshape(len(views) // count, -1))
                views, held = [], 0
        return np.concatenate(rows)
