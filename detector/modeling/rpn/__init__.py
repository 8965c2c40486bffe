"""Region proposal network: head, AnchorTargetCreator, ProposalCreator, losses."""

from detector.modeling.rpn.anchor_target_creator import AnchorTargetCreator
from detector.modeling.rpn.head import RPNHead
from detector.modeling.rpn.proposal_creator import ProposalCreator
from detector.modeling.rpn.rpn import RPN

__all__ = ["RPN", "AnchorTargetCreator", "ProposalCreator", "RPNHead"]
