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
