"""The figures batch: config loading and checking, selection, skipping absent data, and one-line failure reports
(a real papermill run of small notebooks written to tmp_path)."""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest

from clear_lab import figures
from clear_lab.cli import main

ROOT = Path(__file__).resolve().parents[1]


def write_notebook(path: Path, *sources: str) -> Path:
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(s) for s in sources]
    nb.cells[0].metadata["tags"] = ["parameters"]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, str(path))
    return path


def write_config(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


@pytest.mark.parametrize("name", ["figures.yaml", "figures-amazon.yaml"])
def test_the_project_configs_load(name):
    cfg = figures.load_config(ROOT / "notebooks" / name)
    assert cfg.entries and cfg.executed_dir == ROOT / "notebooks" / "executed"
    assert len({e.name for e in cfg.entries}) == len(cfg.entries)
    for e in cfg.entries:
        assert e.notebook.parent == ROOT / "notebooks" and e.kernel == "python3"
        assert e.execution_timeout > 0 and e.run_timeout >= e.execution_timeout


def test_default_config_lists_every_notebook_and_the_tiktok_run():
    cfg = figures.load_config(None)
    assert cfg.path == ROOT / "notebooks" / "figures.yaml"
    listed = {e.notebook.name for e in cfg.entries}
    assert {p.name for p in (ROOT / "notebooks").glob("[0-9]*.ipynb")} <= listed
    assert any(e.parameters.get("dataset") == "tiktok" for e in cfg.entries)


def test_amazon_entries_are_skipped_without_their_data(tmp_path):
    cfg = figures.load_config(ROOT / "notebooks" / "figures-amazon.yaml")
    datasets = {e.parameters.get("dataset") for e in cfg.entries}
    assert {"baby", "sports", "clothing"} <= datasets
    for e in cfg.entries:
        e.parameters["data_dir"] = str(tmp_path)  # an empty data folder
        if not (figures.PROJECT_ROOT.parent / "shared" / "data" / e.parameters["dataset"]).is_dir():
            assert "not found" in figures.missing_data(e)


@pytest.mark.parametrize("text, message", [
    ("notebooks: [", "not valid YAML"),
    ("defaults: {}\n", "non-empty 'notebooks' list"),
    ("notebooks:\n  - {name: a}\n", "needs a 'notebook' key"),
    ("notebooks:\n  - {notebook: a.ipynb, colour: red}\n", "unknown key(s) ['colour']"),
    ("notebooks:\n  - {notebook: a.ipynb}\n  - {notebook: a.ipynb}\n", "duplicate name 'a'"),
    ("notebooks:\n  - {notebook: a.ipynb, run_timeout: 0}\n", "run_timeout must be a positive number"),
    ("defaults: {timeout: 3}\nnotebooks:\n  - {notebook: a.ipynb}\n", "unknown key(s) ['timeout'] in defaults"),
    ("extra: 1\nnotebooks:\n  - {notebook: a.ipynb}\n", "unknown top-level key(s)"),
])
def test_config_errors_are_one_line(tmp_path, text, message):
    path = write_config(tmp_path / "f.yaml", text)
    with pytest.raises(ValueError) as err:
        figures.load_config(path)
    assert message in str(err.value) and len(str(err.value).splitlines()) == 1


def test_select_by_prefix(tmp_path):
    cfg = figures.load_config(write_config(tmp_path / "f.yaml", "notebooks:\n  - {notebook: 01_a.ipynb}\n"
                                           "  - {notebook: 02_b.ipynb, name: second}\n"))
    assert [e.name for e in figures.select(cfg.entries, ["02"])] == ["second"]
    assert [e.name for e in figures.select(cfg.entries, ["01_a", "sec"])] == ["01_a", "second"]
    assert len(figures.select(cfg.entries, None)) == 2
    with pytest.raises(ValueError, match="matches no notebook"):
        figures.select(cfg.entries, ["09"])


def test_missing_data_only_for_real_datasets(tmp_path):
    entry = figures.Entry(name="x", notebook=tmp_path / "x.ipynb", parameters={"dataset": "no-such-set",
                                                                                "data_dir": str(tmp_path)})
    assert "no-such-set" in figures.missing_data(entry)
    entry.parameters["dataset"] = "default"  # a preset: generated on demand, never missing
    assert figures.missing_data(entry) is None
    entry.parameters.pop("dataset")
    assert figures.missing_data(entry) is None


def test_batch_reports_the_failing_notebook_and_cell(tmp_path, capsys):
    nb_dir = tmp_path / "nbs"
    nb_dir.mkdir()
    write_notebook(nb_dir / "good.ipynb", "value: int = 1  # a parameter", "print(value * 2)")
    write_notebook(nb_dir / "bad.ipynb", "value: int = 1  # a parameter", "x = value + 1",
                   "raise ValueError(f'boom {x}')")
    write_notebook(nb_dir / "absent.ipynb", "dataset: str = 'x'  # a dataset", "print(dataset)")
    cfg = write_config(nb_dir / "figures.yaml", "defaults: {execution_timeout: 60, run_timeout: 120}\n"
                       "notebooks:\n  - {notebook: good.ipynb}\n  - {notebook: bad.ipynb, parameters: {value: 41}}\n"
                       "  - {notebook: absent.ipynb, parameters: {dataset: no-such-set}}\n")
    assert figures.run_figures(str(cfg)) == 1
    out = capsys.readouterr()
    text = out.out + out.err
    lines = [ln for ln in text.splitlines() if ln.startswith("FAILED")]
    assert len(lines) == 1
    assert "bad.ipynb" in lines[0] and "ValueError: boom 42" in lines[0] and "raise ValueError" in lines[0]
    assert "In [4] (cell 3 of the executed notebook)" in lines[0]  # parameters, injected ones, x = ..., raise
    assert "skip absent" in text and "ok good" in text
    assert (nb_dir / "executed" / "good.ipynb").is_file() and (nb_dir / "executed" / "bad.ipynb").is_file()
    # the CLI passes the same arguments and returns the same code; --only selects, --smoke adds the parameter
    assert main(["figures", "--config", str(cfg), "--only", "good", "--smoke"]) == 0
    executed = nbformat.read(str(nb_dir / "executed" / "good-smoke.ipynb"), as_version=4)
    injected = [c for c in executed.cells if "injected-parameters" in c.metadata.get("tags", [])]
    assert injected and "smoke = True" in injected[0].source


def test_whole_run_limit_kills_the_notebook(tmp_path, capsys):
    write_notebook(tmp_path / "slow.ipynb", "n: int = 1  # a parameter", "import time\ntime.sleep(60)")
    cfg = write_config(tmp_path / "figures.yaml", "notebooks:\n  - {notebook: slow.ipynb, run_timeout: 8, "
                       "execution_timeout: 60}\n")
    assert figures.run_figures(str(cfg)) == 1
    line = next(ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("FAILED"))
    assert "slow.ipynb" in line and "run_timeout=8" in line
