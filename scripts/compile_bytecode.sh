#!/usr/bin/env bash
# Compiles a venv's site-packages to bytecode once, at install: `scripts/compile_bytecode.sh VENV`.
# uv installs no .pyc files, and where PYTHONDONTWRITEBYTECODE is set (it is on our CI machines) Python
# never writes them either, so every new process (each Ray worker, job driver, vLLM engine process)
# compiled torch, transformers, Ray and vLLM from source again: about twice the CPU of an import
# (docs/benchmarks.md, "CI"). Python reads the .pyc files whatever PYTHONDONTWRITEBYTECODE says.
# Files that do not compile (test data in some packages) keep loading from source; compileall names them in the log.
set -uo pipefail
venv=$1
log=${2:-/dev/null}
site=$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
"$venv/bin/python" -m compileall -q -j 0 "$site" >>"$log" 2>&1 \
  || echo "[install] some files under $site did not compile to bytecode (see $log); they load from source" >>"$log"
exit 0
