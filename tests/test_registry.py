from __future__ import annotations

import pytest

from camgap.errors import CamgapError, InputError, UnknownNameError
from camgap.registry import Registry


def test_register_resolve_and_aliases():
    reg: Registry[int] = Registry("CAM method")
    reg.register("GradCAM++", "gradcampp")(1)
    reg.add("gradcam", 2)
    assert reg.get("gradcam++") == 1 and reg.get("GRADCAMPP") == 1 and reg.get("gradcam") == 2
    assert reg.resolve("gradcampp") == "gradcam++"
    assert reg.names() == ["gradcam", "gradcam++"] and list(reg) == reg.names() and len(reg) == 2
    assert reg.aliases("gradcam++") == ["gradcampp"]
    assert "gradcampp" in reg and "layercam" not in reg


def test_duplicates_are_errors_and_unknown_names_list_the_known():
    reg: Registry[int] = Registry("architecture")
    reg.add("resnet18", 1, "r18")
    for name in ("resnet18", "r18"):
        with pytest.raises(InputError, match="registered already"):
            reg.add(name, 2)
    with pytest.raises(InputError, match="alias 'resnet18' is registered already"):
        reg.add("other", 3, "resnet18")
    with pytest.raises(UnknownNameError) as err:
        reg.get("resnet19")
    assert str(err.value) == "unknown architecture 'resnet19'; known: resnet18"
    assert isinstance(err.value, KeyError) and isinstance(err.value, CamgapError)
