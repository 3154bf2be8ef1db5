"""The CGaP method: saliency (importance), the growth/pruning schedule, and surgery.

Structural change is data: the schedule computes a :class:`WidthChange` from widths and scores and
never touches the model; surgery applies it to the model and optimizer and never decides.
"""

from .change import GroupChange, WidthChange
from .importance import SaliencyTracker
from .schedule import Schedule
from .surgery import apply_width_change

__all__ = ["GroupChange", "WidthChange", "SaliencyTracker", "Schedule", "apply_width_change"]
