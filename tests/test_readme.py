"""The README as a user reads it: every short command in it runs as written, its links and the docs'
links lead somewhere, the code it shows is the example's code, and it stays short.

Each `python train.py ...` line of a ```bash block runs through the real CLI from the repository
root (relative paths in it, such as PYTHONPATH=docs/examples/my_grok, mean what they say), with
`epochs=2 logger=none progress=false` and an output directory under tmp_path appended where the
command does not set them itself. Commands that cannot run that way are listed in SKIPPED, each with
the reason; a command that is neither runnable nor listed fails the test.
"""

import json
import math
import re
import shlex
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from tests.conftest import ROOT, run_cli

README = ROOT / "README.md"
DOCS = ROOT / "docs"
EXAMPLE = DOCS / "examples" / "my_grok"
MAX_README_LINES = 200

# Appended to each runnable command unless it sets the key itself: fast, quiet, no W&B.
FAST = {"epochs": "2", "logger": "none", "progress": "false"}

# Commands of the README that the test does not run, by prefix, with the reason.
SKIPPED = {
    "make train": "creates .venv and trains 30k epochs: `python train.py` below is the same run, made short",
    "make test": "the test suite itself, this file included",
    "python sweep.py phase_diagram_small": "12 jobs of up to 1500 epochs each; "
    "tests/test_sweeps.py runs sweep.py on small grids",
}

ENV_ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")
FENCE = re.compile(r"^```(\w*)\s*$")


# ----------------------------------------------------------------------------- reading markdown
def fenced_blocks(path: Path):
    """[(language, [lines])] of the fenced code blocks of a markdown file."""
    blocks, current, language = [], None, ""
    for line in path.read_text().splitlines():
        fence = FENCE.match(line.strip()) if line.startswith("```") else None
        if fence and current is None:
            current, language = [], fence.group(1)
        elif line.startswith("```") and current is not None:
            blocks.append((language, current))
            current = None
        elif current is not None:
            current.append(line)
    assert current is None, f"{path.name}: a fenced block is never closed"
    return blocks


def outside_fences(path: Path):
    """The lines of a markdown file outside its fenced blocks."""
    lines, inside = [], False
    for line in path.read_text().splitlines():
        if line.startswith("```"):
            inside = not inside
        elif not inside:
            lines.append(line)
    return lines


def prose(path: Path) -> str:
    """The markdown outside fenced blocks and inline code spans: where links are."""
    return "\n".join(re.sub(r"`[^`]*`", "``", line) for line in outside_fences(path))


def bash_commands(path: Path):
    """Every command line of the ```bash blocks, continuation lines joined, comment-only lines dropped."""
    commands = []
    for language, lines in fenced_blocks(path):
        if language != "bash":
            continue
        pending = ""
        for line in lines:
            if line.rstrip().endswith("\\"):
                pending += line.rstrip()[:-1] + " "
                continue
            command = (pending + line).strip()
            pending = ""
            if command and not command.startswith("#"):
                commands.append(command)
    return commands


def skip_reason(command: str):
    return next((reason for prefix, reason in SKIPPED.items() if command.startswith(prefix)), None)


def case_id(command: str) -> str:
    """A short test id: the command without its comment, leading environment and hydra.searchpath."""
    tokens = shlex.split(command, comments=True)
    env = []
    while tokens and ENV_ASSIGNMENT.match(tokens[0]):
        env.append(tokens.pop(0))
    words = [t for t in tokens if not t.startswith("hydra.searchpath=")]
    return " ".join(words) + "".join(f" [{e.split('/')[-1]}]" for e in env)


def readme_cases():
    cases = []
    for command in bash_commands(README):
        reason = skip_reason(command)
        marks = [pytest.mark.skip(reason=reason)] if reason else []
        cases.append(pytest.param(command, marks=marks, id=case_id(command)))
    return cases


# ----------------------------------------------------------------------------- running a command
def split_top_level(value: str):
    """'0.3,0.5' -> ['0.3', '0.5']; commas inside [...] or {...} do not split ('[a,b],[c]' -> 2)."""
    parts, depth, current = [], 0, ""
    for char in value:
        depth += char in "[{"
        depth -= char in "]}"
        if char == "," and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += char
    return parts + [current]


def sets_key(args, key: str) -> bool:
    return any(re.match(rf"^[+~]{{0,2}}{re.escape(key)}=", arg) for arg in args)


def n_jobs(args) -> int:
    """The number of jobs a multirun's command line sweeps: the product of its comma lists."""
    overrides = [arg for arg in args if "=" in arg and not arg.startswith(("-", "hydra."))]
    return math.prod(len(split_top_level(arg.split("=", 1)[1])) for arg in overrides)


