"""Losses shared by the methods: contrastive (cross-rank), soft/masked CE, pixel and feature
reconstruction, box regression and VQA soft scores.

Every function takes already-selected tensors (e.g. only the masked positions), so no full-vocabulary
logits are ever computed at positions that carry no loss.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F

from vl_models.utils import check_tensor, describe

IGNORE_INDEX = -100


def _world() -> tuple[int, int]:
    """(rank, world_size); (0, 1) when torch.distributed is not in use."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """Concatenate ``x`` from all ranks along dim 0, keeping gradients.

    The backward sums each rank's gradient for the local slice, so with DDP's gradient averaging the
    result equals single-process training on the global batch. Every rank must pass the same shape.
    """
    if _world()[1] == 1:
        return x
    import torch.distributed.nn.functional as dist_fn

    return torch.cat(dist_fn.all_gather(x), dim=0)


@torch.no_grad()
def gather_no_grad(x: torch.Tensor) -> torch.Tensor:
    """Concatenate ``x`` from all ranks along dim 0 without gradients (for queues, momentum targets)."""
    x = x.detach()
    world = _world()[1]
    if world == 1:
        return x
    out = [torch.empty_like(x) for _ in range(world)]
    dist.all_gather(out, x.contiguous())
    return torch.cat(out, dim=0)


def soft_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean over rows of -sum(targets * log_softmax(logits)); targets are rows of probabilities."""
    check_tensor("logits", logits, ndim=2, dtype="float")
    if targets.shape != logits.shape:
        raise ValueError(
            f"`targets` must have shape {tuple(logits.shape)} like `logits`, got {describe(targets)}"
        )
    return -(targets.float() * F.log_softmax(logits.float(), dim=-1)).sum(-1).mean()


def contrastive_loss(
    image_feat: torch.Tensor, text_feat: torch.Tensor, temperature: float | torch.Tensor
) -> torch.Tensor:
    """Symmetric InfoNCE (CLIP loss) of the local rows against the features of every rank.

    image_feat, text_feat: [B, E], matched by row, normalised here. ``temperature`` may be a learnable
    tensor. Each rank scores its own B rows against the gathered global batch (labels offset by
    rank * B), so on one rank this is the plain CLIP loss. Every rank must have the same B.
    """
    check_tensor("image_feat", image_feat, ndim=2, dtype="float")
    check_tensor("text_feat", text_feat, ndim=2, dtype="float")
    if image_feat.shape != text_feat.shape:
        raise ValueError(
            f"`text_feat` must match `image_feat` {describe(image_feat)}, got {describe(text_feat)}"
        )
    if not isinstance(temperature, torch.Tensor) and temperature <= 0:
        raise ValueError(f"`temperature` must be > 0, got {temperature!r}")
    image_feat = F.normalize(image_feat.float(), dim=-1)
    text_feat = F.normalize(text_feat.float(), dim=-1)
    all_image, all_text = gather_with_grad(image_feat), gather_with_grad(text_feat)  # [R*B, E]
    rank, batch = _world()[0], image_feat.shape[0]
    labels = torch.arange(batch, device=image_feat.device) + rank * batch
    logits_i2t = image_feat @ all_text.t() / temperature  # [B, R*B]
    logits_t2i = text_feat @ all_image.t() / temperature
    return (F.cross_entropy(logits_i2t, labels) + F.cross_entropy(logits_t2i, labels)) / 2


def itc_loss_with_targets(
    sim_i2t: torch.Tensor, sim_t2i: torch.Tensor, targets_i2t: torch.Tensor, targets_t2i: torch.Tensor
) -> torch.Tensor:
    """ALBEF ITC: mean of the two soft CEs against (momentum-distilled) target distributions."""
    return (soft_cross_entropy(sim_i2t, targets_i2t) + soft_cross_entropy(sim_t2i, targets_t2i)) / 2


