"""`lnpeft export`'s PEFT adapter on every family: built, saved, loaded back with the real peft on
the checkpoint, and equal to the trained model in every tensor (lnpeft.model.export.check_adapter)."""

from __future__ import annotations

import pytest
import torch
from test_architectures import CONFIGS, tiny

from lnpeft.data.tasks import get_task
from lnpeft.model.export import adapter_modules, build_adapter, check_adapter
from lnpeft.model.methods import select

pytest.importorskip("peft")


@pytest.mark.parametrize("model_type", CONFIGS)
def test_adapter_round_trip_on_every_family(tmp_path, model_type):
    checkpoint = tiny(model_type)
    checkpoint.save_pretrained(tmp_path / "checkpoint")
    trained = tiny(model_type)
    names = set(select(trained, "layernorm").names)
    torch.manual_seed(1)
    with torch.no_grad():  # a "run": its LayerNorm set and head moved, nothing else
        for name, p in trained.named_parameters():
            if name in names:
                p.add_(0.1 * torch.randn_like(p))
    targets, to_save = adapter_modules(trained, {"new_weights": []})
    # whole head modules only: no module listed beside one of its ancestors
    assert not [m for m in to_save if any(m.startswith(f"{a}.") for a in to_save)]
    peft_model = build_adapter(trained, tmp_path / "checkpoint", get_task("rte"), {"new_weights": []})
    peft_model.save_pretrained(tmp_path / "adapter")
    check_adapter(tmp_path / "adapter", tmp_path / "checkpoint", get_task("rte"), trained)  # raises if any differs
