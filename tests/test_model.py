"""Unit tests of the fusion CTR network: shapes, masking, unknown ids, the gate (issue 4)."""

from __future__ import annotations

import pytest
import torch

from training.config import TrainConfig
from training.model import MASK_VALUE, ExportWrapper, build_model

C, USERS, ITEMS = 12, 5, 9


@pytest.fixture()
def model() -> torch.nn.Module:
    torch.manual_seed(0)
    config = TrainConfig(
        content_dim=C, embedding_dim=8, attention_dim=4, attention_rank=4, mlp_dims=(16,)
    )
    counts = torch.arange(ITEMS + 1, dtype=torch.float32) * 3
    return build_model(config, USERS, ITEMS, counts).eval()


def contract_inputs(n: int, length: int, seed: int = 0) -> list[torch.Tensor]:
    """One user, `length` history slots, n candidates (docs/ARCHITECTURE.md section 3)."""
    g = torch.Generator().manual_seed(seed)
    return [
        torch.tensor([2]),
        torch.randint(1, ITEMS + 1, (1, length), generator=g),
        torch.randn(1, length, C, generator=g),
        torch.ones(1, length),
        torch.randint(0, ITEMS + 1, (n,), generator=g),
        torch.randn(n, C, generator=g),
        torch.rand(n, generator=g) * 20,
    ]


def test_contract_and_training_shapes(model: torch.nn.Module) -> None:
    assert model(*contract_inputs(7, 4)).shape == (7,)
    b, m, length = 3, 5, 4
    batch = [
        torch.randint(0, USERS + 1, (b,)),
        torch.randint(0, ITEMS + 1, (b, length)),
        torch.randn(b, length, C),
        torch.ones(b, length),
        torch.randint(0, ITEMS + 1, (b, m)),
        torch.randn(b, m, C),
        torch.rand(b, m),
    ]
    assert model(*batch).shape == (b, m)
    logit, prob, attention = ExportWrapper(model)(*contract_inputs(6, 2))
    assert torch.allclose(prob, torch.sigmoid(logit))
    assert attention.shape == (6, 2) and torch.allclose(attention.sum(1), torch.ones(6))
    assert model.attention.last_weights is None  # nothing kept once the export ran


def test_serving_contract_and_training_rows_path_agree(model: torch.nn.Module) -> None:
    """Candidates [N] for one user (the ONNX contract, content as vectors) score as the
    training path does (content as rows of a per-batch table, projected once, then
    `encode_user` + `score_candidates` as in `training.train.train_epoch`)."""
    user, hist_idx, hist_content, hist_mask, item_idx, item_content, count = contract_inputs(6, 3)
    single = model(user, hist_idx, hist_content, hist_mask, item_idx, item_content, count)
    table = torch.cat([hist_content[0], item_content])  # rows 0..2 history, 3..8 candidates
    hist_rows, item_rows = torch.arange(3)[None, :], torch.arange(3, 9)[None, :]
    proj = model.content_proj(table)
    side = model.encode_user(user, hist_idx, proj[hist_rows], hist_mask)
    rows = model.score_candidates(side, item_idx[None, :], proj[item_rows], count[None, :])
    assert torch.allclose(single, rows[0], atol=1e-6)


def test_masked_history_slots_do_not_matter(model: torch.nn.Module) -> None:
    inputs = contract_inputs(5, 4)
    inputs[3] = torch.tensor([[1.0, 1.0, 0.0, 0.0]])
    before = model(*inputs)
    inputs[1] = inputs[1].clone()
    inputs[1][0, 2:] = torch.tensor([7, 8])
    inputs[2] = inputs[2].clone()
    inputs[2][0, 2:] = torch.randn(2, C) * 100
    assert torch.allclose(before, model(*inputs), atol=1e-6)


def test_empty_history_is_finite_and_ignores_padding(model: torch.nn.Module) -> None:
    inputs = contract_inputs(4, 1)
    inputs[1] = torch.zeros(1, 1, dtype=torch.long)
    inputs[2] = torch.zeros(1, 1, C)
    inputs[3] = torch.zeros(1, 1)
    empty = model(*inputs)
    assert torch.isfinite(empty).all()
    inputs[2] = torch.full((1, 1, C), 1e3)  # garbage in a padded slot changes nothing
    assert torch.allclose(empty, model(*inputs))
    assert MASK_VALUE > -float("inf")


def test_unknown_user_and_items_get_finite_distinct_scores(model: torch.nn.Module) -> None:
    inputs = contract_inputs(4, 3)
    inputs[0] = torch.tensor([0])
    inputs[4] = torch.zeros(4, dtype=torch.long)  # new items: index 0, count 0
    inputs[6] = torch.zeros(4)
    logits = model(*inputs)
    assert torch.isfinite(logits).all()
    assert logits.unique().numel() == 4  # content alone tells new items apart


