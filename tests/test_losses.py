from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from vl_models.layers.heads import PatchBoxHead, patch_of
from vl_models.layers.losses import (
    box_cxcywh_to_xyxy,
    box_iou,
    contrastive_loss,
    feature_reconstruction_loss,
    gather_no_grad,
    gather_with_grad,
    generalized_box_iou,
    grounding_loss,
    itc_loss_with_targets,
    masked_cross_entropy,
    masked_patch_mse,
    patchify,
    select_masked,
    soft_cross_entropy,
    soft_target_cross_entropy,
    unpatchify,
    vqa_soft_score_loss,
)
from vl_models.layers.momentum import FeatureQueue

torch.manual_seed(0)


def _ref_ce(logits_row: torch.Tensor, target: int) -> float:
    exp = [math.exp(v) for v in logits_row.tolist()]
    return -math.log(exp[target] / sum(exp))


def ref_clip_loss(img, txt, temp):
    img = [v / v.norm() for v in img]
    txt = [v / v.norm() for v in txt]
    n = len(img)
    i2t = [_ref_ce(torch.stack([img[i] @ txt[j] / temp for j in range(n)]), i) for i in range(n)]
    t2i = [_ref_ce(torch.stack([txt[i] @ img[j] / temp for j in range(n)]), i) for i in range(n)]
    return (sum(i2t) / n + sum(t2i) / n) / 2


def test_gathers_are_identity_on_one_process():
    x = torch.randn(3, 4)
    assert gather_with_grad(x) is x
    assert torch.equal(gather_no_grad(x), x)


def test_contrastive_loss_matches_loop_reference():
    img, txt = torch.randn(6, 8), torch.randn(6, 8)
    loss = contrastive_loss(img, txt, 0.07)
    assert loss.item() == pytest.approx(ref_clip_loss(img, txt, 0.07), rel=1e-5)
    temp = torch.tensor(0.1, requires_grad=True)
    contrastive_loss(img, txt, temp).backward()
    assert temp.grad is not None and temp.grad.abs() > 0
    with pytest.raises(ValueError, match="text_feat"):
        contrastive_loss(img, txt[:3], 0.07)
    with pytest.raises(ValueError, match="temperature"):
        contrastive_loss(img, txt, 0.0)


def test_soft_cross_entropy_with_one_hot_equals_ce_and_itc():
    logits, labels = torch.randn(5, 7), torch.randint(0, 7, (5,))
    one_hot = F.one_hot(labels, 7).float()
    assert soft_cross_entropy(logits, one_hot).item() == pytest.approx(
        F.cross_entropy(logits, labels).item(), rel=1e-6
    )
    logits2, t1, t2 = torch.randn(5, 7), torch.rand(5, 7).softmax(-1), torch.rand(5, 7).softmax(-1)
    ref = sum(-(t * torch.log_softmax(x, -1)).sum() / 5 for x, t in ((logits, t1), (logits2, t2))) / 2
    assert itc_loss_with_targets(logits, logits2, t1, t2).item() == pytest.approx(ref.item(), rel=1e-6)
    with pytest.raises(ValueError, match="targets"):
        soft_cross_entropy(logits, one_hot[:, :3])


def test_select_masked_and_masked_ce():
    hidden = torch.randn(2, 5, 3)
    labels = torch.tensor([[-100, 4, -100, -100, 1], [2, -100, -100, -100, -100]])
    h, lab = select_masked(hidden, labels)
    assert torch.equal(h, torch.stack([hidden[0, 1], hidden[0, 4], hidden[1, 0]]))
    assert lab.tolist() == [4, 1, 2]
    logits = torch.randn(3, 6)
    ref = sum(_ref_ce(logits[i], lab[i].item()) for i in range(3)) / 3
    assert masked_cross_entropy(logits, lab).item() == pytest.approx(ref, rel=1e-5)
    with pytest.raises(ValueError, match="labels"):
        select_masked(hidden, labels[:, :3])


