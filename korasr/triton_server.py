"""Triton Inference Server from PyPI's ``nvidia-pytriton`` wheel, serving a plain model repository.

The wheel bundles a ``tritonserver`` binary (2.51) with the python backend only, and pins ``numpy<2``: ``make
triton`` installs it into a venv of its own (``.venv-triton``), never the project's. This module, standard library
only, turns that venv into a command line: the binary, a backend folder with the python backend's stub for the venv's
Python, the libraries the binary and the stub link, and the venv's site-packages for the models' own imports
(onnxruntime, numpy). A team with Triton's container runs ``tritonserver --model-repository=...`` there instead
(docs/export.md).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path

DEFAULT_VENV = Path(__file__).resolve().parent.parent / ".venv-triton"


def _site_packages(venv: Path) -> Path:
    found = sorted(venv.glob("lib/python3.*/site-packages/pytriton"))
    if not found:
        raise FileNotFoundError(f"{venv}: no nvidia-pytriton in this venv (make triton installs it)")
    return found[-1].parent


def _python_home(venv: Path) -> Path:
    """The prefix of the Python the venv was made from (pyvenv.cfg's ``home`` is its bin/)."""
    for line in (venv / "pyvenv.cfg").read_text(encoding="utf-8").splitlines():
        key, _, value = line.partition("=")
        if key.strip() == "home":
            return Path(value.strip()).parent
    raise ValueError(f"{venv / 'pyvenv.cfg'}: no home = line")


def backends(venv: Path) -> Path:
    """A backend folder for ``--backend-directory``: the wheel's python backend with the stub built for the venv's
    Python beside it (Triton looks for ``triton_python_backend_stub`` there). Made once, inside the venv."""
    site = _site_packages(venv)
    version = site.parent.name.removeprefix("python")  # 3.11
    stub = site / "pytriton" / "tritonserver" / "python_backend_stubs" / version / "triton_python_backend_stub"
    if not stub.is_file():
        raise FileNotFoundError(f"{stub}: the wheel has no python backend stub for Python {version}")
    out = venv / "korasr-triton-backends"
    if not (out / "python" / stub.name).is_file():
        tmp = out.with_name(out.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(site / "pytriton" / "tritonserver" / "backends", tmp)
        shutil.copy2(stub, tmp / "python" / stub.name)
        shutil.rmtree(out, ignore_errors=True)
        os.replace(tmp, out)
    return out


def command(
    repository: str | os.PathLike[str],
    *,
    venv: str | os.PathLike[str] = DEFAULT_VENV,
    host: str = "127.0.0.1",
    http_port: int = 8000,
    grpc_port: int = 8001,
    metrics_port: int = 8002,
    extra: tuple[str, ...] = (),
) -> tuple[list[str], dict[str, str]]:
    """The ``tritonserver`` argv and environment that serve ``repository`` on ``host``."""
    venv = Path(venv).resolve()
    repo = Path(repository).resolve()
    if not repo.is_dir():
        raise FileNotFoundError(f"{repo}: no such model repository")
    site = _site_packages(venv)
    binary = site / "pytriton" / "tritonserver" / "bin" / "tritonserver"
    env = dict(os.environ)
    # the binary's own libraries, then the Python the stub embeds (its libpython first: Debian's 3.11 differs)
    libs = [str(site / "nvidia_pytriton.libs"), str(_python_home(venv) / "lib")]
    env["LD_LIBRARY_PATH"] = ":".join([*libs, *filter(None, [env.get("LD_LIBRARY_PATH")])])
    env["PYTHONPATH"] = str(site)  # what the models import (onnxruntime, numpy<2) comes from the venv
    argv = [
        str(binary),
        f"--model-repository={repo}",
        f"--backend-directory={backends(venv)}",
        f"--http-address={host}",
        f"--http-port={http_port}",
        f"--grpc-address={host}",
        f"--grpc-port={grpc_port}",
        f"--metrics-address={host}",
        f"--metrics-port={metrics_port}",
        "--allow-metrics=true",
        "--allow-gpu-metrics=false",
        "--exit-on-error=true",
        "--strict-readiness=true",
        *extra,
    ]
    return argv, env


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m korasr.triton_server",
        description="serve a Triton model repository with the tritonserver of make triton's venv, in the foreground "
        "(this process becomes tritonserver: SIGTERM stops it)",
    )
    p.add_argument("--repository", required=True, help="a model repository (korasr export writes EXPORT/triton)")
    p.add_argument("--venv", default=str(DEFAULT_VENV), help="the venv make triton made (default: %(default)s)")
    p.add_argument("--host", default="127.0.0.1", help="address of all three endpoints (default: loopback)")
    p.add_argument("--http-port", type=int, default=8000)
    p.add_argument("--grpc-port", type=int, default=8001)
    p.add_argument("--metrics-port", type=int, default=8002)
    args, extra = p.parse_known_args(argv)
    for name in ("http_port", "grpc_port", "metrics_port"):
        if not 1 <= getattr(args, name) <= 65535:
            p.error(f"--{name.replace('_', '-')} must be a port, 1-65535")
    if any(not e.startswith("--") for e in extra):
        p.error(f"only tritonserver's own --options may follow: {extra}")
    try:
        cmd, env = command(args.repository, venv=args.venv, host=args.host, http_port=args.http_port,
                           grpc_port=args.grpc_port, metrics_port=args.metrics_port, extra=tuple(extra))  # fmt: skip
    except (FileNotFoundError, ValueError) as e:
        print(f"korasr: {e}", file=sys.stderr)
        return 2
    print(" ".join(cmd), file=sys.stderr, flush=True)
    os.execve(cmd[0], cmd, env)  # the server in this process's place: signals reach it, its exit code is ours


if __name__ == "__main__":
    sys.exit(main())
