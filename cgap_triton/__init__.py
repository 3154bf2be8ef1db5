"""CGaP: continuous growth and pruning of CNN channels during training.

``python -m cgap_triton recipe RECIPE`` trains; :func:`load_model` rebuilds a finished run's compact
model from its ``model.pt`` for inference; ``cgap_triton.kernels`` holds the Triton kernels.
"""

from __future__ import annotations

from pathlib import Path

__version__ = "0.1.0"
__all__ = ["load_model", "__version__"]

# Installed, ``cgap_triton.kernels`` is the source tree's ``kernels/`` (setuptools package-dir). Run from the source
# tree without installing (``PYTHONPATH=.``, as ``make gpu-check`` does on a machine without network), the package
# path also covers the tree's root, where ``kernels/`` sits.
_root = Path(__file__).resolve().parent.parent
if not (Path(__file__).resolve().parent / "kernels").exists() and (_root / "kernels" / "__init__.py").is_file():
    __path__.append(str(_root))  # noqa: F821 — a package's __path__, set by the import system


def load_model(path: str | Path, device: str = "cpu"):
    """The compact model saved in ``model.pt`` (a run folder's final model), in eval mode.

    The file holds only tensors, numbers and strings: it is read with ``torch.load(weights_only=True)``,
    so no pickled code runs. Raises ``CheckpointError`` naming the file when it cannot be used.
    """
    from .checkpoint import CheckpointError, load_checkpoint
    from .models import ModelSpec, build_model

    saved = load_checkpoint(Path(path))
    try:
        model = build_model(ModelSpec.from_dict(saved["spec"]), saved["widths"], device=device)
        model.load_state_dict(saved["state_dict"])
    except (KeyError, TypeError, ValueError, RuntimeError) as err:
        raise CheckpointError(f"{path}: not a cgap_triton model.pt ({type(err).__name__}: {err})") from None
    return model.eval()
