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


@pytest.mark.parametrize("version", [2, None])
def test_an_export_of_an_unknown_format_version_is_refused_by_name(tmp_path, version) -> None:
    import json

    from emotionnet.data.preprocessing import Preprocessing
    from emotionnet.inference.export import (
        DESCRIPTION_NAME,
        EXPORT_FORMAT_VERSION,
        ExportError,
        read_description,
        save_export,
    )
    from emotionnet.model.emotionnet import ModelConfig

    config = ModelConfig(backbone_stages=3, d_model=16, depth=1, heads=2, spatial_heads=2, head_hidden=16)
    export = save_export(tmp_path / "m", EmotionNet(config).state_dict(), config, Preprocessing())
    assert read_description(export).format_version == EXPORT_FORMAT_VERSION
    description = json.loads((export / DESCRIPTION_NAME).read_text())
    description["format_version"] = version
    (export / DESCRIPTION_NAME).write_text(json.dumps(description))
    with pytest.raises(
        ExportError, match=rf"export format version {version!r}, but this EmotionNet reads version 1"
    ):
        read_description(export)
