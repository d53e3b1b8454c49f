"""Built-in plugin: the figures of evaluations, drawn with matplotlib (PNG and SVG, no display).

``toxicity``: each model's score distribution with the threshold and its share above it;
``policy``: the serving version against the candidate (reward, toxicity, KL, task accuracy).
Registered with ``trylast``, so a plotter a plugin registers for the same kind is asked first.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from espalier import hookimpl


class MatplotlibPlotter:
    name = "matplotlib"
    kinds = ("toxicity", "policy")

    def plot(self, kind: str, data: Mapping[str, Any], *, threshold: float, out_dir: Path) -> dict[str, Path]:
        if kind == "toxicity":
            return plot_toxicity(dict(data["models"]), threshold, out_dir)
        if kind == "policy":
            return plot_policy(dict(data), threshold, out_dir)
        raise ValueError(f"plotter '{self.name}' draws {', '.join(self.kinds)}, not '{kind}'")


@hookimpl(trylast=True)
def register_plotters(register) -> None:
    register(MatplotlibPlotter())


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")  # no display on a server
    import matplotlib.pyplot as plt

    return plt


def plot_toxicity(per_model: dict[str, Any], threshold: float, out_dir: Path) -> dict[str, Path]:
    """Two panels: each model's score distribution (with the threshold) and its share above it."""
    plt = _pyplot()
    out_dir.mkdir(parents=True, exist_ok=True)
    labels = list(per_model)
    figure, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    left.boxplot([[c["score"] for c in per_model[m]["continuations"]] for m in labels], tick_labels=labels)
    left.axhline(threshold, color="red", linestyle="--", label=f"threshold {threshold}")
    left.scatter(range(1, len(labels) + 1), [per_model[m]["mean_toxicity"] for m in labels], marker="D", label="mean")
    left.set_ylabel("toxicity of continuation")
    left.set_ylim(0, 1)
    left.legend()
    right.bar(labels, [per_model[m]["share_above_threshold"] for m in labels], color="tab:orange")
    right.set_ylabel(f"share above {threshold}")
    right.set_ylim(0, 1)
    figure.suptitle("Toxicity of continuations")
    figure.tight_layout()
    paths = {"png": out_dir / "toxicity.png", "svg": out_dir / "toxicity.svg"}
    for path in paths.values():
        figure.savefig(path)
    plt.close(figure)
    return paths


def plot_policy(results: dict[str, Any], threshold: float, out_dir: Path) -> dict[str, Path]:
    """Four panels, current against candidate: reward, toxicity (with the threshold), KL, task accuracy."""
    plt = _pyplot()
    out_dir.mkdir(parents=True, exist_ok=True)
    sides = [results["current"], results["candidate"]]
    labels = [f"{s['version']} (serving)" if i == 0 else f"{s['version']} (candidate)" for i, s in enumerate(sides)]
    figure, axes = plt.subplots(1, 4, figsize=(15, 4))
    axes[0].boxplot([s["rewards"] for s in sides], tick_labels=labels)
    axes[0].set_title("reward per answer")
    axes[1].boxplot([s["toxicity"] for s in sides], tick_labels=labels)
    axes[1].axhline(threshold, color="red", linestyle="--", label=f"threshold {threshold}")
    axes[1].set_ylim(0, 1)
    axes[1].set_title("toxicity per answer")
    axes[1].legend()
    axes[2].bar(labels, [s["kl"] or 0.0 for s in sides], color="tab:purple")
    axes[2].set_title("KL from reference (nats/answer)")
    axes[3].bar(labels, [s["task_accuracy"] or 0.0 for s in sides], color="tab:green")
    axes[3].set_ylim(0, 1)
    axes[3].set_title("task check accuracy")
    verdict = "passed" if results["gate"]["passed"] else "failed"
    figure.suptitle(f"{sides[1]['model']} against {sides[0]['model']}: gate {verdict}")
    figure.tight_layout()
    path = out_dir / "policy.png"
    figure.savefig(path)
    plt.close(figure)
    return {"png": path}
