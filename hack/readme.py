"""The README's two commands, read out of README.md and run as a new user would run them.

    python3 hack/readme.py show quickstart|tests   # print the command exactly as README.md has it
    python3 hack/readme.py check-quickstart        # CI: the quickstart command on a fresh copy

`check-quickstart` copies the working tree to a temporary folder (no .venv, no caches of ours),
runs the install part of the quickstart command there verbatim, so the virtualenv holds exactly
what that command installs, then runs its `alpaca run` part on a shrunk copy of
examples/quickstart/ (tests/support/quickstart.py: same kinds and fields, smaller numbers), asks
the chat server one question through the openai client and stops the pipeline with Ctrl-C.
A README edit that breaks the quickstart fails here. Standard library only: it runs before any
virtualenv exists.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SECTIONS = {"quickstart": "Quickstart", "tests": "Tests"}
RUN_PREFIX = ".venv/bin/alpaca run "
EXAMPLE = "examples/quickstart/"
READY = "serving until Ctrl-C"


def command(section: str, readme: str | None = None) -> str:
    """The first ```sh block under the `## <heading>` of README.md, as one line."""
    text = readme if readme is not None else (ROOT / "README.md").read_text()
    heading = SECTIONS[section]
    match = re.search(rf"^## {re.escape(heading)}\b.*?^```sh\n(.*?)^```", text, re.M | re.S)
    if not match:
        raise SystemExit(f"README.md: no ```sh block under '## {heading}'")
    lines = [line for line in match.group(1).splitlines() if line.strip() and not line.startswith("#")]
    if len(lines) != 1:
        raise SystemExit(f"README.md: the '## {heading}' block must be one command line, found {len(lines)}")
    return lines[0].strip()


def split_quickstart(line: str) -> tuple[str, str]:
    """(install part, run part): the run part is the last `&&` step, `.venv/bin/alpaca run ...`."""
    install, _, run = line.rpartition(" && ")
    if not install or not run.startswith(RUN_PREFIX) or EXAMPLE not in run:
        raise SystemExit(
            f"README.md quickstart: expected '<install> && {RUN_PREFIX}{EXAMPLE}', got: {line}"
        )
    return install, run


def copy_tree(target: Path) -> None:
    """The files git would commit (tracked and untracked, ignored ones left out)."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT, check=True, capture_output=True,
    ).stdout.decode().split("\0")
    for name in filter(None, listed):
        source = ROOT / name
        if source.is_file() or source.is_symlink():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target / name, follow_symlinks=False)


def step(message: str) -> None:
    print(f"\n== readme: {message}", flush=True)


def wait_for_ready(log: Path, process: subprocess.Popen, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while READY not in log.read_text(errors="replace"):
        if process.poll() is not None:
            raise SystemExit(f"alpaca run exited with {process.returncode}:\n{log.read_text()[-4000:]}")
        if time.monotonic() > deadline:
            os.killpg(process.pid, signal.SIGKILL)
            raise SystemExit(f"no '{READY}' after {timeout_s:.0f}s:\n{log.read_text()[-4000:]}")
        time.sleep(2)


CHAT = """
import json, sys, openai
config = json.load(open(sys.argv[1]))
client = openai.OpenAI(base_url=f"http://127.0.0.1:{config['port']}/v1", api_key="unused")
reply = client.chat.completions.create(
    model="quickstart-chat", max_tokens=24, temperature=0,
    messages=[{"role": "user", "content": "Give one tip for staying healthy."}],
)
answer = reply.choices[0].message.content
assert answer and reply.usage.completion_tokens > 0, reply
print(f"chat answer ({reply.usage.completion_tokens} tokens): {answer!r}")
"""

SHRINK = """
import sys
from pathlib import Path
sys.path.insert(0, "tests")
from support.quickstart import write_shrunk_quickstart
for path in write_shrunk_quickstart(Path(sys.argv[1])):
    print(path)
"""


def check_quickstart() -> None:
    install, run = split_quickstart(command("quickstart"))
    with tempfile.TemporaryDirectory(prefix="readme-quickstart-") as tmp:
        repo = Path(tmp) / "alpaca-operator"
        copy_tree(repo)
        env = {k: v for k, v in os.environ.items() if k not in {"VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME"}}
        times: dict[str, float] = {}

        step(f"install, verbatim from README.md, in a fresh copy ({repo}):\n   {install}")
        start = time.monotonic()
        subprocess.run(["bash", "-c", install], cwd=repo, env=env, check=True)
        times["install"] = time.monotonic() - start

        shrunk = Path(tmp) / "quickstart"
        subprocess.run([str(repo / ".venv/bin/python"), "-c", SHRINK, str(shrunk)], cwd=repo, check=True)
        pipeline = run.replace(EXAMPLE, f"{shrunk}/")
        step(f"pipeline, the README's run step on the shrunk manifests:\n   {pipeline}")
        log = Path(tmp) / "alpaca-run.log"
        start = time.monotonic()
        with log.open("wb") as out:
            process = subprocess.Popen(
                ["bash", "-c", f"exec {pipeline}"], cwd=repo, env=env, stdout=out,
                stderr=subprocess.STDOUT, start_new_session=True,
            )
        try:
            wait_for_ready(log, process, timeout_s=1800)
            times["pipeline until the chat server is up"] = time.monotonic() - start
            # The pipeline ends with the Evaluation: its closing line and the table show the win rate.
            if "win rate" not in log.read_text(errors="replace"):
                raise SystemExit(f"the quickstart's Evaluation reported no win rate:\n{log.read_text()[-4000:]}")
            config = repo / ".alpaca/state/configs/ModelServer-quickstart-chat.json"
            step(f"chat through the openai client ({json.loads(config.read_text())['port']})")
            subprocess.run([str(repo / ".venv/bin/python"), "-c", CHAT, str(config)], cwd=repo, check=True)
        finally:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGINT)
            code = process.wait(timeout=120)
            print(log.read_text(errors="replace")[-6000:])
        if code != 0:
            raise SystemExit(f"alpaca run ended with exit code {code} after Ctrl-C")
        step("wall times: " + ", ".join(f"{name} {seconds:.0f} s" for name, seconds in times.items()))


def main(argv: list[str]) -> None:
    if argv[:1] == ["show"] and len(argv) == 2 and argv[1] in SECTIONS:
        print(command(argv[1]))
    elif argv == ["check-quickstart"]:
        check_quickstart()
    else:
        raise SystemExit(__doc__)


if __name__ == "__main__":
    main(sys.argv[1:])
