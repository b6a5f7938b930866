"""The fusion CTR network of tailrank (DESIGN.md, "The model"); it returns logits.

Parts, for a user u with history h_1..h_L and a candidate item i:

- collaborative: user and item ID embeddings; their dot product u.v is an MLP input and
  also added to the logit directly (an MLP alone learns dot products poorly);
- content: the item's sentence-encoder vector through a learned Linear(C, d);
- gate: g = sigmoid(a * log1p(count) + b) mixes the ID and content representations,
  item = g * id + (1 - g) * content, so an item with few or no interactions leans on its
  content. Row 0 of each embedding is the reserved unknown row; in training, ID dropout
  turns some items into "unknown, count 0" so the content path learns to stand alone;
- interest: DIN-style target attention of the candidate over the history (history items
  are represented exactly like candidates; with `recency`, the attention keys also carry a
  learned vector per position counted from the newest item). Padding slots get a large
  finite negative score, never -inf, so an empty history gives a zero interest vector and
  finite logits;
- sequence: a small Transformer encoder (SASRec-like, `seq_layers` blocks of
  self-attention over the history, a learned vector per position from the newest) whose
  output at the newest slot is the user's sequence state s. It does not depend on the
  candidate, so (u + s).item is a dot product over the whole catalogue: training adds a
  full-catalogue softmax on it (`training.train`), which is what teaches the ranking
  against every item, not only against a few sampled negatives;
- fusion: MLP over [u, item, interest, u*item, interest*item, u.item, log1p(count)] (plus
  [s, s*item, s.item] with the sequence part); u.item and s.item are also added to the
  logit directly.

`FusionCTR.score` takes user-side tensors with batch B (or 1) and candidates [B or 1, M];
`FusionCTR.forward` also accepts the ONNX contract of docs/ARCHITECTURE.md section 3
(one user, candidates [N]). `ExportWrapper` adds the `prob` output for ONNX.
Import only: training runs through `python -m training.train`.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor, nn

from core import contract
from training.config import TrainConfig

MASK_VALUE = -1e9  # large finite negative for padded history slots (never -inf: no NaN)


class DinAttention(nn.Module):
    """Target attention: score(candidate, history item) by a small MLP, softmax over L.

    The MLP's first layer over [h, c, (P h) * (Q c)] is split into three parts so the
    M x L x hidden tensor is the largest one ever built: the product term is a batched
    matmul over a low-rank projection (rank r) of history and candidate.
    """

    def __init__(self, dim: int, hidden: int, rank: int, max_len: int) -> None:
        super().__init__()
        # recency: a learned vector per position counted from the newest item, added to
        # the attention keys (not the values), so recent items can weigh more
        self.recency = nn.Embedding(max_len, dim) if max_len > 0 else None
        if self.recency is not None:
            nn.init.zeros_(self.recency.weight)
        self.w_hist = nn.Linear(dim, hidden)
        self.w_cand = nn.Linear(dim, hidden, bias=False)
        self.p_hist = nn.Linear(dim, rank, bias=False)
        self.p_cand = nn.Linear(dim, rank, bias=False)
        self.w_prod = nn.Parameter(torch.randn(hidden, rank) * rank**-0.5)
        self.out = nn.Linear(hidden, 1)
        self.keep_weights = False  # ExportWrapper: keep the last weights [B', M, L]
        self.last_weights: Tensor | None = None

    def _recency(self, hist: Tensor) -> Tensor:
        """[1, L, d] recency vectors; positions past the table share its last row."""
        length = hist.shape[1]
        steps = torch.arange(length, device=hist.device)
        from_end = torch.clamp(length - 1 - steps, max=self.recency.num_embeddings - 1)
        return self.recency(from_end).unsqueeze(0)

    def forward(self, cand: Tensor, hist: Tensor, mask: Tensor) -> Tensor:
        """cand [Bc, M, d], hist [B, L, d], mask [B, L] -> interest [B', M, d]."""
        bc, m, _ = cand.shape
        hidden, rank = self.w_prod.shape
        keys = hist if self.recency is None else hist + self._recency(hist)  # [B, L, d]
        # sum_r w[a, r] (Qc)_r (Ph)_r for every hidden unit a: [Bc, M*hid, r] @ [B, r, L]
        prod = (self.p_cand(cand).unsqueeze(-2) * self.w_prod).reshape(bc, -1, rank)
        bil = torch.matmul(prod, self.p_hist(keys).transpose(1, 2))  # [B', M*hidden, L]
        bil = bil.reshape(bil.shape[0], m, hidden, -1).transpose(-1, -2)  # [B', M, L, hid]
        pre = bil + self.w_hist(keys).unsqueeze(1) + self.w_cand(cand).unsqueeze(2)
        scores = self.out(torch.relu(pre)).squeeze(-1)  # [B', M, L]
        mask3 = mask.unsqueeze(1)  # [B, 1, L]
        scores = scores * mask3 + (1.0 - mask3) * MASK_VALUE
        weights = torch.softmax(scores, dim=-1) * mask3  # empty history -> all zeros
        if self.keep_weights:
            self.last_weights = weights
        return torch.matmul(weights, hist)  # [B', M, d]


class SelfAttentionBlock(nn.Module):
    """Pre-norm multi-head self-attention + feed-forward over [B, L, d], key-masked.

    Written with plain matmuls (no nn.MultiheadAttention fast path) so the ONNX graph is
    the same ops in training and export; masked keys get MASK_VALUE, never -inf.
    """

    def __init__(self, dim: int, heads: int, dropout: float) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"embedding_dim {dim} must be a multiple of seq_heads {heads}")
        self.heads = heads
        self.norm1 = nn.LayerNorm(dim)
        self.query = nn.Linear(dim, dim)
        self.key = nn.Linear(dim, dim)
        self.value = nn.Linear(dim, dim)
        self.proj = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim)
        self.ffn = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))
        self.drop = nn.Dropout(dropout)

    def forward(self, x: Tensor, mask: Tensor, last_only: bool = False) -> Tensor:
        """x [B, L, d], mask [B, L] (1 = real item) -> [B, L, d], or [B, 1, d] for the
        newest slot alone with `last_only` (all that the encoder's last block must give)."""
        b, length, d = x.shape
        heads, dh = self.heads, d // self.heads
        normed = self.norm1(x)
        k, v = self.key(normed), self.value(normed)
        if last_only:
            x, normed = x[:, -1:], normed[:, -1:]
        q = self.query(normed).reshape(b, -1, heads, dh).transpose(1, 2)  # [B, H, Lq, dh]
        k, v = (t.reshape(b, length, heads, dh).transpose(1, 2) for t in (k, v))
        scores = torch.matmul(q, k.transpose(-1, -2)) * dh**-0.5  # [B, H, Lq, L]
        keys = mask[:, None, None, :]
        scores = scores * keys + (1.0 - keys) * MASK_VALUE
        att = torch.matmul(torch.softmax(scores, dim=-1), v).transpose(1, 2).reshape(b, -1, d)
        x = x + self.drop(self.proj(att))
        return x + self.drop(self.ffn(self.norm2(x)))


