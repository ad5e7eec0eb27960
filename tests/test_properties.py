"""Property tests (hypothesis) over input shapes, lengths and values for every modality's transform
and encoder: either a finite, well-shaped output or one of the documented errors."""

import numpy as np
import pytest
import torch
from conftest import TINY
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

import omnivec
from omnivec import InputError

torch.manual_seed(0)
MODEL = omnivec.OmniVecModel(omnivec.model_config("omnivec_tiny", **TINY)).eval()
CFG = MODEL.config.modalities
TRANSFORMS = MODEL.transforms(train=False)
TRAIN_TRANSFORMS = MODEL.transforms(train=True)
PROPERTY = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def embed_is_finite(modality: str, x) -> None:
    with torch.no_grad():
        emb = MODEL.embed({modality: x})[modality]
    assert emb.shape == (len(x["input_ids"]) if isinstance(x, dict) else len(x), MODEL.config.backbone.dim)
    assert torch.isfinite(emb).all()


@PROPERTY
@given(
    width=st.integers(1, 80),
    height=st.integers(1, 80),
    mode=st.sampled_from(["L", "RGB", "RGBA", "P", "I;16"]),
    train=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_image_any_size_and_mode(width, height, mode, train, seed):
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    image = Image.fromarray(pixels).convert(mode)
    x = (TRAIN_TRANSFORMS if train else TRANSFORMS)["image"](image)
    s = CFG["image"].image_size
    assert x.shape == (3, s, s) and torch.isfinite(x).all()
    embed_is_finite("image", x[None])


@PROPERTY
@given(
    frames=st.integers(1, 24),
    size=st.integers(1, 40),
    channels=st.sampled_from([1, 3]),
    channels_last=st.booleans(),
    train=st.booleans(),
)
def test_video_any_length_and_size(frames, size, channels, channels_last, train):
    clip = torch.randint(
        0,
        256,
        (frames, size, size + 3, channels) if channels_last else (frames, channels, size, size + 3),
        dtype=torch.uint8,
    )
    x = (TRAIN_TRANSFORMS if train else TRANSFORMS)["video"](clip)
    c = CFG["video"]
    length = min(
        c.num_frames, -(-frames // c.tubelet_size) * c.tubelet_size
    )  # a short clip: its own frames, whole tubelets
    assert x.shape == (length, 3, c.image_size, c.image_size) and torch.isfinite(x).all()
    embed_is_finite("video", x[None])


@PROPERTY
@given(
    samples=st.integers(1, 30000),
    channels=st.integers(1, 3),
    rate=st.sampled_from([8000, 16000, 22050, 44100]),
    scale=st.floats(1e-6, 1e3),
    train=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_audio_any_length_rate_and_channels(samples, channels, rate, scale, train, seed):
    waveform = torch.from_numpy(np.random.default_rng(seed).normal(size=(channels, samples)).astype(np.float32)) * scale
    x = (TRAIN_TRANSFORMS if train else TRANSFORMS)["audio"](waveform, rate)
    c = CFG["audio"]
    assert 1 <= x.shape[0] <= c.target_frames and x.shape[1] == c.num_mel_bins and torch.isfinite(x).all()
    embed_is_finite("audio", x[None])


@PROPERTY
@given(texts=st.lists(st.text(max_size=300), min_size=1, max_size=3))
def test_text_any_unicode_and_length(texts):
    encoded = [TRANSFORMS["text"](t) for t in texts]
    c = CFG["text"]
    for e in encoded:
        assert 2 <= len(e["input_ids"]) <= c.max_length  # [CLS] ... [SEP], truncated
        assert int(e["input_ids"].max()) < c.vocab_size
    length = max(len(e["input_ids"]) for e in encoded)
    ids = torch.zeros(len(texts), length, dtype=torch.long)
    mask = torch.zeros(len(texts), length, dtype=torch.long)
    for i, e in enumerate(encoded):
        ids[i, : len(e["input_ids"])], mask[i, : len(e["input_ids"])] = e["input_ids"], 1
    embed_is_finite("text", {"input_ids": ids, "attention_mask": mask})


@PROPERTY
@given(
    points=st.integers(0, 3000),
    columns=st.integers(1, 7),
    scale=st.floats(1e-4, 1e4),
    train=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_point_cloud_any_count_and_columns(points, columns, scale, train, seed):
    cloud = np.random.default_rng(seed).normal(size=(points, columns)).astype(np.float32) * scale
    transform = (TRAIN_TRANSFORMS if train else TRANSFORMS)["point_cloud"]
    if points == 0 or columns < 3:
        with pytest.raises(InputError, match="point_cloud: expected points"):
            transform(cloud)
        return
    x = transform(cloud)
    assert x.shape == (CFG["point_cloud"].num_points, 3) and torch.isfinite(x).all()
    embed_is_finite("point_cloud", x[None])


@PROPERTY
@given(
    modality=st.sampled_from(["image", "video", "audio", "point_cloud"]),
    shape=st.lists(st.integers(0, 40), min_size=1, max_size=5),
    dtype=st.sampled_from([torch.float32, torch.int64]),
)
def test_any_tensor_either_embeds_or_raises_input_error(modality, shape, dtype):
    x = torch.zeros(shape, dtype=dtype)
    try:
        embed_is_finite(modality, x)
    except InputError as e:
        assert str(e).startswith(f"{modality}: expected")


@PROPERTY
@given(batch=st.integers(1, 3), length=st.integers(1, 40), vocab=st.integers(1, 400))
def test_any_token_ids_either_embed_or_raise_input_error(batch, length, vocab):
    ids = torch.randint(0, vocab, (batch, length))
    try:
        embed_is_finite("text", {"input_ids": ids, "attention_mask": torch.ones_like(ids)})
    except InputError as e:
        assert str(e).startswith("text: expected")


@PROPERTY
@given(value=st.sampled_from([float("nan"), float("inf"), -float("inf")]), position=st.integers(0, 10**6))
def test_non_finite_values_raise_input_error(value, position):
    x = omnivec.example_inputs(MODEL.config, 1)["image"].clone()
    x.view(-1)[position % x.numel()] = value
    with pytest.raises(InputError, match="image: expected finite values"):
        MODEL.embed({"image": x})
