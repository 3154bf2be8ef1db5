"""The CGaP schedule: seed → grow → stabilise → prune → fine-tune, deciding WidthChanges from scores.

It reads widths, saliency scores and validation accuracy, and returns data (a WidthChange and
events); it never touches the model. Every decision surgery needs is in the WidthChange it returns
(per group: the index map, and for growth the init rule, noise and seed). All of its state is in
:meth:`state_dict`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from ..models import round_up, seed_widths
from ..recipe import CGaPConfig
from ..telemetry.events import PHASES, Event, GrowthStopped, Phase, PhaseChanged, PruningStopped
from .change import GroupChange, WidthChange

__all__ = ["PHASES", "Decision", "Schedule"]

GROUP_SEED_STRIDE = 7_919  # seeds of one change's groups: base, base + 7919, ... (a prime: no overlaps)


@dataclass
class Decision:
    change: WidthChange | None = None
    events: list[Event] = field(default_factory=list)


class Schedule:
    """Decides, at the step boundaries where one is due, whether and how widths change.

    Step numbers count optimizer steps done. Growth happens every ``grow.every`` epochs until
    ``grow.until`` of training (or earlier: every group capped, or no validation gain over
    ``grow.patience`` growth steps); then ``stabilize`` of training without change; then a pruning
    step every ``prune.every`` epochs until ``prune.steps`` steps, the params target, or the
    accuracy guard; then fine-tuning to the end.
    """

    def __init__(
        self,
        cfg: CGaPConfig,
        *,
        steps_per_epoch: int,
        epochs: int,
        full_widths: dict[str, int],
        round_to: int,
        params_of: Callable[[dict[str, int]], int],
        seed: int = 0,
    ):
        self.cfg, self.full, self.round_to, self.params_of = cfg, dict(full_widths), round_to, params_of
        self.steps_per_epoch = steps_per_epoch
        self.seed = seed
        self.total_steps = steps_per_epoch * epochs
        self.grow_every = max(1, round(cfg.grow.every * steps_per_epoch))
        self.prune_every = max(1, round(cfg.prune.every * steps_per_epoch))
        self.grow_until = round(cfg.grow.until * self.total_steps)
        self.stabilize_steps = round(cfg.stabilize * self.total_steps)
        self.params_full = params_of(self.full)
        self.caps = {
            k: min(v, max(round_to, round_up(v * cfg.grow.cap_fraction, round_to))) for k, v in self.full.items()
        }
        self.seeds = seed_widths(self.full, cfg.seed_fraction, round_to)
        # The growth step at which every group reaches its cap: the last one at or before grow.reach that
        # still comes before growth stops at grow.until.
        reach = round(cfg.grow.reach * self.total_steps)
        last = reach // self.grow_every * self.grow_every
        if last >= self.grow_until:
            last -= self.grow_every
        self.reach_step = max(self.grow_every, last) if cfg.grow.reach else 0
        self.floors = {
            k: min(v, max(round_to, round_up(v * cfg.prune.min_fraction, round_to))) for k, v in self.full.items()
        }
        self.generator = torch.Generator().manual_seed(seed)
        # state
        self.phase = Phase.SEED if cfg.grow.enabled else Phase.GROW
        self.growth_accuracy: list[float] = []
        self.grow_stopped_at: int | None = None
        self.prune_start: int | None = None
        self.prune_base_accuracy: float | None = None
        self.prune_steps_done = 0
        self.changes = 0

    # ------------------------------------------------------------------------------------------ timing

    def due(self, step: int) -> bool:
        """Whether :meth:`decide` has anything to do after ``step`` optimizer steps."""
        if self.phase in (Phase.SEED, Phase.GROW):
            return step >= self.grow_until or (self.cfg.grow.enabled and step % self.grow_every == 0)
        if self.phase == Phase.STABILIZE:
            return step >= self.prune_start
        if self.phase == Phase.PRUNE:
            return (step - self.prune_start) % self.prune_every == 0
        return False

    def steps_until_next_change(self, step: int) -> int:
        """Steps from ``step`` to the next point where widths may change (the end of training at most)."""
        if self.phase in (Phase.SEED, Phase.GROW):
            nxt = min(self.grow_until, (step // self.grow_every + 1) * self.grow_every)
        elif self.phase == Phase.STABILIZE:
            nxt = self.prune_start
        elif self.phase == Phase.PRUNE:
            nxt = step + self.prune_every - (step - self.prune_start) % self.prune_every
        else:
            nxt = self.total_steps
        return max(0, min(nxt, self.total_steps) - step)

    def reduction(self, widths: dict[str, int]) -> float:
        return 1.0 - self.params_of(widths) / self.params_full

    # ---------------------------------------------------------------------------------------- decisions

    def decide(
        self, step: int, widths: dict[str, int], scores: dict[str, torch.Tensor], val_accuracy: float
    ) -> Decision:
        decision = Decision()
        if self.phase in (Phase.SEED, Phase.GROW):
            self._growth(step, widths, scores, val_accuracy, decision)
        if self.phase == Phase.STABILIZE and step >= self.prune_start:
            self._set_phase(Phase.PRUNE if self.cfg.prune.enabled else Phase.FINETUNE, step, decision)
            self.prune_base_accuracy = val_accuracy
        if self.phase == Phase.PRUNE and decision.change is None and (step - self.prune_start) % self.prune_every == 0:
            self._pruning(step, widths, scores, val_accuracy, decision)
        if decision.change is not None:
            self.changes += 1
            if decision.change.kind == "grow":
                decision.change = self._with_init(decision.change)
        return decision

    def _with_init(self, change: WidthChange) -> WidthChange:
        """The growth rule's decisions for every group: init rule, noise and a seed of its own."""
        grow = self.cfg.grow
        base = (self.seed * GROUP_SEED_STRIDE + self.changes) % 2**31
        groups = {
            name: group.decided(init=grow.init, noise=grow.noise, seed=base + GROUP_SEED_STRIDE * k)
            for k, (name, group) in enumerate(change.groups.items())
        }
        return WidthChange(change.kind, groups)

    def _growth(self, step, widths, scores, val_accuracy, decision) -> None:
        cfg = self.cfg.grow
        stop = None
        if step >= self.grow_until:
            stop = f"reached grow.until ({cfg.until} of training)"
        elif cfg.enabled and step % self.grow_every == 0:
            self.growth_accuracy.append(val_accuracy)
            history, p = self.growth_accuracy, cfg.patience
            if all(widths[k] >= self.caps[k] for k in widths):
                stop = "every group at its cap"
            elif len(history) > p and max(history[-p:]) < max(history[:-p]) + cfg.min_gain / 100:
                stop = f"no validation gain >= {cfg.min_gain} points over {p} growth steps"
            else:
                change = self.plan_growth(widths, scores, step)
                if change is not None:
                    decision.change = change
                    if self.phase == Phase.SEED:
                        self._set_phase(Phase.GROW, step, decision)
        if stop is not None:
            self.grow_stopped_at = step
            self.prune_start = step + self.stabilize_steps
            decision.events.append(GrowthStopped(step=step, reason=stop, epoch=step / self.steps_per_epoch))
            self._set_phase(Phase.STABILIZE, step, decision)

    def _pruning(self, step, widths, scores, val_accuracy, decision) -> None:
        cfg = self.cfg.prune
        stop = None
        if self.reduction(widths) >= cfg.target_reduction:
            stop = f"params reduction reached the target {cfg.target_reduction}"
        elif val_accuracy < self.prune_base_accuracy - cfg.max_accuracy_drop / 100:
            stop = (
                f"validation accuracy {val_accuracy:.4f} fell more than {cfg.max_accuracy_drop} points below "
                f"{self.prune_base_accuracy:.4f}"
            )
        else:
            decision.change = self.plan_pruning(widths, scores)
            self.prune_steps_done += 1
            if decision.change is None:
                stop = "every group at its floor"
            elif self.prune_steps_done >= cfg.steps:
                stop = f"done {cfg.steps} pruning steps"
            elif self.reduction(decision.change.widths(widths)) >= cfg.target_reduction:
                stop = f"params reduction reached the target {cfg.target_reduction}"
        if stop is not None:
            decision.events.append(PruningStopped(step=step, reason=stop, epoch=step / self.steps_per_epoch))
            self._set_phase(Phase.FINETUNE, step, decision)

    def _set_phase(self, phase: Phase, step: int, decision: Decision) -> None:
        if phase != self.phase:
            epoch = step / self.steps_per_epoch
            decision.events.append(PhaseChanged(step=step, from_phase=self.phase.value, to=phase.value, epoch=epoch))
            self.phase = phase

    # ---------------------------------------------------------------------------------------- planners

    def plan_growth(
        self, widths: dict[str, int], scores: dict[str, torch.Tensor], step: int | None = None
    ) -> WidthChange | None:
        """Each group below its cap gets ``ceil(rate × width)`` children of its top units, the new width
        rounded up to ``round_to`` and clipped to the cap. With ``grow.reach``, the new width is instead the
        geometric path from the seed to the cap, which reaches the cap at ``reach`` of training."""
        cfg = self.cfg.grow
        groups = {}
        for name, width in widths.items():
            if self.reach_step and step is not None:
                progress = min(1.0, step / self.reach_step)
                seed, cap = self.seeds[name], self.caps[name]
                target = min(cap, round_up(seed * (cap / seed) ** progress, self.round_to))
            else:
                target = min(self.caps[name], round_up(width + math.ceil(cfg.rate * width), self.round_to))
            count = target - width
            if count <= 0:
                continue
            if cfg.selection == "random":
                order = torch.randperm(width, generator=self.generator)
            else:
                order = torch.argsort(scores[name].float().cpu(), descending=True, stable=True)
            parents = order.repeat(math.ceil(count / width))[:count]
            parentless = cfg.init in ("random_zero_out", "orthogonal_zero_out")
            groups[name] = GroupChange.grow(width, None if parentless else parents, count)
        return WidthChange("grow", groups) if groups else None

    def plan_pruning(self, widths: dict[str, int], scores: dict[str, torch.Tensor]) -> WidthChange | None:
        """Remove the units with the lowest rank globally, keeping widths multiples of ``round_to`` and above
        the floors; stop short of overshooting the params target. ``prune.rank``:

        - ``normalized``: rank by the layer-normalised score ``S / mean(S)``; remove ``step_fraction`` of the
          units;
        - ``per_param``: rank by ``S`` per parameter the unit frees (a unit of a wide, deep layer frees more
          than one of the first layer); remove ``step_fraction`` of the parameters.
        """
        cfg = self.cfg.prune
        names = list(widths)
        per_param = cfg.rank == "per_param"
        params_now = self.params_of(widths)
        # What removing one unit of each group frees: parameters (per_param) or one unit.
        unit_cost = {
            name: (params_now - self.params_of({**widths, name: widths[name] - 1})) if per_param else 1
            for name in names
        }
        normalised = []
        for gi, name in enumerate(names):
            s = scores[name].float().cpu()
            s = s / unit_cost[name] if per_param else s / s.mean().clamp(min=1e-30)
            normalised.append(torch.stack([s, torch.full_like(s, gi), torch.arange(len(s), dtype=s.dtype)], 1))
        ranked = torch.cat(normalised)
        ranked = ranked[torch.argsort(ranked[:, 0], stable=True)]
        group_of = ranked[:, 1].long().tolist()

        def removals(budget: int) -> dict[str, int]:
            """Units to remove per group, lowest rank first, until ``budget`` (units or params) is spent."""
            counts = dict.fromkeys(names, 0)
            spent = 0
            for gi in group_of:
                if spent >= budget:
                    break
                name = names[gi]
                if widths[name] - counts[name] - 1 >= self.floors[name]:
                    counts[name] += 1
                    spent += unit_cost[name]
            return {k: (v // self.round_to) * self.round_to for k, v in counts.items()}

        total = params_now if per_param else sum(widths.values())
        budget = math.ceil(cfg.step_fraction * total)
        counts = removals(budget)
        if not any(counts.values()):
            # Rounding left nothing: take round_to units from the group whose lowest scores are lowest.
            for gi in group_of:
                name = names[gi]
                if widths[name] - self.round_to >= self.floors[name]:
                    counts = {name: self.round_to}
                    break
            else:
                return None

        def after(c: dict[str, int]) -> dict[str, int]:
            return {k: widths[k] - c.get(k, 0) for k in widths}

        if self.reduction(after(counts)) > cfg.target_reduction:
            lo, hi = 1, budget  # smallest budget whose plan reaches the target
            while lo < hi:
                mid = (lo + hi) // 2
                if self.reduction(after(removals(mid))) >= cfg.target_reduction:
                    hi = mid
                else:
                    lo = mid + 1
            if any(removals(lo).values()):
                counts = removals(lo)
            counts = self._trim_overshoot(widths, counts, after)
        groups = {}
        for gi, name in enumerate(names):
            if counts.get(name, 0) == 0:
                continue
            order = torch.argsort(normalised[gi][:, 0], stable=True)
            kept = torch.sort(order[counts[name] :]).values
            groups[name] = GroupChange.keep(kept)
        return WidthChange("prune", groups)

    def _trim_overshoot(self, widths, counts, after) -> dict[str, int]:
        """Give back whole ``round_to`` chunks, largest first, while the target stays reached: the last
        pruning step lands as close above the target as the chunk sizes allow."""
        target = self.cfg.prune.target_reduction
        counts = dict(counts)
        while True:
            best = None
            for name, removed in counts.items():
                if removed < self.round_to:
                    continue
                trial = {**counts, name: removed - self.round_to}
                reduction = self.reduction(after(trial))
                if reduction >= target and (best is None or reduction < best[0]):
                    best = (reduction, trial)
            if best is None:
                return counts
            counts = best[1]

    # ---------------------------------------------------------------------------------------- state

    def state_dict(self) -> dict:
        return {
            "phase": self.phase.value,
            "growth_accuracy": list(self.growth_accuracy),
            "grow_stopped_at": self.grow_stopped_at,
            "prune_start": self.prune_start,
            "prune_base_accuracy": self.prune_base_accuracy,
            "prune_steps_done": self.prune_steps_done,
            "changes": self.changes,
            "generator": self.generator.get_state(),
        }

    def load_state_dict(self, state: dict) -> None:
        state = dict(state)
        self.generator.set_state(state.pop("generator"))
        for key, value in state.items():
            setattr(self, key, value)
        self.phase = Phase(self.phase)
