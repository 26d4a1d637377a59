"""FT: standard fine-tuning (WiSE-FT's FT baseline), cross-entropy through the zero-shot-initialised head."""

from __future__ import annotations

from stages.methods._head import HeadMethod
from stages.methods._spec import MethodSpec, register_method


@register_method(MethodSpec(name="ft", display="FT", summary="CE through a head initialised from zero-shot weights; "
                            "trains the image tower and the head", has_head=True))
class FineTune(HeadMethod):
    """Cross-entropy through the zero-shot-initialised head; the image tower and the head train."""
