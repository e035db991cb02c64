"""A codec training's record: the step log (CSV, aggregated) and validation over steps (CSV + PNG).

Both survive interruption with the checkpoint they belong to. The step log keeps one row per `every` steps
(means over the window), appended to log.csv at each checkpoint; the open window's sums ride in ckpt.json, and
rows past the checkpoint (written just before a kill) are cut on resume, so an interrupted run's log reads as an
uninterrupted one's. Validation runs on a copy of the model (the training's weights, layout and RNG are left
untouched, so it cannot change the run): the real v2 coder's bytes with tables fitted on training photos, as an
export fits them, and PSNR / MS-SSIM of the decoded pixels (latentstore.eval.validation.measure_codecs).
"""
from __future__ import annotations

import copy
import csv
import math
import os
import textwrap
import time

import numpy as np
import torch

LOG_KEYS = ("loss", "mse255", "H_soft", "H_hard", "bpp_est")  # per-step values averaged over a window


def keep_rows(path: str, keep) -> None:
    """Rewrite a CSV keeping the header and the rows `keep(index, row)` accepts (nothing to do if it is missing)."""
    if not os.path.exists(path):
        return
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
        fields = list(rows[0]) if rows else None
    kept = [r for i, r in enumerate(rows) if keep(i, r)]
    if fields and len(kept) != len(rows):
        tmp = path + ".tmp"
        with open(tmp, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=fields)
            w.writeheader()
            w.writerows(kept)
        os.replace(tmp, path)


def append_rows(path: str, rows: list[dict]) -> None:
    """Append rows to a CSV; a row with a column the file lacks rewrites it with that column (older rows empty)."""
    if not rows:
        return
    new = not os.path.exists(path)
    fields = list(rows[0])
    if not new:
        with open(path, newline="") as f:
            have = next(csv.reader(f), [])
        if have and set(fields) - set(have):
            with open(path, newline="") as f:
                old = list(csv.DictReader(f))
            fields = have + [k for k in fields if k not in have]
            tmp = f"{path}.tmp{os.getpid()}"
            with open(tmp, "w", newline="") as f:
                w = csv.DictWriter(f, fieldnames=fields)
                w.writeheader()
                w.writerows(old)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        elif have:
            fields = have
    with open(path, "a", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields, restval="")
        if new:
            w.writeheader()
        w.writerows(rows)
        f.flush()
        os.fsync(f.fileno())


class StepLog:
    """Per-window means of the training values, flushed to `path` at checkpoints."""

    def __init__(self, path: str, every: int, state: dict | None = None):
        self.path, self.every = path, max(1, every)
        state = state or {}
        self.sums = state.get("sums") or {k: 0.0 for k in LOG_KEYS}
        self.n = state.get("n", 0)
        self.rows = state.get("rows", 0)  # rows in the CSV that belong to the checkpoint
        self.pending: list[dict] = []
        self.last: dict = {}
        keep_rows(path, lambda i, _: i < self.rows)

    def add(self, step: int, values: dict, extra: dict) -> None:
        for k in LOG_KEYS:
            self.sums[k] += values[k]
        self.n += 1
        if step % self.every == 0:
            row = {"step": step, **{k: self.sums[k] / self.n for k in LOG_KEYS}}
            row["psnr"] = 10 * math.log10(255.0 ** 2 / max(row["mse255"], 1e-10))
            self.pending.append({**row, **extra})
            self.last = self.pending[-1]
            self.sums, self.n = {k: 0.0 for k in LOG_KEYS}, 0

    def flush(self) -> dict:
        """Append the finished windows; returns the state ckpt.json keeps."""
        append_rows(self.path, self.pending)
        self.rows += len(self.pending)
        self.pending = []
        return {"sums": self.sums, "n": self.n, "rows": self.rows}


def table_photos(n: int = 12, side: int = 512) -> list[torch.Tensor]:
    """The first n training photos at `side`: what validation fits the v2 tables on (never validation photos)."""
    from latentstore.data.photos import available_photos, resize_shorter
    return [torch.from_numpy(np.array(resize_shorter(p.load(), side))).permute(2, 0, 1).contiguous()
            for p in available_photos("train")[:n]]


