"""In process, the pieces a run is made of: one training step, a decision, the one owner applying it."""

import pytest
import torch

from cgap_triton.cgap import SaliencyTracker, Schedule, Structure
from cgap_triton.models import ModelSpec, SizeOracle, build_model, seed_widths
from cgap_triton.recipe import Recipe
from cgap_triton.step import TrainStep
from cgap_triton.telemetry.events import Grown, PhaseChanged, Pruned

SPEC = ModelSpec("vgg", 5, 3, 8, (16, "M", 16, 16))


def pieces(cgap_overrides=None, channels_last=False):
    recipe = Recipe().replace(
        **{
            "cgap.grow.every": 0.5,
            "cgap.grow.until": 0.5,
            "cgap.stabilize": 0.0,
            "cgap.prune.every": 0.5,
            "cgap.prune.target_reduction": 0.3,
            "model.round_to": 4,
            "train.epochs": 4,
            **(cgap_overrides or {}),
        }
    )
    sizes = SizeOracle(SPEC)
    full = SPEC.full_widths()
    model = build_model(SPEC, seed_widths(full, recipe.cgap.seed_fraction, 4))
    if channels_last:
        model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    tracker = SaliencyTracker(model)
    structure = Structure(model, optimizer, tracker, sizes, params_full=sizes.params(full), channels_last=channels_last)
    schedule = Schedule(
        recipe.cgap, steps_per_epoch=4, epochs=4, full_widths=full, round_to=4, params_of=sizes.params, seed=3
    )
    return model, optimizer, tracker, structure, schedule, TrainStep(model, optimizer, tracker)


def batch():
    return torch.randn(6, 3, 8, 8), torch.randint(0, 5, (6,))


def test_a_run_in_process_grows_then_prunes_and_keeps_training():
    model, optimizer, tracker, structure, schedule, step = pieces()
    structure.record(0)
    kinds, phases = [], []
    for i in range(16):
        loss, logits = step(*batch(), i)
        assert torch.isfinite(loss) and logits.shape == (6, 5)
        del loss, logits  # no autograd graph of the old shapes may outlive a change
        if schedule.due(i + 1):
            decision = schedule.decide(i + 1, structure.widths, tracker.scores(), val_accuracy=0.5)
            phases += [e.to for e in decision.events if isinstance(e, PhaseChanged)]
            if decision.change is not None:
                event = structure.apply(decision.change, step=i + 1, epoch=(i + 1) / 4)
                kinds.append(event.kind)
                assert isinstance(event, Grown if decision.change.kind == "grow" else Pruned)
                assert (
                    event.widths
                    == model.widths
                    == decision.change.widths({k: v[0] for k, v in event.change.items()} | model.widths)
                )
                assert event.params == structure.params == sum(p.numel() for p in model.parameters())
    assert "grow" in kinds and "prune" in kinds
    assert phases[:2] == ["grow", "stabilize"] and "prune" in phases
    assert structure.peak_params > structure.trajectory[0]["params"]
    assert structure.counts == {"grow": kinds.count("grow"), "prune": kinds.count("prune")}
    assert [t["params"] for t in structure.trajectory][-1] == structure.params
    # After every change the optimizer holds state of the new shapes on the same Parameter objects.
    for p in model.parameters():
        assert optimizer.state[p]["momentum_buffer"].shape == p.shape


def test_growth_decisions_travel_in_the_change():
    _, _, tracker, structure, schedule, step = pieces({"cgap.grow.init": "split", "cgap.grow.noise": 0.02})
    for i in range(2):
        step(*batch(), i)
    decision = schedule.decide(2, structure.widths, tracker.scores(), val_accuracy=0.5)
    groups = decision.change.groups
    assert {g.init for g in groups.values()} == {"split"} and {g.noise for g in groups.values()} == {0.02}
    seeds = [g.seed for g in groups.values()]
    assert len(set(seeds)) == len(seeds)  # each group draws its own noise


def test_channels_last_survives_a_change_for_parameters_and_optimizer_state():
    model, optimizer, tracker, structure, schedule, step = pieces(channels_last=True)
    for i in range(2):
        step(*batch(), i)
    decision = schedule.decide(2, structure.widths, tracker.scores(), val_accuracy=0.5)
    structure.apply(decision.change, step=2, epoch=0.5)
    for p in model.parameters():
        if p.dim() == 4:
            assert p.is_contiguous(memory_format=torch.channels_last)
            assert optimizer.state[p]["momentum_buffer"].is_contiguous(memory_format=torch.channels_last)
    step(*batch(), 2)  # and training goes on


def test_structure_state_round_trips():
    _, _, _, structure, *_ = pieces()
    structure.record(0)
    structure.counts = {"grow": 2}
    state = structure.state_dict()
    _, _, _, other, *_ = pieces()
    other.load_state_dict(state)
    assert other.state_dict() == state


@pytest.mark.parametrize("kind", ["grow", "prune"])
def test_event_records_keep_the_metrics_jsonl_names(kind):
    _, _, tracker, structure, schedule, step = pieces({"cgap.seed_fraction": 1.0} if kind == "prune" else {})
    for i in range(2):
        step(*batch(), i)
    change = (
        schedule.plan_growth(structure.widths, tracker.scores())
        if kind == "grow"
        else schedule.plan_pruning(structure.widths, tracker.scores())
    )
    record = structure.apply(change, step=2, epoch=0.5).record()
    assert record["event"] == kind
    expected = {"event", "step", "epoch", "change", "widths", "params", "macs", "params_reduction", "changes"}
    assert set(record) == expected


def test_the_logged_saliency_spread_is_each_groups_deciles_of_its_normalised_scores(tmp_path):
    from pathlib import Path

    from cgap_triton.recipe import load_recipe
    from cgap_triton.train import CGaPRecipe

    recipe = load_recipe(
        Path(__file__).parent.parent / "recipes" / "shapes_vgg.toml",
        ["data.shapes_images=300", "data.val_size=100", "data.test_size=50", "train.epochs=1"],
    )
    trainer = CGaPRecipe(recipe, tmp_path / "run")
    try:
        trainer.setup()
        batches = trainer.batches.epoch(0)
        for _ in range(3):
            trainer._train_step(*next(batches))
        spread = trainer._saliency_spread()
        scores = trainer.tracker.scores()
    finally:
        trainer.cleanup()
    assert list(spread) == list(scores)
    for name, s in scores.items():
        normalised = (s / s.mean()).double()
        expected = [torch.quantile(normalised, q).item() for q in (0.1, 0.5, 0.9)]
        assert spread[name] == pytest.approx(expected, abs=1e-4)
