"""Each head's loss and metric on hand-made inputs; generation limits."""

import math

import pytest
import torch
import torch.nn.functional as F

from omnivec.heads.action import ActionHead, ActionHeadConfig
from omnivec.heads.classification import ClassificationHead, ClassificationHeadConfig
from omnivec.heads.multi_label import MultiLabelHead, MultiLabelHeadConfig
from omnivec.heads.summarization import SummarizationHead, SummarizationHeadConfig
from omnivec.metrics import average_precision, confusion_matrix, mean_average_precision, rouge, topk_accuracy


def test_topk_accuracy_known_values():
    logits = torch.tensor([[0.1, 0.7, 0.2], [0.5, 0.3, 0.2], [0.2, 0.3, 0.5], [0.3, 0.4, 0.3]])
    targets = torch.tensor([1, 1, 0, 2])
    assert topk_accuracy(logits, targets, 1) == 0.25  # only the first
    assert topk_accuracy(logits, targets, 2) == 0.5  # + the second (0.3 is its 2nd best)
    assert topk_accuracy(logits, targets, 5) == 1.0  # k beyond the classes: everything


def test_average_precision_known_values():
    scores = torch.tensor([0.9, 0.8, 0.3, 0.1])
    assert average_precision(scores, torch.tensor([True, False, True, False])) == pytest.approx((1 + 2 / 3) / 2)
    assert average_precision(scores, torch.tensor([False, False, False, True])) == pytest.approx(0.25)
    targets = torch.tensor([[1, 0], [0, 0], [1, 1], [0, 0]])
    expected = ((1 + 2 / 3) / 2 + 1 / 3) / 2  # class 1's only positive is ranked third
    assert mean_average_precision(torch.stack([scores, scores], 1), targets) == pytest.approx(expected)
    # a class without positives is left out of the mean
    assert mean_average_precision(
        scores[:, None].repeat(1, 3), torch.tensor([[1, 0, 0], [0, 0, 0], [1, 0, 0], [0, 0, 0]])
    ) == pytest.approx((1 + 2 / 3) / 2)


def test_rouge_known_values():
    assert rouge(["the cat sat on the mat"], ["the cat sat on the mat"]) == pytest.approx(
        {"rouge1": 1.0, "rouge2": 1.0, "rougeL": 1.0}
    )
    r = rouge(["the cat"], ["the cat sat"])  # precision 1, recall 2/3
    assert r["rouge1"] == pytest.approx(0.8) and r["rouge2"] == pytest.approx(2 * 1 * 0.5 / 1.5)
    assert rouge(["dogs bark"], ["the cat sat"])["rouge1"] == 0.0


def test_confusion_matrix():
    cm = confusion_matrix(torch.tensor([0, 1, 1, 2]), torch.tensor([0, 1, 2, 2]), 3)
    assert cm.tolist() == [[1, 0, 0], [0, 1, 0], [0, 1, 1]]


def test_classification_head_loss_and_metrics():
    torch.manual_seed(0)
    head = ClassificationHead(ClassificationHeadConfig(modality="image", num_classes=3), 8)
    x, mask = torch.randn(4, 5, 8), torch.tensor([[1] * 5, [1] * 3 + [0] * 2, [1] * 5, [1] * 5]).bool()
    target = torch.tensor([0, 2, 1, 1])
    assert torch.allclose(head.loss(x, mask, target), F.cross_entropy(head(x, mask), target))
    # padding tokens do not change a sample's logits
    x2 = x.clone()
    x2[1, 3:] = 100.0
    assert torch.allclose(head(x2, mask)[1], head(x, mask)[1])
    assert head.metrics(torch.eye(3)[[0, 2, 0, 1]], target) == {"top1": 0.75, "top5": 1.0}


def test_multi_label_head_loss_and_map():
    torch.manual_seed(0)
    head = MultiLabelHead(MultiLabelHeadConfig(modality="audio", num_classes=3), 8)
    x, target = torch.randn(2, 4, 8), torch.tensor([[1.0, 0, 1], [0, 1, 0]])
    assert torch.allclose(head.loss(x, None, target), F.binary_cross_entropy_with_logits(head(x), target))
    assert head.metrics(target * 4 - 2, target) == {"mAP": 1.0}  # perfect ranking
    smooth = MultiLabelHead(MultiLabelHeadConfig(modality="audio", num_classes=3, label_smoothing=0.3), 8)
    smooth.load_state_dict(head.state_dict())
    soft = torch.tensor([[0.8, 0.1, 0.8], [0.1, 0.8, 0.1]])  # 1 - 0.3 + 0.1 and 0.3 / 3
    assert torch.allclose(smooth.loss(x, None, target), F.binary_cross_entropy_with_logits(head(x), soft))


