"""bf16 autocast wraps each forward pass, never an optimizer step, in every training loop; "auto"
precision follows the device's native bf16 support: the units in cpuinfo and kernels that use them."""

from __future__ import annotations

import contextlib
import copy
import os
import subprocess
import sys

import pytest
import torch

from camgap.models import create_model
from camgap.zoo import loop
from camgap.zoo.loop import (
    RunInputs,
    bf16_support,
    choose_precision,
    evaluate,
    native_bf16,
    resolve_precision,
    train_one_epoch,
)
from camgap.zoo.packed import PackedResNet, evaluate_pack, train_pack_epoch

CPU = torch.device("cpu")
INPUTS = RunInputs(3, True, 0.5, 0.4, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))


def _data(n: int = 48) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (n, 3, 16, 16), dtype=torch.uint8, generator=gen), torch.arange(n) % 3


def _model(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return create_model("small_resnet10", 3, width=4)


class _Spy:
    """Records whether CPU autocast is on in every forward pass and every optimizer step."""

    def __init__(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer):
        self.forward: list[bool] = []
        self.step: list[bool] = []
        model.register_forward_hook(lambda *_: self.forward.append(torch.is_autocast_enabled("cpu")))
        optimizer.register_step_pre_hook(lambda *_: self.step.append(torch.is_autocast_enabled("cpu")))


@pytest.mark.parametrize("precision", ["bf16", "fp32"])
def test_one_run_casts_its_forward_passes_only(precision):
    x, y = _data()
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    spy = _Spy(model, opt)
    train_one_epoch(model, opt, INPUTS, x, y, 16, 1, precision)
    evaluate(model, x, y, INPUTS.mean, INPUTS.std, CPU, 16, precision)
    assert spy.step == [False] * 3
    assert spy.forward == [precision == "bf16"] * 6  # 3 training batches, then 3 evaluation batches


def test_a_pack_casts_its_forward_passes_only():
    x, y = _data()
    models = [_model(0), _model(1)]
    opts = [torch.optim.SGD(m.parameters(), lr=0.1) for m in models]
    pack = PackedResNet(models)
    spies = [_Spy(pack, opts[0]), _Spy(pack, opts[1])]
    train_pack_epoch(pack, opts, [INPUTS, INPUTS], x, y, 16, [1, 1], precision="bf16")
    evaluate_pack(pack, [INPUTS, INPUTS], x, y, 16, "bf16")
    assert spies[0].step == spies[1].step == [False] * 3
    assert spies[0].forward == [True] * 6


def test_bf16_steps_compute_with_the_current_weights():
    """The documented pattern, autocast around each forward alone, gives bit for bit what the loop
    gives; one context around the whole epoch (autocast's weight cache then keeps the first step's
    bf16 weights) does not."""
    x, y = _data()
    model, ref, stale = _model(), _model(), _model()
    opts = [torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9) for m in (model, ref, stale)]
    train_one_epoch(model, opts[0], INPUTS, x, y, 16, 1, "bf16")
    gen = loop.epoch_generator(INPUTS.seed, 1, CPU)
    perm = torch.randperm(48, generator=gen)
    batches = [loop.training_batch(INPUTS, gen, x, y, perm[s : s + 16]) for s in range(0, 48, 16)]
    for net, opt, per_step in ((ref, opts[1], True), (stale, opts[2], False)):
        # any enclosing autocast context, even a disabled one, keeps the cache for its whole extent
        with contextlib.nullcontext() if per_step else torch.autocast("cpu", dtype=torch.bfloat16):
            for xb, yb in batches:
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=per_step):
                    logits = net(xb).float()
                loss = torch.nn.functional.cross_entropy(logits, yb)
                opt.zero_grad()
                loss.backward()
                opt.step()
    weights = [torch.cat([p.detach().flatten() for p in m.parameters()]) for m in (model, ref, stale)]
    assert torch.equal(weights[0], weights[1])
    assert not torch.allclose(weights[0], weights[2], rtol=1e-4, atol=0)


def _cpu(monkeypatch, capability: str, avx512_bf16: bool, amx: bool, onednn: str | None = None) -> None:
    """A CPU as the probes see it: PyTorch's dispatched capability, cpuinfo's bf16 units, oneDNN's limit."""
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: capability)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx, raising=False)
    if onednn is None:
        monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    else:
        monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", onednn)


@pytest.mark.parametrize(
    ("cpu", "expected"),
    [
        (("AVX512", True, False), (True, "native bf16 on this CPU: AVX512-BF16, capability AVX512")),
        (("AVX512", True, True), (True, "native bf16 on this CPU: AVX512-BF16 and AMX, capability AVX512")),
        (("AVX512", False, True, "avx512_core_amx"), (True, "native bf16 on this CPU: AMX, capability AVX512")),
        # cpuinfo says AVX512-BF16, but the kernels dispatched are AVX2 (ATEN_CPU_CAPABILITY=avx2)
        (("AVX2", True, True), (False, "no native bf16 on this CPU: capability AVX2")),
        (("DEFAULT", False, False), (False, "no native bf16 on this CPU: capability DEFAULT")),
        (("AVX512", True, False, "AVX2"), (False, "no native bf16 on this CPU: ONEDNN_MAX_CPU_ISA=AVX2")),
        (("AVX512", False, False), (False, "no native bf16 on this CPU: no AVX512-BF16 or AMX (capability AVX512)")),
    ],
)
def test_native_bf16_needs_the_units_and_kernels_that_use_them(monkeypatch, cpu, expected):
    _cpu(monkeypatch, *cpu)
    assert bf16_support(CPU) == expected and native_bf16(CPU) is expected[0]
    assert choose_precision("auto", CPU) == ("bf16" if expected[0] else "fp32", expected[1])
    assert resolve_precision("auto", CPU) == ("bf16" if expected[0] else "fp32")
    for explicit in ("fp32", "bf16"):  # an explicit setting is never second-guessed
        assert choose_precision(explicit, CPU) == (explicit, "as the grid sets it")


def test_a_torch_without_the_probes_has_no_native_bf16(monkeypatch):
    _cpu(monkeypatch, "AVX512", True, True)
    monkeypatch.delattr(torch.cpu, "_is_avx512_bf16_supported")
    monkeypatch.delattr(torch.cpu, "_is_amx_tile_supported")
    assert resolve_precision("auto", CPU) == "fp32"  # fp32, the safe choice
    assert copy.copy(INPUTS) == INPUTS


@pytest.mark.slow  # a fresh interpreter importing torch
def test_the_avx2_emulation_is_seen_as_no_native_bf16():
    """The real probes in a process that dispatches AVX2 kernels, as `.ci/run`'s second pass does."""
    code = "import torch; from camgap.zoo.loop import bf16_support; print(bf16_support(torch.device('cpu')))"
    env = os.environ | {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    assert out.strip() == "(False, 'no native bf16 on this CPU: capability AVX2')"
