"""RoI heads: proposal targets, poolers, the box head (Fast R-CNN / R-FCN) and the mask hook."""

from detector.modeling.roi_heads.poolers import Pooler, assign_fpn_levels, build_pooler
from detector.modeling.roi_heads.proposal_target_creator import ProposalTargetCreator
from detector.modeling.roi_heads.roi_heads import RoIHeads, build_roi_heads

__all__ = [
    "Pooler",
    "ProposalTargetCreator",
    "RoIHeads",
    "assign_fpn_levels",
    "build_pooler",
    "build_roi_heads",
]
