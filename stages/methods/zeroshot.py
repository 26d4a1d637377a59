"""Zero-shot: the pretrained model itself, evaluated as is (the reference row of every table)."""

from __future__ import annotations

from stages.methods._base import Method, MethodContext
from stages.methods._spec import MethodSpec, register_method


@register_method(MethodSpec(name="zeroshot", display="Zeroshot", summary="none: the pretrained model, evaluated as is",
                            trains=False))
class ZeroShot(Method):
    """The pretrained model; the loop writes its weights without any step."""

    def __init__(self, context: MethodContext) -> None:
        super().__init__(context)
        self.student.requires_grad_(False)
