"""Encoders that start from another library's checkpoint (timm, transformers), one family per file,
and the reader of a pretrained ViT that becomes the shared backbone (vit_backbone.py).

A modality's `pretrained: "FAMILY:SOURCE"` picks `ENCODERS["MODALITY/FAMILY"]` instead of the
modality's own encoder (`loading.build_encoder`). Each wraps the library's model
(`encoder.library`), feeds it omnivec's model-ready inputs, drops masked tokens after the
library's patch embedding, and hands the library's output tokens to the shared backbone through an
optional projection.
"""

from . import hf_ast, hf_text, hf_videomae, hf_vit, timm_image, vit_backbone  # noqa: F401  (registers the families)
