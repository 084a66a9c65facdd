"""Charts as SVG made on the server with pygal (requirements.txt): no charting script in the
browser and no Node.js at `make run`. pygal's interactive extras (tooltips) need its script,
which the console's Content-Security-Policy would refuse anyway, so it is left out; every chart
has a table of the same numbers beside it, for screen readers and for exact figures."""

from __future__ import annotations

import re
import sys
from collections.abc import Mapping, Sequence

import pygal
from pygal.style import Style

# pygal appends an import hook for its map plugins (unused here) that only has the pre-3.4
# find_module, so Python warns at every import that reaches it: taken out again.
sys.meta_path[:] = [finder for finder in sys.meta_path if not isinstance(finder, pygal.PluginImportFixer)]

_STYLE = Style(
    background="white",
    plot_background="white",
    foreground="#1f2933",
    foreground_strong="#1f2933",
    foreground_subtle="#5f6b7a",
    font_family="system-ui, -apple-system, 'Segoe UI', Roboto, sans-serif",
    title_font_size=16,
    label_font_size=12,
    major_label_font_size=12,
    legend_font_size=13,
    colors=("#2563eb", "#d97706", "#059669", "#dc2626", "#7c3aed", "#0891b2", "#be185d", "#4d7c0f"),
)
# pygal always adds a small inline script (its config for the tooltips): never run, so cut.
_SCRIPT = re.compile(r"<script\b[^>]*>.*?</script>", re.S)


def _svg(chart: pygal.graph.graph.Graph) -> str:
    return _SCRIPT.sub("", chart.render(is_unicode=True))


def over_time(labels: Sequence[str], by_name: Mapping[str, Sequence[int]], title: str, *,
              empty: str = "no calls") -> str:
    """Stacked bars: a count per time bucket, one colour a name (a model, a user, a team)."""
    chart = pygal.StackedBar(
        style=_STYLE, js=[], disable_xml_declaration=True, width=900, height=320, explicit_size=False,
        title=title, x_label_rotation=0, show_minor_x_labels=False, truncate_label=-1,
        legend_at_bottom=True, print_values=False, margin=16, show_y_guides=True, min_scale=2, max_scale=6,
    )
    chart.x_labels = list(labels)
    every = max(1, len(labels) // 8)
    chart.x_labels_major = list(labels)[::every]
    for name, values in by_name.items():
        chart.add(name, list(values))
    if not by_name:
        chart.add(empty, [0 for _ in labels])
    return _svg(chart)


def totals(values: Mapping[str, int], title: str) -> str:
    """Horizontal bars: one total a name, its number printed on it."""
    chart = pygal.HorizontalBar(
        style=_STYLE, js=[], disable_xml_declaration=True, width=600, height=max(140, 70 + 34 * len(values)),
        explicit_size=False, title=title, show_legend=False, print_values=True, margin=16,
    )
    chart.x_labels = list(values)
    chart.add(title, list(values.values()))
    return _svg(chart)
