"""``stages.training.losses`` is a stable entry point (``star_loss`` and the loss modules): the losses live in
`stages.losses`, below both the methods that use them and the training loop."""

from stages.losses import (  # noqa: F401
    ClipLoss,
    ContextKLLoss,
    ProjectionPenalties,
    RandomTextLogitMSE,
    StarLoss,
    SymmetricDistillLoss,
    star_loss,
)