def validation_photos(n: int = 6, side: int = 512) -> list[tuple[str, np.ndarray]]:
    """A fixed subset of the validation photos (every other one by name), shorter side `side` (eval rd's scale)."""
    from latentstore.data.photos import available_photos, resize_shorter
    val = sorted(available_photos("val"), key=lambda p: p.name)
    return [(p.name, resize_shorter(p.load(), side)) for p in val[::2][:n]]


class Validator:
    """Validation every `every_cpu_minutes` of training CPU time; rows in out_dir/val.csv (and results_dir)."""

    def __init__(self, out_dir: str, name: str, every_cpu_minutes: float, results_dir: str = "",
                 next_cpu: float | None = None, step: int = 0):
        self.every = 60.0 * every_cpu_minutes
        self.next_cpu = self.every if next_cpu is None else next_cpu
        self.paths = [os.path.join(out_dir, "val.csv")]
        if results_dir:
            os.makedirs(results_dir, exist_ok=True)
            self.paths.append(os.path.join(results_dir, f"{name}-val.csv"))
        self.name = name
        self._photos = self._tables = None
        for p in self.paths:  # rows a killed run wrote after its last checkpoint are not the resumed run's
            keep_rows(p, lambda _, r: int(r["step"]) <= step)

    def record_changes(self, old_config: dict, config: dict, step: int, train_cpu_hours: float) -> None:
        """A resume at `step` with another recipe, precision or device: recorded beside the validation CSVs."""
        record_events([events_path(p) for p in self.paths], step, train_cpu_hours, config_changes(old_config, config))

    def due(self, train_cpu: float) -> bool:
        return self.every > 0 and train_cpu >= self.next_cpu

    def run(self, model, step: int, train_cpu: float, wall: float, weights: str = "raw") -> dict:
        from latentstore.eval.validation import measure_codecs
        from latentstore_train.codec_data import symbol_counts
        t0 = time.process_time()
        if self._photos is None:
            self._photos, self._tables = validation_photos(), table_photos()
        codec = copy.deepcopy(model).float().to(memory_format=torch.contiguous_format).cpu().eval()
        hist, floor, ctx, ctx3 = symbol_counts(codec, self._tables, "cpu")
        codec.update(hist, floor, ctx, ctx3)
        # v2's bytes, as since the programme began: the series stays one curve (v3 is eval rd's default coder)
        r = measure_codecs([codec], device="cpu", photos=self._photos, coder="latentstore.rans",
                           also=("latentstore.rans3",))[0]
        marg = hist / hist.sum(1, keepdims=True)
        bits = -(marg * np.log2(np.where(marg > 0, marg, 1))).sum()  # marginal entropy, summed over channels
        row = {"step": step, "cpu_hours": round(train_cpu / 3600, 4), "wall_hours": round(wall / 3600, 4),
               "bpp": round(r["bpp"], 5), "psnr": round(r["psnr"], 3), "msssim": round(r["msssim"], 5),
               "bpp_marginal": round(float(bits) / 64.0, 5), "val_cpu_seconds": round(time.process_time() - t0, 2),
               "bpp_v3": round(r["bpp_by_coder"]["latentstore.rans3"], 5),  # added 2026-12-07: the delivered rate
               "weights": weights}  # added 2026-12-07: "raw", or the EMA ("ema 0.999") that an export installs
        for p in self.paths:
            append_rows(p, [row])
        self.next_cpu = train_cpu + self.every
        try:
            plot_val(self.paths[-1], self.paths[-1][: -len(".csv")] + ".png", self.name)
        except Exception as e:  # a plot must never kill a training run
            print(f"plot skipped: {e}")
        return row


# the resolved config's fields that change what training computes: a resume with any of them changed is an event
EVENT_KEYS = ("steps", "batch_size", "crop", "lr", "lr_schedule", "warmup", "sigma_final", "photo_side", "min_scale",
              "distortion", "msssim_weight", "mse_weight", "extra_photos", "n_photos", "rate_scale",
              "freeze_centres_at", "ema_decay", "sigma_hold_from", "cooldown_from", "cooldown_steps",
              "precision_resolved", "device_resolved")


def config_changes(old: dict, new: dict) -> list[str]:
    """'key old -> new' for every EVENT_KEYS field that differs between a checkpoint's config and the resumed one."""
    return [f"{k} {old[k]} -> {new[k]}" for k in EVENT_KEYS if k in old and k in new and old[k] != new[k]]


