"""Which runs share a pack (``camgap.zoo.packing``): the plans of the packaged demo grids are
pinned as the code before the rule had one home computed them (tests/data/pack-plans.json),
since a run's float results depend on its pack."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from camgap.zoo.config import PACK_SHARED_CONFIG
from camgap.zoo.grid import load_grid
from camgap.zoo.packing import pack_key, pack_plan

PINNED = json.loads((Path(__file__).parent / "data" / "pack-plans.json").read_text())
CASES = {"demo fp32": ("demo", "fp32"), "demo bf16": ("demo", "bf16"), "demo-quick": ("demo-quick", "fp32")}


def packs_of(plan: dict[str, str]) -> list[dict]:
    """The plan as its packs in the order of their first run: ``{"pack_id", "runs"}``."""
    packs: dict[str, list[str]] = {}
    for rid, pack_id in plan.items():
        packs.setdefault(pack_id, []).append(rid)
    return [{"pack_id": p, "runs": runs} for p, runs in packs.items()]


@pytest.mark.parametrize("case", CASES)
def test_the_packaged_demo_grids_keep_their_packs(case):
    name, precision = CASES[case]
    g = load_grid(name).with_precision(precision)
    pinned = PINNED[case]
    assert g.fingerprint() == pinned["fingerprint"], f"the packaged {name} grid changed: pin its plan again"
    assert packs_of(pack_plan(g)) == pinned["packs"]


def test_the_demo_packs_hold_eight_runs_of_one_arch_and_batch_size():
    g = load_grid("demo").with_precision("fp32")
    by_id = {s.run_id: s.config for s in g.runs()}
    packs = PINNED["demo fp32"]["packs"]
    assert sorted(len(p["runs"]) for p in packs) == [1, 7, 8, 8, 8, 8, 8, 8, 8]
    for p in packs:
        assert len({(by_id[r].arch, by_id[r].batch_size) for r in p["runs"]}) == 1
    assert sum(len(p["runs"]) for p in packs) == sum(c.trained for c in by_id.values()) == 64


def test_the_pack_key_is_what_config_check_pack_compares():
    runs = load_grid("demo").with_precision("fp32").runs()
    assert [pack_key(s.config) for s in runs if not s.trained] == [None] * 8
    trained = [s.config for s in runs if s.trained]
    for a in trained[:8]:
        for b in trained:
            same = all(getattr(a, n) == getattr(b, n) for n in PACK_SHARED_CONFIG) and a.pack == b.pack
            assert (pack_key(a) == pack_key(b)) == same
    assert pack_key(load_grid("demo-quick").runs()[0].config) is None  # pack = 1: trains alone