def test_gate_leans_on_content_for_rare_items(model: torch.nn.Module) -> None:
    """With ID rows zeroed, a rare item's representation is mostly its content."""
    with torch.no_grad():
        model.item_emb.weight.zero_()
        model.content_proj.bias.zero_()
    content = torch.randn(2, C)
    proj = model.content_proj(content)
    rare = model.item_repr(torch.tensor([1, 1]), proj, torch.tensor([0.0, 0.0]))
    common = model.item_repr(torch.tensor([1, 1]), proj, torch.tensor([1000.0, 1000.0]))
    assert rare.norm() > 0.8 * proj.norm()
    assert common.norm() < 0.1 * proj.norm()


def test_gradients_reach_every_part(model: torch.nn.Module) -> None:
    model.train()
    model(*contract_inputs(6, 3)).sum().backward()
    for name in ("user_emb.weight", "item_emb.weight", "content_proj.weight", "gate_scale"):
        grad = dict(model.named_parameters())[name].grad
        assert grad is not None and grad.abs().sum() > 0, name
    attention = model.attention.w_prod.grad
    assert attention is not None and attention.abs().sum() > 0


def test_item_counts_buffer_must_match_vocabulary() -> None:
    with pytest.raises(ValueError, match="item_counts must have shape"):
        build_model(TrainConfig(content_dim=C), USERS, ITEMS, torch.zeros(3))


def test_history_order_matters_only_through_recency() -> None:
    """Without the sequence part, the DIN attention sees order only via recency vectors."""
    torch.manual_seed(0)
    config = TrainConfig(content_dim=C, embedding_dim=8, attention_dim=4, seq_layers=0)
    model = build_model(config, USERS, ITEMS, torch.arange(ITEMS + 1.0)).eval()
    assert model.sequence is None
    inputs = contract_inputs(5, 4)
    flipped = [*inputs[:1], inputs[1].flip(1), inputs[2].flip(1), *inputs[3:]]
    assert torch.allclose(model(*inputs), model(*flipped), atol=1e-5)  # recency rows start at 0
    with torch.no_grad():
        model.attention.recency.weight.normal_()
    assert not torch.allclose(model(*inputs), model(*flipped), atol=1e-5)
    no_recency = TrainConfig(content_dim=C, embedding_dim=8, recency=False)
    assert build_model(no_recency, USERS, ITEMS).attention.recency is None


def _encode(model: torch.nn.Module, inputs: list[torch.Tensor]):
    user, hist_idx, hist_content, hist_mask = inputs[:4]
    return model.encode_user(user, hist_idx, model.content_proj(hist_content), hist_mask)


def test_sequence_state_reads_the_newest_item_and_is_zero_without_history(
    model: torch.nn.Module,
) -> None:
    inputs = contract_inputs(5, 4)
    state = _encode(model, inputs).seq
    assert state.shape == (1, 1, 8) and state.abs().sum() > 0
    newer = [*inputs[:1], inputs[1].clone(), inputs[2].clone(), *inputs[3:]]
    newer[1][0, -1], newer[2][0, -1] = 9, torch.randn(C)  # a different newest item
    assert not torch.allclose(state, _encode(model, newer).seq)
    empty = [*inputs[:1], torch.zeros(1, 1, dtype=torch.long), torch.zeros(1, 1, C),
             torch.zeros(1, 1), *inputs[4:]]  # fmt: skip
    assert torch.equal(_encode(model, empty).seq, torch.zeros(1, 1, 8))


def test_catalogue_logits_are_the_dot_product_part(model: torch.nn.Module) -> None:
    """(u + s).v for every vocabulary item, and `drop` shows an item as a new one."""
    inputs = contract_inputs(5, 3)
    side = _encode(model, inputs)
    vocab_proj = model.content_proj(torch.randn(ITEMS + 1, C))
    full = model.catalogue_logits(side, vocab_proj)
    assert full.shape == (1, ITEMS + 1)
    idx = torch.arange(ITEMS + 1)
    items = model.item_repr(idx, vocab_proj, model.item_counts)
    assert torch.allclose(full[0], items @ (side.user + side.seq)[0, 0], atol=1e-5)
    drop = torch.zeros(ITEMS + 1, dtype=torch.bool)
    drop[4] = True
    dropped = model.catalogue_logits(side, vocab_proj, drop)
    new_item = model.item_repr(torch.tensor([0]), vocab_proj[4:5], torch.zeros(1))
    assert torch.allclose(dropped[0, 4], (new_item @ (side.user + side.seq)[0, 0])[0], atol=1e-5)
    assert torch.allclose(dropped[0, :4], full[0, :4]) and not torch.isclose(
        dropped[0, 4], full[0, 4]
    )
