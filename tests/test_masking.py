from __future__ import annotations

import pytest
import torch

from vl_models.layers.masking import block_masking, gather_tokens, mask_text, random_masking


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ---------------------------------------------------------------- random_masking


@pytest.mark.parametrize(
    ("num_patches", "ratio", "n_keep"),
    [
        (196, 0.75, 49),
        (196, 0.0, 196),
        (10, 0.7, 3),
        (10, 0.95, 1),
        (4, 0.99, 1),
        (49, 0.5, 25),
        (576, 0.4, 346),
    ],
)
def test_random_masking_keep_count(num_patches, ratio, n_keep):
    out = random_masking(3, num_patches, ratio, generator=gen())
    assert out.ids_keep.shape == (3, n_keep)
    assert out.ids_restore.shape == out.mask.shape == (3, num_patches)
    assert out.mask.dtype == torch.bool and out.ids_keep.dtype == torch.long
    assert (out.mask.sum(1) == num_patches - n_keep).all()


def test_random_masking_restore_is_inverse_and_mask_matches_ids():
    out = random_masking(4, 20, 0.6, generator=gen(1))
    x = torch.randn(4, 20, 3)
    kept = gather_tokens(x, out.ids_keep)  # [B, n_keep, D]
    # MAE decoder: append mask tokens, unshuffle with ids_restore -> kept tokens back at their positions
    full = torch.cat([kept, torch.zeros(4, 20 - kept.shape[1], 3)], dim=1)
    restored = gather_tokens(full, out.ids_restore)
    visible = ~out.mask
    assert torch.equal(restored[visible], x[visible])
    assert (restored[out.mask] == 0).all()
    for b in range(4):
        assert set(out.ids_keep[b].tolist()) == set(visible[b].nonzero().squeeze(1).tolist())
        # ids_restore is a permutation that inverts the shuffle order
        assert sorted(out.ids_restore[b].tolist()) == list(range(20))


def test_random_masking_seeded_and_varies_per_sample():
    a = random_masking(8, 50, 0.75, generator=gen(3))
    b = random_masking(8, 50, 0.75, generator=gen(3))
    c = random_masking(8, 50, 0.75, generator=gen(4))
    assert torch.equal(a.mask, b.mask) and torch.equal(a.ids_restore, b.ids_restore)
    assert not torch.equal(a.mask, c.mask)
    assert len({tuple(m.tolist()) for m in a.mask}) == 8


@pytest.mark.parametrize("ratio", [1.0, -0.1, 1.5])
def test_random_masking_bad_ratio(ratio):
    with pytest.raises(ValueError, match="mask_ratio"):
        random_masking(2, 10, ratio)


def test_gather_tokens_validates():
    with pytest.raises(ValueError, match="ids"):
        gather_tokens(torch.randn(2, 5, 3), torch.zeros(3, 2, dtype=torch.long))


# ---------------------------------------------------------------- block_masking


@pytest.mark.parametrize(
    ("grid", "num_masked"),
    [((14, 14), 75), ((14, 14), 0), ((14, 14), 196), ((7, 5), 20), ((3, 9), 1), ((16, 16), 120)],
)
def test_block_masking_exact_count(grid, num_masked):
    for seed in range(5):
        mask = block_masking(16, grid, num_masked, generator=gen(seed))
        assert mask.shape == (16, grid[0] * grid[1]) and mask.dtype == torch.bool
        assert (mask.sum(1) == num_masked).all()


def test_block_masking_square_blocks_are_rectangles():
    # area must be 16 and aspect 1, so the only block that fits is a single 4x4 square
    mask = block_masking(20, (8, 8), 16, min_num_patches=16, min_aspect=1.0, generator=gen(0)).view(20, 8, 8)
    for m in mask:
        rows, cols = m.any(1).nonzero().squeeze(1), m.any(0).nonzero().squeeze(1)
        assert len(rows) == len(cols) == 4
        assert rows.max() - rows.min() == 3 and cols.max() - cols.min() == 3  # contiguous
        assert m[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1].all()
    assert len({tuple(m.flatten().tolist()) for m in mask}) > 5  # positions vary


