"""Print the pinned requirements that every lock file given holds identically (same version,
marker and hashes), without their comments.

The train and serve images install this first, in one layer made by the same two instructions
in both Dockerfiles: the builder then makes that layer once (torch and its CUDA wheels, several
GB) and a node's runtime stores it once for both images. Each image then installs its own lock,
which adds only what is not already there.

    python common_requirements.py requirements/train.txt requirements/serve.txt > common.txt
"""

from __future__ import annotations

import sys
from pathlib import Path


def requirement_blocks(text: str) -> set[str]:
    """One string per pinned requirement: its line and its hash lines, comments dropped."""
    blocks: list[list[str]] = []
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].rstrip() if not raw.lstrip().startswith("--hash") else raw.rstrip()
        if not line.strip():
            continue
        if not raw[0].isspace():
            blocks.append([line])
        elif blocks:
            blocks[-1].append(line)
    return {"\n".join(block) for block in blocks}


def main(paths: list[str]) -> None:
    common = set.intersection(*(requirement_blocks(Path(path).read_text()) for path in paths))
    for block in sorted(common):
        print(block.rstrip(" \\"))


if __name__ == "__main__":
    main(sys.argv[1:])
