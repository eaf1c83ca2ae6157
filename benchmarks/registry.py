"""Push / pull times against the test Hub stand-in and a local registry, and what verification costs.

    .venv/bin/python benchmarks/registry.py [--variant poolformer_s12] [--repeat 3]

Prints one table row per registry: the model's size, push seconds, a cold pull (empty cache),
a warm pull (cached blobs, verified again), and, for the warm pull, the seconds spent hashing every
file and checking that config.json builds (meta device). Medians of ``--repeat`` runs. The models
are untrained PoolFormers (``pretrained=False``): only their size matters here.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", default="poolformer_s12")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    import json

    from hub_server import HubServer, Token

    from clotclf_core.models.build import build_model
    from clotclf_core.models.config import ModelConfig
    from clotclf_core.models.saved import save_model
    from clotclf_registry import api, verify
    from clotclf_registry.settings import load_settings

    tmp = Path(tempfile.mkdtemp(prefix="clotclf-bench-"))
    try:
        run = save_model(build_model(ModelConfig(backbone="poolformer", backbone_options={"variant": args.variant})), tmp / "run")
        (run / "metrics.json").write_text(json.dumps({"patient": {"weighted_log_loss": 0.69}}))
        size = sum(p.stat().st_size for p in run.iterdir() if p.is_file()) / 2**20
        hub = HubServer({"tok": Token("bench", write=True, orgs=("lab",))}).start()
        (tmp / "store").mkdir()
        rows = []
        for kind in ("hub stand-in", "local"):
            push_s, cold_s, warm_s, hash_s, build_s = [], [], [], [], []
            for i in range(args.repeat):
                cache = tmp / f"cache-{kind[:3]}-{i}"
                settings = (load_settings(registry="hub", endpoint=hub.url, namespace="lab", cache_dir=str(cache)) if kind != "local"
                            else load_settings(registry=(tmp / "store").as_uri(), namespace="lab", cache_dir=str(cache)))
                token = "tok" if kind != "local" else None
                t = time.perf_counter()
                api.push(run, f"m{i}", settings=settings, token=token, quiet=True)
                push_s.append(time.perf_counter() - t)
                t = time.perf_counter()
                api.pull(f"m{i}", settings=settings, token=token, quiet=True)
                cold_s.append(time.perf_counter() - t)
                timings = {"check_files": 0.0, "check_config_builds": 0.0}
                originals = {name: getattr(verify, name) for name in timings}

                def timed(name):
                    def call(*a, **k):
                        t0 = time.perf_counter()
                        try:
                            return originals[name](*a, **k)
                        finally:
                            timings[name] += time.perf_counter() - t0
                    return call

                for name in timings:
                    setattr(verify, name, timed(name))
                try:
                    t = time.perf_counter()
                    api.pull(f"m{i}", settings=settings, token=token, quiet=True)
                    warm_s.append(time.perf_counter() - t)
                finally:
                    for name, fn in originals.items():
                        setattr(verify, name, fn)
                hash_s.append(timings["check_files"])
                build_s.append(timings["check_config_builds"])
            med = statistics.median
            rows.append((kind, size, med(push_s), med(cold_s), med(warm_s), med(hash_s), med(build_s)))
        hub.stop()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"model: {args.variant} + linear head, {rows[0][1]:.1f} MiB; medians of {args.repeat} runs; "
          f"{os.cpu_count()} CPUs; synthetic (untrained) weights")
    print(f"{'registry':<14} {'push s':>7} {'pull cold s':>12} {'pull warm s':>12} {'hash every file s':>18} {'config builds s':>16}")
    for kind, _, push, cold, warm, hashing, build in rows:
        print(f"{kind:<14} {push:>7.2f} {cold:>12.2f} {warm:>12.2f} {hashing:>18.2f} {build:>16.2f}")


if __name__ == "__main__":
    main()