def _adjacent_masked_pairs(mask: torch.Tensor) -> float:
    return float((mask[:, 1:, :] & mask[:, :-1, :]).sum() + (mask[:, :, 1:] & mask[:, :, :-1]).sum())


def test_block_masking_is_blockier_than_random():
    blocks = block_masking(64, (14, 14), 75, generator=gen(0)).view(64, 14, 14)
    random = random_masking(64, 196, 75 / 196, generator=gen(0)).mask.view(64, 14, 14)
    assert (random.sum((1, 2)) == 75).all()
    # random placement gives ~53 adjacent masked pairs per image, blocks ~120 (at most ~133 for 75)
    assert _adjacent_masked_pairs(blocks) > 1.8 * _adjacent_masked_pairs(random)


def test_block_masking_seeded():
    a = block_masking(6, (14, 14), 75, generator=gen(7))
    assert torch.equal(a, block_masking(6, (14, 14), 75, generator=gen(7)))
    assert not torch.equal(a, block_masking(6, (14, 14), 75, generator=gen(8)))


def test_block_masking_validation():
    with pytest.raises(ValueError, match="num_masked"):
        block_masking(2, (4, 4), 17)
    with pytest.raises(ValueError, match="num_masked"):
        block_masking(2, (4, 4), -1)
    with pytest.raises(ValueError, match="min_aspect"):
        block_masking(2, (4, 4), 3, min_aspect=0.0)
    with pytest.raises(ValueError, match="grid_size"):
        block_masking(2, (4,), 3)


# ---------------------------------------------------------------- mask_text

SPECIALS = [0, 1, 2, 3]  # pad, cls, sep, mask
MASK_ID, VOCAB = 3, 1000


