"""``AdamW`` = ``torch.optim.AdamW``; the warm-up scheduler is imported but never called by the authors' code."""

from torch.optim import AdamW  # noqa: F401


def get_linear_schedule_with_warmup(*args, **kwargs):
    raise NotImplementedError("the peer shim does not provide schedulers (the authors' trainers do not call one)")
