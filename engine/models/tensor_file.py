"""Why `torch.load(..., weights_only=True)` refused a file, in one line for the user.

torch's own messages run to many lines (with colour codes for the weights-only refusal):
users get the first line, or what the refusal means.
"""

from __future__ import annotations

import pickle


def load_failure(exc: BaseException) -> str:
    if isinstance(exc, pickle.UnpicklingError) or "Weights only load failed" in str(exc):
        return "not a PyTorch checkpoint of plain tensors (weights_only loading refused it)"
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