def _batch(b=64, t=128, seed=0):
    g = gen(seed)
    ids = torch.randint(4, VOCAB, (b, t), generator=g)
    lengths = torch.randint(t // 2, t + 1, (b,), generator=g)
    attn = (torch.arange(t)[None] < lengths[:, None]).long()
    ids[:, 0] = 1
    ids[torch.arange(b), lengths - 1] = 2
    ids[attn == 0] = 0
    return ids, attn


def _mask(ids, attn, **kw):
    kw.setdefault("generator", gen(1))
    return mask_text(
        ids, mask_token_id=MASK_ID, vocab_size=VOCAB, special_token_ids=SPECIALS, attention_mask=attn, **kw
    )


def test_mask_text_labels_and_never_specials_or_padding():
    ids, attn = _batch()
    # pad id 0 is not listed as special here: padding must still be excluded through attention_mask
    masked, labels = mask_text(
        ids,
        mask_token_id=MASK_ID,
        vocab_size=VOCAB,
        special_token_ids=[1, 2],
        attention_mask=attn,
        generator=gen(1),
    )
    chosen = labels != -100
    assert labels.dtype == torch.long
    assert torch.equal(labels[chosen], ids[chosen])
    assert not chosen[(ids <= 3) | (attn == 0)].any()
    assert torch.equal(masked[~chosen], ids[~chosen])
    assert chosen.any(1).all()


def test_mask_text_80_10_10_proportions():
    ids, attn = _batch(b=128)
    masked, labels = _mask(ids, attn)
    chosen = labels != -100
    n = int(chosen.sum())
    rate = n / int(((ids > 3) & (attn == 1)).sum())
    assert abs(rate - 0.15) < 0.02
    frac_mask = float((masked[chosen] == MASK_ID).sum()) / n
    frac_same = float((masked[chosen] == ids[chosen]).sum()) / n
    frac_other = 1 - frac_mask - frac_same
    assert abs(frac_mask - 0.8) < 0.03 and abs(frac_same - 0.1) < 0.025 and abs(frac_other - 0.1) < 0.025
    replaced = masked[chosen & (masked != MASK_ID) & (masked != ids)]
    assert (replaced > 3).all()  # random replacements are never special tokens


def test_mask_text_whole_word_groups():
    b, t = 16, 40
    ids, attn = _batch(b, t, seed=2)
    g = gen(5)
    # words of 1-3 sub-tokens; specials and padding get -1
    word_len = torch.randint(1, 4, (b, t), generator=g)
    word_ids = torch.zeros(b, t, dtype=torch.long)
    for i in range(b):
        word_ids[i] = torch.repeat_interleave(torch.arange(t), word_len[i])[:t]
    word_ids[(ids <= 3)] = -1
    masked, labels = _mask(ids, attn, whole_word_ids=word_ids, probability=0.3)
    chosen = labels != -100
    assert not chosen[word_ids == -1].any()
    for i in range(b):
        for w in word_ids[i].unique().tolist():
            if w >= 0:
                group = chosen[i][word_ids[i] == w]
                assert group.all() or not group.any()
    multi = [(i, w) for i in range(b) for w in range(t) if int((word_ids[i] == w).sum()) > 1]
    assert any(chosen[i][word_ids[i] == w].all() for i, w in multi)  # multi-token words do get masked
    # the at-least-one fallback also masks one whole word
    _, labels = _mask(ids, attn, whole_word_ids=word_ids, probability=0.0)
    for i in range(b):
        words = word_ids[i][labels[i] != -100].unique()
        assert len(words) == 1 and torch.equal(labels[i] != -100, word_ids[i] == words[0])


def test_mask_text_whole_word_rate_is_the_token_rate():
    """Words are chosen with `probability`, so each token still is (its word's draw): about 15% of tokens masked,
    every word all or nothing, and BERT's 80/10/10 still holds token by token."""
    ids, attn = _batch(b=128, t=128, seed=4)
    word_len = torch.randint(1, 5, (128, 128), generator=gen(6))  # words of 1-4 sub-tokens
    word_ids = torch.stack([torch.repeat_interleave(torch.arange(128), word_len[i])[:128] for i in range(128)])
    word_ids[(ids <= 3) | (attn == 0)] = -1
    masked, labels = _mask(ids, attn, whole_word_ids=word_ids)
    chosen = labels != -100
    assert abs(int(chosen.sum()) / int((word_ids >= 0).sum()) - 0.15) < 0.02
    assert not chosen[word_ids == -1].any()
    for i in range(0, 128, 8):
        for w in word_ids[i].unique().tolist():
            group = chosen[i][word_ids[i] == w]
            assert w == -1 or group.all() or not group.any()
    frac_mask = float((masked[chosen] == MASK_ID).sum()) / int(chosen.sum())
    assert abs(frac_mask - 0.8) < 0.04


def test_mask_text_whole_word_toy_case():
    """[CLS] w0 w1 w1 w1 w2 [SEP] [PAD]: the masked positions are always a union of {1}, {2, 3, 4}, {5}."""
    ids = torch.tensor([[1, 10, 11, 12, 13, 14, 2, 0]])
    attn = torch.tensor([[1, 1, 1, 1, 1, 1, 1, 0]])
    word_ids = torch.tensor([[-1, 0, 1, 1, 1, 2, -1, -1]])
    words = [{1}, {2, 3, 4}, {5}]
    seen = set()
    for seed in range(200):
        _, labels = _mask(ids, attn, whole_word_ids=word_ids, probability=0.3, generator=gen(seed))
        positions = set(torch.nonzero(labels[0] != -100).flatten().tolist())
        picked = tuple(i for i, word in enumerate(words) if word <= positions)
        assert positions == set().union(*(words[i] for i in picked)), positions  # whole words, nothing else
        seen.add(picked)
    assert {(0,), (1,), (2,), (0, 1, 2)} <= seen  # each word alone (the fallback among them) and all three
    _, labels = _mask(ids, attn, whole_word_ids=word_ids, probability=1.0)
    assert torch.equal(labels[0], torch.tensor([-100, 10, 11, 12, 13, 14, -100, -100]))


def test_mask_text_at_least_one_per_row():
    ids, attn = _batch(b=50, t=12, seed=3)
    _, labels = _mask(ids, attn, probability=0.0)
    assert ((labels != -100).sum(1) == 1).all()
    # a row with nothing maskable stays untouched
    ids[0, 1:] = 0
    attn[0, 1:] = 0
    masked, labels = _mask(ids, attn, probability=0.0)
    assert (labels[0] == -100).all() and torch.equal(masked[0], ids[0])


def test_mask_text_seeded():
    ids, attn = _batch(b=8, t=32)
    a = _mask(ids, attn, generator=gen(9))
    b = _mask(ids, attn, generator=gen(9))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_mask_text_validation():
    ids, attn = _batch(b=2, t=8)
    with pytest.raises(ValueError, match="input_ids"):
        _mask(ids.float(), attn)
    with pytest.raises(ValueError, match="input_ids"):
        _mask(ids + VOCAB, attn)
    with pytest.raises(ValueError, match="attention_mask"):
        _mask(ids, attn[:, :4])
    with pytest.raises(ValueError, match="probability"):
        _mask(ids, attn, probability=1.5)
    with pytest.raises(ValueError, match="mask_token_id"):
        mask_text(ids, mask_token_id=VOCAB, vocab_size=VOCAB, special_token_ids=SPECIALS)
    with pytest.raises(ValueError, match="whole_word_ids"):
        _mask(ids, attn, whole_word_ids=torch.full_like(ids, -2))
    with pytest.raises(ValueError, match="special_token_ids"):
        mask_text(torch.zeros(1, 3, dtype=torch.long), mask_token_id=0, vocab_size=2, special_token_ids=[1])


def test_masking_from_mask_matches_the_given_mask():
    from vl_models.layers.masking import masking_from_mask

    g = torch.Generator().manual_seed(3)
    given = random_masking(4, 16, 0.5, generator=g).mask
    out = masking_from_mask(given, num_patches=16, batch_size=4)
    assert torch.equal(out.mask, given)
    kept = torch.zeros(4, 16, dtype=torch.bool).scatter_(1, out.ids_keep, True)
    assert torch.equal(kept, ~given)
    shuffled = torch.cat([out.ids_keep, torch.argsort(given.to(torch.int8), dim=1, stable=True)[:, 8:]], 1)
    assert torch.equal(torch.gather(shuffled, 1, out.ids_restore), torch.arange(16).expand(4, 16))
    uneven = given.clone()
    uneven[0] = False
    with pytest.raises(ValueError, match="image_mask"):
        masking_from_mask(uneven, num_patches=16, batch_size=4)
    with pytest.raises(ValueError, match="image_mask"):
        masking_from_mask(given, num_patches=15, batch_size=4)


def test_seeded_draws_equal_torchs_own():
    """`layers.draws` only chooses where a draw is made (the generator's device) and where it goes: the numbers are
    torch's own for the same generator state, so moving the call sites onto it changed no mask or negative."""
    from vl_models.layers import draws

    def pair(fn, *args):
        return fn(*args, generator=torch.Generator().manual_seed(3))

    assert torch.equal(draws.rand((4, 5), torch.Generator().manual_seed(3)), pair(torch.rand, (4, 5)))
    assert torch.equal(draws.randn((4, 5), torch.Generator().manual_seed(3)), pair(torch.randn, (4, 5)))
    assert torch.equal(draws.randint(2, 9, (7,), torch.Generator().manual_seed(3)), pair(torch.randint, 2, 9, (7,)))
    assert torch.equal(draws.randperm(11, torch.Generator().manual_seed(3)), pair(torch.randperm, 11))
    probs = torch.rand(6, 4, generator=torch.Generator().manual_seed(0))
    assert torch.equal(draws.multinomial(probs, 2, torch.Generator().manual_seed(3)), pair(torch.multinomial, probs, 2))
    assert draws.rand(3, None, "cpu").device.type == "cpu"
