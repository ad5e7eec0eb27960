"""Each modality: transform (raw sample -> model-ready tensor), tokenizer shapes, input checks."""

import json

import numpy as np
import pytest
import torch
from conftest import TINY
from PIL import Image

import omnivec
from omnivec import InputError
from omnivec.modalities.point_cloud import farthest_point_sample, group_points
from omnivec.modalities.text import load_tokenizer

TOKENS = {"image": 16, "video": 2 * 2 * 2, "audio": 2 * 3, "point_cloud": 8}  # per the conftest TINY config


@pytest.mark.parametrize("modality", ["image", "video", "audio", "point_cloud"])
def test_tokenize_shapes(tiny_model, tiny_config, modality):
    x = omnivec.example_inputs(tiny_config, batch_size=3)[modality]
    enc = tiny_model.encoders[modality]
    out = enc.tokenize(x)
    assert out.tokens.shape == (3, TOKENS[modality], enc.width) and out.padding_mask is None
    assert enc.num_tokens == TOKENS[modality]
    assert enc(x).tokens.shape == (3, TOKENS[modality], tiny_config.backbone.dim)


def test_text_tokenize_shapes(tiny_model, tiny_config):
    x = omnivec.example_inputs(tiny_config, batch_size=3)["text"]
    out = tiny_model.encoders["text"].tokenize(x)
    assert out.tokens.shape == (3, x["input_ids"].shape[1], 32)
    assert torch.equal(out.padding_mask, x["attention_mask"].bool())


def test_every_modality_embeds(tiny_model, tiny_config):
    batch = omnivec.example_inputs(tiny_config, batch_size=2)
    emb = tiny_model.embed(batch)
    assert set(emb) == {"image", "video", "audio", "text", "point_cloud"}
    for e in emb.values():
        assert e.shape == (2, 32)
        torch.testing.assert_close(e.norm(dim=-1), torch.ones(2))


@pytest.mark.parametrize(
    "modality, bad, expected",
    [
        ("image", torch.randn(2, 3, 15, 16), r"\[B, 3, 16, 16\]"),
        ("image", torch.randn(3, 16, 16), r"\[B, 3, 16, 16\]"),
        ("image", torch.zeros(2, 3, 16, 16, dtype=torch.uint8), "floating-point"),
        ("video", torch.randn(2, 3, 3, 16, 16), r"whole tubelets, \[B, T, 3, 16, 16\].*got 3 frames"),
        ("video", torch.randn(2, 6, 3, 16, 16), r"\[B, T, 3, 16, 16\].*T <= 4.*got length 6"),
        ("video", torch.randn(2, 4, 3, 8, 16), r"\[B, T, 3, 16, 16\]"),
        (
            "video",
            {"pixel_values": torch.randn(2, 4, 3, 16, 16), "attention_mask": torch.ones(2, 2)},
            r"attention_mask \[2, 4\]",
        ),
        (
            "video",
            {"pixel_values": torch.randn(2, 4, 3, 16, 16), "attention_mask": torch.tensor([[1] * 4, [0] * 4])},
            "at least one real frame per clip.*row 1",
        ),
        ("video", {"frames": torch.randn(2, 4, 3, 16, 16)}, r"pixel_values \[B, T, 3, 16, 16\]"),
        ("audio", torch.randn(2, 32, 48), r"\[B, T, 32\]"),
        ("audio", torch.randn(2, 49, 32), r"\[B, T, 32\].*T <= 48.*got length 49"),
        ("audio", torch.randn(2, 0, 32), r"1 <= T.*got length 0"),
        (
            "audio",
            {"input_values": torch.randn(2, 20, 32), "attention_mask": torch.ones(2, 20)},
            r"attention_mask \[2, 20\] of 0/1.*dtype torch.float32",
        ),
        (
            "audio",
            {"input_values": torch.randn(2, 20, 32), "attention_mask": torch.zeros(2, 20, dtype=torch.long)},
            "at least one real frame per clip.*row 0",
        ),
        ("audio", {"input_features": torch.randn(2, 20, 32)}, r"input_values \[B, T, 32\].*keys \['input_features'\]"),
        ("point_cloud", torch.randn(2, 64, 2), r"\[B, 64, 3\]"),
        ("text", torch.randint(0, 10, (2, 25)), "max_length"),
        ("text", torch.full((2, 4), 999), r"token ids in \[0, 261\)"),
        ("text", torch.randn(2, 4), "int token ids"),
    ],
)
def test_wrong_input_names_modality_and_expected_shape(tiny_model, modality, bad, expected):
    with pytest.raises(InputError, match=f"^{modality}: expected .*{expected}"):
        tiny_model.embed({modality: bad})


