"""Extract ONNX Runtime's CUDA kernel table (default domain) from its published OperatorKernels.md.

    python tools/extract_cuda_kernels.py OperatorKernels.md --commit SHA [-o tests/data/cuda_kernels.json]

ONNX Runtime generates ``docs/OperatorKernels.md`` from its registered kernels
(``tools/python/gen_opkernel_doc.py``) and keeps it in the repository. Get a local copy of the file at
the commit you want, e.g. a release tag or ``main``::

    curl -L -o OperatorKernels.md \\
        https://raw.githubusercontent.com/microsoft/onnxruntime/<commit-or-tag>/docs/OperatorKernels.md

(or ``git show <commit>:docs/OperatorKernels.md`` in a clone), and pass the commit with ``--commit`` so
the JSON records where the table came from. Only the "Operators implemented by CUDAExecutionProvider"
section, domain ``ai.onnx``, is kept. The output (``tests/data/cuda_kernels.json``, read by
``tests/test_cuda_kernels.py``) is::

    {"source": {"repo", "path", "commit", "provider", "domain"},
     "ops": {"Abs": [{"since_version": 13, "until_version": null,
                      "types": {"T": ["tensor(bfloat16)", ...]}}, ...], ...}}

one entry per table row: ``N+`` is ``since N, until null`` (open-ended), ``N`` is ``[N, N]`` and
``[a, b]`` is ``[a, b]`` (inclusive). ``types`` maps each type-constraint name the kernel declares to
the types it allows; ONNX Runtime also names a fixed-type input by its formal-parameter name there
(Reshape's ``shape``, GatherND's ``indices``).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROVIDER = "CUDAExecutionProvider"
DOMAIN = "ai.onnx"

_VERSION = re.compile(r"^(?:(\d+)\+|(\d+)|\[(\d+), (\d+)\])$")
_CONSTRAINT = re.compile(r"^\*\*(.+?)\*\* = (.*)$")


def parse_version(text: str) -> tuple[int, int | None]:
    """``"13+"`` → (13, None), ``"12"`` → (12, 12), ``"[6, 12]"`` → (6, 12)."""
    match = _VERSION.match(text.strip())
    if not match:
        raise ValueError(f"unrecognised opset version {text!r}")
    open_from, single, low, high = match.groups()
    if open_from:
        return int(open_from), None
    if single:
        return int(single), int(single)
    return int(low), int(high)


def parse_types(text: str) -> dict[str, list[str]]:
    """``"**T** = tensor(a), tensor(b)<br/> **T1** = tensor(c)"`` → {"T": [...], "T1": [...]}."""
    constraints: dict[str, list[str]] = {}
    for part in text.split("<br/>"):
        part = part.strip()
        if not part:
            continue
        match = _CONSTRAINT.match(part)
        if not match:
            raise ValueError(f"unrecognised type constraint {part!r}")
        # types are "tensor(x)" or "seq(tensor(x))": split on the ", " between them
        constraints[match.group(1)] = [t.strip() for t in re.split(r",\s*(?=(?:tensor|seq|map|optional)\()",
                                                                   match.group(2)) if t.strip()]
    return constraints


def extract(markdown: str, provider: str = PROVIDER, domain: str = DOMAIN) -> dict[str, list[dict]]:
    """The rows of ``provider``'s section for ``domain``: op → [{since_version, until_version, types}]."""
    anchor = f'<a name="{provider.lower()}"/>'
    start = markdown.find(anchor)
    if start < 0:
        raise ValueError(f"no section for {provider}")
    end = markdown.find('<a name="', start + len(anchor))
    section = markdown[start:end if end >= 0 else len(markdown)]
    ops: dict[str, list[dict]] = {}
    current_domain = None
    op = None
    for line in section.splitlines():
        if not line.startswith("|"):
            continue
        domain_match = re.match(r"^\|\*\*Operator Domain:\*\* \*(.+?)\*\|", line)
        if domain_match:
            current_domain = domain_match.group(1)
            op = None
            continue
        if current_domain != domain:
            continue
        cells = line.split("|")
        # "|Name|params|version|types|"  or  "|||version|types|"  (5 cells between 6 bars)
        if len(cells) != 6 or not cells[3].strip():
            continue  # table header, separator, or the "| |" section end
        if cells[1]:
            op = cells[1].strip()
        if op is None:
            raise ValueError(f"continuation row before any op: {line!r}")
        since, until = parse_version(cells[3])
        ops.setdefault(op, []).append({"since_version": since, "until_version": until,
                                       "types": parse_types(cells[4])})
    if not ops:
        raise ValueError(f"no {domain} rows in the {provider} section")
    return ops


def dump(table: dict) -> str:
    """JSON with one line per kernel entry (compact, yet diffable)."""
    lines = ["{", f'  "source": {json.dumps(table["source"])},', '  "ops": {']
    names = sorted(table["ops"])
    for i, name in enumerate(names):
        entries = table["ops"][name]
        lines.append(f"    {json.dumps(name)}: [")
        for j, entry in enumerate(entries):
            lines.append("      " + json.dumps(entry) + ("," if j < len(entries) - 1 else ""))
        lines.append("    ]" + ("," if i < len(names) - 1 else ""))
    lines += ["  }", "}"]
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("markdown", type=Path, help="a local copy of onnxruntime's docs/OperatorKernels.md")
    parser.add_argument("--commit", required=True, help="the onnxruntime commit the file was taken from")
    parser.add_argument("--repo", default="microsoft/onnxruntime")
    parser.add_argument("--note", default=None, help="free text recorded in source.note")
    parser.add_argument("-o", "--output", type=Path, default=ROOT / "tests" / "data" / "cuda_kernels.json")
    args = parser.parse_args(argv)
    ops = extract(args.markdown.read_text(encoding="utf-8"))
    source = {"repo": args.repo, "path": "docs/OperatorKernels.md", "commit": args.commit,
              "provider": PROVIDER, "domain": DOMAIN}
    if args.note:
        source["note"] = args.note
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(dump({"source": source, "ops": ops}), encoding="utf-8")
    print(f"{args.output}: {len(ops)} ops, {sum(map(len, ops.values()))} kernel entries", file=sys.stderr)


if __name__ == "__main__":
    main()
