"""Why a model file could not be loaded (`torch.load(..., weights_only=True)`, onnxruntime),
in one line for the user.

torch's own messages run to many lines (with colour codes for the weights-only refusal):
users get the first line, or what the refusal means.
"""

from __future__ import annotations

import errno
import os
import pickle
import tarfile
import zipfile

TRUNCATED = "the file is truncated or corrupt (its zip archive is incomplete)"


def file_problem(path) -> str | None:
    """Why the file at `path` cannot be a PyTorch checkpoint, found cheaply and without torch
    (stage constructors call it, before any thread starts), or None: then only torch.load can tell.

    torch.save writes a zip archive, whose directory is at its very end: a file cut anywhere
    loses it (torch itself then fails with "[Errno 22] Invalid argument"). Other bytes than a
    zip, a pickle or a tar archive are not a checkpoint (torch raised KeyError: 101 for text)."""
    if os.path.isdir(path):
        return "it is a directory, not a checkpoint file"
    if os.path.getsize(path) == 0:
        return "the file is empty"
    with open(path, "rb") as fh:
        head = fh.read(4)
    if head == b"PK\x03\x04":
        return None if zipfile.is_zipfile(path) else TRUNCATED
    # torch.save's older format is a pickle (protocol 2: b"\x80\x02"); older still, a tar archive
    if head[:1] != b"\x80" and not tarfile.is_tarfile(path):
        return "not a PyTorch checkpoint (neither a zip archive nor a pickle)"
    return None


def load_failure(exc: BaseException) -> str:
    text = str(exc).strip()
    if isinstance(exc, pickle.UnpicklingError) or "Weights only load failed" in text:
        return "not a PyTorch checkpoint of plain tensors (weights_only loading refused it)"
    if isinstance(exc, EOFError):  # torch says nothing more
        return "the file is empty or ends early"
    if "central directory" in text or "PytorchStreamReader failed" in text:
        return TRUNCATED
    if isinstance(exc, OSError) and exc.errno == errno.EINVAL:  # torch's zip reader seeking past the end
        return TRUNCATED
    if isinstance(exc, OSError) and exc.strerror:  # unreadable: say why, without the errno
        return exc.strerror[0].lower() + exc.strerror[1:]
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
