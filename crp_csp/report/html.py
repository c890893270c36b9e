"""HTML of the report: one page, inline CSS and vanilla JS, nothing fetched.

Every string that reaches the page (labels, sources, layer names, settings) goes through
:func:`esc`; images are ``data:`` URLs made here from pixels, never from user text.
"""
from __future__ import annotations

import dataclasses
import hashlib
import html
import json
import re

from .content import FAITHFULNESS, LayerContent, UnitRow, number

SEPARATOR = " \u00b7 "
MISSING = "\u2013"  # an en dash marks a value that does not exist (e.g. no evaluation was run)


def esc(value) -> str:
    """``html.escape`` with quotes, for text and attribute values."""
    return html.escape(str(value), quote=True)


def fmt(value, digits: int = 3) -> str:
    value = number(value)
    return MISSING if value is None else f"{value:.{digits}f}"


def slug(text: str) -> str:
    """An id fragment made of safe characters only (plus a short hash of the original)."""
    safe = re.sub(r"[^A-Za-z0-9_-]+", "-", text).strip("-") or "x"
    return safe if safe == text else f"{safe}-{hashlib.sha1(text.encode()).hexdigest()[:6]}"


def unit_anchor(layer: str, unit: int) -> str:
    return f"unit-{slug(layer)}-{unit}"


@dataclasses.dataclass
class Example:
    """One example image of a unit: its sample id, thumbnail, optional heatmap and a number."""

    sample: int
    image: str  # data URL
    heatmap: str | None = None
    value: float | None = None


CSS = """
:root { --fg:#1d232b; --muted:#5f6b7a; --line:#d8dde3; --bg:#ffffff; --head:#f3f5f8; --accent:#2f5d9e; }
* { box-sizing: border-box; }
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: var(--fg);
       background: var(--bg); margin: 0; padding: 0 24px 48px; }
header { border-bottom: 2px solid var(--accent); margin-bottom: 16px; padding: 16px 0 8px; }
h1 { font-size: 22px; margin: 0 0 4px; } h2 { font-size: 18px; margin: 28px 0 8px; }
h3 { font-size: 15px; margin: 14px 0 6px; } .muted { color: var(--muted); }
nav a { margin-right: 14px; } a { color: var(--accent); }
table { border-collapse: collapse; font-size: 13px; }
th, td { border-bottom: 1px solid var(--line); padding: 3px 8px; text-align: left; vertical-align: top; }
th { background: var(--head); position: sticky; top: 0; }
table.sortable th { cursor: pointer; user-select: none; white-space: nowrap; }
table.sortable th[aria-sort="ascending"]::after { content: " \\25B2"; font-size: 10px; }
table.sortable th[aria-sort="descending"]::after { content: " \\25BC"; font-size: 10px; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
td.label { font-weight: 600; } td.runner { color: var(--muted); max-width: 260px; }
tr.agree td.other { color: #2e7d32; } tr.disagree td.other { color: #b23c3c; }
.meta td:first-child { color: var(--muted); white-space: nowrap; }
.overview { max-height: 70vh; overflow: auto; border: 1px solid var(--line); margin: 6px 0 12px; }
.toolbar { display: flex; gap: 12px; align-items: center; margin: 8px 0; }
.toolbar input { font: inherit; padding: 4px 8px; width: 280px; }
details.unit { border: 1px solid var(--line); border-radius: 6px; margin: 8px 0; padding: 4px 12px; }
details.unit > summary { cursor: pointer; padding: 4px 0; }
.strip { display: flex; flex-wrap: wrap; gap: 6px; margin: 4px 0 8px; }
figure { margin: 0; text-align: center; font-size: 11px; color: var(--muted); }
figure img { display: block; image-rendering: pixelated; border: 1px solid var(--line); }
.pair { display: flex; gap: 1px; }
.chip { display: inline-block; background: var(--head); border: 1px solid var(--line); border-radius: 9px;
        padding: 0 6px; margin: 1px 2px; font-size: 11px; color: var(--muted); }
.columns { display: flex; flex-wrap: wrap; gap: 24px; }
img.plot { max-width: 100%; }
pre { background: var(--head); padding: 8px; overflow: auto; font-size: 12px; }
"""