def test_unknown_modality_is_named(tiny_model):
    with pytest.raises(InputError, match="smell"):
        tiny_model.embed({"smell": torch.randn(1, 3)})


def test_image_transform(tiny_model):
    rng = np.random.default_rng(0)
    pil = Image.fromarray(rng.integers(0, 255, (20, 28), dtype=np.uint8))  # grayscale, not square
    for train in (False, True):
        x = tiny_model.transforms(train=train)["image"](pil)
        assert x.shape == (3, 16, 16) and x.dtype == torch.float32
        assert -3 < x.min() and x.max() < 3  # ImageNet-normalised range
    tensor = torch.randint(0, 256, (3, 40, 40), dtype=torch.uint8)
    assert tiny_model.transforms()["image"](tensor).shape == (3, 16, 16)


def test_video_transform_samples_frames(tiny_model):
    frames = torch.arange(20, dtype=torch.uint8).reshape(20, 1, 1, 1).expand(20, 24, 24, 3).contiguous()  # [T, H, W, C]
    t = tiny_model.transforms()["video"]
    x = t(frames)
    assert x.shape == (4, 3, 16, 16)
    assert t.frame_indices(20).tolist() == [2, 7, 12, 17]  # uniform, centred in each quarter
    assert (x[1:, 0, 0, 0] > x[:-1, 0, 0, 0]).all()  # frame order kept


def test_audio_transform_fbank(tiny_model):
    sr = 8000  # resampled to 16 kHz
    t = torch.arange(sr) / sr
    wave = torch.stack([torch.sin(2 * torch.pi * 440 * t), torch.sin(2 * torch.pi * 440 * t)])  # stereo, 1 s
    x = tiny_model.transforms()["audio"](wave, sr)
    assert x.shape == (48, 32) and torch.isfinite(x).all()
    # A 440 Hz tone puts its energy in the low mel bins.
    assert x[:, :8].mean() > x[:, -8:].mean()
    short = tiny_model.transforms()["audio"](torch.randn(100), 16000)  # shorter than one window: one frame
    assert short.shape == (1, 32)
    assert tiny_model.transforms()["audio"](wave[:, :2400], sr).shape == (28, 32)  # 0.3 s: its own 28 frames, unpadded


def test_text_embeddings_are_layer_normalised_and_older_models_load_without_the_norm(tiny_model, tiny_config, tmp_path):
    """BERT's embedding LayerNorm (`embed_norm`, on in the variants): text tokens enter the shared
    backbone with unit-variance features, not at the std-0.02 embeddings' scale, a small fraction of
    an image patch's; a model saved before the key existed (no key, no norm weights) loads as it was."""
    batch = omnivec.example_inputs(tiny_config, 2)
    tokens = tiny_model.encoders["text"].tokenize(batch["text"]).tokens  # [B, L, width]
    assert torch.allclose(tokens.std(-1, correction=0), torch.ones(()), atol=0.05)  # (LayerNorm eps)
    patches = tiny_model.encoders["image"].tokenize(batch["image"]).tokens
    assert tokens.norm(dim=-1).mean() > patches.norm(dim=-1).mean() / 4
    torch.manual_seed(0)
    older = omnivec.OmniVecModel(omnivec.model_config("omnivec_tiny", **TINY, **{"modalities.text.embed_norm": False}))
    plain = older.encoders["text"].tokenize(batch["text"]).tokens
    assert plain.norm(dim=-1).mean() < patches.norm(dim=-1).mean() / 10  # what the norm corrects
    older.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    del saved["modalities"]["text"]["embed_norm"]
    (tmp_path / "config.json").write_text(json.dumps(saved))
    loaded = omnivec.OmniVecModel.from_pretrained(tmp_path).eval()
    assert not loaded.config.modalities["text"].embed_norm
    text = {"text": batch["text"]}
    assert torch.equal(loaded.embed(text)["text"], older.eval().embed(text)["text"])


