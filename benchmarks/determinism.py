"""Same seed, same result: `clotclf train` with 0, 1 and 2 loader workers, and a run SIGKILLed in
epoch 2 then resumed, compared bit for bit. Prints a table of weight digests for the closing note.

Each run is a real child process (`python -m clotclf_core.cli train`), a tiny CCT with dropout
0.2 (plus its attention dropout and drop-path), augmentation on, on a tiny synthetic TileSet.
The digest is :func:`clotclf_core.training.checkpoints.state_digest` of model.safetensors (names,
dtypes, shapes and bytes of every tensor); history (timing columns aside), metrics.json and the
prediction tables are compared too. The test suite runs the same check (tests/test_determinism.py).

Usage::

    .venv/bin/python benchmarks/determinism.py             # about a minute on 2 cores
    .venv/bin/python benchmarks/determinism.py --epochs 4
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

MODEL = {"variant": "cct_2_3x2_32", "img_size": 32, "num_layers": 1, "embed_dim": 32, "num_heads": 2, "dropout": 0.2}


def make_tiles(root: Path, n_patients: int = 12, per_slide: int = 8, size: int = 32) -> Path:
    """Random tiles whose colour follows the label (something to learn), one slide per patient."""
    from clotclf_core.tiling.writer import TileSetWriter

    rng = np.random.default_rng(0)
    writer = TileSetWriter(root, {"synthetic": True, "size": size}, size)
    for p in range(n_patients):
        label = ("CE", "LAA")[p % 2]
        pix = rng.integers(80, 160, (per_slide, size, size, 3)).astype(np.int16)
        pix[..., p % 2] += 70
        rows = [{"patient_id": f"p{p:02d}", "center_id": f"c{p % 2}", "label": label, "x": i * size, "y": 0,
                 "size": size, "downsample": 1.0} for i in range(per_slide)]
        writer.add_slide(f"ps{p:02d}_0", np.clip(pix, 0, 255).astype(np.uint8), rows, {})
    return root


def command(tiles: Path, out: Path, epochs: int, *extra: str) -> list[str]:
    opts = [a for k, v in MODEL.items() for a in ("--backbone-opt", f"{k}={v}")]
    return [sys.executable, "-m", "clotclf_core.cli", "train", "--tiles", str(tiles), "--out", str(out),
            "--backbone", "cct", *opts, "--epochs", str(epochs), "--batch-size", "8", "--folds", "2", "--lr", "0.002",
            "--warmup-epochs", "0.5", "--patience", "0", "--test-fraction", "0.25", "--device", "cpu", "--quiet", *extra]


ENV = {**os.environ, "CLOTCLF_PROGRESS": "off", "OMP_NUM_THREADS": "1"}


def train(tiles: Path, out: Path, epochs: int, *extra: str) -> float:
    t0 = time.perf_counter()
    done = subprocess.run(command(tiles, out, epochs, *extra), capture_output=True, text=True, env=ENV)
    if done.returncode != 0:
        sys.exit(f"training failed:\n{done.stderr[-3000:]}")
    return time.perf_counter() - t0


def killed_then_resumed(tiles: Path, out: Path, epochs: int) -> tuple[int, float]:
    """SIGKILL the run (its whole process group: loader workers too) once epoch 1 is saved, then resume it."""
    t0 = time.perf_counter()
    child = subprocess.Popen(command(tiles, out, epochs), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             env=ENV, start_new_session=True)
    history = out / "history.csv"
    while not (history.is_file() and len(history.read_text().splitlines()) >= 2):
        if child.poll() is not None:
            sys.exit("the run ended before it could be killed")
        time.sleep(0.002)
    os.killpg(child.pid, signal.SIGKILL)
    child.wait()
    from clotclf_core.training.checkpoints import checkpoint_state

    saved = int(checkpoint_state(out / "checkpoints" / "last.safetensors")["epoch"]) + 1
    train(tiles, out, epochs, "--resume", "--workers", "1")
    return saved, time.perf_counter() - t0


def fingerprint(run: Path) -> dict[str, str]:
    import hashlib

    import pandas as pd

    from clotclf_core.plugin.weights import load_state
    from clotclf_core.training.checkpoints import state_digest

    history = pd.read_csv(run / "history.csv").drop(columns=["images_per_s", "seconds"]).to_csv(index=False)
    metrics = json.dumps(json.loads((run / "metrics.json").read_text()), sort_keys=True)
    preds = (run / "predictions_val.csv").read_text() + (run / "predictions_test.csv").read_text()
    sha = lambda text: hashlib.sha256(text.encode()).hexdigest()[:16]  # noqa: E731
    return {"weights": state_digest(load_state(run / "model.safetensors")), "history": sha(history),
            "metrics": sha(metrics), "predictions": sha(preds)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="clotclf-determinism-") as tmp:
        tiles = make_tiles(Path(tmp) / "tiles")
        for workers in (0, 1, 2):
            out = Path(tmp) / f"w{workers}"
            seconds = train(tiles, out, args.epochs, "--workers", str(workers))
            rows.append({"run": f"{workers} loader worker(s)", "seconds": seconds, **fingerprint(out)})
        out = Path(tmp) / "killed"
        saved, seconds = killed_then_resumed(tiles, out, args.epochs)
        rows.append({"run": f"2 workers, SIGKILL in epoch {saved + 1}, --resume with 1 worker", "seconds": seconds,
                     **fingerprint(out)})
    same = all(all(r[k] == rows[0][k] for k in ("weights", "history", "metrics", "predictions")) for r in rows)
    if args.json:
        print(json.dumps({"rows": rows, "bit_identical": same}, indent=2))
        return
    print("| run | weights sha256 (tensors) | history | metrics | predictions | s |")
    print("|---|---|---|---|---|---:|")
    for r in rows:
        print(f"| {r['run']} | `{r['weights'][:16]}…` | `{r['history']}` | `{r['metrics']}` | `{r['predictions']}` "
              f"| {r['seconds']:.0f} |")
    print(f"\nbit-identical: {'yes' if same else 'NO'}")
    sys.exit(0 if same else 1)


if __name__ == "__main__":
    main()
