"""Inline SVG charts (eventbus.charts): well-formed, escaped, and with readable axes."""

import xml.etree.ElementTree as ET

import pytest

from eventbus.charts import Series, axis_top, bar_chart, number


@pytest.mark.parametrize(
    ("value", "top"),
    [
        (0, 1),
        (0.3, 0.4),
        (1, 1),
        (2, 2),
        (3, 4),
        (7, 8),
        (9.5, 10),
        (24, 40),
        (96, 100),
        (101, 200),
    ],
)
def test_the_axis_ends_at_four_round_steps(value, top):
    assert axis_top(value) == top


@pytest.mark.parametrize(
    ("value", "text"),
    [(0, "0"), (2, "2"), (0.25, "0.25"), (2.5, "2.5"), (12.34, "12.3"), (1234.5, "1,234")],
)
def test_numbers_are_short(value, text):
    assert number(value) == text


def svg_of(html: str) -> ET.Element:
    return ET.fromstring(html[: html.index("</svg>") + len("</svg>")])


def test_a_chart_is_well_formed_svg_with_a_tooltip_per_bar_and_escapes_names():
    series = [
        Series("<script>alert(1)</script>", [1, 0, 2], "#0072B2"),
        Series("b & c", [0, 0, 3], "#E69F00"),
    ]
    html = bar_chart("c1", 'Title "quoted"', ["10:00", "10:01", "10:02"], series, "events/min")
    svg = svg_of(html)
    assert svg.get("viewBox") == "0 0 960 240" and svg.get("width") == "100%"
    assert svg.find("title").text == 'Title "quoted": at most 5 events/min per bar'
    tips = [rect.find("title").text for rect in svg.iter("rect")]
    assert tips == [
        "10:00\n<script>alert(1)</script>: 1 events/min",
        "10:02\n<script>alert(1)</script>: 2 events/min\nb & c: 3 events/min",
        "10:02\n<script>alert(1)</script>: 2 events/min\nb & c: 3 events/min",
    ]
    assert "<script>" not in html  # escaped in the SVG and in the legend
    assert html.count("&lt;script&gt;") == 4
    # The stacked bars of the last bucket touch: the second starts where the first ends.
    first, second = list(svg.iter("rect"))[1:]
    assert float(second.get("y")) + float(second.get("height")) == pytest.approx(
        float(first.get("y")), abs=0.2
    )


def test_an_empty_chart_still_has_its_axis_and_no_bars():
    svg = svg_of(bar_chart("c2", "Nothing", ["a", "b"], [Series("x", [0, 0], "#000")], "s"))
    assert list(svg.iter("rect")) == []
    assert [t.text for t in svg.iter("text") if t.get("class") == "axis"][:2] == ["0", "0.25"]


def test_one_series_needs_no_legend():
    assert "eventbus-legend" not in bar_chart("c3", "One", ["a"], [Series("x", [1], "#000")], "s")
