"""Every kind of bad input exits 2 with a message naming the key, the expected and the actual value,
with no traceback and no run folder left behind."""

import os

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
    # Non-finite and absurd numbers.
    (["optim.lr=inf"], ["optim.lr: expected a finite number, got inf"]),
    (["optim.lr=nan"], ["optim.lr: expected a finite number, got nan"]),
    (["optim.warmup_epochs=inf"], ["optim.warmup_epochs: expected a finite number"]),
    (["optim.warmup_epochs=1000"], ["optim.warmup_epochs: expected at most train.epochs"]),
    (["model.width_multiplier=inf"], ["model.width_multiplier: expected a finite number"]),
    (["model.width_multiplier=1000"], ["model.width_multiplier: expected a value <= 16.0"]),
    (["cgap.grow.every=inf"], ["cgap.grow.every: expected a finite number"]),
    (["cgap.grow.every=1000"], ["cgap.grow.every: expected at most train.epochs"]),
    (["cgap.prune.every=1e9"], ["cgap.prune.every: expected at most train.epochs"]),
    (["cgap.grow.rate=-inf"], ["cgap.grow.rate: expected a finite number"]),
    ([f"train.epochs={'9' * 400}"], ["train.epochs: expected a value <= 2147483647"]),
    ([f"data.batch_size={10**30}"], ["data.batch_size: expected a value <= 2147483647"]),
    ([f"run.seed={2**63}"], ["run.seed: expected a value <= 4294967295"]),
    ([f"data.split_seed={2**64}"], ["data.split_seed: expected a value <= 4294967295"]),
    (["run.seed=-1"], ["run.seed: expected a value >= 0"]),
    (["train.label_smoothing=1.0"], ["train.label_smoothing: expected a value < 1.0"]),
    (["cgap.prune.step_fraction=0"], ["cgap.prune.step_fraction: expected a value > 0.0"]),
    (["cgap.prune.max_accuracy_drop=-1"], ["cgap.prune.max_accuracy_drop: expected a value >= 0.0"]),
    (["dashboard.refresh_per_second=100"], ["dashboard.refresh_per_second: expected a value <= 30.0"]),
    (["model.round_to=0"], ["model.round_to: expected a value >= 1"]),
    (["checkpoint.every=-1"], ["checkpoint.every: expected a value >= 0"]),
    (["train.skip_limit=0"], ["train.skip_limit: expected a value >= 1"]),
    # Wrong kinds and choices.
    (["cgap.importance.criterion=taylr"], ["cgap.importance.criterion: expected one of", "did you mean 'taylor'"]),
    (["train.precision=fp16"], ["train.precision: expected one of 'fp32', 'bf16'"]),
    (["data.augment=flip"], ["data.augment: expected one of"]),
    (["optim.schedule=step", "optim.milestones=[1.5]"], ["optim.milestones: expected fractions of training in (0, 1)"]),
    (["optim.milestones=0.5"], ["optim.milestones: expected a list"]),
    (["optim.lr.x=1"], ["override optim.lr.x: 'lr' is a value, not a table"]),
    (["=0.1"], ["override '=0.1': expected key=value"]),
    (["optim.lr=0.1\ntrain.epochs=1"], ["expected one key=value on one line, got a line break"]),
    (["model.arch=vgg", 'model.cfg=["M", "M"]'], ["model.cfg: expected at least one convolution"]),
    # Recipes that cannot build a model for the data (digits: 8x8 images, 10 classes, 1,797 images).
    (["model.num_classes=2"], ["model.num_classes: expected 0 (from the data) or at least the 10 classes"]),
    (["model.arch=vgg19", "model.cfg=[]"], ["model.arch: vgg19 halves the image 4 times", "allow at most 3"]),
    (["model.cfg=[8, 'M', 8, 'M', 8, 'M', 8, 'M']"], ["model.cfg: vgg halves the image 4 times"]),
    (["data.val_size=0"], ["data.val_size: growth and pruning decide on validation accuracy"]),
    (["data.val_size=100000"], ["data.val_size: expected fewer than the"]),
    (["data.batch_size=5000"], ["data.batch_size: expected at most the"]),
    (["data.test_size=5000"], ["data.test_size: expected fewer than the"]),
    (["data.name=cifar10", "data.root=/nonexistent"], ["cifar10", "/nonexistent"]),
    (["data.name=shapes", "data.shapes_classes=99", "data.shapes_images=100"], ["data.shapes_classes: expected"]),
    # What this machine cannot do.
    (['train.device="cdua"'], ['train.device: expected "auto", "cpu", "cuda" or "cuda:N", got \'cdua\'']),
    (['train.device="mps"'], ["train.device: expected"]),
    (["train.cuda_graphs=true", "train.device=cpu"], ["train.cuda_graphs: true, but the device is cpu, not CUDA"]),
    (["train.cuda_graphs=maybe"], ["train.cuda_graphs: expected one of 'auto', 'true', 'false'"]),
    (["compile.enabled=true", "compile.backend=inductr"], ["compile.backend: expected one of", "'inductor'"]),
]
if not torch.cuda.is_available():
    CASES += [
        (['train.device="cuda"'], ["train.device: 'cuda' asked for, but this machine has no usable CUDA GPU"]),
        (['train.device="cuda:3"'], ["train.device: 'cuda:3' asked for"]),
    ]


