"""MIRACLE (Tang et al., SIGIR 2023): multi-interest pre-training with a sparse capsule network.

Top to bottom (equation numbers of the paper; spec ``shared/specs/miracle.md``):

    T = text[item_seq]                                   frozen text features [B, L, d_b]  (Eq. 1)
    X = MoE(T) (+ E_id[item_seq] transductive)           [B, L, d]          (Eqs. 2-4; Sec. 3.4.4)
    H = BiTransformer(Dropout(LN(X + P)))                [B, L, d]          (Eqs. 5-6)
    s = H A^T (1 + eps); a = argmax s; I_u               [B, L, C], [B, L], [B, C]   (Eqs. 7-8)
    o = softmax(att(H + P~)); q = LN(tanh(H W5 + b5) + H)       [B, L], [B, L, d]    (Eqs. 9-10)
    U = routing(b0 = s, q, o, I_u)                       [B, C, d]          (Eqs. 11-14)
    score(v) = max_{j in I_u} <u_j, y_v>                 (Eq. 17; chunked over items)

Losses: pre-training (``stage="pretrain"``) ``l_rec`` in-batch softmax CE (Eq. 16) + theta_1 l_b
(balance, Eqs. 19-21) + theta_2 l_c (orthogonality, Eq. 18) + theta_3 l_i (interest-level
contrastive with 20% item masking and forced activation, Eq. 15) = Eq. 22.  Fine-tuning
(``stage="finetune"``) full-softmax CE over all items (Eq. 23) + theta_4 l_b + theta_5 l_c (Eq. 24),
with the sequence encoder frozen (Sec. 3.4.4: the recipe's ``freeze: [position_embedding,
encoder]`` — the code's ``downstream_freeze_parameter``; adaptor, input LN, capsules and ID table
train) after ``pretrained_ckpt`` is loaded.  Settings: ``setting="transductive"`` (text + new ID
table, Table 2) or ``"inductive"`` (text only, Fig. 3).  Zero-shot (Fig. 4) = validate the
pre-trained checkpoint with ``stage=finetune, setting=inductive`` and no training (text only; the
code's ``valid(0)`` in its transductive run also adds an untrained ID table, which only adds noise).

Paper vs official code (``WHUIR/Miracle`` 735be6a; spec ``miracle.md`` §8).  The default is what
produced the paper's tables, the authors' code, except clear bugs (DESIGN.md "Decisions"); the
other form is a switch:

| switch | paper form | code form | default | why |
|---|---|---|---|---|
| ``score_with_id`` | ``False``: candidates are text only, ``y_v = x_v`` (Eq. 17) | ``True``: ``y_v = x_v + e_v`` in the transductive setting, in the training CE, the ranking and the catalogue balance term (as UniSRec) | ``True`` (code) | produced Table 2; history and candidates then live in one space (A6).  No effect when pre-training or inductive |
| ``attention_activation`` | ``"tanh"``: ``tanh((H + P~) W_3 + b_3) W_4 + b_4`` (Eq. 9) | ``"leaky_relu"``: ``Linear -> Dropout -> LeakyReLU -> Linear(d, 1)`` | ``"leaky_relu"`` (code) | produced the tables; Eq. 9's ``W_4 in R^{d x N}`` does not give a vector (A4) |
| ``train_mask_token`` | ``True``: a learned [MASK] "special token" (Eq. 15) | ``False``: ``mask_param.data``, never trained | ``False`` (code) | produced the tables (A10) |
| (no switch) balance loss l_b | ``C w^T r`` with ``m in {0, -inf}`` (Eqs. 19-21) | Switch-style ``sum f p`` over history and candidate items, no factor C | code | the printed form does not compute (A7) |
| (no switch) orthogonality l_c | ``-log(cos / sum cos)``, no exp (Eq. 18) | InfoNCE over normalised base vectors, tau = 0.1 | code | the printed form is undefined for negative cosines (A8) |
| ``routing_agreement`` | ``"h"``: ``b_ij += <h_i, u_j>`` (Eq. 14) | ``"q"``: ``<q_i, u_j>`` | ``"q"`` (code) | produced the tables; HORAE's Eq. 22 prints q_i too (A5) |
| ``gate_bias`` | ``True``: the MoE gate ``softmax(t W_1 + b_1)`` (Eq. 3) | ``False``: no bias | ``False`` (code) | produced the tables |
| ``mask_pad_logit`` | ``True``: the fine-tuning softmax runs over the items (Eq. 23) | ``False``: the pad row 0 is in the softmax and in the catalogue balance term | ``False`` (code) | produced the tables; the difference is negligible (A18) |
| (no switch) pad item 0 in the ranking | silent | ranked like an item | masked | a padding row is not an item; the zoo's protocol masks it for every model (A18) |

Where the paper gives no value or form, the code's: loss weights theta_1..5 = 10, 0.01, 1e-3, 10,
0.01; noise ``s + z (0.2 s + 0.01)``; a per-sequence activation mask (A1); input LayerNorm +
dropout before the Transformer; masking never the last item nor sequences shorter than 5; raw
dot products in l_i (tau = 1).

Item text (Eq. 1): the paper and its code encode it with BERT-base ``[CLS]`` (768-d).  The zoo's
recipes use the offline MiniLM (``data.text_encoder: minilm``, 384-d; nothing downloads at run
time): for the paper's features set ``data.text_encoder`` to a local bert-base-uncased folder and
``data.text_pooling: cls`` in both the pre-training and the fine-tuning recipe (HORAE likewise).

Ablations (Fig. 5), one init arg each: ``position_attention=False`` (w/o PW; o_i = 1, not 1/n,
a reading: the squash is scale-sensitive and the paper does not say),
``interest_contrastive=False`` (w/o IC), ``sparse_activation=False`` with ``num_capsules=4``
(w/o SS).  Hyper-parameters (Tables 3-4): ``n_layers`` (L), ``num_capsules`` (C).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from zoo.models.base import SequentialRecommender
from zoo.modules.distributed import gather_rows, share_of_mean
from zoo.modules.dropout import Dropout
from zoo.modules.embeddings import LearnedPositions
from zoo.modules.scoring import interest_max, max_interest_scores
from zoo.modules.sparse_capsules import (
    CapsuleOutput,
    SparseInterestCapsules,
    capsule_balance_loss,
    capsule_orthogonality_loss,
    interest_contrastive_loss,
    random_item_mask,
)
from zoo.modules.text_items import TextItemEmbedding
from zoo.modules.transformer import TransformerEncoder, init_weights

# the paper, read by `zoo models` from the source (zoo/catalog.py) without importing this file
PAPER = {"title": "Towards Multi-Interest Pre-training with Sparse Capsule Network", "authors": "Tang et al.", "venue": "SIGIR 2023"}


@dataclass
class InterestState:
    """One forward pass: every intermediate the spec names (B users, L positions, C capsules)."""

    x: Tensor  # [B, L, d] item inputs MoE(t) (+ e)
    h: Tensor  # [B, L, d] contextualised items H
    caps: CapsuleOutput  # s, a, I_u, o, q, U
    interests: Tensor  # [B, C, d] the interests that score items (MIRACLE: U)
    active: Tensor  # [B, C] bool, I_u


class MIRACLE(SequentialRecommender):
    """MIRACLE: text-aware item embedding + sparse interest capsule network.

    Args:
        d: hidden size d_n (300).  n_layers / n_heads / d_ff: encoder (2 / 2 / 256).
        dropout: hidden, attention, capsule dropouts (0.3).  max_len: N (20).
        text_dim: d_b (default ``data_info["text_dim"]``).  n_experts: G (8).
        adaptor_dropout: dropout inside the whitening experts (0.3).
        adaptor_masks: ``"position"`` (official code, default: each position and each encoder
            pass draws its own adaptor dropout masks) or ``"item"`` (approximate, faster: one
            adaptor pass per training step over the step's items, one mask per item and step;
            :mod:`zoo.modules.text_items`).
        num_capsules: C (32).  routing_iters: tau, routing iterations (3).
        noise_scale: activation noise scale (0.2).
        stage: ``"pretrain"`` (in-batch CE + l_b + l_c + l_i) or ``"finetune"`` (full CE + l_b + l_c).
        setting: ``"transductive"`` (text + ID, fine-tuning only) or ``"inductive"`` (text only).
        score_with_id: transductive: add the ID embedding to the candidates too (code, default;
            ``False`` = paper Eq. 17, text-only candidates).
        rope: rotary embedding in the encoder (``"none"`` for MIRACLE; HORAE's RoMHA).
        sparse_activation / position_attention / interest_contrastive: ablation switches
            (w/o SS / w/o PW / w/o IC).
        attention_activation: ``"leaky_relu"`` (code, default) or ``"tanh"`` (paper Eq. 9).
        routing_agreement: ``"q"`` (code, default) or ``"h"`` (paper Eq. 14).
        gate_bias: the MoE adaptor gate's bias b_1 (paper Eq. 3; the code has none, default False).
        balance_weight: theta_1 (pre-training) / theta_4 (fine-tuning) = 10.
        orthogonality_weight: theta_2 / theta_5 = 0.01.  orthogonality_tau: 0.1.
        contrastive_weight: theta_3 = 1e-3.  contrastive_tau: 1 (raw dot products).
        mask_ratio: item mask probability in l_i (0.2).  mask_min_len: sequences shorter are
            never masked (5).  train_mask_token: learn the [MASK] vector (code: never trained).
        mask_pad_logit: leave the pad row out of the fine-tuning softmax and the catalogue
            balance term (Eq. 23 sums over the items); default False keeps it in (code).
        **kwargs: :class:`SequentialRecommender` options (num_items, data_info, lr, freeze,
            pretrained_ckpt, ...).  With ``stage="finetune"``, a ``pretrained_ckpt`` and no
            ``freeze`` given, the paper's frozen modules (``PAPER_FREEZE``) are used.
    """

    pad_invariant = True  # pads are masked keys and masked out of routing; positions right-aligned

    PAPER_FREEZE: tuple[str, ...] = ("position_embedding", "encoder")

    def __init__(
        self,
        d: int = 300,
        n_layers: int = 2,
        n_heads: int = 2,
        d_ff: int = 256,
        dropout: float = 0.3,
        max_len: int = 20,
        text_dim: int | None = None,
        n_experts: int = 8,
        adaptor_dropout: float = 0.3,
        adaptor_masks: str = "position",
        num_capsules: int = 32,
        routing_iters: int = 3,
        noise_scale: float = 0.2,
        stage: str = "pretrain",
        setting: str = "transductive",
        score_with_id: bool = True,
        rope: str = "none",
        sparse_activation: bool = True,
        position_attention: bool = True,
        interest_contrastive: bool = True,
        attention_activation: str = "leaky_relu",
        routing_agreement: str = "q",
        gate_bias: bool = False,
        balance_weight: float = 10.0,
        orthogonality_weight: float = 0.01,
        orthogonality_tau: float = 0.1,
        contrastive_weight: float = 1e-3,
        contrastive_tau: float = 1.0,
        mask_ratio: float = 0.2,
        mask_min_len: int = 5,
        train_mask_token: bool = False,
        mask_pad_logit: bool = False,
        **kwargs: Any,
    ) -> None:
        if stage not in ("pretrain", "finetune"):
            raise ValueError(f"stage must be 'pretrain' or 'finetune', got {stage!r}")
        if setting not in ("transductive", "inductive"):
            raise ValueError(f"setting must be 'transductive' or 'inductive', got {setting!r}")
        if stage == "finetune" and kwargs.get("pretrained_ckpt") and kwargs.get("freeze") is None:
            kwargs["freeze"] = list(self.PAPER_FREEZE)
        super().__init__(**kwargs)
        self.save_hyperparameters()
        text_dim = text_dim if text_dim is not None else self.data_info.get("text_dim")
        if not text_dim:
            raise ValueError(
                f"{type(self).__name__} embeds items by their text: give model.init_args.text_dim or "
                "data with text features (data_info['text_dim']; set data.init_args.text_encoder)"
            )
        self.stage, self.setting = stage, setting
        self.use_id = stage == "finetune" and setting == "transductive"
        self.score_with_id, self.mask_pad_logit = score_with_id, mask_pad_logit
        self.interest_contrastive = interest_contrastive
        self.inter_losses = True  # l_b + l_c (HORAE's "w/o L_inter" turns them off)
        self.balance_weight, self.orthogonality_weight = balance_weight, orthogonality_weight
        self.orthogonality_tau = orthogonality_tau
        self.contrastive_weight, self.contrastive_tau = contrastive_weight, contrastive_tau
        self.mask_ratio, self.mask_min_len, self.train_mask_token = mask_ratio, mask_min_len, train_mask_token

        self.item_encoder = TextItemEmbedding(
            self.num_items, int(text_dim), d, n_experts, adaptor_dropout, self.use_id, adaptor_masks, gate_bias
        )
        self.position_embedding = LearnedPositions(max_len, d)  # P, slot index (code)
        self.input_norm = nn.LayerNorm(d, eps=1e-12)
        self.input_dropout = Dropout(dropout)
        self.encoder = TransformerEncoder(d, n_layers, n_heads, d_ff, dropout, causal=False, rope=rope)
        self.capsules = SparseInterestCapsules(
            d,
            num_capsules,
            max_len,
            routing_iters,
            noise_scale,
            dropout=dropout,
            sparse_activation=sparse_activation,
            position_attention=position_attention,
            attention_activation=attention_activation,
            routing_agreement=routing_agreement,
        )
        self.mask_token = nn.Parameter(torch.randn(d) * 0.02)  # [MASK] item vector
        self.apply(init_weights)

    # ------------------------------------------------------------------ side info
    def attach_side_info(self, info: dict[str, Tensor]) -> None:
        if "text" not in info:
            raise KeyError(
                f"{type(self).__name__} needs item text features (side info 'text'): set "
                "data.init_args.text_encoder (e.g. minilm) and require_text: true"
            )
        self._side_info = info
        self.item_encoder.set_text(info["text"].to(self.device))

    # ------------------------------------------------------------------ embeddings
    def candidate_embeddings(self, ids: Tensor | None = None) -> Tensor:
        """y_v for ``ids [...]`` -> ``[..., d]``, or every item ``[N+1, d]`` when ids is None."""
        with_id = self.use_id and self.score_with_id
        return self.item_encoder.all_items(with_id) if ids is None else self.item_encoder(ids, with_id)

    def _mask_vector(self, token: Tensor) -> Tensor:
        return token if self.train_mask_token else token.detach()

    def _temporal_inputs(self, batch: dict[str, Tensor]) -> tuple[Tensor | None, Tensor | None]:
        """Extra encoder input and capsule-attention input ``[B, L, d]`` (none in MIRACLE; HORAE's time)."""
        return None, None

    def _attention_relation(self, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor] | None:
        """Per-pair key and value additions ``[B, L, L, d]`` in every encoder layer (none in
        MIRACLE; HORAE's Fig. 7 relation matrix)."""
        return None

    def encode(self, batch: dict[str, Tensor], item_mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Eqs. 2-6: ``(X, H)``, both ``[B, L, d]``; items under ``item_mask [B, L]`` become [MASK]."""
        item_seq = batch["item_seq"]
        x = self.item_encoder(item_seq)  # [B, L, d]
        if item_mask is not None:
            x = torch.where(item_mask[..., None], self._mask_vector(self.mask_token), x)
        extra, _ = self._temporal_inputs(batch)
        z = x + self.position_embedding(item_seq)
        if extra is not None:
            z = z + extra
        relation = self._attention_relation(batch)
        h = self.encoder(self.input_dropout(self.input_norm(z)), item_seq > 0, relation=relation)  # [B, L, d]
        return x, h

    def capsule_stage(
        self, batch: dict[str, Tensor], item_mask: Tensor | None = None, forced: InterestState | None = None
    ) -> tuple[Tensor, Tensor, CapsuleOutput]:
        """Encoder + sparse capsule network; ``forced`` imposes another pass's activation."""
        x, h = self.encode(batch, item_mask)
        _, caps_extra = self._temporal_inputs(batch)
        caps = self.capsules(
            h,
            batch["item_seq"] > 0,
            extra_attn=caps_extra,
            forced_active=None if forced is None else forced.active,
            forced_assign=None if forced is None else forced.caps.assign,
        )
        return x, h, caps

    def forward_interests(
        self, batch: dict[str, Tensor], item_mask: Tensor | None = None, forced: InterestState | None = None
    ) -> InterestState:
        x, h, caps = self.capsule_stage(batch, item_mask, forced)
        return InterestState(x=x, h=h, caps=caps, interests=caps.interests, active=caps.active)

    # ------------------------------------------------------------------ scoring
    def user_representation(self, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        state = self.forward_interests(batch)
        return state.interests, state.active  # [B, C, d], [B, C]

    def score_all(self, user_repr: tuple[Tensor, Tensor]) -> Tensor:
        interests, active = user_repr
        return max_interest_scores(interests, self.candidate_embeddings(), active, self.eval_chunk_size)  # [B, N+1]

    def score_candidates(self, user_repr: tuple[Tensor, Tensor], candidates: Tensor) -> Tensor:
        interests, active = user_repr
        s = torch.einsum("bkd,bnd->bkn", interests, self.candidate_embeddings(candidates))  # [B, C, n]
        return interest_max(s, active)  # [B, n]

    def interests_for_predict(self, user_repr: tuple[Tensor, Tensor]) -> Tensor:
        interests, active = user_repr
        return interests * active[..., None].to(interests.dtype)  # inactive capsules zeroed

    def in_batch_logits(self, interests: Tensor, active: Tensor, targets_emb: Tensor) -> Tensor:
        """Eq. 17 against the batch's targets: ``[B, C, d] x [B', d]`` -> ``[B, B']`` (B' = B, or every
        DDP process's targets)."""
        return max_interest_scores(interests, targets_emb, active, self.eval_chunk_size)

    # ------------------------------------------------------------------ losses
    def training_loss(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        if self.stage == "pretrain":  # the items this step looks up: history and in-batch targets
            step_ids = torch.cat([batch["item_seq"].flatten(), batch["target"]])  # [B*L + B]
        else:  # full softmax: the whole catalogue
            step_ids = torch.arange(self.num_items + 1, device=batch["item_seq"].device)  # [N+1]
        with self.item_encoder.shared_pass(step_ids):
            return self._training_terms(batch)

    def _training_terms(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        state = self.forward_interests(batch)
        pad_mask = batch["item_seq"] > 0
        terms: dict[str, Tensor] = {}
        if self.stage == "pretrain":
            y = self.candidate_embeddings(batch["target"])  # [B, d]
            y_all, offset = gather_rows(y)  # [B', d]: under DDP every process's targets are negatives
            logits = self.in_batch_logits(state.interests, state.active, y_all)  # [B, B']
            labels = torch.arange(len(y), device=y.device) + offset  # [B]
            terms["rec"] = share_of_mean(F.cross_entropy(logits, labels), len(y), len(y_all))  # Eq. 16
            candidates = y
        else:
            first = 1 if self.mask_pad_logit else 0  # Eq. 23 over the items, or with the pad row (code)
            y_all = self.candidate_embeddings()[first:]  # [N+1-first, d]
            logits = max_interest_scores(state.interests, y_all, state.active, self.eval_chunk_size)  # [B, N+1-first]
            terms["rec"] = F.cross_entropy(logits, batch["target"] - first)  # Eq. 23
            candidates = y_all
        if self.inter_losses and self.balance_weight:
            s_cand = self.capsules.similarity(candidates)  # [B or N, C]
            terms["balance"] = self.balance_weight * (
                capsule_balance_loss(state.caps.s, pad_mask)
                + capsule_balance_loss(s_cand, gather=self.stage == "pretrain")  # fine-tuning: the catalogue
            )
        if self.inter_losses and self.orthogonality_weight:
            terms["orthogonality"] = self.orthogonality_weight * capsule_orthogonality_loss(
                self.capsules.base_vectors, self.orthogonality_tau
            )
        if self.stage == "pretrain" and self.interest_contrastive and self.contrastive_weight:
            terms["interest_cl"] = self.contrastive_weight * self.interest_cl_loss(batch, state)
        if self.stage == "pretrain":
            terms.update(self.extra_pretrain_losses(batch, state, y))
        return terms

    def interest_cl_loss(self, batch: dict[str, Tensor], state: InterestState) -> Tensor:
        """Eq. 15: mask 20% of the items, force the original activation, contrast the interests."""
        item_mask = random_item_mask(batch["item_seq"], self.mask_ratio, self.mask_min_len)  # [B, L]
        aug = self.forward_interests(batch, item_mask=item_mask, forced=state)
        return interest_contrastive_loss(state.interests, aug.interests, state.caps.assign, item_mask, self.contrastive_tau)

    def extra_pretrain_losses(self, batch: dict[str, Tensor], state: InterestState, y: Tensor) -> dict[str, Tensor]:
        """Hook for HORAE's additional pre-training objectives (none in MIRACLE)."""
        return {}
