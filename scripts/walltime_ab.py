"""The default voice run (`prepare --tokenizer-from`, then `train --init-from`, as `bench --wall-time` runs them),
timed phase by phase under two versions of the code side by side: this checkout and an older one exported to a
folder (`git archive COMMIT | tar -x -C DIR`), alternating which goes first, seed by seed, so that a slow spell of a
shared machine hits both. The warm compile cache of each version is its own.

    python scripts/walltime_ab.py corpora/officer_k.txt --init-from MODEL --base DIR [--seeds 1,2] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parents[1]
ONE_RUN = ("import json, sys; from bladegpt.walltime import voice_run; "
           "print(json.dumps(voice_run(sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4])))")


def one_run(code: Path, text: str, source: str, seed: int, inductor_dir: str) -> dict:
    """voice_run with `code`'s bladegpt first on the path, in a fresh interpreter."""
    env = {**os.environ, "PYTHONPATH": str(code)}
    out = subprocess.run([sys.executable, "-c", ONE_RUN, text, source, str(seed), inductor_dir], env=env,
                         cwd=tempfile.gettempdir(), check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("text")
    parser.add_argument("--init-from", required=True)
    parser.add_argument("--base", type=Path, required=True, help="the older code, exported to a folder")
    parser.add_argument("--seeds", default="1,2")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    text = str(Path(args.text).resolve())
    versions = {"before": args.base.resolve(), "after": HERE}
    rows = []
    with tempfile.TemporaryDirectory() as caches:
        for i, seed in enumerate(int(s) for s in args.seeds.split(",")):
            order = list(versions) if i % 2 == 0 else list(reversed(versions))
            for name in order:
                load = os.getloadavg()[0]
                run = one_run(versions[name], text, args.init_from, seed, os.path.join(caches, name))
                rows.append({"version": name, "seed": seed, "load_before": round(load, 2),
                             "load_after": round(os.getloadavg()[0], 2), "at": time.strftime("%H:%M:%S"), **run})
                print(json.dumps({k: rows[-1][k] for k in ("version", "seed", "wall_s", "steps", "best_val_bpb",
                                                           "load_before", "load_after")}), flush=True)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
