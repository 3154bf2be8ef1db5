import tomllib

import pytest

from cgap_triton.recipe import Recipe, RecipeError, build_recipe, load_recipe, to_toml


def write(tmp_path, text, name="r.toml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_every_shipped_recipe_loads():
    from pathlib import Path

    recipes = sorted(Path(__file__).parent.parent.joinpath("recipes").glob("*.toml"))
    assert recipes, "no recipes shipped"
    for path in recipes:
        load_recipe(path)


def test_overrides_are_typed_toml_literals(tmp_path):
    path = write(tmp_path, "[optim]\nlr = 0.1\n")
    r = load_recipe(
        path,
        [
            "optim.lr=0.05",
            "compile.enabled=false",
            'data.name="cifar10"',
            "model.arch=vgg",
            "model.cfg=[8, 'M', 16]",
            "cgap.grow.every=3",
            "data.root=/tmp/x",
        ],
    )
    assert r.optim.lr == 0.05 and isinstance(r.cgap.grow.every, float) and r.cgap.grow.every == 3.0
    assert r.compile.enabled is False and r.data.name == "cifar10" and r.data.root == "/tmp/x"
    assert r.model.cfg == [8, "M", 16]


def test_all_problems_reported_at_once(tmp_path):
    path = write(tmp_path, "[optim]\nlrr = 0.1\nmomentum = 2\n[cgap.grow]\ninit = 'copy'\n")
    with pytest.raises(RecipeError) as err:
        load_recipe(path, ["train.epochs=ten", "nosuch.key=1", "data.batch_size=0"])
    text = str(err.value)
    assert len(err.value.problems) == 6, text
    assert "unknown key 'optim.lrr'; did you mean 'optim.lr'?" in text
    assert "optim.momentum: expected a value < 1.0, got 2" in text
    assert "cgap.grow.init: expected one of 'copy_zero_out', 'split', 'random_zero_out'" in text
    assert "train.epochs: expected an integer, got 'ten'" in text
    assert "unknown key 'nosuch'" in text
    assert "data.batch_size: expected a value >= 1, got 0" in text
    assert all(str(path) in p for p in err.value.problems[:3])


def test_wrong_types_are_named():
    with pytest.raises(RecipeError, match=r"compile.enabled: expected true or false, got 1"):
        build_recipe({"compile": {"enabled": 1}})
    with pytest.raises(RecipeError, match=r"train.epochs: expected an integer, got 1.5"):
        build_recipe({"train": {"epochs": 1.5}})
    with pytest.raises(RecipeError, match=r"expected a table \[cgap.grow\]"):
        build_recipe({"cgap": {"grow": 3}})


def test_impossible_combinations():
    with pytest.raises(RecipeError, match="cap_fraction"):
        build_recipe({"cgap": {"seed_fraction": 0.5, "grow": {"cap_fraction": 0.25}}})
    with pytest.raises(RecipeError, match="target_reduction: expected a value < 1.0"):
        build_recipe({"cgap": {"prune": {"target_reduction": 1.0}}})
    with pytest.raises(RecipeError, match="model.cfg: expected a width list"):
        build_recipe({"model": {"arch": "vgg"}})
    with pytest.raises(RecipeError, match="a run without growth starts at full width"):
        build_recipe({"cgap": {"grow": {"enabled": False}}})


def test_invalid_toml_names_the_line(tmp_path):
    path = write(tmp_path, "[optim]\nlr = = 0.1\n")
    with pytest.raises(RecipeError, match=r"not valid TOML: .*line 2"):
        load_recipe(path)


def test_missing_file():
    with pytest.raises(RecipeError, match="no such recipe file"):
        load_recipe("does/not/exist.toml")


def test_round_trip_through_toml():
    r = Recipe().replace(**{"optim.lr": 0.025, "model.arch": "vgg", "model.cfg": [8, "M", 16], "data.root": 'a"b'})
    assert build_recipe(tomllib.loads(to_toml(r))) == r


def test_recipes_are_frozen():
    import dataclasses

    with pytest.raises(dataclasses.FrozenInstanceError):
        Recipe().optim.lr = 1.0


def test_model_widths_is_a_table_of_positive_integers():
    assert Recipe().model.widths == {}
    r = build_recipe({"model": {"widths": {"conv1": 8, "conv2": 20}}})
    assert r.model.widths == {"conv1": 8, "conv2": 20}
    with pytest.raises(RecipeError, match=r"model.widths: expected a table of channel group → width.*got 8"):
        build_recipe({"model": {"widths": 8}})
    with pytest.raises(RecipeError, match=r"model.widths: expected a table.*got \[8, 16\]"):
        build_recipe({"model": {"widths": [8, 16]}})
    with pytest.raises(RecipeError) as err:
        build_recipe({"model": {"widths": {"conv1": 0, "conv2": 1.5, "conv3": True, "conv4": "8", "conv5": 4}}})
    assert err.value.problems == [
        "recipe: model.widths: expected widths that are integers >= 1, got conv1 = 0, conv2 = 1.5, conv3 = True, "
        "conv4 = '8'"
    ]
    with pytest.raises(RecipeError, match="conv1 = -3"):
        build_recipe({"model": {"widths": {"conv1": -3}}})
    with pytest.raises(RecipeError, match="conv1 = 4294967296"):
        build_recipe({"model": {"widths": {"conv1": 2**32}}})


def test_model_widths_from_a_file_and_overrides_round_trip_through_toml(tmp_path):
    path = write(tmp_path, '[model]\narch = "vgg"\ncfg = [16, "M", 32]\nwidths = {conv1 = 8}\n')
    assert load_recipe(path).model.widths == {"conv1": 8}
    # A dotted override sets one group (the others stay); a table override replaces the whole table.
    assert load_recipe(path, ["model.widths.conv2=20"]).model.widths == {"conv1": 8, "conv2": 20}
    assert load_recipe(path, ["model.widths={conv2 = 4}"]).model.widths == {"conv2": 4}
    with pytest.raises(RecipeError, match="model.widths: expected widths that are integers >= 1, got conv2 = 0"):
        load_recipe(path, ["model.widths.conv2=0"])
    for widths in ({}, {"conv1": 8, "conv2": 20}, {"s1b1": 4, "odd name": 2, 'q"uote': 1}):
        r = Recipe().replace(**{"model.arch": "vgg", "model.cfg": [16, "M", 32], "model.widths": widths})
        text = to_toml(r)
        assert build_recipe(tomllib.loads(text)) == r
        saved = write(tmp_path, text, "saved.toml")
        assert load_recipe(saved) == r and load_recipe(saved).model.widths == widths
    assert "widths = {conv1 = 8, conv2 = 20}" in to_toml(
        Recipe().replace(**{"model.widths": {"conv1": 8, "conv2": 20}})
    )


def _shapes_trainer(tmp_path, *overrides):
    from pathlib import Path

    from cgap_triton.train import CGaPRecipe

    recipe = load_recipe(
        Path(__file__).parent.parent / "recipes" / "shapes_vgg.toml",
        ["data.shapes_images=300", "data.val_size=100", "data.test_size=50", "train.epochs=1", *overrides],
    )
    return CGaPRecipe(recipe, tmp_path / "run")


def test_model_widths_names_and_bounds_are_checked_against_the_model(tmp_path):
    # shapes_vgg: cfg [16, "M", 32, "M", 64, "M", 128], so groups conv1..conv4 at full widths 16, 32, 64, 128.
    trainer = _shapes_trainer(tmp_path, "model.widths={conv9 = 4, conv1 = 17, conv2 = 32, fc = 2}")
    try:
        with pytest.raises(RecipeError) as err:
            trainer.setup()
    finally:
        trainer.cleanup()
    assert err.value.problems == [
        "model.widths: unknown groups conv9, fc; expected names among conv1, conv2, conv3, conv4",
        "model.widths: conv1: expected at most the group's full width 16, got 17",
    ]
    assert not (tmp_path / "run").exists()  # refused before the run folder was made


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        # A CGaP recipe: the groups not named start at the seed widths (a quarter of full, rounded up to 4).
        (["model.widths={conv2 = 12, conv4 = 128}"], {"conv1": 4, "conv2": 12, "conv3": 16, "conv4": 128}),
        # A run without growth or pruning starts (and stays) at full width but for the groups named.
        (
            ["cgap.seed_fraction=1.0", "cgap.grow.enabled=false", "cgap.prune.enabled=false", "model.widths.conv3=20"],
            {"conv1": 16, "conv2": 32, "conv3": 20, "conv4": 128},
        ),
    ],
)
def test_a_run_starts_at_model_widths(tmp_path, overrides, expected):
    trainer = _shapes_trainer(tmp_path, *overrides)
    try:
        trainer.setup()
        assert trainer.model.widths == trainer.widths_seed == expected
        assert trainer.widths_full == {"conv1": 16, "conv2": 32, "conv3": 64, "conv4": 128}
    finally:
        trainer.cleanup()
