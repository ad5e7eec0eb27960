import pytest
import torch

import omnivec

# Width 32, one layer everywhere, one modality block for the modalities that can have them.
TINY = {
    "backbone": {"dim": 32, "depth": 1, "num_heads": 2},
    "modalities": {
        "image": {"image_size": 16, "patch_size": 4, "depth": 1, "width": 48, "num_heads": 2},
        "video": {"num_frames": 4, "image_size": 16, "patch_size": 8},
        # square 16 x 16 patches (omnivec_tiny's are frame patches: tests/test_padding.py covers both)
        "audio": {
            "num_mel_bins": 32,
            "target_frames": 48,
            "frame_patches": False,
            "patch_size": 16,
            "patch_stride": 16,
        },
        "text": {"max_length": 24},
        "point_cloud": {"num_points": 64, "num_groups": 8, "group_size": 8},
    },
    "heads": {"digits": {"type": "classification", "modality": "image", "num_classes": 10}},
}


@pytest.fixture
def tiny_config() -> omnivec.OmniVecConfig:
    return omnivec.model_config("omnivec_tiny", **TINY)


@pytest.fixture
def tiny_model(tiny_config) -> omnivec.OmniVecModel:
    torch.manual_seed(0)
    return omnivec.OmniVecModel(tiny_config).eval()
