"""README.md stays true: its test command is what CI runs, and the commands it names exist."""
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _bash_blocks():
    return re.findall(r"```bash\n(.*?)\n```", (ROOT / "README.md").read_text(), re.S)


def test_readme_gives_two_commands_and_ci_runs_the_test_command():
    blocks = _bash_blocks()
    assert len(blocks) == 2, blocks
    main_job, test_command = blocks
    assert "python3 -m peftcore finetune" in main_job
    assert test_command.rstrip().endswith("python3 -m pytest -q")
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert test_command.strip() in [line.strip() for line in ci]


def test_cli_parser_knows_the_main_job():
    from peftcore.cli import build_parser

    args = build_parser().parse_args(["finetune"])
    assert args.task == "SST-2" and args.glue_dir is None