class SequenceEncoder(nn.Module):
    """The user's sequence state s [B, d] from history representations [B, L, d].

    Histories are oldest first and left-padded, so the last slot is the newest item; its
    output (which attends over every real item) is s. An empty history gives s = 0.
    """

    def __init__(self, dim: int, layers: int, heads: int, max_len: int, dropout: float) -> None:
        super().__init__()
        self.position = nn.Embedding(max_len, dim)  # counted from the newest item
        nn.init.normal_(self.position.weight, std=0.02)
        self.blocks = nn.ModuleList(SelfAttentionBlock(dim, heads, dropout) for _ in range(layers))
        self.norm = nn.LayerNorm(dim)

    def forward(self, hist: Tensor, mask: Tensor) -> Tensor:
        length = hist.shape[1]
        steps = torch.arange(length, device=hist.device)
        from_end = torch.clamp(length - 1 - steps, max=self.position.num_embeddings - 1)
        x = (hist + self.position(from_end).unsqueeze(0)) * mask.unsqueeze(-1)
        for i, block in enumerate(self.blocks):
            x = block(x, mask, last_only=i == len(self.blocks) - 1)
        any_real = mask.amax(dim=1, keepdim=True)  # [B, 1]: 0 for an empty history
        return self.norm(x[:, -1]) * any_real


class UserSide(NamedTuple):
    """A user's encoded inputs: u [B, 1, d], s [B, 1, d] (None without the sequence part),
    history representations [B, L, d] and their mask [B, L]."""

    user: Tensor
    seq: Tensor | None
    hist: Tensor
    mask: Tensor


