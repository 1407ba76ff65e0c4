"""The project's set-up: book configuration, notebooks, requirements, Makefile, CI, workflow."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
from pathlib import Path

import pytest
import yaml
from torch.distributed.run import get_args_parser

from sagan_tutorial.cli import _build_parser, _given
from sagan_tutorial.config import TrainConfig
from sagan_tutorial.models import GANConfig

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "book").glob("*.ipynb"))
SCALING_UP = ROOT / "book" / "15-scaling-up.ipynb"


def load_yaml(name):
    return yaml.safe_load((ROOT / name).read_text())


def toc_files(toc):
    files = [toc["root"]]
    for part in toc.get("parts", []):
        for chapter in part["chapters"]:
            files.append(chapter["file"])
            files += [section["file"] for section in chapter.get("sections", [])]
    return files


def test_config():
    config = load_yaml("_config.yml")
    assert config["title"] and config["author"]
    execute = config["execute"]
    # a jupyter-cache keyed by each notebook's code: a rebuild runs only the chapters that changed
    assert execute["execute_notebooks"] == "cache"
    assert execute["raise_on_error"] is True and execute["allow_errors"] is False
    assert execute["timeout"] >= 1800  # training chapters run for minutes per cell
    assert config["launch_buttons"]["colab_url"] == "https://colab.research.google.com"
    assert config["repository"]["url"].startswith("https://github.com/")
    assert config["html"]["use_repository_button"] and config["html"]["use_issues_button"]
    assert config["sphinx"]["config"]["html_theme_options"]["use_download_button"] is True
    assert config["only_build_toc_files"] is True


def test_toc_lists_every_notebook_and_nothing_missing():
    listed = toc_files(load_yaml("_toc.yml"))
    for name in listed:
        assert list(ROOT.glob(name + ".*")), f"{name} is in _toc.yml but not on disk"
    chapters = {f"book/{nb.stem}" for nb in NOTEBOOKS}
    assert chapters <= set(listed), f"notebooks missing from _toc.yml: {chapters - set(listed)}"
    assert listed[0] == "book/intro"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[nb.name for nb in NOTEBOOKS])
def test_notebook_is_stored_executed_and_clean(path):
    assert re.fullmatch(r"\d\d-[a-z0-9-]+\.ipynb", path.name), "chapters are named NN-slug.ipynb"
    assert path.stat().st_size < 2 * 2**20, "keep each notebook under 2 MB"
    nb = json.loads(path.read_text())
    assert nb["metadata"]["kernelspec"]["name"] == "python3"
    code = [c for c in nb["cells"] if c["cell_type"] == "code" and "".join(c["source"]).strip()]
    counts = [c["execution_count"] for c in code]
    assert counts == list(range(1, len(code) + 1)), "executed top to bottom in one run"
    assert any("# NBVAL_CHECK_OUTPUT" in "".join(c["source"]) for c in code)
    for cell in code:
        for output in cell["outputs"]:
            assert output["output_type"] != "error", "".join(cell["source"])[:80]
            assert not re.search(r"/(root|home|tmp|work)/", json.dumps(output)), "a local path"


PACKAGE_SOURCE = "\n".join(
    path.read_text() for path in sorted((ROOT / "sagan_tutorial").glob("*.py"))
)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[nb.name for nb in NOTEBOOKS])
def test_package_source_shown_in_a_chapter_is_the_package_as_it_is(path):
    """A stored output of show_source must still be in the package, line for line: a chapter
    that shows code the package no longer has fails here until it runs again. Source is shown
    highlighted through show_source, never printed."""
    for cell in json.loads(path.read_text())["cells"]:
        source = "".join(cell["source"])
        if cell["cell_type"] != "code":
            continue
        assert "getsource(" not in source, f"{path.name}: show package code with show_source"
        if "show_source(" not in source:
            continue
        shown = [
            o["data"]["text/plain"] for o in cell["outputs"] if "text/plain" in o.get("data", {})
        ]
        assert shown, f"{path.name}: a show_source cell without its output"
        for text in shown:
            text = "".join(text)
            assert text.strip() and text in PACKAGE_SOURCE, (
                f"{path.name}: stale source {text[:60]!r}"
            )


def test_every_notebook_picks_its_device_from_the_package():
    for path in NOTEBOOKS:
        source = "".join("".join(c["source"]) for c in json.loads(path.read_text())["cells"])
        if "device" in source:
            assert "default_device()" in source, f"{path.name} chooses a device by itself"


def test_requirements_are_pinned():
    lines = [ln.strip() for ln in (ROOT / "requirements.txt").read_text().splitlines()]
    lines = [ln for ln in lines if ln and not ln.startswith("#")]
    assert "torch==2.13.0" in lines
    for line in lines:
        assert re.fullmatch(r"[A-Za-z0-9_.\-\[\]]+==[A-Za-z0-9_.+]+", line), line
    assert not any(ln.startswith("torchvision") for ln in lines)


def test_makefile_and_ci():
    makefile = (ROOT / "Makefile").read_text()
    for target in ("book:", "test:"):
        assert re.search(rf"^{target}", makefile, re.M)
    assert "pip install --quiet -r requirements.txt" in makefile
    assert "-e ." in makefile
    assert "--nbval-lax --nbval-current-env" in makefile and "SAGAN_TUTORIAL_QUICK=1" in makefile
    assert "jupyter-book build -W --keep-going" in makefile
    # the notebooks run from the package's wheel in a fresh environment, then in the browser
    assert "pip wheel" in makefile and "browser_check.py" in makefile
    # make test runs every check: ruff first, then the unit tests and the notebooks side by side
    dry = subprocess.run(
        ["make", "-n", "--no-print-directory", "test"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert dry.returncode == 0, dry.stderr
    for command in ("ruff check", "-m pytest tests", "--nbval-lax", "build -W", "browser_check"):
        assert command in dry.stdout, command
    assert "-j2" in dry.stdout and dry.stdout.index("ruff check") < dry.stdout.index("-j2")
    parallel = next(ln for ln in makefile.splitlines() if "$(MAKE)" in ln and "-j2" in ln)
    assert "exec $(MAKE)" in parallel and "||" not in parallel  # signals reach it, failures count
    commands = [
        ln
        for ln in (ROOT / ".ci/run").read_text().splitlines()
        if ln.strip() and not ln.startswith("#")
    ]
    assert commands[-1] == "make test"
    readme = (ROOT / "README.md").read_text()
    assert "make book" in readme and "make test" in readme


def test_gpu_workflow():
    workflow = load_yaml(".github/workflows/book.yml")
    jobs = workflow["jobs"]
    assert jobs["cpu"]["steps"][-1]["run"] == "make test"
    assert "self-hosted" in jobs["gpu"]["runs-on"]
    assert jobs["gpu"]["env"]["SAGAN_TUTORIAL_DEVICE"] == "cuda"
    assert jobs["gpu"]["steps"][-1]["run"] == "make test"


def bash_commands(notebook: Path) -> list[list[str]]:
    """Every command of a chapter's ```bash blocks, continuation lines joined, as argv lists."""
    cells = json.loads(notebook.read_text())["cells"]
    text = "\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "markdown")
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, re.S):
        for line in block.replace("\\\n", " ").splitlines():
            if line.strip():
                commands.append(shlex.split(line))
    return commands


