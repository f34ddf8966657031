"""``fovea viz``: figures of what a run's model looks at and predicts, and of its training curves.

Reads only the run directory (STYLE.md: data flows one way): the model is rebuilt from ``config.toml``
and the newest checkpoint like the audit does, the clips are the first ``clips`` of the run's clip cache
(``data_report.json``; the data source and the run's VAE when the cache is gone), and the curves come
from ``metrics.jsonl``. Writes into ``<run>/viz/`` (``RunDir.viz_dir``; fixed names, which ``fovea audit``
embeds):

- ``attention_clip{i}.png``: the clip's frames; the static query's and the dynamic query's attention
  over the patches overlaid on each frame (one colour scale, with its bar);
- ``predictions_clip{i}.png``: frame t, its own latent decoded (the best a prediction can look through
  this VAE), and the coarse (pass 1) and fine (pass 2) predictions of it from the frames before t, decoded;
- ``losses.png``: loss_fine and loss_coarse over steps (log scale), their ratio on a second axis;
- ``entropy.png``: attention entropy and peak weight of both queries over steps, with their values
  for uniform attention (log K, 1 / K).

Every figure has a fixed size (``FIGURE_SIZE``, ``clip_figure_size``, ``DPI``), so its pixel size depends
only on T: 1300 x 530 (attention) and 1300 x 680 (predictions) pixels for T = 8; 800 x 450 (losses),
1100 x 450 (entropy).
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from fovea.core.errors import FoveaError
from fovea.core.rundir import RunDir

DPI = 100
PANEL_INCHES = 1.5     # one frame panel of the per-clip figures
FIGURE_SIZE = {"losses": (8.0, 4.5), "entropy": (11.0, 4.5)}   # inches; the per-clip ones: ``clip_figure_size``


def clip_figure_size(num_frames: int, rows: int) -> tuple[float, float]:
    """(width, height) in inches of a per-clip figure: T panels wide plus a colour bar, ``rows`` high plus titles."""
    return PANEL_INCHES * num_frames + 1.0, PANEL_INCHES * rows + 0.8


def visualize(run_dir: str | Path, clips: int = 2) -> list[Path]:
    """Write the figures of the run ``run_dir`` into its ``viz/``; returns their paths."""
    import matplotlib

    matplotlib.use("Agg")   # files only: no display needed
    from fovea.core.checkpoint import load_weights
    from fovea.core.config import load_config
    from fovea.core.model import build_model
    from fovea.core.rundata import clip_latents, first_clips, load_run_vae

    if clips < 1:
        raise FoveaError("--clips must be at least 1")
    run = RunDir.resolve(run_dir)
    config = load_config(run.config_file)
    metrics = run.read_metrics()
    if not metrics:
        raise FoveaError(f"{run.metrics_file}: no metrics; the run stopped before its first log line")
    data_report = run.read_json(run.data_report_file)
    with torch.random.fork_rng(devices=[]):
        model = build_model(config).eval()
        load_weights(model, run)   # the newest complete checkpoint; a FoveaError if none
        vae, _, _ = load_run_vae(run, config, data_report)
        batch = first_clips(run, clips, config)
        frames = batch.frames
        latents = batch.latents if batch.latents is not None else clip_latents(vae, frames, config)
        # the queries come before any text in the sequence: a stand-in caption leaves the attention as it is
        targets = model.prepare({"captions": ["a stand-in caption"] * len(frames)}) if model.codec is not None else {}
        with torch.no_grad():
            out = model(frames, latents, targets, return_attention=True)
            predicted = out.pred_fine is not None                              # the run trains next_latent
            if predicted:
                coarse = decode(vae, out.pred_coarse)                          # (B, T, 3, S, S) in [0, 1]
                fine = decode(vae, out.pred_fine)
                reconstructed = decode(vae, latents)

    out_dir = run.viz_dir
    out_dir.mkdir(exist_ok=True)
    for stale in [*out_dir.glob("attention_clip*.png"), *out_dir.glob("predictions_clip*.png")]:
        stale.unlink()   # an earlier call's clips: the directory holds this call's figures only
    grid = patch_grid(model.encoder, out.attention_static.shape[-1])
    written = []
    for i in range(len(frames)):
        written.append(plot_attention(out_dir / f"attention_clip{i}.png", frames[i], out.attention_static[i],
                                      out.attention_dynamic[i], model.encoder.num_prefix_tokens, grid, i))
        if predicted:
            written.append(plot_predictions(out_dir / f"predictions_clip{i}.png", frames[i], reconstructed[i],
                                            coarse[i], fine[i], i))
    written.append(plot_losses(out_dir / "losses.png", metrics, run.path.name))
    written.append(plot_entropy(out_dir / "entropy.png", metrics, out.attention_static.shape[-1], run.path.name))
    log_figures(run, config, written)
    return written


@torch.no_grad()
def decode(vae, latents: torch.Tensor) -> torch.Tensor:
    """Latents as the cache stores them (B, T, C, h, w) -> images in [0, 1] (B, T, 3, S, S)."""
    B, T = latents.shape[:2]
    pixels = vae.decode(latents.flatten(0, 1).float() / vae.config.scaling_factor).sample   # (B*T, 3, S, S)
    return pixels.add(1).div(2).clamp(0, 1).view(B, T, *pixels.shape[1:])


def patch_grid(encoder, num_tokens: int) -> int:
    """The side of the patch grid in an attention row of ``num_tokens`` columns (``num_prefix_tokens``, the
    encoder contract's optional extension, says how many CLS/register columns come first)."""
    from fovea.core.attention import token_layout

    prefix = getattr(encoder, "num_prefix_tokens", None)
    layout = token_layout(num_tokens, prefix) if isinstance(prefix, int) else None
    if layout is None:
        raise FoveaError(f"the encoder {type(encoder).__name__} does not say which of its {num_tokens} attention "
                         f"columns are patches (`num_prefix_tokens`); fovea viz cannot place them on the frame")
    return math.isqrt(layout[0])


def _image(frame: torch.Tensor):
    """(3, S, S) uint8 or float in [0, 1] -> (S, S, 3) for imshow."""
    frame = frame.float() / 255.0 if frame.dtype == torch.uint8 else frame.float()
    return frame.permute(1, 2, 0).clamp(0, 1).numpy()


def plot_attention(path: Path, frames: torch.Tensor, static: torch.Tensor, dynamic: torch.Tensor,
                   num_prefix_tokens: int, grid: int, clip: int) -> Path:
    """Frames (T, 3, S, S) and both queries' attention (T, K): three rows of T panels, one colour bar."""
    import matplotlib.pyplot as plt

    from fovea.core.attention import attention_entropy, patch_maps

    T, S = frames.shape[0], frames.shape[-1]
    maps = {"static": patch_maps(static, num_prefix_tokens, grid),
            "dynamic": patch_maps(dynamic, num_prefix_tokens, grid)}
    entropy = {"static": attention_entropy(static), "dynamic": attention_entropy(dynamic)}   # (T,) each
    # One scale for both rows, from the smallest to the largest patch weight: near-uniform attention
    # (early in training) still shows where it leans.
    vmin, vmax = min(float(m.min()) for m in maps.values()), max(float(m.max()) for m in maps.values())
    fig, axes = plt.subplots(3, T, figsize=clip_figure_size(T, 3), dpi=DPI, squeeze=False)
    image = None
    for t in range(T):
        axes[0, t].imshow(_image(frames[t]))
        axes[0, t].set_title(f"frame {t}", fontsize=9)
        for row, name in ((1, "static"), (2, "dynamic")):
            axes[row, t].imshow(_image(frames[t]), alpha=0.6)
            image = axes[row, t].imshow(maps[name][t].numpy(), cmap="inferno", alpha=0.65, vmin=vmin, vmax=vmax,
                                        extent=(-0.5, S - 0.5, S - 0.5, -0.5), interpolation="nearest")
            axes[row, t].set_title(f"H={float(entropy[name][t]):.2f}", fontsize=8)
    for row, label in enumerate(("frames", "static query", "dynamic query")):
        axes[row, 0].set_ylabel(label, fontsize=10)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.subplots_adjust(left=0.04, right=0.9, top=0.86, bottom=0.02, wspace=0.05, hspace=0.25)
    bar = fig.colorbar(image, cax=fig.add_axes((0.92, 0.05, 0.015, 0.55)))
    bar.set_label("attention weight on the patch", fontsize=9)
    fig.suptitle(f"Clip {clip}: where the queries look (attention over the {grid}x{grid} patches; "
                 f"H = entropy in nats, CLS/register/self weight not shown)", fontsize=11)
    return _save(fig, path)


def plot_predictions(path: Path, frames: torch.Tensor, reconstructed: torch.Tensor, coarse: torch.Tensor,
                     fine: torch.Tensor, clip: int) -> Path:
    """Frame t (T, 3, S, S), its VAE round trip, and its coarse and fine predictions from the frames before it."""
    import matplotlib.pyplot as plt

    T = frames.shape[0]
    fig, axes = plt.subplots(4, T, figsize=clip_figure_size(T, 4), dpi=DPI, squeeze=False)
    actual = frames.float() / 255.0                                             # (T, 3, S, S)
    for t in range(T):
        for row, images in enumerate((actual, reconstructed, coarse, fine)):
            axes[row, t].imshow(_image(images[t]))
            axes[row, t].set_xticks([])
            axes[row, t].set_yticks([])
        axes[0, t].set_title(f"t={t}", fontsize=9)
        for row, images in ((1, reconstructed), (2, coarse), (3, fine)):
            error = float((images[t] - actual[t]).pow(2).mean())
            axes[row, t].set_title(f"MSE {error:.4f}", fontsize=8)
    for row, label in enumerate(("actual frame t", "VAE round trip", "coarse (pass 1)", "fine (pass 2)")):
        axes[row, 0].set_ylabel(label, fontsize=10)
    fig.subplots_adjust(left=0.04, right=0.9, top=0.89, bottom=0.02, wspace=0.05, hspace=0.25)
    fig.suptitle(f"Clip {clip}: frame t and its predictions from frames < t, decoded through the VAE "
                 f"(MSE in pixels, [0, 1])", fontsize=11)
    return _save(fig, path)


def _steps(metrics: list[dict], key: str) -> tuple[list[int], list[float]]:
    """(steps, values) of the metrics lines where ``key`` is a number (skipped intervals, older runs: left out)."""
    rows = [(m["step"], m[key]) for m in metrics if isinstance(m.get(key), (int, float))]
    return [s for s, _ in rows], [v for _, v in rows]


def plot_losses(path: Path, metrics: list[dict], title: str) -> Path:
    """loss_fine and loss_coarse over steps (log y), loss_coarse / loss_fine on a second y axis."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=FIGURE_SIZE["losses"], dpi=DPI)
    for key, colour in (("loss_fine", "tab:blue"), ("loss_coarse", "tab:orange")):
        ax.plot(*_steps(metrics, key), color=colour, label=key, marker="." if len(metrics) < 30 else None)
    ax.set_yscale("log")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("MSE on VAE latents (log scale)")
    ratio_ax = ax.twinx()
    ratio_ax.plot(*_steps(metrics, "ratio"), color="tab:green", linestyle="--", label="ratio coarse / fine")
    ratio_ax.axhline(1.0, color="grey", linewidth=0.8, linestyle=":")
    ratio_ax.set_ylabel("loss_coarse / loss_fine")
    lines = ax.get_lines() + ratio_ax.get_lines()[:1]
    ax.legend(lines, [line.get_label() for line in lines], loc="upper right")
    ax.grid(alpha=0.3)
    ax.set_title(f"Losses: {title}")
    fig.tight_layout()
    return _save(fig, path)


def plot_entropy(path: Path, metrics: list[dict], num_tokens: int, title: str) -> Path:
    """Attention entropy (left) and peak weight (right) of both queries over steps, with their uniform values."""
    import matplotlib.pyplot as plt

    from fovea.core.attention import max_entropy

    fig, (left, right) = plt.subplots(1, 2, figsize=FIGURE_SIZE["entropy"], dpi=DPI)
    for ax, stat, uniform, label in ((left, "entropy", max_entropy(num_tokens), "log K"),
                                     (right, "peak", 1.0 / num_tokens, "1 / K")):
        for query, colour in (("static", "tab:purple"), ("dynamic", "tab:red")):
            ax.plot(*_steps(metrics, f"{stat}_{query}"), color=colour, label=f"{query} query",
                    marker="." if len(metrics) < 30 else None)
        ax.axhline(uniform, color="grey", linestyle="--", label=f"uniform: {label} = {uniform:.4g}")
        ax.ticklabel_format(axis="y", useOffset=False)
        ax.set_xlabel("optimizer step")
        ax.legend(loc="best", fontsize=9)
        ax.grid(alpha=0.3)
    left.set_ylabel("entropy (nats), mean over clips and frames")
    left.set_title("Attention entropy (lower = more focused)", fontsize=11)
    right.set_ylabel("largest attention weight, mean over clips and frames")
    right.set_title("Peak attention (higher = more focused)", fontsize=11)
    fig.suptitle(f"{title}: attention over K={num_tokens} tokens", fontsize=12)
    fig.tight_layout()
    return _save(fig, path)


def _save(fig, path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig.savefig(path, dpi=DPI)   # no bbox_inches="tight": the pixel size is the figure size
    plt.close(fig)
    return path


def log_figures(run: RunDir, config, paths: list[Path]) -> None:
    """The figures as images (``viz/<name>``) in the run's experiment trackers (``[run] trackers``), after its
    last step; a tracker that fails is a warning (the PNGs are written)."""
    from fovea.core.trackers import report_to_trackers

    report_to_trackers(run, config, images={f"{run.viz_dir.name}/{path.stem}": path for path in paths})
