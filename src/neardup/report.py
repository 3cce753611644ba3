"""Plain-text renderings of results for the terminal (the CLI prints these)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Sequence

if TYPE_CHECKING:  # Rich's tables load when a table is printed (dedup prints none)
    from rich.table import Table


def sweep_table(rows: Sequence[dict[str, Any]], chosen: float | None = None, caption: str | None = None,
                grouping: str | None = None) -> Table:
    """The threshold table: pairs, groups, suppressed, retained, largest group per threshold (◀ marks ``chosen``).

    ``grouping`` (e.g. ``bounded (bound 0.75)``) names the grouping the counts were made under.
    """
    from rich.table import Table

    title = "Threshold sweep" + (f", grouping {grouping}" if grouping else "")
    table = Table(title=title, title_justify="left", caption=caption, caption_justify="left")
    for name in ("threshold", "pairs", "groups", "suppressed", "retained", "largest group"):
        table.add_column(name, justify="right")
    for r in rows:
        mark = " ◀" if chosen is not None and abs(r["threshold"] - chosen) < 1e-12 else ""
        table.add_row(f"{r['threshold']:.4g}{mark}", f"{r['pairs']:,}", f"{r['groups']:,}", f"{r['suppressed']:,}",
                      f"{r['retained']:,}", f"{r['largest_group']:,}")
    return table


def format_summary(summary: dict[str, Any]) -> str:
    """A dedup summary as a few readable lines (the largest groups' chaining made visible)."""
    s = summary
    if s.get("run_id") is None:
        head = "dry run (nothing written)"
    elif s.get("unchanged") and any((s.get("decisions_invalidated") or {}).values()):
        head = f"run {s['run_id']} stays in force with exactly this result (only reviewer decisions were set aside)"
    elif s.get("unchanged"):
        head = f"nothing changed: run {s['run_id']} is already in force with exactly this result"
    else:
        head = f"run {s['run_id']} applied"
        if s.get("replaced"):
            head += f" (replaces run {', '.join(map(str, s['replaced']))}, no longer in force)"
    lines = [
        f"{head}: model {s['model']}, threshold {s['threshold']}, mode "
        + (s.get("grouping") or (s["mode"] + (f" (bound {s['bound']:.4g})" if s.get("bound") is not None else "")))
        + f", prefer {s['policy']}",
        f"  images {s['images']:,}  groups {s['groups']:,}  suppressed {s['suppressed']:,}  "
        f"retained {s['retained']:,}  largest group {s['largest_group']:,}"
        + (f"  pairs >= t {s['pairs']:,}" if s.get("pairs") is not None else ""),
    ]
    ix = s.get("index") or {}
    if ix.get("reason"):
        lines.append(f"  similarity pass: {ix['used']} (--index {ix['requested']}: {ix['reason']})")
    gc = s.get("geometric_check")
    if s.get("captured") is not None:
        lines.append(f"  capture times: {s['captured']:,} of {s['images']:,} images have one (EXIF DateTimeOriginal or "
                     "imported captured_at); images without one link by similarity"
                     + (" and, below the window's link similarity, a geometric check" if gc else " alone"))
    if gc:
        lines.append(f"  geometric check (one similarity transform maps one image onto the other?): "
                     f"{gc['pairs_checked']:,} untimed pairs checked, {gc['rejected']:,} found to be different pictures")
    if s.get("split_groups"):
        lines.append(f"  {s['split_groups']:,} groups were cut out of longer chains (mode bounded)")
    if s.get("visible") is not None and s["visible"] != s["retained"]:
        lines.append(f"  {s['visible']:,} images visible in the catalog in all "
                     f"({s['visible'] - s['retained']:,} outside this run's images)")
    if s.get("largest_groups"):
        lines.append("  largest groups (span = lowest similarity of a member to its master; weakest link = the "
                     "similarity holding the group together; low values mean a chain):")
        for g in s["largest_groups"]:
            split = g.get("split")
            how = "" if split is None else (f", split from a chain of {g['chain_size']:,}" if split else ", not split")
            lines.append(f"    group {g['group_id']}: {g['size']:,} images, master {g['master_id']}, "
                         f"span {g['min_sim_to_master']:.4f}, weakest link {g['weakest_link']:.4f}{how}"
                         + (f", decided by {g['decided_by']}" if g.get("decided_by") else ""))
    if s.get("decided_by"):
        lines.append("  masters decided by (policy key at which the master beats the next-best member: groups): "
                     + ", ".join(f"{k} {v:,}" for k, v in s["decided_by"].items()))
    ps = s.get("pass") or {}
    if ps.get("mode") == "incremental":
        lines.append(f"  incremental pass: {ps.get('added', 0):,} added, {ps.get('changed', 0):,} changed, "
                     f"{ps.get('removed', 0):,} removed since the cached pass ({ps.get('seconds', 0):.2f} s)")
    elif ps.get("mode") == "cached":
        lines.append("  similarity pass: from the cache (nothing changed since)")
    if s.get("compared_with_run") is not None:
        lines.append(f"  masters changed since run {s['compared_with_run']}: {s.get('masters_changed', 0):,}")
    inv = s.get("decisions_invalidated") or {}
    if any(inv.values()):
        lines.append(f"  reviewer decisions set aside: {inv.get('changed', 0)} on images that changed, "
                     f"{inv.get('vanished', 0)} on images whose file vanished (kept in overrides_invalidated)")
    ov = s.get("overrides_respected") or {}
    if any(ov.values()):
        lines.append(f"  reviewer decisions respected: {ov.get('keep', 0)} kept, {ov.get('master', 0)} masters, "
                     f"{ov.get('not_duplicate', 0)} not-duplicates")
    return "\n".join(lines)
