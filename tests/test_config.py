import json

import pytest

import omnivec
from omnivec import ConfigError, OmniVecConfig


def test_roundtrip_through_json(tiny_config, tmp_path):
    tiny_config.save(tmp_path / "config.json")
    loaded = OmniVecConfig.load(tmp_path / "config.json")
    assert loaded == tiny_config
    assert json.loads((tmp_path / "config.json").read_text())["modalities"]["image"]["patch_size"] == 4


@pytest.mark.parametrize(
    "overrides, key",
    [
        ({"modalities.smell": {}}, "modalities.smell"),
        ({"backbone.dim": -8}, "backbone.dim"),
        ({"modalities.image.width": -1}, "modalities.image.width"),
        ({"backbone.depth": "two"}, "backbone.depth"),
        ({"modalities.audio.patch_sise": 16}, "modalities.audio.patch_sise"),
        ({"modalities.image.patch_size": 5}, "modalities.image.patch_size"),
        ({"modalities.video.mask_ratio": 1.5}, "modalities.video.mask_ratio"),
        ({"modalities.image.mean": [0.5]}, "modalities.image.mean"),
        ({"heads.x": {"type": "classification", "modality": "smell"}}, "heads.x.modality"),
        ({"heads.x": {"type": "no_such_head", "modality": "image"}}, "heads.x.type"),
        ({"backbone.num_heads": 5}, "backbone.num_heads"),
        ({"modalities.point_cloud.in_chans": 2}, "modalities.point_cloud.in_chans"),
        ({"modalities.audio.patch_stride": 8}, "modalities.audio.patch_stride"),  # > patch_size 4: skips frames
        ({"modalities.audio.frame_patches": "maybe"}, "modalities.audio.frame_patches"),
    ],
)
def test_bad_config_names_the_key(overrides, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        omnivec.model_config("omnivec_tiny", **overrides)


def test_unknown_key_suggests_the_closest():
    with pytest.raises(ConfigError, match="did you mean 'patch_size'"):
        omnivec.model_config("omnivec_tiny", **{"modalities.audio.patch_sise": 16})


def test_bool_is_not_an_int():
    with pytest.raises(ConfigError, match="backbone.depth"):
        omnivec.model_config("omnivec_tiny", **{"backbone.depth": True})


def test_modality_heads_must_divide_width():
    with pytest.raises(ConfigError, match="modalities.image.num_heads"):
        omnivec.build_model("omnivec_tiny", **{"modalities.image": {"depth": 1, "width": 48, "num_heads": 5}})


def test_none_drops_a_modality_and_dotted_keys_merge():
    cfg = omnivec.model_config("omnivec_tiny", **{"modalities.video": None, "backbone.depth": 1})
    assert "video" not in cfg.modalities and cfg.backbone.depth == 1
    assert cfg.backbone.dim == 128  # untouched keys keep the variant's values


def test_unknown_variant_lists_the_registered_ones():
    with pytest.raises(KeyError, match="omnivec_tiny"):
        omnivec.build_model("omnivec_tinny")
