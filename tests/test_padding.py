"""Padding is not content: a short clip or video contributes only its real patches / tubelets."""

import copy
import logging

import pytest
import torch
from conftest import TINY

import omnivec
from omnivec.errors import InputError
from omnivec.mae import DecoderConfig, MaskedPretrainer
from omnivec.masking import gather_tokens, keep_count, random_masking, tube_masking
from omnivec.modalities.audio import time_major

GROWN = {"audio": {"modalities.audio.target_frames": 96}, "video": {"modalities.video.num_frames": 8}}
FRAMES = {"modalities.audio.frame_patches": True, "modalities.audio.patch_size": 4, "modalities.audio.patch_stride": 4}


def pretrainer(**overrides) -> MaskedPretrainer:
    config = omnivec.model_config("omnivec_tiny", **TINY, **overrides)
    torch.manual_seed(0)
    return MaskedPretrainer(omnivec.OmniVecModel(config), DecoderConfig(dim=32, depth=1, num_heads=2)).eval()


def clip(modality: str, length: int, seed: int = 0) -> torch.Tensor:
    """One model-ready sample of `length` frames (TINY sizes)."""
    g = torch.Generator().manual_seed(seed)
    shape = (length, 32) if modality == "audio" else (length, 3, 16, 16)
    return torch.randn(*shape, generator=g)


def padded_batch(modality: str) -> dict[str, torch.Tensor]:
    """Three samples, two of them short, as `collate` pads them."""
    lengths = {"audio": (20, 48, 33), "video": (2, 4, 2)}[modality]
    return omnivec.registry.MODALITIES.get(modality).collate([clip(modality, n, i) for i, n in enumerate(lengths)])


def grow(small: MaskedPretrainer, big: MaskedPretrainer, modality: str) -> None:
    """Give `big` (longer inputs) `small`'s weights, with the positions of the shorter input in the
    same places: the audio encoder's first time columns (stored frequency-major, as AST's), the video
    encoder's and every decoder's first tokens (time-major)."""
    ours, theirs = small.state_dict(), big.state_dict()
    for key, value in theirs.items():
        if value.shape == ours[key].shape:
            value.copy_(ours[key])
    enc, dec = theirs[f"model.encoders.{modality}.pos_embed"], theirs[f"decoders.{modality}.pos_embed"]
    if modality == "audio":
        f = small.model.encoders[modality].cfg.grid[0]  # patches along frequency: 2 (mel bins 32, patch 16) or 1
        enc.unflatten(1, (f, -1))[:, :, : ours[f"model.encoders.{modality}.pos_embed"].shape[1] // f] = ours[
            f"model.encoders.{modality}.pos_embed"
        ].unflatten(1, (f, -1))
    else:
        enc[:, : ours[f"model.encoders.{modality}.pos_embed"].shape[1]] = ours[f"model.encoders.{modality}.pos_embed"]
    dec[:, : ours[f"decoders.{modality}.pos_embed"].shape[1]] = ours[f"decoders.{modality}.pos_embed"]
    big.load_state_dict(theirs)


@pytest.mark.parametrize(
    "modality, length, patches",
    [("audio", 30, {}), ("audio", 30, FRAMES), ("video", 2, {})],
    ids=["audio", "audio-frame-patches", "video"],
)
def test_a_short_clip_does_not_change_when_the_input_size_grows(modality, length, patches):
    small, big = pretrainer(**patches), pretrainer(**GROWN[modality], **patches)
    grow(small, big, modality)
    x = clip(modality, length)[None]  # [1, T, ...]: batch size 1, so the masks agree
    with torch.no_grad():
        embeddings = [p.model.embed({modality: x})[modality] for p in (small, big)]
        losses = [p({modality: {"input": x}}, step=3)[modality] for p in (small, big)]
        longer = clip(modality, 96 if modality == "audio" else 8, seed=1)
        in_batch = big.model.embed({modality: big.model.encoders[modality].collate([x[0], longer])})[modality]
    torch.testing.assert_close(embeddings[1], embeddings[0], atol=1e-6, rtol=0)
    torch.testing.assert_close(losses[1], losses[0], atol=1e-6, rtol=0)
    torch.testing.assert_close(in_batch[:1], embeddings[0], atol=1e-5, rtol=0)  # padded beside a longer clip