def test_masked_ce_with_nothing_masked_is_zero_with_grad():
    weight = torch.randn(4, 6, requires_grad=True)
    logits = torch.zeros(0, 4) @ weight  # [0, V], in the graph
    loss = masked_cross_entropy(logits, torch.zeros(0, dtype=torch.long))
    assert loss.item() == 0.0 and loss.requires_grad
    loss.backward()
    assert torch.equal(weight.grad, torch.zeros_like(weight))


def test_soft_target_ce_temperature_and_top_k():
    student, teacher = torch.randn(4, 10), torch.randn(4, 10)
    # temperature 1: ALBEF's -sum(softmax(teacher) * log_softmax(student))
    ref = -(teacher.softmax(-1) * student.log_softmax(-1)).sum(-1).mean()
    assert soft_target_cross_entropy(student, teacher).item() == pytest.approx(ref.item(), rel=1e-6)
    t = 3.0
    ref_t = -(((teacher / t).softmax(-1)) * (student / t).log_softmax(-1)).sum(-1).mean() * t * t
    assert soft_target_cross_entropy(student, teacher, temperature=t).item() == pytest.approx(
        ref_t.item(), rel=1e-6
    )
    # top-1 teacher == hard CE on the teacher's argmax; top-k targets live on the k largest only
    hard = F.cross_entropy(student, teacher.argmax(-1))
    assert soft_target_cross_entropy(student, teacher, top_k=1).item() == pytest.approx(hard.item(), rel=1e-6)
    k = 3
    top = teacher.topk(k, -1)
    targets = torch.zeros_like(teacher).scatter(-1, top.indices, top.values.softmax(-1))
    ref_k = -(targets * student.log_softmax(-1)).sum(-1).mean()
    assert soft_target_cross_entropy(student, teacher, top_k=k).item() == pytest.approx(
        ref_k.item(), rel=1e-6
    )
    # the teacher gets no gradient
    teacher.requires_grad_(True)
    student.requires_grad_(True)
    soft_target_cross_entropy(student, teacher).backward()
    assert teacher.grad is None and student.grad is not None
    with pytest.raises(ValueError, match="top_k"):
        soft_target_cross_entropy(student, teacher, top_k=11)
    with pytest.raises(ValueError, match="temperature"):
        soft_target_cross_entropy(student, teacher, temperature=0.0)


