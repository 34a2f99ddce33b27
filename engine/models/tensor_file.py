"""Why a model file could not be loaded (`torch.load(..., weights_only=True)`, onnxruntime),
in one line for the user.

torch's own messages run to many lines (with colour codes for the weights-only refusal):
users get the first line, or what the refusal means.
"""

from __future__ import annotations

import pickle


def load_failure(exc: BaseException) -> str:
    text = str(exc).strip()
    if isinstance(exc, pickle.UnpicklingError) or "Weights only load failed" in text:
        return "not a PyTorch checkpoint of plain tensors (weights_only loading refused it)"
    if isinstance(exc, EOFError):  # torch says nothing more
        return "the file is empty or ends early"
    if "central directory" in text or "PytorchStreamReader failed" in text:
        return "the file is truncated or corrupt (its zip archive is incomplete)"
    first = (text.splitlines() or [""])[0].split(". ")[0].rstrip(".")  # the first sentence, not a cut one
    if " " not in first:  # garbage makes torch's legacy reader raise KeyError('101') and the like
        return f"not a PyTorch checkpoint ({type(exc).__name__}{': ' + first if first else ''})"
    return first


def onnx_session(path, what: str, options=None, providers: list[str] | None = None):
    """An onnxruntime session for the model file `path`, or a one-line UserError naming it
    (`what`: "text detection model") with onnxruntime's reason, not its error codes."""
    import onnxruntime as ort

    from engine.errors import UserError

    try:
        return ort.InferenceSession(str(path), options, providers=providers or ["CPUExecutionProvider"])
    except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own pybind classes
        reason = str(exc).split("failed:", 1)[-1].strip() or type(exc).__name__
        raise UserError(f"cannot load {what} {path}: not a usable ONNX model ({reason})") from None