JS = """
(function () {
  "use strict";
  function cellValue(row, index) {
    var cell = row.cells[index];
    var raw = cell.getAttribute("data-v");
    if (raw === null) { return cell.textContent.trim().toLowerCase(); }
    if (raw === "") { return null; }
    var value = parseFloat(raw);
    return isNaN(value) ? raw.toLowerCase() : value;
  }
  function compare(a, b) {
    if (a === null && b === null) { return 0; }
    if (a === null) { return 1; }
    if (b === null) { return -1; }
    if (typeof a !== typeof b) { return typeof a === "number" ? -1 : 1; }
    return a < b ? -1 : (a > b ? 1 : 0);
  }
  function sortTable(table, index, direction) {
    var header = table.tHead.rows[0].cells[index];
    if (!direction) { direction = header.getAttribute("aria-sort") === "descending" ? "ascending" : "descending"; }
    Array.prototype.forEach.call(table.tHead.rows[0].cells, function (cell) { cell.removeAttribute("aria-sort"); });
    header.setAttribute("aria-sort", direction);
    var sign = direction === "ascending" ? 1 : -1;
    var body = table.tBodies[0];
    var rows = Array.prototype.slice.call(body.rows);
    rows.sort(function (a, b) {
      var x = cellValue(a, index), y = cellValue(b, index);
      if (x === null || y === null) { return compare(x, y); }  /* missing values stay last */
      return sign * compare(x, y);
    });
    rows.forEach(function (row) { body.appendChild(row); });
  }
  function filterTable(table, query) {
    query = query.trim().toLowerCase();
    var shown = 0;
    Array.prototype.forEach.call(table.tBodies[0].rows, function (row) {
      var match = query === "" || row.textContent.toLowerCase().indexOf(query) !== -1;
      row.hidden = !match;
      if (match) { shown += 1; }
    });
    var counter = document.querySelector('[data-count-for="' + table.id + '"]');
    if (counter) { counter.textContent = shown + " of " + table.tBodies[0].rows.length + " units"; }
    return shown;
  }
  var tables = document.querySelectorAll("table.sortable");
  Array.prototype.forEach.call(tables, function (table) {
    Array.prototype.forEach.call(table.tHead.rows[0].cells, function (header, index) {
      header.tabIndex = 0;
      header.addEventListener("click", function () { sortTable(table, index); });
      header.addEventListener("keydown", function (event) {
        if (event.key === "Enter" || event.key === " ") { event.preventDefault(); sortTable(table, index); }
      });
    });
  });
  Array.prototype.forEach.call(document.querySelectorAll("input[data-filter]"), function (input) {
    var table = document.getElementById(input.getAttribute("data-filter"));
    input.addEventListener("input", function () { filterTable(table, input.value); });
  });
  function openTarget() {
    var id = decodeURIComponent(location.hash.slice(1));
    var target = id ? document.getElementById(id) : null;
    if (target && target.tagName === "DETAILS") { target.open = true; target.scrollIntoView(); }
  }
  window.addEventListener("hashchange", openTarget);
  openTarget();
  if (location.hash === "#selftest") {
    /* exercised by the browser test: sort by the first score column, filter, reset */
    var results = [];
    Array.prototype.forEach.call(tables, function (table) {
      var headers = Array.prototype.slice.call(table.tHead.rows[0].cells);
      var index = headers.findIndex(function (h) { return h.getAttribute("data-key") === "score"; });
      sortTable(table, index, "descending");
      var values = Array.prototype.map.call(table.tBodies[0].rows, function (row) { return cellValue(row, index); });
      var sorted = values.every(function (v, i) {
        return i === 0 || v === null || values[i - 1] === null || values[i - 1] >= v;
      });
      var firstLabel = table.tBodies[0].rows[0].cells[1].textContent;
      var matching = filterTable(table, firstLabel);
      var none = filterTable(table, "\\u2400 no such label \\u2400");
      var all = filterTable(table, "");
      results.push({ table: table.id, rows: values.length, sorted: sorted, matching: matching, none: none, all: all });
    });
    document.body.setAttribute("data-selftest", JSON.stringify(results));
  }
  document.body.setAttribute("data-ready", "1");
})();
"""