@pytest.mark.parametrize(("size", "patch", "channels"), [((32, 32), 16, 3), ((24, 40), 8, 1), ((8, 8), 2, 2)])
def test_patchify_round_trip_and_layout(size, patch, channels):
    x = torch.randn(2, channels, *size)
    p = patchify(x, patch)
    n = (size[0] // patch) * (size[1] // patch)
    assert p.shape == (2, n, patch * patch * channels)
    assert torch.equal(unpatchify(p, patch, size), x)
    # patch 1 (row 0, col 1), value (i, j, c) is pixel (c, i, patch + j)
    assert torch.equal(
        p[:, 1].reshape(2, patch, patch, channels).permute(0, 3, 1, 2), x[..., :patch, patch : 2 * patch]
    )
    with pytest.raises(ValueError, match="patch_size"):
        patchify(x, 5)


def ref_mae_loss(pred, target, mask, norm_pix):
    total, count = 0.0, 0
    for b in range(mask.shape[0]):
        for n in range(mask.shape[1]):
            if mask[b, n]:
                t = target[b, n]
                if norm_pix:
                    mean = sum(t.tolist()) / len(t)
                    var = sum((v - mean) ** 2 for v in t.tolist()) / (len(t) - 1)
                    t = (t - mean) / math.sqrt(var + 1e-6)
                total += float(((pred[b, n] - t) ** 2).mean())
                count += 1
    return total / count


@pytest.mark.parametrize("norm_pix", [True, False])
def test_masked_patch_mse_matches_loop(norm_pix):
    pred, target = torch.randn(3, 6, 12), torch.randn(3, 6, 12) * 2 + 1
    mask = torch.rand(3, 6) < 0.5
    mask[0, 0] = True
    ref = ref_mae_loss(pred, target, mask, norm_pix)
    assert masked_patch_mse(pred, target, mask, norm_pix).item() == pytest.approx(ref, rel=1e-5)
    # [M, P] contract: rows in the order of target[mask]
    assert masked_patch_mse(pred[mask], target, mask, norm_pix).item() == pytest.approx(ref, rel=1e-5)
    # unmasked predictions do not matter
    other = pred.clone()
    other[~mask] = 100.0
    assert masked_patch_mse(other, target, mask, norm_pix).item() == pytest.approx(ref, rel=1e-5)


def test_masked_patch_mse_empty_and_validation():
    pred = torch.randn(2, 4, 5, requires_grad=True)
    loss = masked_patch_mse(pred, torch.randn(2, 4, 5), torch.zeros(2, 4, dtype=torch.bool))
    assert loss.item() == 0.0 and loss.requires_grad
    mask = torch.ones(2, 4, dtype=torch.bool)
    with pytest.raises(ValueError, match="pred"):
        masked_patch_mse(torch.randn(2, 3, 5), torch.randn(2, 4, 5), mask)
    with pytest.raises(ValueError, match="pred"):
        masked_patch_mse(torch.randn(7, 5), torch.randn(2, 4, 5), mask)
    with pytest.raises(ValueError, match="mask"):
        masked_patch_mse(pred, torch.randn(2, 4, 5), mask.float())


def test_feature_reconstruction_loss():
    pred, target = torch.randn(2, 5, 8, requires_grad=True), torch.randn(2, 5, 8)
    cos = (
        sum(1 - (p @ t) / (p.norm() * t.norm()) for p, t in zip(pred.reshape(-1, 8), target.reshape(-1, 8)))
        / 10
    )
    assert feature_reconstruction_loss(pred, target).item() == pytest.approx(cos.item(), rel=1e-5)
    diff = (pred - target).abs()
    sl1 = torch.where(diff < 1, 0.5 * diff**2, diff - 0.5).mean()
    assert feature_reconstruction_loss(pred, target, "smooth_l1").item() == pytest.approx(
        sl1.item(), rel=1e-6
    )
    # cos(3t, t) = 1 up to the rounding of three length-8 float32 dot products: ~(8 + 3) eps, eps = 1.2e-7
    assert feature_reconstruction_loss(target * 3, target).item() == pytest.approx(0.0, abs=16 * 1.2e-7)
    with pytest.raises(ValueError, match="kind"):
        feature_reconstruction_loss(pred, target, "l2")


def test_boxes_hand_computed():
    a = torch.tensor([[0.0, 0.0, 2.0, 2.0], [0.0, 0.0, 1.0, 1.0], [0.0, 0.0, 1.0, 1.0]])
    b = torch.tensor([[1.0, 1.0, 3.0, 3.0], [2.0, 0.0, 3.0, 1.0], [0.0, 0.0, 1.0, 1.0]])
    # row 0: inter 1, union 7, hull 9 -> giou 1/7 - 2/9; row 1: disjoint, hull 3, union 2 -> -1/3
    assert torch.allclose(box_iou(a, b), torch.tensor([1 / 7, 0.0, 1.0]))
    assert torch.allclose(generalized_box_iou(a, b), torch.tensor([1 / 7 - 2 / 9, -1 / 3, 1.0]))
    assert torch.equal(
        box_cxcywh_to_xyxy(torch.tensor([[0.5, 0.5, 0.2, 0.4]])), torch.tensor([[0.4, 0.3, 0.6, 0.7]])
    )
    with pytest.raises(ValueError, match="boxes2"):
        box_iou(a, b[:2])


def test_grounding_loss():
    pred = torch.tensor([[0.5, 0.5, 0.2, 0.2], [0.3, 0.3, 0.2, 0.2]], requires_grad=True)
    target = torch.tensor([[0.5, 0.5, 0.2, 0.2], [0.4, 0.3, 0.2, 0.2]])
    # row 1: L1 0.1; boxes [0.2,0.2,0.4,0.4] vs [0.3,0.2,0.5,0.4]: inter .02, union .06, hull .06 -> giou 1/3
    ref = 5.0 * (0.0 + 0.1) / 2 + 2.0 * (0.0 + (1 - 1 / 3)) / 2
    loss = grounding_loss(pred, target)
    assert loss.item() == pytest.approx(ref, rel=1e-5)
    loss.backward()
    assert pred.grad[1].abs().sum() > 0


def test_vqa_soft_score_loss():
    logits, scores = torch.randn(3, 5), torch.rand(3, 5)
    p = torch.sigmoid(logits)
    ref = (
        -(scores * p.log() + (1 - scores) * (1 - p).log()).sum() / 3
    )  # sum over answers, mean over questions
    assert vqa_soft_score_loss(logits, scores).item() == pytest.approx(ref.item(), rel=1e-5)


# ---------------------------------------------------------------- two real processes (gloo)


@pytest.mark.slow
def test_two_rank_contrastive_and_queue_match_one_rank(tmp_path: Path):
    worker = Path(__file__).with_name("dist_losses_worker.py")
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(
            [str(Path(__file__).parents[1] / "src"), os.environ.get("PYTHONPATH", "")]
        ),
    }
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        str(worker),
        str(tmp_path),
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    data = ranks[0]["data"]

    # one process, the whole batch
    img = data["image"].clone().requires_grad_(True)
    txt = data["text"].clone().requires_grad_(True)
    temp = torch.tensor(data["temperature"], requires_grad=True)
    loss = contrastive_loss(img, txt, temp)
    loss.backward()
    half = img.shape[0] // 2
    # each rank's loss covers its own rows; their mean is the global loss
    assert (ranks[0]["loss"] + ranks[1]["loss"]) / 2 == pytest.approx(loss.item(), rel=1e-5)
    for r, out in enumerate(ranks):
        rows = slice(r * half, (r + 1) * half)
        # gather backward sums over ranks; DDP's 1/world averaging then gives the single-process gradient
        assert torch.allclose(out["image_grad"] / 2, img.grad[rows], atol=1e-6)
        assert torch.allclose(out["text_grad"] / 2, txt.grad[rows], atol=1e-6)
    assert (ranks[0]["temp_grad"] + ranks[1]["temp_grad"]) / 2 == pytest.approx(temp.grad.item(), rel=1e-4)

    queue = FeatureQueue(data["queue_dim"], data["queue_size"])
    queue.features.copy_(data["queue_init"])
    for batch in data["queue_batches"]:  # each is the concatenation of both ranks' local batches
        queue.enqueue(batch)
    for out in ranks:
        assert torch.equal(out["queue_features"], queue.features)
        assert int(out["queue_ptr"]) == int(queue.ptr)