def test_text_transform_and_byte_tokenizer(tiny_model):
    out = tiny_model.transforms()["text"]("héllo wörld")
    ids = out["input_ids"]
    tok = load_tokenizer("bytes")
    assert ids[0] == tok.cls_token_id and ids[-1] == tok.sep_token_id
    assert len(ids) == len("héllo wörld".encode()) + 2
    assert tok.decode(ids, skip_special_tokens=True) == "héllo wörld"
    long = tiny_model.transforms()["text"]("x" * 100)
    assert long["input_ids"].shape == (24,)  # truncated to max_length


def test_text_vocab_smaller_than_tokenizer_is_a_config_error(tiny_config):
    tiny_config.modalities["text"].vocab_size = 100
    with pytest.raises(omnivec.ConfigError, match="modalities.text.vocab_size"):
        omnivec.OmniVecModel(tiny_config).transforms()


def test_point_cloud_transform(tiny_model):
    pts = np.random.default_rng(0).normal(size=(500, 3)) * 5 + 10
    for train in (False, True):
        x = tiny_model.transforms(train=train)["point_cloud"](pts)
        assert x.shape == (64, 3)
        assert x.norm(dim=1).max() < 1.5
    few = tiny_model.transforms()["point_cloud"](pts[:10])  # fewer points than asked: resampled
    assert few.shape == (64, 3)


def test_farthest_point_sampling_and_groups():
    # Two far clusters: FPS must pick a centre in each.
    a = torch.randn(50, 3) * 0.01
    xyz = torch.cat([a, a + 10])[None]
    idx = farthest_point_sample(xyz, 2)[0]
    assert (idx[0] < 50) != (idx[1] < 50)
    centres, groups = group_points(torch.cat([xyz, torch.ones(1, 100, 2)], -1), 2, 5)
    assert centres.shape == (1, 2, 3) and groups.shape == (1, 2, 5, 5)
    assert groups[..., :3].abs().max() < 0.1  # neighbours of a centre are near it
    assert (groups[..., 3:] == 1).all()  # extra channels carried through


def test_video_frames_are_pyavs_rgb_pixels_and_decode_in_forked_workers():
    """VideoFile converts frames without swscale's slice threads: the same pixels as PyAV's default
    `to_ndarray(format="rgb24")`, and a DataLoader worker forked after the main process decoded
    a clip decodes too (threads a fork does not copy once deadlocked it)."""
    import av
    from helpers import SAMPLE
    from torch.utils.data import DataLoader

    from omnivec.modalities.video_files import VideoFile

    clips = sorted((SAMPLE / "moving_digits" / "clips").iterdir())[:4]
    expected = []
    for clip in clips:
        with av.open(str(clip)) as container:
            expected.append(np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)]))
    first = VideoFile(clips[0]).frames(range(len(expected[0]))).numpy()  # decoded in this process first

    def decode(clip):
        video = VideoFile(clip)
        return video.frames(range(len(video))).numpy()

    loader = DataLoader(clips[1:], batch_size=None, num_workers=1, timeout=60, collate_fn=decode)
    got = [first, *loader]
    for want, have in zip(expected, got, strict=True):
        assert np.array_equal(want, have)