def _chips(sources) -> str:
    return "".join(f'<span class="chip">{esc(source)}</span>' for source in sources)


def _metric_cells(metrics: dict) -> str:
    cells = []
    for key, _, _ in FAITHFULNESS:
        value = metrics.get(key)
        if key == "gt_match":
            if value is None or number(value) is None:
                cells.append(f'<td class="num" data-v="">{MISSING}</td>')
            else:
                attribute = metrics.get("gt_attribute")
                shown = ("\u2713" if bool(value) else "\u2717") + (f" {esc(attribute)}" if attribute else "")
                cells.append(f'<td data-v="{int(bool(value))}">{shown}</td>')
        else:
            plain = number(value)
            cells.append(f'<td class="num" data-v="{"" if plain is None else f"{plain:.6g}"}">{fmt(value)}</td>')
    return "".join(cells)


def _number_cell(value, digits: int = 3) -> str:
    plain = number(value)
    return f'<td class="num" data-v="{"" if plain is None else f"{plain:.6g}"}">{fmt(value, digits)}</td>'


def overview_table(content: LayerContent, table_id: str, detailed: set[int]) -> str:
    """The sortable overview of a layer's units (labels, scores, interpretability, faithfulness)."""
    primary = content.primary.method
    other = content.comparison.method if content.comparison is not None else None
    headers = [("unit", "Unit", "unit index"), ("label", f"{primary} label", "top-1 label"),
               ("score", "score", f"{primary} score of the top-1 label"),
               ("runner", "runner-up labels", "ranks 2 and 3")]
    if other:
        headers += [("other", f"{other} label", f"top-1 label under {other}"),
                    ("other-score", f"{other} score", f"{other} score of its top-1 label")]
    headers += [("clarity", "clarity", "SemanticLens clarity of the positives (higher: more alike)"),
                ("poly", "polysem.", "SemanticLens polysemanticity (k-means, k=2; higher: more mixed)")]
    headers += [(key, title, f"{description} [{primary}]") for key, title, description in FAITHFULNESS]
    head = "".join(f'<th data-key="{esc(key)}" title="{esc(tip)}">{esc(title)}</th>' for key, title, tip in headers)
    lines = []
    for row in content.rows:
        labels, scores = row.labels.get(primary, []), row.scores.get(primary, [])
        agree = ""
        if other and row.labels.get(other) and labels:
            agree = "agree" if row.labels[other][0] == labels[0] else "disagree"
        unit_cell = (f'<a href="#{esc(unit_anchor(content.layer, row.unit))}">{row.unit}</a>'
                     if row.unit in detailed else str(row.unit))
        cells = [f'<td class="num" data-v="{row.unit}">{unit_cell}</td>',
                 f'<td class="label">{esc(labels[0]) if labels else MISSING}</td>',
                 _number_cell(scores[0] if scores else None),
                 f'<td class="runner">{esc(", ".join(labels[1:3])) if len(labels) > 1 else MISSING}</td>']
        if other:
            other_labels, other_scores = row.labels.get(other, []), row.scores.get(other, [])
            cells += [f'<td class="other">{esc(other_labels[0]) if other_labels else MISSING}</td>',
                      _number_cell(other_scores[0] if other_scores else None)]
        cells += [_number_cell(row.clarity), _number_cell(row.polysemanticity)]
        cells.append(_metric_cells(row.metrics.get(primary, {})))
        lines.append(f'<tr class="{agree}" data-unit="{row.unit}">{"".join(cells)}</tr>')
    return (f'<table class="sortable" id="{esc(table_id)}" data-layer="{esc(content.layer)}">'
            f'<thead><tr>{head}</tr></thead><tbody>{"".join(lines)}</tbody></table>')


