"""Where `vibe demo` finds the chart: a checkout's, ``$VIBE_CHART``, or a clear error (a wheel has none)."""

from __future__ import annotations

from pathlib import Path

import pytest

from vibe.demo.run import CHART, DemoError, find_chart


def test_the_checkout_chart_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("VIBE_CHART", raising=False)
    assert find_chart() == CHART and (CHART / "Chart.yaml").is_file()


def test_no_chart_is_one_clear_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("VIBE_CHART", str(tmp_path))
    with pytest.raises(DemoError, match="VIBE_CHART"):
        find_chart()
