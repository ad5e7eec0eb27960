"""Shared by the training tests: the sample data and a very small omnivec_tiny for recipes."""

from pathlib import Path

SAMPLE = Path(__file__).parents[1] / "data" / "sample"

# Width 32, one layer, image + text + point cloud only: recipes run in seconds.
SMALL_MODEL_OVERRIDES = {
    "backbone": {"dim": 32, "depth": 1, "num_heads": 2},
    "modalities": {
        "video": None,
        "audio": None,
        "text": {"tokenizer": str(SAMPLE / "tokenizer"), "vocab_size": 4000, "max_length": 32},
        "point_cloud": {"num_points": 128, "num_groups": 8, "group_size": 8, "pointnet_dims": [16, 32, 32]},
    },
}