SCALING_UP_COMMANDS = bash_commands(SCALING_UP)


def package_argv(argv: list[str]) -> list[str]:
    """The package's part of a command: what follows ``-m sagan_tutorial``."""
    if argv[0] == "torchrun":
        launcher = get_args_parser().parse_args(argv[1:])  # torchrun's own options are valid
        assert launcher.module and launcher.training_script == "sagan_tutorial"
        return launcher.training_script_args
    assert argv[:3] == ["python", "-m", "sagan_tutorial"], argv
    return argv[3:]


def test_the_scaling_chapter_shows_the_commands_it_explains():
    flat = [" ".join(argv) for argv in SCALING_UP_COMMANDS]
    assert len(flat) >= 6
    for option in ("--amp bf16", "--amp fp16", "--channels-last", "--device cuda"):
        assert any(option in line for line in flat), option
    torchrun = [line for line in flat if line.startswith("torchrun")]
    for option in (
        "--standalone",
        "--nnodes=2",
        "--node_rank=0",
        "--rdzv_backend=c10d",
        "--rdzv_endpoint=",
        "--master_addr=",
    ):
        assert any(option in line for line in torchrun), option


@pytest.mark.parametrize(
    "argv", SCALING_UP_COMMANDS, ids=[" ".join(a)[:60] for a in SCALING_UP_COMMANDS]
)
def test_every_command_of_the_scaling_chapter_parses_into_a_valid_config(argv):
    args = _build_parser().parse_args(package_argv(argv))
    assert args.command == "train"
    # what the train command builds, without starting a run
    config = TrainConfig(model=GANConfig(**_given(args, GANConfig)), **_given(args, TrainConfig))
    if "--amp" in argv:
        assert config.amp == argv[argv.index("--amp") + 1]
    assert config.channels_last == ("--channels-last" in argv)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[nb.name for nb in NOTEBOOKS])
def test_every_notebook_installs_the_package_first_from_the_one_address(path):
    """A fresh runtime (Colab) runs the chapter: its first code cell installs the package from
    the repository that _config.yml names, the same address as sagan_tutorial.book.REPOSITORY."""
    from sagan_tutorial.book import REPOSITORY

    url = load_yaml("_config.yml")["repository"]["url"]
    assert url == REPOSITORY
    cells = [c for c in json.loads(path.read_text())["cells"] if c["cell_type"] == "code"]
    first = "".join(cells[0]["source"])
    assert "install-package" in cells[0]["metadata"].get("tags", [])
    assert f'%pip install --quiet "sagan-tutorial @ git+{url}"' in first
    assert sum("install-package" in c["metadata"].get("tags", []) for c in cells) == 1


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[nb.name for nb in NOTEBOOKS])
def test_notebooks_import_only_what_the_package_declares(path):
    """What a chapter imports is installed with the package: its dependencies, IPython."""
    import tomllib

    declared = {
        re.split(r"[<>=~! \[]", dep)[0].lower().replace("-", "_")
        for dep in tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    }
    allowed = declared | {"sagan_tutorial", "ipython", "mlxtend", "matplotlib_inline"}
    allowed |= {"pil"} if "pillow" in declared else set()
    source = "\n".join(
        "".join(c["source"])
        for c in json.loads(path.read_text())["cells"]
        if c["cell_type"] == "code"
    )
    imported = set(re.findall(r"^\s*(?:from|import)\s+([A-Za-z_]\w*)", source, re.M))
    stdlib = set(__import__("sys").stdlib_module_names)
    missing = {m for m in imported if m.lower() not in allowed and m not in stdlib}
    assert not missing, f"{path.name} imports {sorted(missing)}, which the package does not declare"
