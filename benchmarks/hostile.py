"""What a hostile input costs: time to the one error line, and peak memory, per case (issue 19).

Each case runs in a child process (so its peak RSS is its own) under a hard timeout, and prints:
the exit code, the seconds to the error line, the child's peak RSS, and the line itself.

- ``sine8192``: a pulled / loaded config asking CCT for ``positional_embedding=sine, img_size=8192``
  (a 2 GiB fixed table its weights say nothing about): ``check_buildable`` (a pull's check) and
  ``load_model`` (predict, evaluate);
- ``yaml-train`` / ``yaml-settings``: a ~400-byte YAML alias bomb as ``train --config`` and as the
  registry settings file (``pull``);
- ``hang`` / ``trickle``: ``pull`` from a Hub stand-in that accepts and never answers, or serves the
  weights at 1 byte / 2 s, with the test limits (``CLOTCLF_HUB_TIMEOUT=1``) and, with
  ``--defaults``, with the default limits (60 s each).

Usage::

    .venv/bin/python benchmarks/hostile.py              # ~1 min here
    .venv/bin/python benchmarks/hostile.py --defaults   # + two cases at the default limits (~2.5 min more)
    .venv/bin/python benchmarks/hostile.py --timeout 200   # the bound of each case ("timeout" when it runs out)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

TOKEN = "s3cr3t-benchmark-token-0123456789"


#: runs ARGV and reports its own peak memory (VmHWM: ru_maxrss would keep this process's size across exec)
_PEAK = """
import os, runpy, sys, atexit
def report():
    peak = next(line for line in open("/proc/self/status") if line.startswith("VmHWM:"))
    os.write(2, f"\\npeak_kib {peak.split()[1]}\\n".encode())
atexit.register(report)
sys.argv = sys.argv[1:]
runpy.run_module(sys.argv[0], run_name="__main__") if sys.argv[0] == "clotclf_core.cli" else exec(sys.argv[1])
"""


def child(args: list[str], env: dict[str, str], timeout: float) -> tuple[str, float, float, str]:
    """(exit code, seconds, peak RSS MiB, the error line) of ``python -m clotclf_core.cli ARGS`` or
    ``python -c CODE`` (``args``: ``["clotclf_core.cli", ...]`` or ``["-c", code]``)."""
    t0 = time.perf_counter()
    try:
        done = subprocess.run([sys.executable, "-c", _PEAK, *args], capture_output=True, text=True,
                              env={**os.environ, **env}, timeout=timeout)
        rc, text = str(done.returncode), (done.stderr + done.stdout).strip()
    except subprocess.TimeoutExpired:
        rc, text = "timeout", ""
    seconds = time.perf_counter() - t0
    lines = text.splitlines()
    peak = next((float(line.split()[1]) / 1024 for line in lines if line.startswith("peak_kib ")), float("nan"))
    said = [line for line in lines if line.startswith(("Error:", "_TooBig", "ModelLoadError"))] or [""]
    return rc, seconds, peak, said[-1][:160]


def sine_run(root: Path) -> Path:
    import torch

    from clotclf_core.models.build import build_model
    from clotclf_core.models.config import ModelConfig
    from clotclf_core.models.saved import save_model

    torch.manual_seed(0)
    model = build_model(ModelConfig(backbone="cct", input_size=32,
                                    backbone_options={"variant": "cct_2_3x2_32", "positional_embedding": "sine"}))
    run = save_model(model, root / "sine8192")
    cfg = json.loads((run / "config.json").read_text())
    cfg["model"]["backbone_options"]["img_size"] = 8192
    (run / "config.json").write_text(json.dumps(cfg))
    return run


def bomb(key: str) -> str:
    items = ['&a0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    items += [f"&a{i} [" + ",".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, 9)]
    return f"{key}: [{', '.join(items)}]\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--defaults", action="store_true", help="also time hang / trickle at the default limits (60 s)")
    parser.add_argument("--timeout", type=float, default=150, help="seconds each case may take")
    args = parser.parse_args()

    from hostile_hub import HostileHub
    from hub_server import Token
    from test_registry import make_run

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        clotclf = ["clotclf_core.cli"]
        sine = sine_run(root)
        for fn in ("check_buildable", "load_model"):
            code = (f"from clotclf_core.models.saved import {fn}\ntry:\n    {fn}({str(sine)!r})\nexcept Exception as exc:\n"
                    f"    print(type(exc).__name__, exc)")
            rows.append((f"sine8192 {fn}", *child(["-c", code], {}, args.timeout)))
        (root / "bomb-train.yaml").write_text(bomb("labels"))
        (root / "bomb-settings.yaml").write_text(bomb("endpoint"))
        env = {"XDG_CONFIG_HOME": str(root / "cfg"), "HF_HUB_OFFLINE": "1"}
        rows.append(("yaml-train", *child([*clotclf, "train", "--config", str(root / "bomb-train.yaml"), "--tiles",
                                            str(root / "none")], env, args.timeout)))
        rows.append(("yaml-settings", *child([*clotclf, "pull", "lab/x"], env | {"CLOTCLF_CONFIG": str(root / "bomb-settings.yaml")},
                                             args.timeout)))

        run = make_run(root / "run", seed=1)
        settings = [("test limits", {"CLOTCLF_HUB_TIMEOUT": "1"})] + ([("default limits", {})] if args.defaults else [])
        for label, limits in settings:
            for case, rule in (("hang", ("hang", "GET", r"^/api/models/")),
                               ("trickle", ("trickle", "GET", r"model\.safetensors$"))):
                hub = HostileHub({TOKEN: Token("alice", write=True, orgs=("lab",))}).start()
                hub.create_repo("lab/tiny")
                hub.raw_commit("lab/tiny", {n: (run / n).read_bytes() for n in ("model.safetensors", "config.json")}, keep=True)
                hub.misbehave(*rule, interval=2.0)
                env = {"HF_TOKEN": TOKEN, "HF_ENDPOINT": hub.url, "HF_HUB_OFFLINE": "0", "HF_HUB_DISABLE_TELEMETRY": "1",
                       "CLOTCLF_CACHE_DIR": str(root / f"cache-{case}-{label}"), "XDG_CONFIG_HOME": str(root / "cfg"), **limits}
                rows.append((f"{case} ({label})", *child([*clotclf, "pull", "lab/tiny", "--quiet"], env, args.timeout)))
                hub.stop()

    print(f"# {platform.node()}: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, Python "
          f"{platform.python_version()}")
    print(f"{'case':34s} {'exit':>7s} {'seconds':>8s} {'peak MiB':>9s}  line")
    for name, rc, seconds, rss, line in rows:
        print(f"{name:34s} {rc:>7s} {seconds:8.1f} {rss:9.0f}  {line}")


if __name__ == "__main__":
    main()
