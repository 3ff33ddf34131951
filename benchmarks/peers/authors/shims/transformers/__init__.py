"""Stand-in for the two ``transformers.optimization`` names the authors' trainers import.

``transformers.optimization.AdamW`` is gone from transformers 5; the authors' trainers call it
with weight decay 0 (``regs``) and eps 1e-8, which ``torch.optim.AdamW`` computes the same way
(decoupled decay, bias correction).  This package shadows the real ``transformers`` only inside
the peer's process (their trainers import nothing else from it on the fine-tuning path).
"""