def record_events(paths: list[str], step: int, cpu_hours: float, changes: list[str]) -> None:
    """The run's changes of recipe, precision or device, at the step they took effect, in each events CSV. Rows
    past `step` are a killed run's (the resumed run is at `step`), and a change already recorded at `step` (a
    resume killed before its next checkpoint) is not recorded twice."""
    for p in paths:
        keep_rows(p, lambda _, r: int(r["step"]) <= step)
        have = {r["event"] for r in read_events(p) if int(r["step"]) == step}
        append_rows(p, [{"step": step, "cpu_hours": round(cpu_hours, 4), "event": c} for c in changes
                        if c not in have])


def read_events(csv_path: str) -> list[dict]:
    if not os.path.exists(csv_path):
        return []
    with open(csv_path, newline="") as f:
        return list(csv.DictReader(f))


def plot_csv(csv_path: str, png_path: str, x_key: str, xlabel: str, panels, title: str = "", style: str = "-",
             events: list[dict] | None = None) -> None:
    """One panel per (column, title) of a CSV against column `x_key`; a panel's column may be a tuple of columns
    (drawn together with a legend; empty cells, e.g. a column added later, are left out)."""
    if not os.path.exists(csv_path):  # no window of the log has closed yet
        return
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    with open(csv_path, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        return
    x = [float(r[x_key]) for r in rows]
    marks = merge_events(events or [], x_key)
    legend = [line for i, (_, text) in enumerate(marks, 1)
              for line in textwrap.wrap(f"{i}: {text}", 150, subsequent_indent="   ")]
    height = 3.5 + 0.17 * len(legend)  # inches: the panels keep theirs, the legend lines go under them
    fig, ax = plt.subplots(1, len(panels), figsize=(13, height))
    for a, (key, label) in zip(ax, panels):
        keys = key if isinstance(key, tuple) else (key,)
        for k in keys:
            pts = [(xi, float(r[k])) for xi, r in zip(x, rows) if r.get(k)]
            if pts:
                a.plot(*zip(*pts), style, ms=3, label=k)
        if len(keys) > 1:
            a.legend(fontsize=8)
        for i, (xe, _) in enumerate(marks, 1):  # numbered dotted lines, explained under the panels
            a.axvline(xe, color="grey", ls=":", lw=1)
            a.annotate(str(i), (xe, 1.0), xycoords=("data", "axes fraction"), fontsize=7, ha="center", va="bottom")
        a.set_title(label, pad=10 if marks else None)
        a.set_xlabel(xlabel)
        a.grid(alpha=0.3)
    if title:
        fig.suptitle(title.format(**rows[-1]))
    fig.tight_layout()
    if legend:
        fig.subplots_adjust(bottom=(0.6 + 0.17 * len(legend)) / height)
        fig.text(0.01, 0.1 / height, "\n".join(legend), fontsize=8, va="bottom", family="monospace")
    fig.savefig(png_path, dpi=90)
    plt.close(fig)


def merge_events(events: list[dict], x_key: str) -> list[tuple[float, str]]:
    """One mark per step: (x, 'step S: change; change')."""
    by_step: dict[int, list[str]] = {}
    for e in events:
        by_step.setdefault(int(e["step"]), []).append(e["event"])
    x_of = {int(e["step"]): float(e[x_key]) for e in events}
    return [(x_of[s], f"step {s:,}: " + "; ".join(by_step[s])) for s in sorted(by_step)]


def events_path(val_csv: str) -> str:
    """A validation CSV's events beside it: val.csv -> events.csv, NAME-val.csv -> NAME-events.csv."""
    head, tail = os.path.split(val_csv)
    return os.path.join(head, tail[: -len("val.csv")] + "events.csv")


def plot_val(csv_path: str, png_path: str, name: str) -> None:
    plot_csv(csv_path, png_path, "cpu_hours", "training CPU-hours",
             [(("bpp", "bpp_v3"), "delivered bpp (bpp: v2, bpp_v3)"), ("psnr", "PSNR (dB)"), ("msssim", "MS-SSIM")],
             name + ": validation (step {step}, {cpu_hours:.5} CPU-h)", "o-", read_events(events_path(csv_path)))


def plot_log(csv_path: str, png_path: str) -> None:
    """The step log's curves: loss, estimated bpp and PSNR on the training crops."""
    plot_csv(csv_path, png_path, "step", "step", [("loss", "loss"), ("bpp_est", "bpp (hard entropy estimate)"),
                                                  ("psnr", "PSNR (dB, train crops)")])
