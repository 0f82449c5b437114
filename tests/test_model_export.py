"""EmotionNet under torch.compile (CPU inductor) and torch.export: same outputs as eager."""

from __future__ import annotations

import pytest
import torch

from emotionnet import EmotionNet

torch.set_num_threads(2)


def faces(batch: int) -> torch.Tensor:
    return torch.randn(batch, 1, 48, 48, generator=torch.Generator().manual_seed(0))


@pytest.mark.slow
def test_compiled_matches_eager() -> None:
    torch.manual_seed(0)
    model = EmotionNet().eval()
    x = faces(2)
    with torch.no_grad():
        expected = model(x)
        compiled = torch.compile(model, backend="inductor", fullgraph=True)
        torch.testing.assert_close(compiled(x), expected, rtol=1e-4, atol=1e-4)


def test_export_matches_eager() -> None:
    torch.manual_seed(0)
    model = EmotionNet().eval()
    x = faces(2)
    exported = torch.export.export(model, (x,))
    with torch.no_grad():
        torch.testing.assert_close(exported.module()(faces(2)), model(faces(2)), rtol=1e-5, atol=1e-5)
