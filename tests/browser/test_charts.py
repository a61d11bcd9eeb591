"""The functions page's charts in a real Chromium: a duration axis is as wide as its longest
label (long durations such as "1 min 35 s" were clipped to "nin 35 s" by a fixed width)."""

from __future__ import annotations

from typing import Any

from tests.browser.conftest import Shop, Watched, shot


def test_a_duration_axis_fits_its_longest_label(shop: Shop, pages: Watched) -> None:
    page: Any = pages.open()
    page.goto(f"{shop.base}/functions")
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
