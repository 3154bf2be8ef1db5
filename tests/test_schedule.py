"""The CGaP schedule as data: phases, growth amounts, pruning floors and targets, stopping rules."""

import torch

from cgap_triton.cgap import Schedule
from cgap_triton.models import ModelSpec, SizeOracle
from cgap_triton.recipe import Recipe

SPEC = ModelSpec("vgg", 10, 1, 8, (32, 32, "M", 64, 64))
FULL = SPEC.full_widths()


def make(steps_per_epoch=10, epochs=20, **dotted):
    cfg = Recipe().replace(**{"model.round_to": 4, **dotted}).cgap
    return Schedule(
        cfg,
        steps_per_epoch=steps_per_epoch,
        epochs=epochs,
        full_widths=FULL,
        round_to=4,
        params_of=SizeOracle(SPEC).params,
    )


def scores_for(widths, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {k: torch.rand(w, generator=g) + 0.01 for k, w in widths.items()}


def run(schedule, widths, accuracy=lambda step: 0.5 + step / 1000):
    """Drive the schedule over a whole run; return the changes and events it made."""
    changes, events = [], []
    for step in range(1, schedule.total_steps + 1):
        if schedule.due(step):
            decision = schedule.decide(step, widths, scores_for(widths, step), accuracy(step))
            events += decision.events
            if decision.change is not None:
                changes.append((step, decision.change))
                widths = decision.change.widths(widths)
    return changes, events, widths


def test_growth_picks_the_top_units_and_rounds():
    s = make(**{"cgap.grow.rate": 0.25})
    widths = {"conv1": 8, "conv2": 8, "conv3": 16, "conv4": 60}
    scores = {k: torch.zeros(w) for k, w in widths.items()}
    scores["conv1"][torch.tensor([6, 2])] = torch.tensor([2.0, 1.0])
    change = s.plan_growth(widths, scores)
    assert change.widths(widths) == {"conv1": 12, "conv2": 12, "conv3": 20, "conv4": 64}  # conv4 capped at full
    c1 = change.groups["conv1"]
    assert c1.index[:8].tolist() == list(range(8)) and c1.index[8:10].tolist() == [6, 2]  # best parents first
    assert c1.new.tolist() == [False] * 8 + [True] * 4


def test_a_cgap_run_goes_through_every_phase_in_order():
    changes, events, widths = run(make(), {k: v // 4 for k, v in FULL.items()})
    phases = [e.to for e in events if e.kind == "phase"]
    assert phases == ["grow", "stabilize", "prune", "finetune"]
    kinds = [c.kind for _, c in changes]
    assert kinds.index("prune") == kinds.count("grow")  # every growth before every pruning
    assert all(c.kind == "grow" for _, c in changes[: kinds.count("grow")])


def test_growth_stops_without_validation_gain():
    s = make(**{"cgap.grow.rate": 0.05, "cgap.grow.patience": 2, "cgap.grow.every": 1.0})
    changes, events, _ = run(s, {k: v // 4 for k, v in FULL.items()}, accuracy=lambda step: 0.7)
    stop = next(e for e in events if e.kind == "growth_stopped")
    assert "no validation gain" in stop.reason
    assert sum(c.kind == "grow" for _, c in changes) == 2  # growth steps 1 and 2; step 3 sees no gain


def test_pruning_respects_floors_multiples_and_target():
    s = make(
        **{
            "cgap.prune.target_reduction": 0.6,
            "cgap.prune.min_fraction": 0.25,
            "cgap.prune.steps": 50,
            "cgap.prune.step_fraction": 0.3,
            "cgap.seed_fraction": 1.0,
            "cgap.grow.enabled": False,
        }
    )
    changes, events, widths = run(s, dict(FULL))
    prunes = [c for _, c in changes if c.kind == "prune"]
    assert prunes
    for name, width in widths.items():
        assert width >= FULL[name] // 4 and width % 4 == 0
    reduction = s.reduction(widths)
    assert 0.6 <= reduction < 0.75, reduction  # reaches the target without overshooting far
    assert any("reached the target" in getattr(e, "reason", "") for e in events)


def test_accuracy_guard_stops_pruning():
    s = make(**{"cgap.prune.max_accuracy_drop": 1.0, "cgap.prune.target_reduction": 0.95})

    def accuracy(step):  # falls by 3 points as soon as pruning is under way
        return 0.9 if s.phase != "prune" or s.prune_steps_done == 0 else 0.87

    changes, events, _ = run(s, FULL, accuracy)
    assert sum(c.kind == "prune" for _, c in changes) == 1
    assert any("fell more than 1.0 points" in getattr(e, "reason", "") for e in events)


def test_prune_only_baseline_never_grows():
    s = make(**{"cgap.seed_fraction": 1.0, "cgap.grow.enabled": False})
    changes, events, widths = run(s, dict(FULL))
    assert changes and all(c.kind == "prune" for _, c in changes)
    first_prune = changes[0][0]
    assert first_prune == round((0.4 + 0.1) * s.total_steps)  # same timing as CGaP's pruning window


def test_dense_baseline_changes_nothing():
    s = make(**{"cgap.seed_fraction": 1.0, "cgap.grow.enabled": False, "cgap.prune.enabled": False})
    changes, _, widths = run(s, dict(FULL))
    assert changes == [] and widths == FULL


def test_state_dict_round_trip():
    s = make()
    run(s, {k: v // 4 for k, v in FULL.items()})
    t = make()
    t.load_state_dict(s.state_dict())
    assert t.phase == s.phase and t.changes == s.changes and t.growth_accuracy == s.growth_accuracy


def test_steps_until_next_change_follows_the_phases():
    s = make()  # 10 steps per epoch, 20 epochs; growth every 2 epochs until step 80
    assert s.steps_until_next_change(0) == 20 and s.steps_until_next_change(35) == 5
    assert s.steps_until_next_change(75) == 5  # grow.until comes first
    s.phase, s.prune_start = "stabilize", 100
    assert s.steps_until_next_change(90) == 10
    s.phase = "prune"
    assert s.steps_until_next_change(100) == 10 and s.steps_until_next_change(104) == 6
    s.phase = "finetune"
    assert s.steps_until_next_change(150) == 50