def parse(command: str):
    """(environment, arguments after `python train.py`) of a README command line."""
    tokens = shlex.split(command, comments=True)
    env = {}
    while tokens and ENV_ASSIGNMENT.match(tokens[0]):
        name, value = tokens.pop(0).split("=", 1)
        env[name] = value
    assert tokens[:2] == ["python", "train.py"], (
        f"README command {command!r} is neither `python train.py ...` nor in SKIPPED: make it runnable "
        "as written, or add it to SKIPPED with the reason"
    )
    return env, tokens[2:]


@pytest.mark.parametrize("command", readme_cases())
def test_readme_command_runs_as_written(command, tmp_path):
    env, args = parse(command)
    if "--help" in args or "--cfg" in args or "-c" in args:
        result = run_cli(args, cwd=ROOT, env=env, timeout=120)
        assert result.returncode == 0, f"{command}\n{result.stdout}\n{result.stderr}"
        if "--help" in args:
            assert "python train.py" in result.stdout, "--help's header shows an example command"
        return

    multirun = "-m" in args or "--multirun" in args
    out = tmp_path / ("sweep" if multirun else "run")
    epochs = None if sets_key(args, "epochs") else int(FAST["epochs"])
    args = [
        *args,
        *(f"{key}={value}" for key, value in FAST.items() if not sets_key(args, key)),
        f"hydra.{'sweep' if multirun else 'run'}.dir={out}",
    ]
    result = run_cli(args, cwd=ROOT, env=env, timeout=600)
    assert result.returncode == 0, f"{command}\n{result.stdout}\n{result.stderr}"

    runs = sorted(p.parent for p in out.glob("*/summary.json")) if multirun else [out]
    if multirun:
        assert len(runs) == n_jobs(args), f"{command}: {len(runs)} jobs wrote a summary, expected {n_jobs(args)}"
    for run in runs:
        summary = json.loads((run / "summary.json").read_text())
        assert summary["status"] == "completed", f"{command}: {run}: {summary}"
        assert epochs is None or summary["epochs"] == epochs, f"{command}: {summary}"


def test_every_skipped_command_is_still_in_the_readme():
    commands = bash_commands(README)
    for prefix in SKIPPED:
        assert any(c.startswith(prefix) for c in commands), f"SKIPPED lists {prefix!r}, which the README no longer has"


# ----------------------------------------------------------------------------- length, links, make
def test_readme_is_at_most_200_lines():
    n = len(README.read_text().splitlines())
    assert n <= MAX_README_LINES, f"README.md has {n} lines; move the detail into docs/"


def github_anchors(path: Path) -> set:
    """The anchors GitHub gives a markdown file's headings: lower case, punctuation dropped, spaces
    to hyphens; a repeated heading gets -1, -2, ..."""
    anchors = set()
    for line in outside_fences(path):
        heading = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if heading:
            text = re.sub(r"[^\w\- ]", "", heading.group(1).lower()).replace(" ", "-")
            anchor, n = text, 0
            while anchor in anchors:
                n += 1
                anchor = f"{text}-{n}"
            anchors.add(anchor)
    return anchors


def markdown_files():
    return [README, *sorted(DOCS.rglob("*.md"))]


