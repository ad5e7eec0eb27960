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


def test_a_recipe_yaml_with_a_key_twice_or_a_list_at_the_top_is_refused_naming_it(tmp_path):
    """PyYAML keeps the last of two equal keys without a word: a recipe refuses them, naming the line;
    a key a `<<` merge brings in may still be set again."""
    from omnivec.pretraining import PretrainConfig
    from omnivec.recipe_config import load_recipe_config

    twice = tmp_path / "twice.yaml"
    twice.write_text("lr: 1.0e-3\nbatch_size: 2\nlr: 3.0e-4\n")
    with pytest.raises(ConfigError, match=rf"^{twice}: line 3: the key 'lr' is given twice"):
        load_recipe_config(PretrainConfig, twice)
    merged = tmp_path / "merged.yaml"
    merged.write_text(  # an anchored mapping that merges, merged itself before it is built
        "defaults: &d {dim: 64, depth: 1}\ndecoder: &dec\n  <<: *d\n  depth: 2\nlatent: {<<: *dec}\n"
    )
    with pytest.raises(ConfigError, match=r"^defaults: unknown key"):  # read, then validated
        load_recipe_config(PretrainConfig, merged)
    listed = tmp_path / "listed.yaml"
    listed.write_text("- lr: 1.0\n")
    with pytest.raises(
        ConfigError, match=rf"^{listed}: expected a mapping of config keys at the top level, got a list"
    ):
        load_recipe_config(PretrainConfig, listed)


def test_a_saved_config_json_with_a_bad_key_names_the_file(tmp_path, tiny_model):
    tiny_model.save_pretrained(tmp_path / "m")
    path = tmp_path / "m" / "config.json"
    data = json.loads(path.read_text())
    data["backbone"]["depht"] = 2
    path.write_text(json.dumps(data))
    with pytest.raises(ConfigError, match=rf"^{path}: backbone.depht: unknown key"):
        omnivec.OmniVecModel.from_pretrained(tmp_path / "m")