class FusionCTR(nn.Module):
    """Click logit for (user, candidate) from IDs, content, counts and history."""

    def __init__(
        self,
        config: TrainConfig,
        n_users: int,
        n_items: int,
        item_counts: Tensor | None = None,
        sparse: bool = False,
    ) -> None:
        """n_users / n_items are vocabulary sizes without the reserved row 0. `sparse`
        gives the ID embeddings sparse gradients (training with ``torch.optim.SparseAdam``
        on large vocabularies); it changes nothing in the forward pass or the weights."""
        super().__init__()
        d = config.embedding_dim
        self.config = config
        self.user_emb = nn.Embedding(n_users + 1, d, sparse=sparse)
        self.item_emb = nn.Embedding(n_items + 1, d, sparse=sparse)
        nn.init.normal_(self.user_emb.weight, std=0.05)
        nn.init.normal_(self.item_emb.weight, std=0.05)
        self.content_proj = nn.Linear(config.content_dim, d)
        self.gate_scale = nn.Parameter(torch.tensor(1.0))
        self.gate_bias = nn.Parameter(torch.tensor(-2.0))
        self.attention = DinAttention(
            d, config.attention_dim, config.attention_rank, config.history_len * config.recency
        )
        self.sequence = (
            SequenceEncoder(d, config.seq_layers, config.seq_heads, config.history_len,
                            config.dropout)
            if config.seq_layers > 0 else None
        )  # fmt: skip
        layers: list[nn.Module] = []
        width = 5 * d + 2 + (2 * d + 1 if self.sequence is not None else 0)
        for hidden in config.mlp_dims:
            layers += [nn.Linear(width, hidden), nn.ReLU(), nn.Dropout(config.dropout)]
            width = hidden
        layers.append(nn.Linear(width, 1))
        self.mlp = nn.Sequential(*layers)
        counts = torch.zeros(n_items + 1) if item_counts is None else item_counts.float()
        if counts.shape != (n_items + 1,):
            raise ValueError(f"item_counts must have shape [{n_items + 1}], got {counts.shape}")
        # Training-time counts of vocabulary items: history items carry no count input.
        self.register_buffer("item_counts", counts)

    def item_repr(self, idx: Tensor, projected: Tensor, count: Tensor) -> Tensor:
        """Gate-mixed ID and (already projected) content representation: idx [...]."""
        gate = torch.sigmoid(self.gate_scale * torch.log1p(count) + self.gate_bias)
        return gate.unsqueeze(-1) * self.item_emb(idx) + (1.0 - gate.unsqueeze(-1)) * projected

    def encode_user(
        self, user_idx: Tensor, hist_idx: Tensor, hist_proj: Tensor, hist_mask: Tensor
    ) -> UserSide:
        """The candidate-independent part: computed once per user, shared by all items."""
        hist = self.item_repr(hist_idx, hist_proj, self.item_counts[hist_idx])
        user = self.user_emb(user_idx).unsqueeze(1)
        seq = None if self.sequence is None else self.sequence(hist, hist_mask).unsqueeze(1)
        return UserSide(user, seq, hist, hist_mask)

    def catalogue_logits(
        self, side: UserSide, vocab_proj: Tensor, drop: Tensor | None = None
    ) -> Tensor:
        """[B, n_items + 1] (u + s).v over every vocabulary item (row 0, unknown, included):
        the dot-product part of the logit, for the full-catalogue softmax in training.
        `drop` [n_items + 1] bool shows those items as new ones (unknown row, count 0), so
        that content-only items learn to compete with the whole catalogue too."""
        idx = torch.arange(vocab_proj.shape[0], device=vocab_proj.device)
        return self.dot_logits(side, idx, vocab_proj, drop)

    def dot_logits(
        self, side: UserSide, idx: Tensor, proj: Tensor, drop: Tensor | None = None
    ) -> Tensor:
        """[B, K] (u + s).v of K vocabulary items `idx` [K] with projected content `proj`
        [K, d]; `drop` [K] bool shows those as new items (unknown row, count 0). The
        catalogue softmax's logits, over every item or over a sample of them."""
        query = side.user if side.seq is None else side.user + side.seq
        counts = self.item_counts[idx]
        if drop is not None:
            idx, counts = idx.masked_fill(drop, 0), counts.masked_fill(drop, 0.0)
        items = self.item_repr(idx, proj, counts)  # [K, d]
        return query.squeeze(1) @ items.T

    def score(
        self,
        user_idx: Tensor,
        hist_idx: Tensor,
        hist_content: Tensor,
        hist_mask: Tensor,
        item_idx: Tensor,
        item_content: Tensor,
        item_count: Tensor,
    ) -> Tensor:
        """User side [B] / [B, L] / [B, L, C]; candidates [B or 1, M] -> logits [B, M]."""
        hist_proj = self.content_proj(hist_content)
        item_proj = self.content_proj(item_content)
        return self.score_projected(
            user_idx, hist_idx, hist_proj, hist_mask, item_idx, item_proj, item_count
        )

    def score_projected(
        self,
        user_idx: Tensor,
        hist_idx: Tensor,
        hist_proj: Tensor,
        hist_mask: Tensor,
        item_idx: Tensor,
        item_proj: Tensor,
        item_count: Tensor,
    ) -> Tensor:
        """The network after the content projection; see the module docstring."""
        side = self.encode_user(user_idx, hist_idx, hist_proj, hist_mask)
        return self.score_candidates(side, item_idx, item_proj, item_count)

    def score_candidates(
        self, side: UserSide, item_idx: Tensor, item_proj: Tensor, item_count: Tensor
    ) -> Tensor:
        """Logits [B', M] of candidates [Bc, M] for an encoded user side (B users)."""
        item = self.item_repr(item_idx, item_proj, item_count)  # [Bc, M, d]
        interest = self.attention(item, side.hist, side.mask)  # [B', M, d]
        user = side.user.expand_as(interest)
        item = item.expand_as(interest)
        mf = (user * item).sum(-1, keepdim=True)
        log_count = torch.log1p(item_count).unsqueeze(-1).expand_as(mf)
        parts = [user, item, interest, user * item, interest * item, mf, log_count]
        direct = mf
        if side.seq is not None:
            seq = side.seq.expand_as(interest)
            seq_dot = (seq * item).sum(-1, keepdim=True)
            parts += [seq, seq * item, seq_dot]
            direct = mf + seq_dot
        return self.mlp(torch.cat(parts, -1)).squeeze(-1) + direct.squeeze(-1)

    def forward(
        self,
        user_idx: Tensor,
        hist_idx: Tensor,
        hist_content: Tensor,
        hist_mask: Tensor,
        item_idx: Tensor,
        item_content: Tensor,
        item_count: Tensor,
    ) -> Tensor:
        """Candidates [N] (ONNX contract: one user, N candidates -> [N]) or [B, M] -> [B, M]."""
        if item_idx.dim() == 1:
            logits = self.score(
                user_idx,
                hist_idx,
                hist_content,
                hist_mask,
                item_idx.unsqueeze(0),
                item_content.unsqueeze(0),
                item_count.unsqueeze(0),
            )
            return logits.reshape(-1)
        return self.score(
            user_idx, hist_idx, hist_content, hist_mask, item_idx, item_content, item_count
        )


class ExportWrapper(nn.Module):
    """The graph that goes to ONNX: contract inputs -> (`logit` [N], `prob` [N],
    `attention` [N, L]: each candidate's target-attention weights over the history, what
    Rank's ``explain`` shows as the history items behind a score)."""

    def __init__(self, model: FusionCTR) -> None:
        super().__init__()
        self.model = model

    def forward(self, *inputs: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Inputs in ``core.contract.INPUT_NAMES`` order -> (logit, prob, attention)."""
        attention = self.model.attention
        attention.keep_weights = True
        try:
            logit = self.model(**dict(zip(contract.INPUT_NAMES, inputs, strict=True)))
            weights = attention.last_weights
        finally:
            attention.keep_weights, attention.last_weights = False, None
        return logit, torch.sigmoid(logit), weights[0]  # [1, N, L] -> [N, L], L may be 0


def build_model(
    config: TrainConfig,
    n_users: int,
    n_items: int,
    item_counts: Tensor | None = None,
    sparse: bool = False,
) -> FusionCTR:
    """Create a FusionCTR for vocabularies of n_users users and n_items items."""
    return FusionCTR(config, n_users, n_items, item_counts, sparse)
