"""The dashboard (``dashboard.py``'s panels) drawn with matplotlib from a running Prometheus, for where no Grafana
runs: ``python deploy/monitoring/picture.py http://127.0.0.1:9090 OUT.png [--minutes 10]``. Every line is what
Prometheus answered to the panel's query (``/api/v1/query_range``); a panel with no data says so."""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

MAX_SERIES = 8  # lines drawn per query, at most (a legend stays readable)


def panels() -> tuple:
    """``dashboard.PANELS``, from the file beside this one (deploy/monitoring is not a package)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("korasr_dashboard", Path(__file__).resolve().parent / "dashboard.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module.PANELS


def query_range(prometheus: str, expr: str, start: float, end: float, step: float) -> list[dict]:
    query = urllib.parse.urlencode({"query": expr, "start": start, "end": end, "step": step})
    with urllib.request.urlopen(f"{prometheus}/api/v1/query_range?{query}", timeout=10) as r:
        body = json.load(r)
    if body.get("status") != "success":
        raise RuntimeError(f"Prometheus refused {expr!r}: {body.get('error')}")
    return body["data"]["result"]


def legend(template: str, labels: dict) -> str:
    for key, value in labels.items():
        template = template.replace("{{" + key + "}}", value)
    return template


def draw(prometheus: str, out: Path, minutes: float, step: float = 1.0) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    PANELS = panels()
    end = time.time()
    start = end - minutes * 60
    cols = 4
    rows = math.ceil(len(PANELS) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 4.6, rows * 2.9), squeeze=False)
    for ax, panel in zip(axes.flat, PANELS, strict=False):
        drawn = 0
        for expr, template in panel.queries:
            for series in query_range(prometheus, expr, start, end, step)[:MAX_SERIES]:
                points = [(float(t) - end, float(v)) for t, v in series["values"] if v not in ("NaN", "+Inf", "-Inf")]
                if points:
                    ax.plot(*zip(*points, strict=True), label=legend(template, series["metric"]), linewidth=1.2)
                    drawn += 1
        ax.set_title(panel.title, fontsize=8)
        ax.tick_params(labelsize=6)
        ax.set_xlabel(f"seconds before now ({panel.unit})", fontsize=6)
        if drawn:
            ax.legend(fontsize=5, loc="upper left")
        else:
            ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes, fontsize=8, color="grey")
    for ax in list(axes.flat)[len(PANELS) :]:
        ax.axis("off")
    fig.suptitle(f"korasr serve, from Prometheus at {time.strftime('%Y-%m-%d %H:%M', time.localtime(end))} "
                 "(deploy/monitoring/picture.py)", fontsize=10)  # fmt: skip
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.35 / fig.get_figheight()))  # room for the title above the top row
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=80)
    plt.close(fig)
    tmp.replace(out)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("prometheus", help="Prometheus's URL, e.g. http://127.0.0.1:9090")
    parser.add_argument("out", type=Path, help="the PNG to write")
    parser.add_argument("--minutes", type=float, default=10.0, help="the time range drawn (default 10)")
    args = parser.parse_args(argv)
    if not 0 < args.minutes <= 24 * 60:
        parser.error("--minutes: between 0 and 1440")
    print(f"wrote {draw(args.prometheus.rstrip('/'), args.out, args.minutes)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
