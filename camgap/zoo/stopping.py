"""The paper's stopping rules (Du, Zhou, Dai 2024, section 4.1), as a pure function of the
per-epoch history.

After every epoch the training loop appends one record ``{"train_loss", "train_acc",
"test_acc", ...}`` to the history, where the training loss and accuracy come from a clean
evaluation pass over the training set (eval mode, no augmentation) and ``test_acc`` from
the held-out split. Then, on the latest record ``t``:

* **C1** training cross-entropy below the threshold: ``train_loss[t] < loss_threshold``
  (paper: 0.1).
* **C2** training accuracy above the threshold: ``train_acc[t] > acc_threshold``
  (paper: 0.95).
* **C3** the training loss fell for two consecutive evaluations while the test error rose:
  ``train_loss[t] < train_loss[t-1] < train_loss[t-2]`` *and*
  ``test_err[t] > test_err[t-1] > test_err[t-2]`` with ``test_err = 1 - test_acc``.
  The paper's wording is "the loss function value decreases for two consecutive batches
  while the test error rate increases"; we read "batches" as evaluations (the rules are
  checked once per epoch) and require both trends strictly at each of the last two steps,
  so C3 needs at least three evaluations and is a sign of overfitting, not of noise in a
  single step.
* **C4** the epoch budget is spent: ``len(history) >= max_epochs`` (paper: 150).

Training stops when at least two of C1-C3 hold at the same evaluation, or at C4. The
returned reasons list every rule that held at the stopping evaluation: the two or three
of C1-C3 when the two-of-three rule fired, plus ``C4`` when the budget was also spent;
``"C4"`` alone when only the budget stopped it. ``stop_reason`` joins them with ``+``
(``"C1+C2"``, ``"C2+C3"``, ``"C4"``, ``"C1+C2+C4"``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

__all__ = ["StoppingRules", "StopDecision", "check_stop"]


@dataclass(frozen=True)
class StopDecision:
    stop: bool
    reasons: tuple[str, ...]  # rules that stopped the run (empty when not stopping)
    held: tuple[str, ...]  # which of C1-C3 hold at the latest evaluation (also when not stopping)

    @property
    def reason(self) -> str | None:
        return "+".join(self.reasons) if self.reasons else None


@dataclass(frozen=True)
class StoppingRules:
    loss_threshold: float = 0.1
    acc_threshold: float = 0.95
    max_epochs: int = 150

    def c1(self, history: Sequence[Mapping]) -> bool:
        return float(history[-1]["train_loss"]) < self.loss_threshold

    def c2(self, history: Sequence[Mapping]) -> bool:
        return float(history[-1]["train_acc"]) > self.acc_threshold

    @staticmethod
    def c3(history: Sequence[Mapping]) -> bool:
        if len(history) < 3:
            return False
        l0, l1, l2 = (float(h["train_loss"]) for h in history[-3:])
        e0, e1, e2 = (1.0 - float(h["test_acc"]) for h in history[-3:])
        return l2 < l1 < l0 and e2 > e1 > e0

    def c4(self, history: Sequence[Mapping]) -> bool:
        return len(history) >= self.max_epochs

    def check(self, history: Sequence[Mapping]) -> StopDecision:
        """Decide after the latest evaluation (``history[-1]``) whether to stop."""
        if not history:
            return StopDecision(False, (), ())
        held = tuple(
            name for name, ok in (("C1", self.c1(history)), ("C2", self.c2(history)), ("C3", self.c3(history))) if ok
        )
        reasons = held if len(held) >= 2 else ()
        if self.c4(history):
            reasons = (*reasons, "C4")
        return StopDecision(bool(reasons), reasons, held)


def check_stop(
    history: Sequence[Mapping],
    loss_threshold: float = 0.1,
    acc_threshold: float = 0.95,
    max_epochs: int = 150,
) -> StopDecision:
    """Functional form of ``StoppingRules(...).check(history)``."""
    return StoppingRules(loss_threshold, acc_threshold, max_epochs).check(history)