def test_action_head_attends_over_space_time_tokens():
    torch.manual_seed(0)
    head = ActionHead(ActionHeadConfig(modality="video", num_classes=4, num_heads=2), 8).eval()
    with torch.no_grad():
        head.query.normal_()  # a query away from its ~0 initialisation: clearly non-uniform attention
    x = torch.randn(3, 16, 8)  # 16 tubelet tokens: 4 time steps x 2 x 2
    logits = head(x)
    assert logits.shape == (3, 4)
    # Attention pooling, not mean pooling: neither the mean of the tokens nor the uniform-weight
    # average through the same value / output projections gives its pooled vector.
    pooled = head.pool(x, None)
    mean_logits = head.fc(head.norm(ClassificationHead.pool(head, x, None)))
    assert (logits - mean_logits).abs().max() > 1e-2
    v_weight, v_bias = head.attn.in_proj_weight[16:], head.attn.in_proj_bias[16:]
    uniform = head.attn.out_proj(F.linear(x.mean(1), v_weight, v_bias))
    assert (pooled - uniform).abs().max() > 1e-2
    # A set function of the tokens (their positions are in the tokens): the order does not matter.
    torch.testing.assert_close(head(x[:, torch.randperm(16)]), logits)
    # Every token counts: changing any one token, at any time step, changes that sample's logits only.
    for token in range(16):
        changed = x.clone()
        changed[1, token] += 3.0
        out = head(changed)
        assert (out[1] - logits[1]).abs().max() > 1e-4, token
        torch.testing.assert_close(out[[0, 2]], logits[[0, 2]])
    # Padded tokens (padding_mask False) are ignored: any values there give the unpadded sample's logits.
    mask = torch.ones(3, 16, dtype=torch.bool)
    mask[1, 10:] = False
    padded = x.clone()
    padded[1, 10:] = 100.0
    torch.testing.assert_close(head(padded, mask)[1], head(x[1:2, :10])[0])
    torch.testing.assert_close(head(padded, mask)[1], head(x, mask)[1])
    loss = head.loss(x, None, torch.tensor([0, 1, 3]))
    loss.backward()
    assert head.query.grad is not None and head.query.grad.abs().sum() > 0


@pytest.fixture
def summarizer():
    torch.manual_seed(0)
    return SummarizationHead(
        SummarizationHeadConfig(
            modality="text", dim=16, depth=1, num_heads=2, max_new_tokens=6, max_target_length=16, dropout=0.0
        ),
        8,
    )


def test_summarization_teacher_forcing_loss(summarizer):
    x = torch.randn(2, 5, 8)
    loss = summarizer.loss(x, None, ["a summary", "b"])
    assert math.log(261) - 2 < loss.item() < math.log(261) + 2  # about uniform at initialisation
    loss.backward()
    assert summarizer.proj.weight.grad.abs().sum() > 0  # the summary depends on the text


def test_generation_stops_at_eos(summarizer):
    bias = summarizer.decoder.cls.predictions.decoder.bias
    with torch.no_grad():
        bias.zero_()
        bias[summarizer.eos] = 100.0
    ids = summarizer.generate(torch.randn(2, 5, 8))
    assert ids.tolist() == [[summarizer.bos, summarizer.eos]] * 2
    assert summarizer.predict(torch.randn(1, 5, 8)) == [""]


@pytest.mark.parametrize("num_beams", [1, 3])
def test_generation_respects_max_length(summarizer, num_beams):
    bias = summarizer.decoder.cls.predictions.decoder.bias
    with torch.no_grad():
        bias.zero_()
        bias[summarizer.eos] = -100.0
    ids = summarizer.generate(torch.randn(2, 5, 8), num_beams=num_beams, no_repeat_ngram_size=0)
    assert ids.shape == (2, 1 + 6) and (ids[:, 0] == summarizer.bos).all()
    assert (ids != summarizer.eos).all()
