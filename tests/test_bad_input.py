"""Every kind of bad input exits 2 with a message naming the key, the expected and the actual value,
with no traceback and no run folder left behind."""

import pytest
import torch

from cgap_triton import cli, load_model
from cgap_triton.checkpoint import CheckpointError

QUICK = "recipes/quickstart.toml"

CASES = [
    # (overrides or recipe text, fragments the message must hold)
    (["optim.lrr=0.1"], ["unknown key 'optim.lrr'", "did you mean 'optim.lr'"]),
    (["nosuch.key=1"], ["unknown key 'nosuch'"]),
    (["cgap.grow.rat=0.5"], ["unknown key 'cgap.grow.rat'", "did you mean 'cgap.grow.rate'"]),
    (["train.epochs=ten"], ["train.epochs: expected an integer, got 'ten'"]),
    (["train.epochs=0"], ["train.epochs: expected a value >= 1, got 0"]),
    (["train.epochs=2.5"], ["train.epochs: expected an integer, got 2.5"]),
    (["optim.lr=-0.1"], ["optim.lr: expected a value > 0.0, got -0.1"]),
    (["optim.momentum=1.5"], ["optim.momentum: expected a value < 1.0, got 1.5"]),
    (["compile.enabled=yes"], ["compile.enabled: expected true or false, got 'yes'"]),
    (["optim.name=lamb"], ["optim.name: expected one of 'sgd', 'adam', 'adamw'", "got 'lamb'"]),
    (["cgap.grow.init=copy_zero"], ["cgap.grow.init: expected one of", "did you mean 'copy_zero_out'"]),
    (["cgap.prune.target_reduction=1.0"], ["cgap.prune.target_reduction: expected a value < 1.0, got 1.0"]),
    (["cgap.seed_fraction=1.5"], ["cgap.seed_fraction: expected a value <= 1.0, got 1.5"]),
    (["cgap.seed_fraction=0.5", "cgap.grow.cap_fraction=0.25"], ["cgap.grow.cap_fraction: expected >="]),
    (["cgap.grow.until=0.95", "cgap.stabilize=0.1"], ["grow.until + stabilize must leave room to prune"]),
    (["model.cfg=[8, 'X']", "model.arch=vgg"], ['model.cfg: expected positive ints and "M"']),
    (["model.arch=vgg99"], ["model.arch: expected one of", "did you mean 'vgg19'"]),
    (["data.batch_size=0"], ["data.batch_size: expected a value >= 1, got 0"]),
    (["train.nan_policy=ignore"], ["train.nan_policy: expected one of 'stop', 'skip'"]),
    (["optim"], ["override 'optim': expected key=value"]),
    (["optim=1"], ["optim: expected a table [optim], got 1"]),
]


@pytest.mark.parametrize("overrides, fragments", CASES, ids=[" ".join(c[0]) for c in CASES])
def test_bad_override(overrides, fragments, tmp_path, capsys):
    out = tmp_path / "run"
    assert cli.main(["recipe", QUICK, *overrides, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    for fragment in fragments:
        assert fragment in err, err
    assert QUICK in err or "override" in err
    assert "Traceback" not in err
    assert not out.exists()


def test_several_problems_are_reported_together(capsys, tmp_path):
    assert cli.main(["recipe", QUICK, "optim.lrr=1", "train.epochs=0", "data.name=mnist", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "3 problems" in err


def test_invalid_toml_names_the_line(tmp_path, capsys):
    bad = tmp_path / "bad.toml"
    bad.write_text('[optim]\nlr = 0.1\nname = "sgd\n')
    assert cli.main(["recipe", str(bad), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert str(bad) in err and "line 3" in err
    assert not (tmp_path / "run").exists()


def test_missing_recipe_file(tmp_path, capsys):
    assert cli.main(["recipe", str(tmp_path / "nope.toml")]) == 2
    assert "no such recipe file" in capsys.readouterr().err


def test_load_model_refuses_other_files(tmp_path):
    path = tmp_path / "other.pt"
    torch.save({"weights": torch.zeros(3)}, path)
    with pytest.raises(CheckpointError, match="not a cgap_triton model.pt"):
        load_model(path)
    (tmp_path / "garbage.pt").write_bytes(b"\x00garbage")
    with pytest.raises(CheckpointError, match="not a readable cgap_triton checkpoint"):
        load_model(tmp_path / "garbage.pt")