@pytest.mark.parametrize("overrides, fragments", CASES, ids=[" ".join(c[0]) for c in CASES])
def test_bad_override(overrides, fragments, tmp_path, capsys):
    out = tmp_path / "run"
    assert cli.main(["recipe", QUICK, *overrides, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    for fragment in fragments:
        assert fragment in err, err
    assert err.startswith("error: ") and err.count("error: ") == 1, err  # one message, not a cascade
    assert "Traceback" not in err
    assert not out.exists()


def test_the_table_is_large():
    assert len(CASES) >= 60  # every category of bad input has several representatives


def refused(capsys, args, *fragments, folder=None):
    """``args`` exits 2 with one message holding ``fragments``, no traceback, and leaves ``folder`` absent."""
    assert cli.main(args) == 2
    err = capsys.readouterr().err
    for fragment in fragments:
        assert fragment in err, err
    assert "Traceback" not in err
    if folder is not None:
        assert folder.name not in os.listdir(folder.parent)
    return err


def test_out_that_is_a_file_or_under_one(tmp_path, capsys):
    file = tmp_path / "file"
    file.write_text("a user's file")
    refused(capsys, ["recipe", QUICK, "--out", str(file)], f"--out {file}: exists and is not a folder")
    refused(capsys, ["recipe", QUICK, "--out", str(file / "run")], f"{file} is a file, so no folder can be made")
    assert file.read_text() == "a user's file"


def test_out_name_too_long(tmp_path, capsys):
    out = tmp_path / ("x" * 300)
    refused(capsys, ["recipe", QUICK, "--out", str(out)], "longer than the 255", folder=out)


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes in read-only folders")
def test_out_under_a_read_only_folder(tmp_path, capsys):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        refused(capsys, ["recipe", QUICK, "--out", str(locked / "run")], "is not writable", folder=locked / "run")
    finally:
        locked.chmod(0o700)


def test_recipe_path_must_come_first(capsys):
    refused(capsys, ["recipe", "optim.lr=0.1", QUICK], "the recipe file comes first", "'optim.lr=0.1'")


def test_recipe_that_is_not_utf8_text(tmp_path, capsys):
    bad = tmp_path / "binary.toml"
    bad.write_bytes(b'[optim]\nlr = 0.1\nname = "\xff\xfe"\n')
    refused(capsys, ["recipe", str(bad), "--out", str(tmp_path / "run")], str(bad), "not (invalid start byte)")


def test_recipe_that_is_a_folder(tmp_path, capsys):
    refused(capsys, ["recipe", str(tmp_path)], f"{tmp_path}: a folder, expected a recipe file")


def test_unknown_option(tmp_path, capsys):
    assert cli.main(["recipe", QUICK, "--outt", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert "unrecognized arguments: --outt" in err and "Traceback" not in err
    assert not (tmp_path / "run").exists()


def test_resume_with_out_is_refused(tmp_path, capsys):
    refused(capsys, ["recipe", "--resume", str(tmp_path), "--out", str(tmp_path / "e")], "drop --out or --resume")


def test_resume_of_a_missing_folder(tmp_path, capsys):
    refused(capsys, ["recipe", "--resume", str(tmp_path / "nope")], "no such run folder")


@pytest.mark.parametrize(
    "content, fragment",
    [
        ({"a": 1}, "missing recipe"),
        ([1, 2], "a list, expected a dict"),
        (
            {
                k: {}
                for k in ("recipe", "spec", "model", "optimizer", "saliency", "schedule", "progress", "compile", "rng")
            }
            | {"widths": "wide"},
            "widths is a str",
        ),
    ],
    ids=["dict", "list", "mistyped"],
)
def test_resume_from_a_malformed_but_safe_checkpoint(tmp_path, capsys, content, fragment):
    out = tmp_path / "run"
    out.mkdir()
    (out / "recipe.toml").write_text(open(QUICK).read())
    torch.save(content, out / "checkpoint.pt")
    refused(capsys, ["recipe", "--resume", str(out)], "not a cgap_triton checkpoint", fragment)
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint.pt", "recipe.toml"]  # nothing added, lock gone


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


def test_overrides_are_accepted_before_and_after_options(capsys):
    assert cli.main(["recipe", QUICK, "--print-config", "optim.lr=0.05", "train.epochs=7"]) == 0
    printed = capsys.readouterr().out
    assert "lr = 0.05" in printed and "epochs = 7" in printed
    assert cli.main(["recipe", QUICK, "optim.lr=0.04", "--print-config", "train.epochs=8"]) == 0
    printed = capsys.readouterr().out
    assert "lr = 0.04" in printed and "epochs = 8" in printed


def test_sweep_takes_overrides_after_its_options(tmp_path, capsys):
    out = tmp_path / "sweep"
    args = ["sweep", "recipes/shapes_vgg.toml", "--targets", "0.5", "--out", str(out), "optim.lrr=0.1"]
    refused(capsys, args, "unknown key 'optim.lrr'", "did you mean 'optim.lr'", folder=out)
