"""Summaries, the printed table, the JSON file and the recovery chart."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

MIB = 2**20
GREEN, AMBER, RED = "#2e9e4f", "#f0a830", "#d64541"
# A 200 slower than this waited for the backend (nginx held it while the registry was away).
SLOW = 0.5


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


def spread(values: Sequence[float], fmt: str, unit: str) -> str:
    if not values:
        return "n/a"
    if len(values) == 1:
        return f"{values[0]:{fmt}} {unit} (n=1)"
    return f"{median(values):{fmt}} {unit} ({min(values):{fmt}}-{max(values):{fmt}}, n={len(values)})"


@dataclass
class Row:
    figure: str
    ours: str
    baseline: str
    ratio: str
    goal: str
    verdict: str


def verdict(ok: bool | None) -> str:
    return "n/a" if ok is None else ("met" if ok else "MISSED")


def fault_seconds(results: list[dict[str, Any]], stack: str, service: str, kind: str) -> list[float]:
    return [
        r["seconds"]
        for r in results
        if r["stack"] == stack and r["service"] == service and r["kind"] == kind and r["recovered"]
    ]


def never_text(results: list[dict[str, Any]], stack: str, service: str, kind: str) -> str | None:
    for r in results:
        if r["stack"] == stack and r["service"] == service and r["kind"] == kind and not r["recovered"]:
            return f"never (not serving {r['window']:.0f} s later)"
    return None


def per_rep_ratio(a: list[dict[str, Any]], b: list[dict[str, Any]]) -> list[float]:
    return [
        x["mb_per_s"] / y["mb_per_s"] for x, y in zip(a, b, strict=False) if x["mb_per_s"] and y["mb_per_s"]
    ]


def rates(runs: list[dict[str, Any]]) -> str:
    """Throughputs of the runs that completed, and how many failed."""
    ok = [r["mb_per_s"] for r in runs if r.get("mb_per_s")]
    failed = len(runs) - len(ok)
    return spread(ok, ".0f", "MB/s") + (f", {failed} FAILED" if failed else "")


def build_rows(raw: dict[str, Any], profile: Any) -> list[Row]:
    rows: list[Row] = []
    ours, post, always = "regsupervisor", "compose (post)", "compose + restart: always"

    cold = raw.get("cold_start")
    if cold:
        d, c = cold["regsupervisor"], cold["compose"]
        ratio = median(d) / median(c)
        rows.append(
            Row(
                "cold start -> first auth 200 (s)",
                spread(d, ".2f", "s"),
                f"{post}: {spread(c, '.2f', 's')}",
                f"{ratio:.2f}x",
                "<= 1.0x compose",
                verdict(ratio <= 1.0),
            )
        )

    faults = raw.get("crash", []) + raw.get("hang", []) + raw.get("never", [])
    for service in ("registry", "nginx"):
        d = fault_seconds(faults, ours, service, "crash")
        a = fault_seconds(faults, always, service, "crash")
        if d and a:
            ratio = median(d) / median(a)
            base = f"{always}: {spread(a, '.2f', 's')}"
            never = never_text(faults, post, service, "crash")
            if never:
                base += f"; {post}: {never}"
            rows.append(
                Row(
                    f"{service} crash -> serving (s)",
                    spread(d, ".2f", "s"),
                    base,
                    f"{ratio:.2f}x",
                    "<= 0.5x restart: always",
                    verdict(ratio <= 0.5),
                )
            )
    for service in ("registry", "nginx"):
        d = fault_seconds(faults, ours, service, "hang")
        if d:
            never = never_text(faults, always, service, "hang") or "not measured"
            goal = profile.hang_goal
            rows.append(
                Row(
                    f"{service} hang (SIGSTOP) -> serving (s)",
                    spread(d, ".2f", "s"),
                    f"{always}: {never}",
                    "-",
                    f"<= {goal:g} s (interval x failures + 1)",
                    verdict(median(d) <= goal) + (f" (max {max(d):.2f})" if max(d) > goal else ""),
                )
            )

    tp = raw.get("throughput")
    if tp:
        mib = tp["size"] / MIB
        push, pull = tp["push"], tp["pull"]
        for key, label in (
            ("regsupervisor", ours),
            ("post", "post's nginx config"),
            ("tuned", "proposed tuning"),
        ):
            if key in push and "direct" in push:
                ratios = per_rep_ratio(push[key], push["direct"])
                goal_ok = (
                    median(ratios) >= 0.9 and not any(r.get("error") for r in push[key])
                    if key == "regsupervisor"
                    else None
                )
                rows.append(
                    Row(
                        f"push {mib:g} MiB via {label} (MB/s)",
                        rates(push[key]),
                        f"direct registry port: {rates(push['direct'])}",
                        f"{median(ratios):.2f}x direct",
                        ">= 0.9x direct" if key == "regsupervisor" else "(reference)",
                        verdict(goal_ok),
                    )
                )
        for key, label in (
            ("regsupervisor", ours),
            ("post", "post's nginx config"),
            ("tuned", "proposed tuning"),
        ):
            if key in pull and "static" in pull:
                ratios = per_rep_ratio(pull[key], pull["static"])
                goal_ok = (
                    median(ratios) >= 0.7 and not any(r.get("error") for r in pull[key])
                    if key == "regsupervisor"
                    else None
                )
                rows.append(
                    Row(
                        f"pull {mib:g} MiB via {label} (MB/s)",
                        rates(pull[key]),
                        f"static TLS ceiling: {rates(pull['static'])}",
                        f"{median(ratios):.2f}x static",
                        ">= 0.7x static TLS" if key == "regsupervisor" else "(reference)",
                        verdict(goal_ok),
                    )
                )
        if "direct" in pull:
            rows.append(
                Row(
                    f"pull {mib:g} MiB, direct registry port (MB/s)",
                    rates(pull["direct"]),
                    "-",
                    "-",
                    "(reference)",
                    "n/a",
                )
            )

    conc = raw.get("concurrent")
    if conc:
        for key, runs in conc.items():
            if not runs:
                continue
            n, ok = runs[0]["clients"], min(r["ok"] for r in runs)
            peaks = [r["nginx_memory_peak_bytes"] for r in runs if r["nginx_memory_peak_bytes"]]
            peak = f", nginx peak {max(peaks) / MIB:.0f} MiB" if peaks else ""
            rows.append(
                Row(
                    f"{n} concurrent pulls of {raw['concurrent_size'] / MIB:g} MiB via {key}",
                    spread([r["mb_per_s"] for r in runs], ".0f", "MB/s") + peak,
                    f"{ok}/{n} ok, digests verified" if key == "regsupervisor" else "(reference)",
                    "-",
                    "all succeed",
                    verdict(all(r["ok"] == n for r in runs)),
                )
            )

    auth = raw.get("auth_latency")
    if auth:
        d = [x * 1000 for x in auth.get(ours, [])]
        c = [x * 1000 for x in auth.get(post, [])]
        if d and c:
            rows.append(
                Row(
                    "one authenticated GET /v2/, new TLS conn (ms)",
                    spread(d, ".1f", "ms") + " bcrypt",
                    f"{post}: {spread(c, '.1f', 'ms')} apr1-md5",
                    f"{median(d) / median(c):.1f}x",
                    "(reference)",
                    "n/a",
                )
            )

    fp = raw.get("footprint")
    if fp:
        rss_d = max(fp["rss_bytes"]["regsupervisor"]) / MIB
        rss_c = max(fp["rss_bytes"]["docker-compose up"]) / MIB
        rows.append(
            Row(
                "RSS, idle (MiB, max over window)",
                f"{rss_d:.1f} MiB",
                f"docker-compose up: {rss_c:.1f} MiB",
                f"{rss_d / rss_c:.2f}x",
                "(reference)",
                "n/a",
            )
        )
        cpu_d, cpu_c = fp["cpu_percent"]["regsupervisor"], fp["cpu_percent"]["docker-compose up"]
        cc = fp["container_cpu_seconds"]

        def ccs(prefix: str) -> str:
            vals = [v for k, v in cc.items() if k.startswith(prefix) and v is not None]
            return f"; its containers {100 * sum(vals) / fp['seconds']:.2f} %" if vals else ""

        rows.append(
            Row(
                f"idle CPU over {fp['seconds']:.0f} s (% of one core)",
                f"{cpu_d:.2f} %" + ccs("regsupervisor"),
                f"docker-compose up: {cpu_c:.2f} %" + ccs("compose"),
                f"{cpu_d / cpu_c:.1f}x" if cpu_c > 0 else "-",
                "(reference)",
                "n/a",
            )
        )
    rs = raw.get("respawns")
    if rs:
        rows.append(
            Row(
                f"RSS after {rs['count']} registry respawns (MiB)",
                f"{rs['rss_after_bytes'] / MIB:.1f} MiB (before {rs['rss_before_bytes'] / MIB:.1f})",
                f"respawn kill->answering {spread(rs['latencies'], '.2f', 's')}",
                f"{rs['rss_after_bytes'] / rs['rss_before_bytes']:.2f}x",
                "(reference)",
                "n/a",
            )
        )
    return rows


def render_table(rows: list[Row]) -> str:
    headers = Row("figure", "regsupervisor", "baseline", "ratio", "goal", "verdict")
    cols = list(
        zip(
            *[(r.figure, r.ours, r.baseline, r.ratio, r.goal, r.verdict) for r in [headers, *rows]],
            strict=True,
        )
    )
    widths = [max(len(v) for v in col) for col in cols]
    lines = []
    for i, row in enumerate([headers, *rows]):
        cells = (row.figure, row.ours, row.baseline, row.ratio, row.goal, row.verdict)
        lines.append(" | ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)).rstrip())
        if i == 0:
            lines.append("-+-".join("-" * w for w in widths))
    return "\n".join(lines)


def cpu_table(raw: dict[str, Any]) -> str:
    """CPU-seconds per GiB moved, by component: what bounds throughput on a shared 2-core machine."""
    tp = raw.get("throughput")
    if not tp:
        return ""
    gib = tp["size"] / 2**30
    lines = ["CPU-seconds per GiB moved (median; client = this benchmark's process):"]
    for direction in ("push", "pull"):
        for key, all_runs in tp[direction].items():
            runs = [r for r in all_runs if not r.get("error")]
            if not runs:
                continue
            roles = sorted({r for run in runs for r in run["cpu_seconds"]})
            parts = []
            for role in roles:
                vals = [run["cpu_seconds"][role] for run in runs if run["cpu_seconds"].get(role) is not None]
                if vals:
                    parts.append(f"{role} {median(vals) / gib:.2f}")
            others = median([run["others_share"] for run in runs])
            lines.append(
                f"  {direction} {key:14s} "
                + ", ".join(parts)
                + f"   (other processes took {others:.0%} of the busy CPU)"
            )
    return "\n".join(lines)


def phases_table(raw: dict[str, Any]) -> str:
    """Where a crash's recovery time goes: engine saw the exit, container started, serving."""
    faults = raw.get("crash", []) + raw.get("hang", [])
    if not faults:
        return ""
    lines = ["Recovery phases (median s after the fault: engine saw exit / container started / serving):"]
    keys = sorted({(r["stack"], r["service"], r["kind"]) for r in faults if r["recovered"]})
    for stack, service, kind in keys:
        runs = [
            r
            for r in faults
            if (r["stack"], r["service"], r["kind"]) == (stack, service, kind) and r["recovered"]
        ]
        exits = [r["phases"]["engine_saw_exit"] for r in runs if r["phases"]["engine_saw_exit"] is not None]
        starts = [r["phases"]["engine_started"] for r in runs if r["phases"]["engine_started"] is not None]
        served = [r["seconds"] for r in runs]

        def m(v: list[float]) -> str:
            return f"{median(v):.3f}" if v else "?"

        lines.append(f"  {kind:5s} {service:8s} {stack:26s} {m(exits)} / {m(starts)} / {m(served)}")
    return "\n".join(lines)