@pytest.mark.parametrize(
    "modality, patches",
    [("audio", {}), ("audio", FRAMES), ("video", {})],
    ids=["audio", "audio-frame-patches", "video"],
)
def test_padding_is_never_visible_nor_a_target(modality, patches):
    enc = pretrainer(**patches).model.encoders[modality]
    batch = padded_batch(modality)
    real = enc.padding_mask(batch)  # [B, L]
    assert not real.all() and real.any(1).all()
    masking = enc.sample_mask(batch, torch.Generator().manual_seed(0))
    assert not (masking.mask & ~real).any()  # never a target
    kept = gather_tokens(real, masking.ids_keep)  # [B, K]
    assert (kept | ~masking.keep_valid).all()  # every kept slot is real or not valid
    out = enc(batch, masking.ids_keep, masking.keep_valid, with_target=True)
    assert torch.equal(out.padding_mask, kept & masking.keep_valid)  # never visible to the blocks and backbone
    for b in range(len(real)):  # every real token is kept or hidden, never both
        visible = set(masking.ids_keep[b][masking.keep_valid[b]].tolist())
        hidden = set(masking.mask[b].nonzero().flatten().tolist())
        assert visible.isdisjoint(hidden) and visible | hidden == set(real[b].nonzero().flatten().tolist())


@pytest.mark.parametrize("modality", ["audio", "video"])
def test_padded_values_change_no_output(modality):
    p = pretrainer()
    batch = padded_batch(modality)
    key = next(k for k in batch if k != "attention_mask")
    noisy = dict(batch)
    pad = (batch["attention_mask"] == 0).reshape(*batch["attention_mask"].shape, *[1] * (batch[key].ndim - 2))
    noisy[key] = torch.where(pad, 100 * torch.randn_like(batch[key]), batch[key])
    assert not torch.equal(noisy[key], batch[key])
    with torch.no_grad():
        outs = [p.model({modality: x}) for x in (batch, noisy)]
        losses = [p({modality: {"input": x}}, step=1)[modality] for x in (batch, noisy)]
    real = outs[0].padding_mask[modality]
    assert torch.equal(outs[0].hidden_states[modality][real], outs[1].hidden_states[modality][real])
    assert torch.equal(outs[0].pooled[modality], outs[1].pooled[modality])
    assert torch.equal(losses[0], losses[1])


@pytest.mark.parametrize("modality", ["audio", "video"])
def test_a_short_clip_reconstructs_the_same_alone_and_in_a_padded_batch(modality):
    """Encoder blocks, backbone and decoder ignore the padded tokens: the features of a short clip
    and the predictions of its hidden tokens do not depend on the longer clip beside it."""
    p = pretrainer(**{f"modalities.{modality}.depth": 1, f"modalities.{modality}.num_heads": 2})
    enc = p.model.encoders[modality]
    short, longer = (
        clip(modality, 20 if modality == "audio" else 2),
        clip(modality, 48 if modality == "audio" else 4, 1),
    )
    alone, batch = short[None], enc.collate([short, longer])
    ratio = enc.cfg.mask_ratio
    if modality == "audio":  # 2 of 3 time patches x 2 frequency patches, the same noise on the first 4
        noise = torch.rand(2, 6, generator=torch.Generator().manual_seed(0))
        maskings = [
            random_masking(1, 4, ratio, noise=noise[:1, :4]),
            random_masking(2, 6, ratio, enc.padding_mask(batch), noise=noise),
        ]
    else:  # tube masking: the same spatial noise, 1 of 2 time steps
        noise = torch.rand(2, 4, generator=torch.Generator().manual_seed(0))
        maskings = [
            tube_masking(1, (1, 2, 2), ratio, noise=noise[:1]),
            tube_masking(2, (2, 2, 2), ratio, noise=noise, padding_mask=torch.tensor([[True, False], [True, True]])),
        ]
    with torch.no_grad():
        results = [p.reconstruct(modality, x, masking=m) for x, m in zip((alone, batch), maskings)]
        hidden = [p.model({modality: x}).hidden_states[modality] for x in (alone, batch)]
    torch.testing.assert_close(hidden[1][:1, : hidden[0].shape[1]], hidden[0], atol=1e-5, rtol=0)
    n = int(results[0]["mask"].sum())
    assert torch.equal(results[1]["mask"][0, : results[0]["mask"].shape[1]], results[0]["mask"][0])
    torch.testing.assert_close(results[1]["pred"][:n], results[0]["pred"], atol=1e-5, rtol=0)


