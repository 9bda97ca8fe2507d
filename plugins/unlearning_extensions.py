"""What an unlearning method may declare beyond the kind's interface (`harness.kinds.unlearning`).

The kind's `unlearn(model, forget, retain, ctx)` hands every method the forget set with its labels
and the retain set, and starts every method from the suite's original model. Three protocols of
the unlearning suite need more, so these declarations live here until the kind carries them:

- `DataAccess`: which of its inputs a method reads. Under `access=unlabeled_forget` the suite hands
  `forget = (x, None)`; under `access=forget_only` it hands `retain = None`; a method that does not
  declare that it can do without them is refused, by name, before it runs. Methods that inherit
  nothing are taken to read everything.
- `OwnsTraining`: a method that trains the original model itself (exact unlearning by sharding,
  S3T): the suite calls `train(pool, ctx)` once, then `unlearn(model, forget, retain, ctx)` with
  the model it returned, once per deletion request.

A method takes a declaration by inheriting its class (checked with `isinstance`, never by
probing attributes).
"""

from __future__ import annotations

import torch
from torch import nn

from harness.kinds.unlearning import UnlearnContext, Unlearning


class DataAccess:
    """What a method reads of `unlearn`'s inputs; override on the class or set per instance.

    `uses_forget_labels = False`: the method never reads `forget[1]` (it may be None).
    `uses_retain = False`: the method never reads `retain` (it may be None).
    """

    uses_forget_labels: bool = True
    uses_retain: bool = True


def reads(method: Unlearning) -> tuple[bool, bool]:
    """(reads the forget labels, reads the retain set) as `method` declares; both True when it declares nothing."""
    if isinstance(method, DataAccess):
        return bool(method.uses_forget_labels), bool(method.uses_retain)
    return True, True


class OwnsTraining(Unlearning):
    """A method that trains the original model itself and then serves deletion requests.

    `train((x, y), ctx)` gets the whole training pool (normalised float images and labels, on
    `ctx.device`) and returns the model it serves; every later `unlearn(model, forget, retain, ctx)`
    receives the model it returned last and deletes `forget` from it. Samples are identified by
    their image: the kind passes no sample indices.
    """

    lr_search = False  # it trains with its own recipe; the suite's learning-rate search does not apply

    def train(self, pool: tuple[torch.Tensor, torch.Tensor], ctx: UnlearnContext) -> nn.Module:
        raise NotImplementedError
