"""The run report: one self-contained HTML file and a Markdown summary.

The HTML embeds its plots as base64 PNG and its CSS inline, so it can be mailed, attached to a
ticket or opened from an artifact store without anything else. Every value that comes from the
data or from an LLM (customer ids, service names, headlines) is escaped, so none of them can
inject markup into either file.
"""

from __future__ import annotations

import base64
import html
import json
import os
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pandas as pd

from anomaly_pipelines.core.explain import formatting as fmt
from anomaly_pipelines.core.explain.incidents import SEVERITIES, SIGNAL_LABELS
from anomaly_pipelines.core.files import atomic_write_text
from anomaly_pipelines.core.ids import customer_key, visible

TOP_ANOMALIES = 10
HTML_NAME = "report.html"
MOVES_NOTE = (
    "Days on which many customers moved the same way together, as a public holiday or a "
    "provider-wide change moves them. No customer is flagged for it (hybrid.portfolio_move_*)."
)
MOVES_HEADER = ["Day", "Customers", "Down / up", "Deviation from expected"]
MD_NAME = "summary.md"

_MD_SPECIAL = re.compile(r"([\\`*_{}\[\]#!|~$])")
# Line starts that Markdown reads as list items or headings when a value begins a line.
_MD_LEADING = re.compile(r"^(\d+)([.)])|^([-+=])")
_DIMENSION_LABELS = {
    "service": "Service",
    "region": "Region",
    "sub_account": "Sub-account",
    "charge_category": "Charge category",
}


def esc(value: object) -> str:
    """Text for HTML (element content and quoted attributes); invisible and direction-changing
    characters (a right-to-left override in an id) are shown as ``<U+XXXX>``."""
    return html.escape(visible(value), quote=True)


def md(value: object) -> str:
    """Text for Markdown: one line, HTML-escaped (Markdown passes raw HTML through), and every
    character with Markdown meaning backslash-escaped, ``$`` included (GitHub renders math)."""
    text = " ".join(visible(value).split())
    text = _MD_SPECIAL.sub(r"\\\1", html.escape(text, quote=False))
    return _MD_LEADING.sub(lambda m: f"{m[1]}\\{m[2]}" if m[1] else f"\\{m[3]}", text)