def test_patch_of_is_the_patch_holding_the_box_centre():
    # a 2 x 3 grid (rows x columns): centres on the last column/row edge stay inside the image
    boxes = torch.tensor([[0.0, 0.0, 0.1, 0.1], [0.5, 0.25, 0.2, 0.2], [0.99, 0.75, 0.1, 0.1], [1.0, 1.0, 0.1, 0.1],
                          [0.5, 0.5, 0.1, 0.1]])
    assert patch_of(boxes, (2, 3)).tolist() == [0, 1, 5, 5, 4]


def test_patch_box_head_keeps_each_box_centre_within_one_patch_of_its_own():
    torch.manual_seed(0)
    head = PatchBoxHead(8, 6)
    logits, boxes = head(torch.randn(3, 8) * 10, torch.randn(3, 4 * 5, 6) * 10, (4, 5))  # big inputs: saturated
    assert logits.shape == (3, 20) and boxes.shape == (3, 20, 4)
    index = torch.arange(20)
    col, row = index % 5, index // 5
    assert ((boxes[..., 0] * 5 - (col + 0.5)).abs() <= 1 + 1e-6).all()
    assert ((boxes[..., 1] * 4 - (row + 0.5)).abs() <= 1 + 1e-6).all()
    assert ((boxes >= 0) & (boxes <= 1)).all()
    with pytest.raises(ValueError, match="must hold 4 x 4 = 16 patches, got 20"):
        head(torch.randn(3, 8), torch.randn(3, 20, 6), (4, 4))
