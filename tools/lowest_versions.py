"""Run the test suite with the lowest versions ``pyproject.toml`` allows, installed together.

Each ``name>=X`` among the runtime dependencies, the chosen ONNX Runtime extra (``--extra``, default
cpu) and ``onnxscript`` (the tests' exporter) becomes ``name==X``; the rest of ``[dev]`` is left to
pip. A fresh virtual environment in ``--venv`` (default: a temporary directory) gets them and this
tree, then ``python -m pytest -q`` runs in it; the versions installed are printed first.

Usage::

    python tools/lowest_versions.py
    python tools/lowest_versions.py --venv /tmp/lowest -- -k runtime
"""

from __future__ import annotations

import argparse
import pathlib
import re
import subprocess
import sys
import tempfile
import tomllib

ROOT = pathlib.Path(__file__).resolve().parent.parent
LOWEST = re.compile(r"^([A-Za-z0-9_.\-]+(?:\[[^\]]*\])?)>=([^,;\s]+)$")


def lowest_pins(extra: str) -> list[str]:
    """``name==X`` for every ``name>=X`` of the dependencies, ``extra`` and onnxscript."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    wanted = project["dependencies"] + extras[extra] + [d for d in extras["dev"] if d.startswith("onnxscript")]
    pins = []
    for requirement in wanted:
        match = LOWEST.match(requirement.replace(" ", ""))
        if not match:
            sys.exit(f"lowest_versions.py: {requirement!r} in pyproject.toml is not of the form name>=version")
        pins.append(f"{match[1]}=={match[2]}")
    return pins


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--extra", choices=["cpu", "gpu"], default="cpu")
    parser.add_argument("--venv", type=pathlib.Path, help="where to create the environment")
    parser.add_argument("pytest_args", nargs="*", help="passed to pytest (after --)")
    args = parser.parse_args()

    venv = args.venv or pathlib.Path(tempfile.mkdtemp(prefix="rlrp-lowest-"))
    python = venv / "bin" / "python"
    pins = lowest_pins(args.extra)
    print("pins:", " ".join(pins), flush=True)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run([str(python), "-m", "pip", "install", "-q", *pins, "-e", f"{ROOT}[dev]"], check=True)
    listed = subprocess.run([str(python), "-m", "pip", "list"], capture_output=True, text=True, check=True)
    names = {re.sub(r"\[.*", "", p.split("==")[0]).lower().replace("_", "-") for p in pins}
    for line in listed.stdout.splitlines():
        if line.split(" ")[0].lower().replace("_", "-") in names:
            print("installed:", " ".join(line.split()), flush=True)
    return subprocess.run([str(python), "-m", "pytest", "-q", *args.pytest_args], cwd=ROOT).returncode


if __name__ == "__main__":
    sys.exit(main())