def select_masked(hidden: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """hidden [B, T, D], labels [B, T] -> (hidden [M, D], labels [M]) at positions where labels != -100."""
    check_tensor("hidden", hidden, ndim=3)
    check_tensor("labels", labels, ndim=2, dtype="int")
    if labels.shape != hidden.shape[:2]:
        raise ValueError(f"`labels` must have shape {tuple(hidden.shape[:2])}, got {describe(labels)}")
    keep = labels != IGNORE_INDEX
    return hidden[keep], labels[keep]


def masked_cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """CE over selected positions: logits [M, V], labels [M] (all valid).

    With M == 0 returns a zero that stays in the graph, so every rank runs the same backward under DDP even
    when a batch happened to have nothing masked. Written as a sum over max(M, 1) rather than a branch on M, so
    torch.compile traces one graph whatever M turns out to be.
    """
    check_tensor("logits", logits, ndim=2, dtype="float")
    check_tensor("labels", labels, ndim=1, dtype="int")
    if labels.shape[0] != logits.shape[0]:
        raise ValueError(f"`labels` must have {logits.shape[0]} rows like `logits`, got {describe(labels)}")
    return F.cross_entropy(logits.float(), labels, reduction="sum") / torch.sym_max(logits.shape[0], 1)


def soft_target_cross_entropy(
    logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 1.0, top_k: int | None = None
) -> torch.Tensor:
    """Distillation CE: logits [M, V] against softmax(teacher_logits / temperature) (teacher detached).

    The student is softened by the same temperature, and the loss is scaled by temperature**2 because
    the gradient of a softened CE shrinks as 1/temperature**2; the scale keeps its magnitude comparable
    to a hard-label loss when the temperature changes (Hinton et al., 2015). With temperature 1 this is
    ALBEF's MLM distillation term. ``top_k`` keeps only the teacher's k largest logits (renormalised).
    """
    check_tensor("logits", logits, ndim=2, dtype="float")
    if teacher_logits.shape != logits.shape:
        raise ValueError(
            f"`teacher_logits` must have shape {tuple(logits.shape)}, got {describe(teacher_logits)}"
        )
    if temperature <= 0:
        raise ValueError(f"`temperature` must be > 0, got {temperature!r}")
    if top_k is not None and not 1 <= top_k <= logits.shape[-1]:
        raise ValueError(f"`top_k` must be in [1, {logits.shape[-1]}] or None, got {top_k!r}")
    if logits.shape[0] == 0:
        return logits.sum() * 0.0
    teacher = teacher_logits.detach().float() / temperature
    if top_k is None:
        targets = teacher.softmax(-1)
    else:
        values, idx = teacher.topk(top_k, dim=-1)  # softmax over the top-k == renormalised truncation
        targets = torch.zeros_like(teacher).scatter_(-1, idx, values.softmax(-1))
    return soft_cross_entropy(logits.float() / temperature, targets) * temperature**2


def patchify(pixel_values: torch.Tensor, patch_size: int) -> torch.Tensor:
    """[B, C, H, W] -> [B, N, p*p*C], patches in row-major order, values ordered (p_row, p_col, channel)."""
    check_tensor("pixel_values", pixel_values, ndim=4)
    b, c, h, w = pixel_values.shape
    p = patch_size
    if p < 1 or h % p or w % p:
        raise ValueError(f"image size {(h, w)} must be divisible by `patch_size`, got {patch_size}")
    x = pixel_values.reshape(b, c, h // p, p, w // p, p)
    x = torch.einsum("bchpwq->bhwpqc", x)
    return x.reshape(b, (h // p) * (w // p), p * p * c)


def unpatchify(patches: torch.Tensor, patch_size: int, image_size: int | tuple[int, int]) -> torch.Tensor:
    """Exact inverse of :func:`patchify`: [B, N, p*p*C] -> [B, C, H, W]."""
    check_tensor("patches", patches, ndim=3)
    h, w = (image_size, image_size) if isinstance(image_size, int) else image_size
    p = patch_size
    gh, gw = h // p, w // p
    if p < 1 or h % p or w % p or patches.shape[1] != gh * gw or patches.shape[2] % (p * p):
        raise ValueError(
            f"`patches` {describe(patches)} does not fit `image_size` {image_size} with `patch_size` {patch_size}"
        )
    b, c = patches.shape[0], patches.shape[2] // (p * p)
    x = patches.reshape(b, gh, gw, p, p, c)
    x = torch.einsum("bhwpqc->bchpwq", x)
    return x.reshape(b, c, h, w)


def masked_patch_mse(
    pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, norm_pix: bool = True
) -> torch.Tensor:
    """MAE pixel loss over masked patches only.

    target: [B, N, P] patchified pixels (see :func:`patchify`); mask: [B, N] bool, True = masked.
    pred: either [B, N, P] for every patch (unmasked ones are ignored), or [M, P] for the masked patches
    only, in the order of ``target[mask]`` (row-major over (b, n)), M = mask.sum().
    With ``norm_pix`` each target patch is normalised by its own mean and variance (MAE: unbiased
    variance, eps 1e-6). Loss = mean over values of the squared error, averaged over masked patches.
    """
    check_tensor("target", target, ndim=3, dtype="float")
    check_tensor("mask", mask, ndim=2, dtype="bool")
    check_tensor("pred", pred, ndim=(2, 3), dtype="float", last_dim=target.shape[-1])
    if mask.shape != target.shape[:2]:
        raise ValueError(f"`mask` must have shape {tuple(target.shape[:2])}, got {describe(mask)}")
    target = target[mask].float()  # [M, P]
    if pred.ndim == 3:
        if pred.shape[:2] != mask.shape:
            raise ValueError(
                f"3-D `pred` must be [B, N, P] = {tuple(mask.shape)} + (P,), got {describe(pred)}"
            )
        pred = pred[mask]
    elif pred.shape[0] != target.shape[0]:
        raise ValueError(
            f"2-D `pred` must have one row per masked patch ({target.shape[0]}), got {describe(pred)}"
        )
    if pred.shape[0] == 0:
        return pred.sum() * 0.0
    if norm_pix:
        mean = target.mean(dim=-1, keepdim=True)
        var = target.var(dim=-1, keepdim=True)
        target = (target - mean) / (var + 1e-6) ** 0.5
    return ((pred.float() - target) ** 2).mean()


def feature_reconstruction_loss(
    pred: torch.Tensor, target: torch.Tensor, kind: str = "cosine"
) -> torch.Tensor:
    """Regress teacher features [..., D] (target is treated as a constant): ``"cosine"`` = mean of
    1 - cos(pred, target) over vectors (BEiT v2 VQ-KD), ``"smooth_l1"`` = elementwise smooth L1 mean."""
    check_tensor("pred", pred, dtype="float")
    if target.shape != pred.shape:
        raise ValueError(f"`target` must have shape {tuple(pred.shape)} like `pred`, got {describe(target)}")
    target = target.detach().float()
    if kind == "cosine":
        return (1.0 - F.cosine_similarity(pred.float(), target, dim=-1)).mean()
    if kind == "smooth_l1":
        return F.smooth_l1_loss(pred.float(), target)
    raise ValueError(f"`kind` must be 'cosine' or 'smooth_l1', got {kind!r}")


def box_cxcywh_to_xyxy(boxes: torch.Tensor) -> torch.Tensor:
    """[..., 4] (center x, center y, width, height) -> [..., 4] (x0, y0, x1, y1)."""
    cx, cy, w, h = boxes.unbind(-1)
    return torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], dim=-1)


def _paired_boxes(boxes1, boxes2):
    check_tensor("boxes1", boxes1, ndim=2, dtype="float", last_dim=4)
    check_tensor("boxes2", boxes2, ndim=2, dtype="float", last_dim=4)
    if boxes1.shape != boxes2.shape:
        raise ValueError(f"`boxes2` must match `boxes1` {describe(boxes1)} (paired), got {describe(boxes2)}")


def _area(boxes: torch.Tensor) -> torch.Tensor:
    return (boxes[:, 2] - boxes[:, 0]).clamp(min=0) * (boxes[:, 3] - boxes[:, 1]).clamp(min=0)


def _iou_and_union(boxes1, boxes2, eps):
    lt = torch.maximum(boxes1[:, :2], boxes2[:, :2])
    rb = torch.minimum(boxes1[:, 2:], boxes2[:, 2:])
    inter = (rb - lt).clamp(min=0).prod(-1)
    union = _area(boxes1) + _area(boxes2) - inter
    return inter / union.clamp(min=eps), union


def box_iou(boxes1: torch.Tensor, boxes2: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """IoU of paired xyxy boxes: [N, 4], [N, 4] -> [N] (row i against row i, not all pairs)."""
    _paired_boxes(boxes1, boxes2)
    return _iou_and_union(boxes1, boxes2, eps)[0]


def generalized_box_iou(boxes1: torch.Tensor, boxes2: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """GIoU of paired xyxy boxes: [N, 4], [N, 4] -> [N] in [-1, 1]."""
    _paired_boxes(boxes1, boxes2)
    iou, union = _iou_and_union(boxes1, boxes2, eps)
    hull = (torch.maximum(boxes1[:, 2:], boxes2[:, 2:]) - torch.minimum(boxes1[:, :2], boxes2[:, :2])).clamp(
        min=0
    )
    hull_area = hull.prod(-1)
    return iou - (hull_area - union) / hull_area.clamp(min=eps)


def grounding_loss(
    pred_boxes: torch.Tensor, target_boxes: torch.Tensor, l1_weight: float = 5.0, giou_weight: float = 2.0
) -> torch.Tensor:
    """Box regression (DETR/TransVG weights): l1_weight * L1 (summed over the 4 coordinates, mean over
    boxes) + giou_weight * mean(1 - GIoU). Boxes [N, 4] normalised (cx, cy, w, h) in [0, 1]."""
    _paired_boxes(pred_boxes.float(), target_boxes.float())
    pred, target = pred_boxes.float(), target_boxes.float()
    l1 = (pred - target).abs().sum(-1).mean()
    giou = generalized_box_iou(box_cxcywh_to_xyxy(pred), box_cxcywh_to_xyxy(target))
    return l1_weight * l1 + giou_weight * (1.0 - giou).mean()


def vqa_soft_score_loss(logits: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
    """BCE-with-logits on VQA soft scores [B, A], times A (the ViLT/METER/VLMo convention): a sum over
    answers, mean over questions, so the loss scale does not shrink with the answer vocabulary."""
    check_tensor("logits", logits, ndim=2, dtype="float")
    if scores.shape != logits.shape:
        raise ValueError(
            f"`scores` must have shape {tuple(logits.shape)} like `logits`, got {describe(scores)}"
        )
    return F.binary_cross_entropy_with_logits(logits.float(), scores.float()) * scores.shape[1]
