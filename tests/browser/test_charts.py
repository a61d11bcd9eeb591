"""The functions page's charts in a real Chromium: a duration axis is as wide as its longest
label (long durations such as "1 min 35 s" were clipped to "nin 35 s" by a fixed width)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tests.acceptance.procs import free_port, start, stop, wait_healthy
from tests.browser.conftest import Watched, shot


@pytest.fixture(scope="module")
def dev(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    tmp = tmp_path_factory.mktemp("charts")
    port = free_port()
    root = Path(__file__).resolve().parents[2]
    proc = start(["dev", "tests.browser.shop:app", "--port", str(port), "--db",
                  str(tmp / "shop.db")], cwd=tmp,
                 env={"STEPWISE_TEST_FIXED": str(tmp / "fixed"), "PYTHONPATH": str(root)})
    base = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(base, proc)
        yield base
    finally:
        stop(proc)


def test_a_duration_axis_fits_its_longest_label(dev: str, pages: Watched) -> None:
    page: Any = pages.open()
    page.goto(f"{dev}/functions")
    page.locator("h1").wait_for()
    sizes = page.evaluate("""async () => {
      const box = document.createElement("div");
      box.style.width = "380px";
      document.querySelector("#page").append(box);
      const charts = new Map();
      const t = Date.now() / 1000;
      drawChart(charts, "long", box, [[t - 7200, t - 3600, t], [95000, 80000, 61000]],
                [{ label: "p50", stroke: "#3b5bdb" }], duration, { step: 3600 });
      const chart = charts.get("long");
      await new Promise(done => requestAnimationFrame(() => setTimeout(done, 50)));
      const labels = chart.axes[1]._values.map(String);
      chart.ctx.font = chart.axes[1].font[0];
      const widest = Math.max(...labels.map(l => chart.ctx.measureText(l).width))
        / devicePixelRatio;
      box.scrollIntoView();
      return { axis: chart.axes[1]._size, widest, labels };
    }""")
    assert any("min" in label for label in sizes["labels"]), sizes
    assert sizes["axis"] >= sizes["widest"] + 8, sizes
    shot(page, "functions-long-durations")
