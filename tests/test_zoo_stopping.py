"""The paper's stopping rules (section 4.1) on scripted histories."""

import pytest

from camgap.zoo.stopping import StoppingRules, check_stop


def hist(*rows):
    """rows of (train_loss, train_acc, test_acc)"""
    return [{"train_loss": loss, "train_acc": a, "test_acc": t} for loss, a, t in rows]


RULES = StoppingRules(loss_threshold=0.1, acc_threshold=0.95, max_epochs=150)


def test_empty_history_does_not_stop():
    d = RULES.check([])
    assert not d.stop and d.reasons == () and d.reason is None


def test_single_rules_hold_but_do_not_stop_alone():
    # C1 alone: low loss, accuracy not above 0.95
    d = RULES.check(hist((0.05, 0.90, 0.5)))
    assert d.held == ("C1",) and not d.stop
    # C2 alone: accuracy above 0.95, loss not below 0.1
    d = RULES.check(hist((0.2, 0.96, 0.5)))
    assert d.held == ("C2",) and not d.stop
    # C3 alone: loss fell twice while the test error rose twice; C1, C2 false
    d = RULES.check(hist((1.0, 0.5, 0.6), (0.9, 0.6, 0.55), (0.8, 0.7, 0.5)))
    assert d.held == ("C3",) and not d.stop


def test_thresholds_are_strict():
    d = RULES.check(hist((0.1, 0.95, 0.5)))  # loss == 0.1, acc == 0.95: neither holds
    assert d.held == () and not d.stop


def test_c1_and_c2_stop():
    d = RULES.check(hist((0.5, 0.8, 0.5), (0.09, 0.97, 0.6)))
    assert d.stop and d.reasons == ("C1", "C2") and d.reason == "C1+C2"


def test_c1_and_c3_stop():
    h = hist((0.3, 0.90, 0.70), (0.2, 0.92, 0.68), (0.08, 0.94, 0.66))
    d = RULES.check(h)
    assert d.stop and d.reasons == ("C1", "C3")


def test_c2_and_c3_stop():
    h = hist((0.5, 0.90, 0.70), (0.4, 0.93, 0.69), (0.3, 0.96, 0.60))
    d = RULES.check(h)
    assert d.stop and d.reason == "C2+C3"


def test_all_three():
    h = hist((0.3, 0.90, 0.70), (0.2, 0.93, 0.69), (0.05, 0.99, 0.60))
    assert RULES.check(h).reason == "C1+C2+C3"


@pytest.mark.parametrize(
    "rows",
    [
        # loss fell only once (flat step)
        [(1.0, 0.5, 0.6), (0.9, 0.5, 0.55), (0.9, 0.5, 0.5)],
        # test error rose only at the last step
        [(1.0, 0.5, 0.5), (0.9, 0.5, 0.6), (0.8, 0.5, 0.55)],
        # test error flat at one step
        [(1.0, 0.5, 0.6), (0.9, 0.5, 0.6), (0.8, 0.5, 0.5)],
        # too short
        [(1.0, 0.5, 0.6), (0.9, 0.5, 0.5)],
    ],
)
def test_c3_needs_two_strict_consecutive_steps(rows):
    assert not StoppingRules.c3(hist(*rows))


def test_c3_looks_at_the_last_three_evaluations_only():
    rows = [(2.0, 0.1, 0.9), (3.0, 0.1, 0.1), (1.0, 0.5, 0.6), (0.9, 0.6, 0.55), (0.8, 0.7, 0.5)]
    assert StoppingRules.c3(hist(*rows))
    assert not StoppingRules.c3(hist(*rows[:4]))


def test_c4_max_epochs():
    h = hist(*[(1.0, 0.5, 0.5)] * 4)
    assert not check_stop(h[:3], max_epochs=4).stop
    d = check_stop(h, max_epochs=4)
    assert d.stop and d.reasons == ("C4",)


def test_c4_together_with_two_of_three():
    h = hist((1.0, 0.5, 0.5), (0.05, 0.99, 0.5))
    d = check_stop(h, max_epochs=2)
    assert d.reasons == ("C1", "C2", "C4") and d.reason == "C1+C2+C4"


def test_configurable_thresholds():
    h = hist((0.25, 0.85, 0.5))
    assert not check_stop(h).stop
    d = check_stop(h, loss_threshold=0.3, acc_threshold=0.8)
    assert d.stop and d.reason == "C1+C2"