def _examples(title: str, examples: list[Example], value_name: str) -> str:
    if not examples:
        return ""
    figures = []
    for example in examples:
        pictures = f'<img src="{example.image}" alt="sample {example.sample}">'
        if example.heatmap is not None:
            pictures += f'<img src="{example.heatmap}" alt="heatmap of sample {example.sample}">'
        caption = f"#{example.sample}"
        if example.value is not None:
            caption += f" \u00b7 {value_name} {fmt(example.value, 2)}"
        figures.append(f'<figure><div class="pair">{pictures}</div><figcaption>{esc(caption)}</figcaption></figure>')
    return f'<h3>{esc(title)}</h3><div class="strip">{"".join(figures)}</div>'


def ranking_table(content: LayerContent, row: UnitRow) -> str:
    """The unit's label ranking under every method side by side, with each label's sources."""
    methods = [item for item in content.methods if item.method in row.labels]
    sources = {}
    for item in content.methods:
        sources.update(item.sources)
    depth = max(len(row.labels[item.method]) for item in methods)
    head = "<th>rank</th>" + "".join(f'<th colspan="2">{esc(item.method)}</th>' for item in methods)
    body = []
    for rank in range(depth):
        cells = [f'<td class="num">{rank + 1}</td>']
        for item in methods:
            labels, scores = row.labels[item.method], row.scores[item.method]
            if rank < len(labels):
                cells.append(f'<td>{esc(labels[rank])} {_chips(sources.get(labels[rank], []))}</td>'
                             f'<td class="num">{fmt(scores[rank])}</td>')
            else:
                cells.append(f"<td>{MISSING}</td><td></td>")
        body.append(f"<tr>{''.join(cells)}</tr>")
    return f'<table class="ranking"><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table>'


def faithfulness_table(content: LayerContent, row: UnitRow) -> str:
    head = "<th>method</th><th>label</th>" + "".join(
        f'<th title="{esc(description)}">{esc(title)}</th>' for _, title, description in FAITHFULNESS)
    body = []
    for item in content.methods:
        labels = row.labels.get(item.method)
        if not labels:
            continue
        body.append(f"<tr><td>{esc(item.method)}</td><td>{esc(labels[0])}</td>"
                    f"{_metric_cells(row.metrics.get(item.method, {}))}</tr>")
    return f'<table class="faithfulness"><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table>'


def unit_section(content: LayerContent, row: UnitRow, positives: list[Example], negatives: list[Example]) -> str:
    primary = content.primary.method
    weighting = content.primary.config.get("selection", {}).get("positives", "activation")
    label = row.labels.get(primary, [MISSING])[0]
    summary = (f"unit {row.unit} \u2014 <b>{esc(label)}</b> "
               f'<span class="muted">clarity {fmt(row.clarity, 2)} \u00b7 polysemanticity '
               f"{fmt(row.polysemanticity, 2)} \u00b7 nearest unit {fmt(row.nearest_unit, 2)}</span>")
    return (
        f'<details class="unit" id="{esc(unit_anchor(content.layer, row.unit))}"><summary>{summary}</summary>'
        + _examples(f"positives (image | CRP heatmap of unit {row.unit}), w = their weight ({weighting})",
                    positives, "w")
        + _examples("contrastive negatives, with their cosine to the matched positive", negatives, "cos")
        + '<div class="columns"><div><h3>label ranking</h3>' + ranking_table(content, row) + "</div>"
        + "<div><h3>faithfulness</h3>" + faithfulness_table(content, row) + "</div></div></details>"
    )


def summary_table(content: LayerContent) -> str:
    """Means of the evaluation metrics per method (a dash where a method was not evaluated)."""
    summaries = {method: summary for method, summary in content.summaries.items() if summary}
    if not summaries:
        return f'<p class="muted">no faithfulness evaluation for this layer (its columns show {MISSING})</p>'
    keys = []
    for summary in summaries.values():
        keys += [key for key, value in summary.items() if key != "units" and not key.endswith("_n")
                 and not isinstance(value, (dict, list, str)) and key not in keys]
    methods = list(content.summaries)
    head = "<th>mean over units</th>" + "".join(f"<th>{esc(method)}</th>" for method in methods)
    rows = []
    for key in keys:
        cells = []
        for method in methods:
            summary = content.summaries.get(method) or {}
            count = summary.get(f"{key}_n")
            partial = count is not None and count != summary.get("units")
            note = f' <span class="muted">(n={int(count)})</span>' if partial else ""
            cells.append(f'<td class="num">{fmt(summary.get(key))}{note}</td>')
        rows.append(f"<tr><td>{esc(key)}</td>{''.join(cells)}</tr>")
    return (f'<details open><summary>faithfulness (evaluation summary)</summary><table class="summary">'
            f'<thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table></details>')