def _representative(results: list[dict[str, Any]]) -> dict[str, Any] | None:
    if not results:
        return None
    recovered = [r for r in results if r["recovered"]]
    if not recovered:
        return results[0]
    ordered = sorted(recovered, key=lambda r: r["seconds"])
    return ordered[(len(ordered) - 1) // 2]


def chart(raw: dict[str, Any], path: Path, profile: Any) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    faults = raw.get("crash", []) + raw.get("hang", []) + raw.get("never", [])
    panels = [
        ("crash", "registry process killed (SIGKILL from the host)"),
        ("hang", "registry frozen (SIGSTOP of all its processes)"),
    ]
    series = ["regsupervisor", "compose + restart: always", "compose (post)"]
    fig, axes = plt.subplots(2, 1, figsize=(11, 7), layout="constrained")
    right = (
        max([r["window"] for r in faults if not r["recovered"]] + [r["seconds"] or 0 for r in faults] + [3])
        + 1.5
    )
    for ax, (kind, title) in zip(axes, panels, strict=True):
        labels = []
        present = [
            s
            for s in series
            if any(r["stack"] == s and r["kind"] == kind and r["service"] == "registry" for r in faults)
        ]
        for y, stack in enumerate(present):
            rep = _representative(
                [
                    r
                    for r in faults
                    if r["stack"] == stack and r["kind"] == kind and r["service"] == "registry"
                ]
            )
            if rep is None:
                continue
            labels.append(stack)
            samples = sorted(rep["samples"])
            for i, (start, end, status) in enumerate(samples):
                stop = samples[i + 1][0] if i + 1 < len(samples) else start + profile.poll_period
                color = RED if status != 200 else (GREEN if end - start <= SLOW else AMBER)
                ax.broken_barh([(start, stop - start)], (y - 0.35, 0.7), color=color)
            text = (
                f"{rep['seconds']:.2f} s"
                if rep["recovered"]
                else f"never (not serving {rep['window']:.0f} s later)"
            )
            ax.text(
                right - 0.1,
                y,
                text,
                va="center",
                ha="right",
                fontsize=9,
                bbox={"facecolor": "white", "alpha": 0.85, "lw": 0},
            )
            if rep["recovered"]:
                ax.plot([rep["seconds"]], [y], marker="v", color="black", ms=6)
        ax.axvline(0, color="black", lw=1, ls="--")
        ax.set_yticks(range(len(labels)), labels)
        ax.set_ylim(-0.6, len(labels) - 0.4)
        ax.set_xlim(-1.0, right)
        ax.invert_yaxis()
        ax.set_title(title, fontsize=10, loc="left")
        ax.set_xlabel("seconds since the fault, by the time each request was sent (median repetition shown)")
    fig.legend(
        handles=[
            Patch(color=GREEN, label=f"200 within {SLOW:g} s"),
            Patch(color=AMBER, label=f"200 after waiting > {SLOW:g} s (held until the registry was back)"),
            Patch(color=RED, label="error (502, refused, reset) or no answer within 2 s"),
            Line2D(
                [], [], color="black", marker="v", ls="", label="first 200 after the fault: serving again"
            ),
        ],
        loc="outside lower center",
        ncols=2,
        fontsize=8,
        frameon=False,
    )
    fig.suptitle(
        f"Availability of authenticated /v2/ through the proxy, one request every {profile.poll_period:g} s",
        fontsize=11,
    )
    fig.savefig(path, dpi=130)
    plt.close(fig)