def test_audio_transform_and_collate_round_trip(tiny_model):
    enc, cfg = tiny_model.encoders["audio"], tiny_model.config.modalities["audio"]
    transform = tiny_model.transforms()["audio"]
    wave = torch.randn(16000, generator=torch.Generator().manual_seed(0))
    short, long = transform(wave[:4000], 16000), transform(wave, 16000)  # 0.25 s, 1 s
    assert short.shape == (23, 32) and long.shape == (48, 32)  # unpadded; cropped to target_frames
    torch.testing.assert_close(short, long[:23], atol=1e-5, rtol=0)  # the same frames, not stretched
    assert torch.equal(enc.collate([short, short]), torch.stack([short, short]))  # nothing to pad: a tensor
    batch = enc.collate([short, long], cfg)
    assert batch["attention_mask"].tolist() == [[1] * 23 + [0] * 25, [1] * 48]
    assert torch.equal(batch["input_values"][0, :23], short)
    assert (batch["input_values"][0, 23:] == cfg.padding_value).all()
    values, frame_mask = enc.frames(batch)
    torch.testing.assert_close(enc.unpatchify(enc.patchify(batch)), values)  # the figures' inverse
    assert enc.padding_mask(batch).tolist() == [[True] * 4 + [False] * 2, [True] * 6]  # time-major: a prefix
    values, frame_mask = enc.frames(short[None])  # alone: completed to whole patches, every patch real
    assert values.shape == (1, 32, 32) and frame_mask is None and (values[0, 23:] == cfg.padding_value).all()


def test_video_transform_and_collate_round_trip(tiny_model):
    enc = tiny_model.encoders["video"]  # 4 frames, tubelet 2
    transform = tiny_model.transforms()["video"]
    frames = torch.arange(3, dtype=torch.uint8).reshape(3, 1, 1, 1).expand(3, 20, 20, 3).contiguous() * 80
    assert transform.frame_indices(3).tolist() == [0, 1, 2, 2]  # its own frames, the last tubelet completed
    assert transform.frame_indices(1).tolist() == [0, 0]
    short = transform(frames)
    assert short.shape == (4, 3, 16, 16) and torch.equal(short[2], short[3])
    two = transform(frames[:2])
    assert two.shape == (2, 3, 16, 16)
    batch = enc.collate([two, short])
    assert (
        batch["attention_mask"].tolist() == [[1, 1, 0, 0], [1, 1, 1, 1]] and (batch["pixel_values"][0, 2:] == 0).all()
    )
    torch.testing.assert_close(enc.unpatchify(enc.patchify(batch)), batch["pixel_values"])
    assert enc.padding_mask(batch).tolist() == [[True] * 4 + [False] * 4, [True] * 8]


def test_full_length_audio_tokens_are_the_frequency_major_ones_in_time_major_order(tiny_model):
    """What changed for a full-length clip: the order of its tokens (time-major), nothing else."""
    enc = tiny_model.encoders["audio"]
    x = torch.randn(2, 48, 32)
    old = enc.patch_embed(x.transpose(1, 2).unsqueeze(1)).flatten(2).transpose(1, 2) + enc.pos_embed  # [B, F*T, W]
    assert torch.equal(enc.tokenize(x).tokens, time_major(old, 2))
    assert enc.padding_mask(x) is None


