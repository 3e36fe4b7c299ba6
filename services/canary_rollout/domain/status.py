r"""Rollout lifecycle states (a separate module so records and state can both use it without a cycle).

pending --(champion known)--> progressing(step 0..n) --(last step passes)--> promoted
   |                              |  \--(failed checks / catastrophic)----> rolled_back
   |                              \----(challenger deleted, admin abort)--> aborted
   \--pause--> paused --resume--> (back to where it was)
promoted --(regression while watched, domain/watch.py)--> reverted
"""

from __future__ import annotations

from enum import StrEnum


class RolloutStatus(StrEnum):
    PENDING = "pending"
    PROGRESSING = "progressing"
    PAUSED = "paused"
    PROMOTED = "promoted"
    ROLLED_BACK = "rolled_back"
    ABORTED = "aborted"
    REVERTED = "reverted"  # promoted, then moved back by the post-promotion watch

    @property
    def terminal(self) -> bool:
        return self in (
            RolloutStatus.PROMOTED,
            RolloutStatus.ROLLED_BACK,
            RolloutStatus.ABORTED,
            RolloutStatus.REVERTED,
        )
