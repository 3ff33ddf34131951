"""MIND (Li et al., CIKM 2019): multi-interest network with dynamic routing.

    e_i = E[s_i]                                           # [B, L, d] (pads zeroed)
    u_hat_i = S e_i                                        # shared bilinear map, [B, L, d]
    b_ki ~ N(0, 1)  (random initial routing logits)        # [B, K, L]
    V = B2I-routing(u_hat, b, r = 3)                       # squashed capsules [B, K, d]
    K'_u = max(1, min(K, floor(log2 |I_u|)))               # dynamic interest number
    V = ReLU(Linear(V))                                    # the ReLU layer after the capsules
    train: v = V[argmax_k <V_k, e_target>]  (label-aware attention with p -> inf)
    score(i) = max_{k < K'_u} <V_k, e_i>

Switches and choices:
* ``dynamic_interests`` (paper: True): only the first K'_u capsules are routed to and scored;
  the ComiRec code's MIND uses all K (False).
* ``relu_layer`` (True): the ReLU dense layer after the capsules, as the ComiRec code's MIND
  (the paper concatenates user-profile features first; the zoo has none).
* The label-aware attention of the paper uses ``softmax(pow(<V_k, e_target>, p))``; its hard
  limit p -> inf (which the paper found to converge fastest, and which the ComiRec and REMI
  baselines use) is the training readout here.
* Routing: softmax over interests, stop-gradient on the first r-1 iterations (ComiRec code).
  The random initial logits are re-drawn every training step; evaluation uses a fixed seed so
  that inference is deterministic.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from zoo.models.comirec import Interests, MultiInterestRecommender
from zoo.modules.multi_interest import CapsuleInterestExtractor, dynamic_interest_number
from zoo.modules.transformer import init_weights

# the paper, read by `zoo models` from the source (zoo/catalog.py) without importing this file
PAPER = {"title": "Multi-Interest Network with Dynamic Routing for Recommendation at Tmall", "authors": "Li et al.", "venue": "CIKM 2019"}


class MIND(MultiInterestRecommender):
    """MIND (see the module docstring).

    Args:
        d: embedding size.  K: maximum number of interests.  max_len: longest history.
        routing_iters: B2I routing iterations.  dynamic_interests: adaptive K'_u.
        relu_layer: ReLU dense layer on the capsules.
        loss / n_neg / neg_sampler / logq_correction: :class:`NextItemLoss` options.
        **kwargs: :class:`SequentialRecommender` options.
    """

    def __init__(
        self,
        d: int = 64,
        K: int = 4,
        max_len: int = 50,
        routing_iters: int = 3,
        dynamic_interests: bool = True,
        relu_layer: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.save_hyperparameters()
        self.K, self.dynamic_interests = K, dynamic_interests
        self.item_emb = nn.Embedding(self.num_items + 1, d, padding_idx=0)
        self.capsules = CapsuleInterestExtractor(d, K, max_len, bilinear="shared", iters=routing_iters, random_init=True)
        self.proj = nn.Sequential(nn.Linear(d, d), nn.ReLU()) if relu_layer else nn.Identity()
        self.apply(init_weights)

    def interests(self, batch: dict[str, Tensor]) -> Interests:
        item_seq = batch["item_seq"]  # [B, L]
        pad_mask = item_seq > 0
        e = self.item_emb(item_seq) * pad_mask[..., None]  # [B, L, d]
        mask = dynamic_interest_number(pad_mask.sum(1), self.K) if self.dynamic_interests else None  # [B, K]
        V = self.capsules(e, pad_mask, capsule_mask=mask)  # [B, K, d]
        return self.proj(V), mask
