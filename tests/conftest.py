"""Test set-up: Triton kernels run on CPU tensors through the interpreter.

TRITON_INTERPRET must be set before triton is first imported, so it is set here, at collection time.
Product code on CPU takes the torch twins under impl="auto"; kernel tests ask for impl="triton".

``CGAP_TEST_DEVICE=cuda`` (``make gpu-check``) runs the same kernel tests on a GPU instead: tensors are created
on CUDA by default and the kernels compiled, not interpreted.
"""

import os

DEVICE = os.environ.get("CGAP_TEST_DEVICE", "cpu")
if DEVICE == "cuda":
    os.environ["TRITON_INTERPRET"] = "0"
else:
    os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("MPLBACKEND", "Agg")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
if DEVICE == "cuda":
    torch.set_default_device("cuda")


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