def layer_section(content: LayerContent, plot: str | None, units_html: str, detailed: set[int]) -> str:
    table_id = f"overview-{slug(content.layer)}"
    facts = [f"{len(content.rows)} units"]
    if content.redundancy is not None:
        facts.append(f"redundancy {content.redundancy:.3f}")
    agreement = content.agreement()
    if agreement is not None:
        facts.append(f"top-1 agreement {content.primary.method} / {content.comparison.method}: {agreement:.0%}")
    sources = ", ".join(f"{source}: {count}" for source, count in sorted(content.candidate_counts.items()))
    configs = "".join(
        f"<h3>{esc(item.method)}</h3><pre>{esc(json.dumps(item.config, indent=1, default=str))}</pre>"
        for item in content.methods)
    return (
        f'<section class="layer" id="layer-{esc(slug(content.layer))}"><h2>Layer {esc(content.layer)}</h2>'
        f'<p class="muted">{esc(SEPARATOR.join(facts))}</p>'
        f'<p>candidate labels by source: {esc(sources) or MISSING}</p>'
        + '<div class="columns"><div>' + summary_table(content) + "</div><div>"
        + (f'<img class="plot" src="{plot}" alt="score distributions of {esc(content.layer)}">' if plot else "")
        + "</div></div>"
        + f'<div class="toolbar"><input type="search" data-filter="{esc(table_id)}" '
          f'placeholder="filter units by label, unit, value\u2026" aria-label="filter units of {esc(content.layer)}">'
          f'<span class="muted" data-count-for="{esc(table_id)}">'
          f"{len(content.rows)} of {len(content.rows)} units</span>"
          "</div>"
        + f'<div class="overview">{overview_table(content, table_id, detailed)}</div>'
        + (f"<h3>units ({len(detailed)} of {len(content.rows)} shown in detail)</h3>{units_html}" if units_html else "")
        + f"<details><summary>labelling configuration</summary>{configs}</details></section>"
    )


def circuit_section(circuit, picture: str | None) -> str:
    """A circuit (:class:`crp_csp.circuits.Circuit`) of a unit: its picture and its edges with shares and labels."""
    labels = {node.key: node.label for node in circuit.nodes}
    rows = "".join(
        f"<tr><td>{esc(edge.parent)}</td><td>{esc(edge.child)}</td><td>{esc(labels.get(edge.child) or MISSING)}</td>"
        f"{_number_cell(edge.share)}{_number_cell(edge.share_std)}</tr>"
        for edge in circuit.edges)
    image = f'<img class="plot" src="{picture}" alt="circuit of {esc(circuit.root)}">' if picture else ""
    return (f'<details class="circuit" id="circuit-{esc(slug(circuit.root))}"><summary>circuit of '
            f'{esc(circuit.root)} [{esc(labels.get(circuit.root) or MISSING)}] ({len(circuit.samples)} samples)'
            f'</summary>{image}<table class="sortable"><thead><tr><th>parent</th><th>child</th><th>child label</th>'
            f'<th>share</th><th>share std</th></tr></thead><tbody>{rows}</tbody></table></details>')


def page(title: str, meta: list[tuple[str, str]], layers: list[str], sections: list[str]) -> str:
    rows = "".join(f"<tr><td>{esc(key)}</td><td>{esc(value)}</td></tr>" for key, value in meta)
    nav = "".join(f'<a href="#layer-{esc(slug(layer))}">{esc(layer)}</a>' for layer in layers)
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{esc(title)}</title><style>{CSS}</style></head><body>"
        f'<header><h1>{esc(title)}</h1><table class="meta">{rows}</table><nav>{nav}</nav></header>'
        + "".join(sections)
        + f"<script>{JS}</script></body></html>\n"
    )