@pytest.mark.parametrize("modality", ["audio", "video"])
def test_packed_pretraining_with_padded_clips_gives_the_same_losses(modality):
    plain = pretrainer()
    packed = copy.deepcopy(plain)
    packed.pack = True
    batch = {modality: {"input": padded_batch(modality)}, "image": {"input": torch.randn(3, 3, 16, 16)}}
    losses = [module(batch, step=2) for module in (plain, packed)]
    for m in batch:
        torch.testing.assert_close(losses[1][m], losses[0][m], atol=1e-5, rtol=1e-5)


def test_padded_dicts_in_other_dtypes_and_with_nan_are_handled(tiny_model):
    batch = padded_batch("audio")
    as64 = {"input_values": batch["input_values"].double(), "attention_mask": batch["attention_mask"]}
    torch.testing.assert_close(tiny_model.embed({"audio": as64})["audio"], tiny_model.embed({"audio": batch})["audio"])
    batch["input_values"][1, 3, 4] = float("nan")
    with pytest.raises(InputError, match=r"audio: expected finite values, got nan at index \[1, 3, 4\]"):
        tiny_model.embed({"audio": batch})


def test_too_few_visible_tokens_are_warned_about(caplog):
    with caplog.at_level(logging.WARNING, logger="omnivec.pretraining"):
        p = pretrainer(**{"modalities.text.max_length": 32})
    warned = {r.getMessage().split(":")[0]: r.getMessage() for r in caplog.records}
    assert (
        "audio: masked pretraining leaves 3 visible tokens per full-length sample (6 tokens, mask_ratio 0.5;"
        in warned["audio"]
    )
    assert "leaves 2 visible tokens" in warned["video"]  # tube masking: 1 of 4 places x 2 time steps
    assert p.model.encoders["video"].visible_tokens() == 2 == 2 * int(keep_count(torch.tensor(4), 0.9))
    assert "text" not in warned  # 32 tokens at omnivec_tiny's 0.7: 10 visible


def test_reconstruction_figures_of_padded_batches(tmp_path):
    from omnivec.plots import plot_reconstructions

    p = pretrainer()
    loaders = {m: [{"input": padded_batch(m)}] for m in ("audio", "video")}
    plot_reconstructions(p, loaders, 2, tmp_path / "reconstructions.png", torch.device("cpu"))
    assert (tmp_path / "reconstructions.png").stat().st_size > 0
    enc, batch = p.model.encoders["audio"], padded_batch("audio")
    r = p.reconstruct("audio", batch, torch.Generator().manual_seed(0))
    raw, blank, recon = enc.reconstruction_panels(batch, r)
    assert raw.shape == (3, 32, 48)  # [n, mel, frames]: the batch's frames, padding included
    assert not blank[0, :, 32:].isnan().any()  # padding is never hidden


def test_frame_patches_hold_every_mel_bin_of_their_frames():
    """`frame_patches`: one token per 4 frames over all 32 mel bins; a patch round-trips, and a change
    in frames 4-7 changes the second token's patch and embedding alone."""
    enc = pretrainer(**FRAMES).model.encoders["audio"]
    assert enc.cfg.grid == (1, 12) and enc.num_tokens == 12 and enc.target_dim == 32 * 4
    x = clip("audio", 20)[None]  # [1, 20, 32]
    patches = enc.patchify(x)  # [1, 5, 128]
    assert patches.shape == (1, 5, 128)
    torch.testing.assert_close(enc.unpatchify(patches), x)
    changed = x.clone()
    changed[0, 5, 31] += 1  # frame 5, the top mel bin
    moved = (enc.patchify(changed) != patches).any(-1)[0]  # [5]
    assert moved.tolist() == [False, True, False, False, False]
    with torch.no_grad():
        tokens = [enc.tokenize(v).tokens for v in (x, changed)]  # [1, 5, D]
    assert ((tokens[0] - tokens[1]).abs().amax(-1)[0] > 0).tolist() == moved.tolist()
