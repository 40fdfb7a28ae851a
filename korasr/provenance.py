"""What made an artifact: the git commit of this checkout and the versions of the packages that matter."""

from __future__ import annotations

import contextlib
import platform
import shlex
import subprocess
import sys
from pathlib import Path

from korasr import __version__

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("torch", "nemo_toolkit", "lightning", "lhotse", "sentencepiece", "onnxruntime")


def git_commit() -> str:
    """HEAD of the korasr checkout, ``-dirty`` when it has uncommitted changes; ``unknown`` outside git."""
    try:
        out = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True, check=True)
        dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain"], capture_output=True, text=True)
        return out.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def versions() -> dict[str, str]:
    from importlib import metadata

    out = {"korasr": __version__, "python": platform.python_version()}
    for package in PACKAGES:
        with contextlib.suppress(metadata.PackageNotFoundError):
            out[package] = metadata.version(package)
    return out


def command_line() -> str:
    """The command as typed (program name without its directory)."""
    return shlex.join([Path(sys.argv[0]).name, *sys.argv[1:]])


def hardware() -> dict:
    """The machine a training ran on: CPU model and cores, and each CUDA device's name (torch imported by the caller)."""
    import os

    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace").splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    out: dict = {"cpu": cpu, "cpu_cores": os.cpu_count()}
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        out["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return out