def write_report(
    scores: pd.DataFrame,
    explanations: pd.DataFrame,
    plots: dict[str, Path],
    out_dir: Path,
    title: str = "Cloud cost anomalies",
    portfolio_plot: Path | None = None,
) -> tuple[Path, Path]:
    """Write ``report.html`` and ``summary.md`` into ``out_dir``; return their paths.

    ``explanations`` is ``explain_incidents``' output; ``plots`` maps customer ids to PNG files
    (customers without a plot still get their incidents listed). Top anomalies come first, by
    absolute impact; then one section per customer with incidents or a plot, largest impact first.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    incidents = _normalise(explanations)
    summary = _summary(scores, incidents)
    html_path = out_dir / HTML_NAME
    md_path = out_dir / MD_NAME
    # Atomic: a failed write (full disk, killed run) keeps the previous report whole.
    atomic_write_text(html_path, _html(title, summary, incidents, plots, portfolio_plot))
    atomic_write_text(md_path, _markdown(title, summary, incidents, plots, portfolio_plot, out_dir))
    return html_path, md_path


# -- data -------------------------------------------------------------------------------------


def _normalise(explanations: pd.DataFrame) -> pd.DataFrame:
    frame = explanations.copy()
    if frame.empty:
        return frame.assign(causes=pd.Series(dtype=object), abs_impact=pd.Series(dtype=float))
    frame["customer_id"] = frame["customer_id"].astype(str)
    for column in ("start", "end", "peak_timestamp"):
        frame[column] = pd.to_datetime(frame[column], utc=True)
    if "currency" not in frame.columns:
        frame["currency"] = "USD"
    if "step_seconds" not in frame.columns:
        frame["step_seconds"] = fmt.DAY_SECONDS
    frame["causes"] = [_causes(v) for v in frame.get("root_causes", pd.Series([""] * len(frame)))]
    frame["abs_impact"] = pd.to_numeric(frame["impact"], errors="coerce").abs().fillna(0.0)
    for column in ("headline", "detail", "explainer", "fallback_reason", "signals"):
        if column not in frame.columns:
            frame[column] = ""
        frame[column] = frame[column].fillna("").astype(str)
    return frame.sort_values(
        ["abs_impact", "customer_id", "start"], ascending=[False, True, True]
    ).reset_index(drop=True)


def _causes(value: Any) -> list[dict[str, Any]]:
    if isinstance(value, list):
        return value
    try:
        parsed = json.loads(value) if isinstance(value, str) and value else []
    except json.JSONDecodeError:
        return []
    return parsed if isinstance(parsed, list) else []


def _summary(scores: pd.DataFrame, incidents: pd.DataFrame) -> dict[str, Any]:
    customers = scores["customer_id"].astype(str) if len(scores) else pd.Series(dtype=str)
    status = (
        scores["status"].astype(str)
        if "status" in scores.columns
        else pd.Series("scored", index=scores.index)
    )
    unscored = sorted(set(customers[status == "unscored"]))
    reasons = {}
    if unscored and "reasons" in scores.columns:
        first = scores[status == "unscored"].drop_duplicates("customer_id")
        reasons = dict(
            zip(first["customer_id"].astype(str), first["reasons"].astype(str), strict=True)
        )
    stamps = (
        pd.to_datetime(scores["timestamp"], utc=True)
        if len(scores)
        else pd.Series(dtype="datetime64[ns, UTC]")
    )
    totals: dict[tuple[str, str], float] = {}
    for row in incidents.itertuples():
        key = (str(row.currency), str(row.direction))
        totals[key] = totals.get(key, 0.0) + float(row.impact)
    return {
        "customers": int(customers.nunique()),
        "unscored": unscored,
        "unscored_reasons": reasons,
        "first": stamps.min() if len(stamps) else None,
        "last": stamps.max() if len(stamps) else None,
        "anomalous_steps": int(scores["is_anomaly"].fillna(False).astype(bool).sum())
        if "is_anomaly" in scores.columns
        else 0,
        "incidents": len(incidents),
        "severity": {
            s: int((incidents.get("severity", pd.Series(dtype=str)) == s).sum()) for s in SEVERITIES
        },
        "totals": totals,
        "explainers": incidents["explainer"].value_counts().to_dict() if len(incidents) else {},
        "fallbacks": int((incidents["fallback_reason"] != "").sum()) if len(incidents) else 0,
        "with_incidents": sorted(set(incidents["customer_id"])) if len(incidents) else [],
        "all_customers": sorted(set(customers)),
        "moves": _portfolio_moves(scores),
    }


def _portfolio_moves(scores: pd.DataFrame) -> pd.DataFrame:
    """The steps on which customers moved together (``portfolio_move`` in ``reasons``), newest
    first: how many customers, which way, and how far from expected in all. Nobody is flagged
    for them, so without this list an analyst would never hear of a day the whole portfolio
    dropped."""
    columns = ["timestamp", "customers", "down", "up", "deviation"]
    if not len(scores) or "reasons" not in scores.columns:
        return pd.DataFrame(columns=columns)
    moved = scores[scores["reasons"].astype(str).str.contains("portfolio_move", regex=False)]
    if moved.empty:
        return pd.DataFrame(columns=columns)
    deviation = moved["cost"] - moved["expected_cost"]
    frame = moved.assign(deviation=deviation, down=deviation < 0, up=deviation > 0)
    out = frame.groupby("timestamp", as_index=False).agg(
        customers=("customer_id", "nunique"), down=("down", "sum"), up=("up", "sum"), deviation=("deviation", "sum")
    )
    return out.sort_values("timestamp", ascending=False).reset_index(drop=True)[columns]


def _moves_rows(summary: dict[str, Any]) -> list[list[str]]:
    """The newest ``TOP_ANOMALIES`` portfolio moves as table cells (day, customers, down / up,
    deviation from expected in the scores' own unit: they carry no currency)."""
    return [
        [
            f"{pd.Timestamp(row.timestamp):%Y-%m-%d %H:%M}".removesuffix(" 00:00"),
            str(row.customers),
            f"{row.down} / {row.up}",
            f"{row.deviation:+,.2f}",
        ]
        for row in summary["moves"].head(TOP_ANOMALIES).itertuples()
    ]


def _customer_order(incidents: pd.DataFrame, plots: dict[str, Path]) -> list[str]:
    impact = (
        incidents.groupby("customer_id")["abs_impact"].sum().to_dict() if len(incidents) else {}
    )
    names = set(impact) | {str(c) for c in plots}
    return sorted(names, key=lambda c: (-impact.get(c, 0.0), c))


def _period(row: Any) -> str:
    return fmt.period(row.start, row.end, float(row.step_seconds))


def _impact_text(row: Any) -> str:
    return f"{fmt.money(row.impact, row.currency, signed=True)} ({fmt.percent(row.impact_pct)})"


def _signals(text: str) -> str:
    return ", ".join(SIGNAL_LABELS.get(s, s) for s in text.split(",") if s) or "none recorded"


def _totals_text(totals: dict[tuple[str, str], float]) -> list[str]:
    """``$510.51 above expectation``, then the drops, one line per currency and direction."""
    lines = []
    for (currency, direction), value in sorted(
        totals.items(), key=lambda kv: (kv[0][0], kv[0][1] != "increase")
    ):
        word = "above" if direction == "increase" else "below"
        lines.append(f"{fmt.money(abs(value), currency)} {word} expectation")
    return lines


def _anchor(customer: str) -> str:
    return "c-" + customer_key(customer)


def _data_uri(path: Path) -> str | None:
    try:
        data = Path(path).read_bytes()
    except OSError:
        return None
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


# -- HTML -------------------------------------------------------------------------------------

_CSS = """
:root { --fg:#1d2733; --muted:#5b6b7b; --line:#dde3ea; --card:#f7f9fb; --accent:#1f5fa8;
  --low:#e0b000; --medium:#f28e2b; --high:#d62728; --critical:#6a0dad; }
* { box-sizing: border-box; }
body { font: 15px/1.5 -apple-system, "Segoe UI", Roboto, Helvetica, Arial, sans-serif; color: var(--fg);
  margin: 0 auto; max-width: 1180px; padding: 24px 32px 64px; }
h1 { font-size: 26px; margin: 0 0 4px; } h2 { font-size: 20px; margin: 36px 0 12px; border-bottom: 1px solid var(--line); padding-bottom: 6px; }
h3 { font-size: 16px; margin: 0 0 6px; }
.muted { color: var(--muted); } .small { font-size: 13px; }
.cards { display: grid; grid-template-columns: repeat(auto-fit, minmax(180px, 1fr)); gap: 12px; margin: 18px 0; }
.card { background: var(--card); border: 1px solid var(--line); border-radius: 8px; padding: 12px 14px; }
.card .value { font-size: 20px; font-weight: 600; } .card .unit { font-size: 14px; font-weight: 400; color: var(--muted); } .card .label { color: var(--muted); font-size: 13px; }
.anomaly { border: 1px solid var(--line); border-left: 6px solid var(--muted); border-radius: 8px; padding: 14px 16px; margin: 14px 0; background: #fff; }
.anomaly.low { border-left-color: var(--low); } .anomaly.medium { border-left-color: var(--medium); }
.anomaly.high { border-left-color: var(--high); } .anomaly.critical { border-left-color: var(--critical); }
.badge { display: inline-block; font-size: 12px; font-weight: 600; padding: 1px 8px; border-radius: 10px; color: #fff; background: var(--muted); vertical-align: middle; }
.badge.low { background: var(--low); color: #222; } .badge.medium { background: var(--medium); } .badge.high { background: var(--high); } .badge.critical { background: var(--critical); }
.meta { color: var(--muted); font-size: 13px; margin-bottom: 8px; }
table { border-collapse: collapse; width: 100%; margin: 8px 0; font-size: 14px; }
th, td { text-align: left; padding: 5px 8px; border-bottom: 1px solid var(--line); vertical-align: top; }
th { color: var(--muted); font-weight: 600; font-size: 13px; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
td.nowrap { white-space: nowrap; }
.id { overflow-wrap: anywhere; }
img { max-width: 100%; height: auto; border: 1px solid var(--line); border-radius: 6px; }
a { color: var(--accent); text-decoration: none; } a:hover { text-decoration: underline; }
.note { font-size: 13px; color: var(--muted); margin-top: 6px; }
nav.toc { columns: 3; font-size: 14px; } nav.toc a { display: block; }
"""


def _html(
    title: str,
    summary: dict[str, Any],
    incidents: pd.DataFrame,
    plots: dict[str, Path],
    portfolio_plot: Path | None,
) -> str:
    out: list[str] = [
        "<!doctype html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{esc(title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{esc(title)}</h1>",
    ]
    if summary["first"] is not None:
        first, last = summary["first"], summary["last"]
        out.append(
            f'<div class="muted">Data from {first:%Y-%m-%d} to {last:%Y-%m-%d} · '
            f"{summary['customers']} customers</div>"
        )
    out.append(_html_cards(summary))
    if portfolio_plot is not None and (uri := _data_uri(portfolio_plot)):
        out.append("<h2>Portfolio</h2>")
        out.append(f'<img src="{uri}" alt="Hybrid anomaly score per customer and day">')
    out.append("<h2>Top anomalies by impact</h2>")
    if incidents.empty:
        out.append('<p class="muted">No anomalies in this run.</p>')
    for rank, row in enumerate(incidents.head(TOP_ANOMALIES).itertuples(), start=1):
        out.append(_html_incident(rank, row))
    if len(summary["moves"]):
        out.append(f"<h2>Portfolio moves</h2><p class=\"muted\">{esc(MOVES_NOTE)}</p><table><tr>")
        out.append("".join(f"<th>{esc(name)}</th>" for name in MOVES_HEADER) + "</tr>")
        for cells in _moves_rows(summary):
            out.append("<tr>" + "".join(f"<td>{esc(cell)}</td>" for cell in cells) + "</tr>")
        out.append("</table>")
    order = _customer_order(incidents, plots)
    if order:
        out.append("<h2>Customers</h2>")
        out.append(
            '<nav class="toc">'
            + "".join(f'<a href="#{_anchor(c)}" class="id">{esc(c)}</a>' for c in order)
            + "</nav>"
        )
    for customer in order:
        out.append(
            _html_customer(
                customer, incidents[incidents["customer_id"] == customer], plots.get(customer)
            )
        )
    quiet = [
        c
        for c in summary["all_customers"]
        if c not in set(order) and c not in set(summary["unscored"])
    ]
    if quiet:
        out.append(f"<h2>Customers without anomalies ({len(quiet)})</h2>")
        out.append(
            '<p class="small id">'
            + esc(", ".join(quiet[:200]))
            + (" …" if len(quiet) > 200 else "")
            + "</p>"
        )
    if summary["unscored"]:
        out.append(
            f"<h2>Customers not scored ({len(summary['unscored'])})</h2><table><tr><th>Customer</th><th>Reason</th></tr>"
        )
        for customer in summary["unscored"][:200]:
            reason = summary["unscored_reasons"].get(customer, "")
            out.append(f'<tr><td class="id">{esc(customer)}</td><td>{esc(reason)}</td></tr>')
        out.append("</table>")
    out.append("</body></html>")
    return "\n".join(out)


def _html_cards(summary: dict[str, Any]) -> str:
    severity = summary["severity"]
    sev_text = (
        " · ".join(f"{severity[s]} {s}" for s in reversed(SEVERITIES) if severity[s]) or "none"
    )
    totals = [
        (fmt.money(abs(v), c, signed=False), "above" if d == "increase" else "below", c)
        for (c, d), v in sorted(
            summary["totals"].items(), key=lambda kv: (kv[0][0], kv[0][1] != "increase")
        )
    ]
    impact = (
        "<br>".join(
            f'{esc(("+" if word == "above" else "-") + amount)} <span class="unit">{esc(word)}</span>'
            for amount, word, _ in totals
        )
        or "none"
    )
    by_name = summary["explainers"]
    written = f"{by_name.get('gemini', 0)} Gemini · {by_name.get('offline', 0)} offline"
    fallbacks = summary["fallbacks"]
    cards = [
        (str(summary["incidents"]), f"incidents ({summary['anomalous_steps']} anomalous steps)"),
        (esc(sev_text), "incidents by severity"),
        (impact, "total impact against expectation"),
        (esc(written), f"explanations ({fallbacks} fell back to offline)"),
    ]
    body = "".join(
        f'<div class="card"><div class="value">{value}</div><div class="label">{esc(label)}</div></div>'
        for value, label in cards
    )
    return f'<div class="cards">{body}</div>'


def _html_incident(rank: int, row: Any) -> str:
    severity = str(row.severity) if str(row.severity) in SEVERITIES else "low"
    who = "Gemini" if row.explainer == "gemini" else "offline explainer"
    note = f"Explanation by the {who}."
    if row.explainer != "offline":  # the offline text already lists the signals
        note = f"Detected by: {_signals(row.signals)}. {note}"
    if row.fallback_reason:
        note += f" Fallback: {row.fallback_reason}"
    return "\n".join(
        [
            f'<div class="anomaly {severity}">',
            f'<h3>{rank}. {esc(row.headline)} <span class="badge {severity}">{esc(severity)}</span></h3>',
            f'<div class="meta"><a href="#{_anchor(row.customer_id)}" class="id">{esc(row.customer_id)}</a> · '
            f"{esc(_period(row))} · {esc(_impact_text(row))}"
            f"{_html_incident_id(row)}</div>",
            f"<p>{esc(row.detail)}</p>",
            _html_causes(row.causes, str(row.currency)),
            f'<div class="note">{esc(note)}</div>',
            "</div>",
        ]
    )


def _html_incident_id(row: Any) -> str:
    """The stable id people quote in ``anomaly-pipelines feedback ID accurate|not-anomaly|planned``."""
    incident_id = str(getattr(row, "incident_id", "") or "")
    return f' · id <span class="id">{esc(incident_id)}</span>' if incident_id else ""


def _html_causes(causes: list[dict[str, Any]], currency: str) -> str:
    if not causes:
        return ""
    rows = "".join(
        "<tr>"
        f"<td>{esc(_DIMENSION_LABELS.get(str(c.get('dimension')), c.get('dimension', '')))}</td>"
        f'<td class="id">{esc(c.get("value", ""))}</td>'
        f'<td class="num">{esc(fmt.money(c.get("actual"), currency))}</td>'
        f'<td class="num">{esc(fmt.money(c.get("expected"), currency))}</td>'
        f'<td class="num">{esc(fmt.money(c.get("impact"), currency, signed=True))}</td>'
        f'<td class="num">{esc(fmt.share(c.get("share")))}</td>'
        "</tr>"
        for c in causes
    )
    head = (
        '<tr><th>Root cause dimension</th><th>Value</th><th class="num">Actual</th><th class="num">Expected</th>'
        '<th class="num">Impact</th><th class="num">Share</th></tr>'
    )
    return f"<table>{head}{rows}</table>"


def _html_customer(customer: str, rows: pd.DataFrame, plot: Path | None) -> str:
    out = [f'<section id="{_anchor(customer)}">', f'<h2 class="id">{esc(customer)}</h2>']
    if len(rows):
        impact = _totals_text(
            {
                (str(c), str(d)): float(v)
                for (c, d), v in rows.groupby(["currency", "direction"])["impact"].sum().items()
            }
        )
        out.append(f'<div class="meta">{len(rows)} incident(s) · {esc("; ".join(impact))}</div>')
    else:
        out.append('<div class="meta">No incidents.</div>')
    if plot is not None and (uri := _data_uri(plot)):
        out.append(f'<img src="{uri}" alt="Cost, expected band and anomalies of {esc(customer)}">')
    if len(rows):
        out.append(
            '<table><tr><th>Period</th><th class="num">Impact</th><th>Severity</th><th>Headline</th><th>Root causes</th></tr>'
        )
        for row in rows.sort_values("start").itertuples():
            causes = (
                ", ".join(f"{c.get('value', '')} ({fmt.share(c.get('share'))})" for c in row.causes)
                or "—"
            )
            out.append(
                f'<tr><td class="nowrap">{esc(_period(row))}</td><td class="num">{esc(_impact_text(row))}</td>'
                f'<td><span class="badge {esc(row.severity)}">{esc(row.severity)}</span></td>'
                f"<td>{esc(row.headline)}</td><td>{esc(causes)}</td></tr>"
            )
        out.append("</table>")
    out.append("</section>")
    return "\n".join(out)


# -- Markdown ---------------------------------------------------------------------------------


def _md_row(cells: Iterable[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def _md_image(path: Path, out_dir: Path, alt: str) -> str:
    try:
        rel = os.path.relpath(Path(path).resolve(), out_dir.resolve())
    except ValueError:  # another drive on Windows
        rel = str(Path(path).resolve())
    return f"![{md(alt)}]({quote(Path(rel).as_posix())})"


def _markdown(
    title: str,
    summary: dict[str, Any],
    incidents: pd.DataFrame,
    plots: dict[str, Path],
    portfolio_plot: Path | None,
    out_dir: Path,
) -> str:
    out = [f"# {md(title)}", ""]
    if summary["first"] is not None:
        out.append(
            f"Data from {summary['first']:%Y-%m-%d} to {summary['last']:%Y-%m-%d}, "
            f"{summary['customers']} customers, {summary['incidents']} incidents "
            f"({summary['anomalous_steps']} anomalous steps)."
        )
        out.append("")
    severity = ", ".join(
        f"{summary['severity'][s]} {s}" for s in reversed(SEVERITIES) if summary["severity"][s]
    )
    if severity:
        out += [f"- Severity: {severity}"]
    if summary["totals"]:
        out.append(f"- Impact: {md(', '.join(_totals_text(summary['totals'])))}")
    if summary["explainers"]:
        written = ", ".join(f"{n} by {name}" for name, n in sorted(summary["explainers"].items()))
        out.append(f"- Explanations: {md(written)}; {summary['fallbacks']} fallback(s)")
    out.append("")
    if portfolio_plot is not None and Path(portfolio_plot).exists():
        out += [
            "## Portfolio",
            "",
            _md_image(portfolio_plot, out_dir, "Hybrid anomaly score per customer and day"),
            "",
        ]
    out += ["## Top anomalies by impact", ""]
    if incidents.empty:
        out += ["No anomalies in this run.", ""]
    else:
        out.append(_md_row(["#", "Customer", "Period", "Impact", "Severity", "Headline"]))
        out.append(_md_row(["---:", "---", "---", "---:", "---", "---"]))
        top = incidents.head(TOP_ANOMALIES)
        for rank, row in enumerate(top.itertuples(), start=1):
            out.append(
                _md_row(
                    [
                        str(rank),
                        md(row.customer_id),
                        md(_period(row)),
                        md(_impact_text(row)),
                        md(row.severity),
                        md(row.headline),
                    ]
                )
            )
        out.append("")
        for rank, row in enumerate(top.itertuples(), start=1):
            out += [f"### {rank}. {md(row.headline)}", "", md(row.detail), ""]
            if str(getattr(row, "incident_id", "") or ""):
                out += [f"Incident id: {md(row.incident_id)}", ""]
            for cause in row.causes:
                label = _DIMENSION_LABELS.get(
                    str(cause.get("dimension")), str(cause.get("dimension", ""))
                )
                out.append(
                    f"- {md(label)} {md(cause.get('value', ''))}: "
                    f"{md(fmt.money(cause.get('impact'), str(row.currency), signed=True))} "
                    f"({md(fmt.share(cause.get('share')))} of the {'increase' if row.direction == 'increase' else 'drop'})"
                )
            who = "Gemini" if row.explainer == "gemini" else "offline explainer"
            note = f"Explanation by the {who}." + (
                f" Fallback: {row.fallback_reason}" if row.fallback_reason else ""
            )
            out += ["", f"_{md(note)}_", ""] if row.causes else [f"_{md(note)}_", ""]
    if len(summary["moves"]):
        out += ["## Portfolio moves", "", md(MOVES_NOTE), ""]
        out.append(_md_row(MOVES_HEADER))
        out.append(_md_row(["---", "---:", "---:", "---:"]))
        out += [_md_row([md(cell) for cell in cells]) for cells in _moves_rows(summary)]
        out.append("")
    order = _customer_order(incidents, plots)
    if order:
        out += ["## Customers", ""]
    for customer in order:
        rows = incidents[incidents["customer_id"] == customer]
        out += [f"### {md(customer)}", ""]
        if customer in plots:
            out += [_md_image(plots[customer], out_dir, f"Cost and anomalies of {customer}"), ""]
        if len(rows):
            out.append(_md_row(["Period", "Impact", "Severity", "Headline"]))
            out.append(_md_row(["---", "---:", "---", "---"]))
            for row in rows.sort_values("start").itertuples():
                out.append(
                    _md_row(
                        [
                            md(_period(row)),
                            md(_impact_text(row)),
                            md(row.severity),
                            md(row.headline),
                        ]
                    )
                )
        else:
            out.append("No incidents.")
        out.append("")
    if summary["unscored"]:
        out += ["## Customers not scored", ""]
        for customer in summary["unscored"][:200]:
            out.append(f"- {md(customer)}: {md(summary['unscored_reasons'].get(customer, ''))}")
        out.append("")
    return "\n".join(out)