@pytest.mark.parametrize("path", markdown_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_points_at_an_existing_file_and_heading(path):
    links = re.findall(r"\[[^\]]*\]\(([^)\s]+)\)", prose(path))
    assert path != README or links, "the README links into docs/"
    for link in links:
        if re.match(r"^[a-z]+:", link):  # https:, mailto:
            continue
        target, _, fragment = link.partition("#")
        resolved = (path.parent / target).resolve() if target else path
        assert resolved.exists(), f"{path.relative_to(ROOT)}: link {link!r}: {resolved} does not exist"
        if fragment and resolved.suffix == ".md":
            assert fragment in github_anchors(resolved), (
                f"{path.relative_to(ROOT)}: link {link!r}: no heading of {resolved.name} has the anchor #{fragment}"
            )


REPO_PATH = re.compile(r"(?<![\w/.])((?:grok|tests|benchmarks|conf|hydra_plugins|docs)/[\w/.-]*\w)")


@pytest.mark.parametrize("path", markdown_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_every_repository_path_the_text_names_exists(path):
    """`grok/system/speed.py`, `conf/sweep/`, ...: a module that moves takes its docs along. (Code
    blocks are not checked: their paths are the example's; a placeholder stops the path at `<`.)"""
    named = set(REPO_PATH.findall("\n".join(outside_fences(path))))
    missing = sorted(p for p in named if not (ROOT / p).exists())
    assert not missing, f"{path.relative_to(ROOT)} names paths that do not exist: {missing}"


def test_every_docs_page_is_linked_from_the_readme():
    linked = {
        (README.parent / link.partition("#")[0]).resolve()
        for link in re.findall(r"\[[^\]]*\]\(([^)\s#]+)[^)]*\)", prose(README))
    }
    for page in sorted(DOCS.glob("*.md")):
        assert page.resolve() in linked, f"README.md does not link {page.relative_to(ROOT)}"


def test_every_make_target_the_readme_names_exists():
    targets = set(re.findall(r"^([\w-]+):", (ROOT / "Makefile").read_text(), flags=re.MULTILINE))
    spans = [c for c in bash_commands(README) if c.startswith("make ")]
    spans += re.findall(r"`(make [^`]*)`", "\n".join(outside_fences(README)))
    named = {span.split()[1] for span in spans}
    assert named, "the README names make targets"
    assert named <= targets, f"README names make targets the Makefile lacks: {sorted(named - targets)}"


# ----------------------------------------------------------------------------- the Extending example
EXAMPLE_HEADER = re.compile(r"^#\s*docs/examples/my_grok/([\w/.]+\.(?:py|yaml))\b")


def code_part(line: str) -> str:
    """A line without its trailing comment ('x = 1  # one' -> 'x = 1'), right-stripped."""
    return re.sub(r"\s+#\s.*$", "", line).rstrip()


@pytest.mark.parametrize("path", [README, DOCS / "extending.md"], ids=lambda p: p.name)
def test_the_code_shown_is_the_example_files_code(path):
    """A python or yaml block whose first line names an example file shows that file's own lines
    (lines with `...` are abridged and not compared)."""
    shown = 0
    for language, lines in fenced_blocks(path):
        header = EXAMPLE_HEADER.match(lines[0]) if lines and language in ("python", "yaml") else None
        if not header:
            continue
        source = EXAMPLE / header.group(1)
        assert source.exists(), f"{path.name} shows {source}, which does not exist"
        file_lines = {code_part(line) for line in source.read_text().splitlines()}
        for line in lines[1:]:
            if "..." in line or not code_part(line).strip():
                continue
            assert code_part(line) in file_lines, f"{path.name}: {line!r} is not a line of {source.relative_to(ROOT)}"
        shown += 1
    assert shown, f"{path.name} shows none of the example's files"


def test_the_example_configs_name_the_example_objects(monkeypatch):
    monkeypatch.syspath_prepend(str(EXAMPLE))
    from hydra.utils import get_object

    for yaml in sorted((EXAMPLE / "conf").rglob("*.yaml")):
        node = OmegaConf.load(yaml)
        if yaml.parent.name == "transforms":  # the single top-level key is the transform's name
            assert len(node) == 1 and yaml.stem in node, f"{yaml}: one top-level key, {yaml.stem}"
            node = node[yaml.stem]
        target = get_object(node._target_)
        if hasattr(target, "Config"):  # the yaml's keys are those of the schema
            OmegaConf.merge(OmegaConf.structured(target.Config), {k: v for k, v in node.items() if k != "_target_"})


def test_the_example_model_gives_logits_and_checks_its_config(monkeypatch):
    monkeypatch.syspath_prepend(str(EXAMPLE))
    from my_models import Bilinear

    from grok.errors import ConfigError

    cfg = OmegaConf.structured(Bilinear.Config)
    Bilinear.check(cfg)
    model = Bilinear(cfg, n_vocab=65, n_classes=64, n_ctx=3)
    tokens = torch.stack([torch.randint(0, 64, (5,)), torch.randint(0, 64, (5,)), torch.full((5,), 64)], dim=1)
    assert model(tokens).shape == (5, 64)
    with pytest.raises(ConfigError, match=r"^model\.d_model=0: "):
        Bilinear.check(OmegaConf.merge(cfg, {"d_model": 0}))


def test_the_example_trick_resumes_exactly_from_its_state_dict(monkeypatch, tmp_path):
    monkeypatch.syspath_prepend(str(EXAMPLE))
    from my_tricks import GradNoise

    cfg = OmegaConf.structured(GradNoise.Config)
    params = [torch.nn.Parameter(torch.zeros(3, 4)), torch.nn.Parameter(torch.zeros(5))]

    def step(transform):
        for p in params:
            p.grad = torch.ones_like(p)
        transform()
        return [p.grad.clone() for p in params]

    straight = GradNoise(params, cfg)
    expected = [step(straight) for _ in range(4)]
    assert not torch.equal(expected[0][0], torch.ones(3, 4)), "the noise changes the gradient"

    first = GradNoise(params, cfg)
    got = [step(first) for _ in range(2)]
    torch.save(first.state_dict(), tmp_path / "state.pt")
    resumed = GradNoise(params, cfg)
    resumed.load_state_dict(torch.load(tmp_path / "state.pt"))  # weights_only, as checkpoints load
    got += [step(resumed) for _ in range(2)]
    for a, b in zip(got, expected):
        assert all(torch.equal(x, y) for x, y in zip(a, b))
