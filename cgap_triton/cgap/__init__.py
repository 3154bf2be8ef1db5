"""The CGaP method: saliency (importance), the growth/pruning schedule, and surgery.

Structural change is data: the schedule computes a :class:`WidthChange` from widths and scores, with every
decision in it (index maps, init rule, noise, seeds), and never touches the model; :class:`Structure`, the one
owner of the widths, applies it (surgery on the model, optimizer state and saliency; sizes; the event) and
never decides.
"""

from .change import GroupChange, WidthChange
from .importance import SaliencyTracker
from .schedule import Schedule
from .structure import Structure
from .surgery import apply_width_change

__all__ = ["GroupChange", "WidthChange", "SaliencyTracker", "Schedule", "Structure", "apply_width_change"]
