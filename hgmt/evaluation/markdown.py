"""An evaluation summary's report in Markdown (`to_markdown`): how and on which frames it was
evaluated, what it left out and why (damaged records, `damaged_note`; null numbers and caveat
counters, `caveat_lines`), its headline metrics and per-joint and per-part tables. Pure:
hgmt/evaluation/evaluator.py logs `damaged_note`, hgmt/evaluation/report_files.py writes the
Markdown beside the summary's JSON (`write_report`); the commands print it.
"""

from __future__ import annotations

from hgmt.evaluation import protocols
from hgmt.tasks import TASKS, common


def _fmt(value: float | None, spec: str, missing: str = "") -> str:
    return missing if value is None else format(value, spec)


def damaged_note(summary: dict) -> str:
    """What the damaged records an evaluation left out (summary['damaged_records']) do to its
    numbers, for its log warning and Markdown: hgmt's definitions, and the reference ones
    that are ratios or per-batch means, are over the other frames; a reference number that
    divides a sum by N, damaged records included, is null (`common.reference_null`)."""
    nulled = [f"{t}/{k}" for t in TASKS if t in summary
              for k, why in summary[t].get("null_reasons", {}).items()
              if why.endswith(common.DAMAGED)]
    note = (f"{summary['num_damaged']} damaged record(s) left out: "
            f"{'; '.join(summary.get('damaged_records', []))}. ")
    if not nulled:
        return note + ("The numbers are over the other frames, so a protocol compared with "
                       "published tables needs them rebuilt.")
    return note + (f"{', '.join(nulled)}: null, as the reference divides their sum by N, "
                   f"the damaged records included, so its figure cannot be reproduced "
                   f"(evaluate with --protocol=hgmt or rebuild the shard); the other numbers "
                   f"are over the other frames.")


def caveat_lines(summary: dict) -> list[str]:
    """Markdown list items: each task's null numbers with their reasons, then its nonzero
    caveat counters (its protocol's `Headline.caveats`) with their meanings."""
    out = []
    for t in TASKS:
        if t not in summary:
            continue
        entry = summary[t]
        out += [f"- {t}/{k} is null: {why}." for k, why in entry.get("null_reasons", {}).items()]
        for key, meaning in protocols.headline_of(t, entry.get("protocol", "hgmt")).caveats.items():
            value = entry.get(key)
            if value:
                shown = ", ".join(value) if isinstance(value, list) else value
                out.append(f"- {t}/{key} = {shown}: {meaning}.")
    return out


def to_markdown(summary: dict) -> str:
    """Markdown tables: headline metrics with the protocol that made each, then per-joint and
    per-part breakdowns."""
    protocol = summary.get("protocol", "hgmt")
    window = summary.get("window", "hgmt")
    window = "" if window == "hgmt" else (
        f", in the `{window}` crop window (every task's numbers, those of hgmt's definitions "
        f"included)")
    lines = [f"Evaluated {summary['num_examples']} examples of split `{summary['split']}`"
             f" (frames: {summary.get('frames', 'middle')})"
             f"{' with flip test' if summary['flip'] else ''}, metric protocol `{protocol}` "
             f"(docs/metrics.md){window}.", "", "| metric | value | protocol |",
             "|---|---|---|"]
    selected = summary.get("frames_selected", 0)
    if summary.get("max_examples") and selected > summary["max_examples"]:
        lines[1:1] = ["", f"**The first {summary['max_examples']} of the {selected} frames "
                      f"selected** (max_examples={summary['max_examples']}): a subset, not to "
                      f"be set beside numbers over the whole split (--max_examples=0 "
                      f"evaluates every frame)."]
    if summary.get("num_unreadable"):
        lines[1:1] = ["", f"**{summary['num_unreadable']} record(s) of the split do not read, "
                      f"their frames unknown**: each is left out if it is one of the frames "
                      f"asked for: {'; '.join(summary.get('unreadable_records', []))}."]
    if summary.get("num_damaged"):
        lines[1:1] = ["", f"**{damaged_note(summary)}**"]
    unusable = summary.get("unusable_frames", {})
    if unusable.get("count"):
        how = "; ".join(f"{t}: {w}" for t, w in unusable["treatment"].items())
        lines[1:1] = ["", f"**{unusable['count']} flagged unusable test frame(s)** (kept as the "
                      f"references keep them, docs/metrics.md): {how}."]
    for k, v in protocols.headline(summary).items():
        task_protocol = summary[k.split("/")[0]].get("protocol", "hgmt")
        lines.append(f"| {k} | {_fmt(v, '.4g', 'undefined')} | {task_protocol} |")
    caveats = caveat_lines(summary)
    if caveats:
        lines += ["", *caveats]
    # One table per kind of item (joint, part), a column per task that breaks down by it.
    columns: dict[str, list] = {}
    for t in TASKS:
        if t in summary:
            h = protocols.headline_of(t, summary[t].get("protocol", "hgmt"))
            if h.per_item:
                columns.setdefault(h.item, []).append((t, h))
    for item, cols in columns.items():
        head = " | ".join(f"{h.per_item} ({summary[t].get('protocol', 'hgmt')})"
                          for t, h in cols)
        lines += ["", f"| {item} | {head} |", "|---|" + "---|" * len(cols)]
        seen = dict.fromkeys(k for t, h in cols for k in summary[t][h.per_item])
        order = cols[0][1].item_names  # the dataset's order; other items as first seen
        for name in [n for n in order if n in seen] + [n for n in seen if n not in order]:
            # A value of None: the item is absent from the split, or the whole breakdown is
            # null (its reason listed above); no value: the column's protocol does not score
            # it (BodyNet's PCK, 10 of the 16 joints).
            cells = [_fmt(summary[t][h.per_item][name], h.item_format,
                          "null" if h.per_item in summary[t].get("null_reasons", {})
                          else "absent")
                     if name in summary[t][h.per_item] else "not scored" for t, h in cols]
            lines.append(f"| {name} | {' | '.join(cells)} |")
    return "\n".join(lines) + "\n"
