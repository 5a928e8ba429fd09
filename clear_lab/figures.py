"""The figures batch: run every notebook listed in a config with papermill, top to bottom, in a fresh kernel.

``clear-lab figures`` (and ``make figures``) call :func:`run_figures`. The config (YAML, default
``notebooks/figures.yaml``) looks like::

    defaults:                    # every key optional
      kernel: python3            # kernel name (papermill -k)
      execution_timeout: 900     # seconds one cell may run
      run_timeout: 1800          # seconds one notebook may run in all (the papermill process is killed after)
      start_timeout: 120         # seconds the kernel may take to start
      parameters: {}             # parameters every notebook gets (an entry's own override them)
      executed_dir: executed     # where executed notebooks go, relative to the config's folder (git-ignored)
    notebooks:
      - name: 01-default                        # unique; names the executed notebook; --only matches a prefix
        notebook: 01_redundancy_diagnosis.ipynb  # relative to the config's folder
        parameters: {dataset: default}
        run_timeout: 600                        # any default may be overridden per entry

Each notebook runs with its folder as working directory (so ``../data``, ``../figures``, ``../runs`` resolve from
the project root, as in JupyterLab) in a child process ``python -m clear_lab.figures _run <spec.json>``, which calls
``papermill.execute_notebook``; the parent enforces ``run_timeout`` (papermill has only a per-cell limit) and kills
the child's process group, kernel included, when it is exceeded.

An entry whose ``dataset`` parameter is neither a synthetic preset nor a folder that
:func:`clear_lab.datasets.resolve_dataset` finds (e.g. TikTok without ``../shared/data/tiktok``, Amazon Baby
without ``data/baby``) is skipped with a printed note, not an error. ``force`` passes ``force_retrain=True``
(notebooks hand it to ``cached_train(force=...)``); ``smoke`` passes ``smoke=True``. A failure prints one line
naming the notebook, the failing cell (index in the executed notebook, execution count, first source line) and the
error; the remaining notebooks still run, and the return value is 1.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

PROJECT_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CONFIG = PROJECT_ROOT / "notebooks" / "figures.yaml"
DEFAULTS: dict[str, Any] = {"kernel": "python3", "execution_timeout": 900, "run_timeout": 1800,
                            "start_timeout": 120, "parameters": {}, "executed_dir": "executed"}
_ENTRY_KEYS = {"name", "notebook", "parameters", "kernel", "execution_timeout", "run_timeout", "start_timeout"}


@dataclass
class Entry:
    """One notebook run of the batch (paths absolute)."""

    name: str
    notebook: Path
    parameters: dict[str, Any] = field(default_factory=dict)
    kernel: str = "python3"
    execution_timeout: float = 900
    run_timeout: float = 1800
    start_timeout: float = 120


@dataclass
class FiguresConfig:
    path: Path
    entries: list[Entry]
    executed_dir: Path


def _resolve_config_path(config: str | Path | None) -> Path:
    if config is None:
        return DEFAULT_CONFIG
    path = Path(config)
    if not path.is_file() and not path.is_absolute() and (PROJECT_ROOT / path).is_file():
        path = PROJECT_ROOT / path  # "notebooks/figures-amazon.yaml" works from anywhere
    if not path.is_file():
        raise FileNotFoundError(f"figures config {config} not found")
    return path.resolve()


def _positive(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ValueError(f"{what} must be a positive number of seconds, got {value!r}")
    return float(value)


def load_config(config: str | Path | None = None) -> FiguresConfig:
    """Read and check a figures config (see the module docstring); every problem is a one-line ValueError."""
    path = _resolve_config_path(config)
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ValueError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from exc
    if not isinstance(raw, dict) or not isinstance(raw.get("notebooks"), list) or not raw["notebooks"]:
        raise ValueError(f"{path}: expected a mapping with a non-empty 'notebooks' list")
    unknown = sorted(set(raw) - {"defaults", "notebooks"})
    if unknown:
        raise ValueError(f"{path}: unknown top-level key(s) {unknown} (allowed: defaults, notebooks)")
    defaults = {**DEFAULTS, **(raw.get("defaults") or {})}
    bad = sorted(set(defaults) - set(DEFAULTS))
    if bad:
        raise ValueError(f"{path}: unknown key(s) {bad} in defaults (allowed: {sorted(DEFAULTS)})")
    base = path.parent
    entries, names = [], set()
    for i, item in enumerate(raw["notebooks"]):
        where = f"{path}: notebooks[{i}]"
        if not isinstance(item, dict) or "notebook" not in item:
            raise ValueError(f"{where}: each entry needs a 'notebook' key")
        extra = sorted(set(item) - _ENTRY_KEYS)
        if extra:
            raise ValueError(f"{where}: unknown key(s) {extra} (allowed: {sorted(_ENTRY_KEYS)})")
        nb = base / str(item["notebook"])
        name = str(item.get("name") or nb.stem)
        if name in names:
            raise ValueError(f"{where}: duplicate name {name!r} (give each entry its own 'name')")
        names.add(name)
        params = item.get("parameters") or {}
        if not isinstance(params, dict) or not isinstance(defaults["parameters"], dict):
            raise ValueError(f"{where}: parameters must be a mapping")
        entries.append(Entry(
            name=name, notebook=nb, parameters={**defaults["parameters"], **params},
            kernel=str(item.get("kernel", defaults["kernel"])),
            execution_timeout=_positive(item.get("execution_timeout", defaults["execution_timeout"]),
                                        f"{where}: execution_timeout"),
            run_timeout=_positive(item.get("run_timeout", defaults["run_timeout"]), f"{where}: run_timeout"),
            start_timeout=_positive(item.get("start_timeout", defaults["start_timeout"]), f"{where}: start_timeout")))
    return FiguresConfig(path=path, entries=entries, executed_dir=(base / str(defaults["executed_dir"])))


def select(entries: list[Entry], only: list[str] | None) -> list[Entry]:
    """The entries whose name or notebook file name starts with one of ``only`` (all when None)."""
    if not only:
        return list(entries)
    chosen = [e for e in entries if any(e.name.startswith(p) or e.notebook.name.startswith(p) for p in only)]
    if not chosen:
        raise ValueError(f"--only {' '.join(only)} matches no notebook (names: "
                         f"{', '.join(e.name for e in entries)})")
    return chosen


def missing_data(entry: Entry) -> str | None:
    """Why ``entry`` cannot run for lack of data (a note), or None when its dataset is available."""
    from clear_lab.data import DataError
    from clear_lab.datasets import resolve_dataset
    from clear_lab.synthetic import PRESETS

    dataset = entry.parameters.get("dataset")
    if dataset is None or str(dataset) in PRESETS:
        return None
    cwd = entry.notebook.parent
    data_dir = Path(str(entry.parameters.get("data_dir", "../data")))
    data_dir = data_dir if data_dir.is_absolute() else cwd / data_dir
    ds = Path(str(dataset))
    candidate = ds if ds.is_absolute() else cwd / ds
    try:
        resolve_dataset(str(candidate) if candidate.is_dir() else str(dataset), data_dir=data_dir)
    except DataError:
        return (f"dataset {dataset!r} not found (looked in {data_dir.resolve() / str(dataset)} and "
                f"../shared/data/{dataset}); drop the files there to include it")
    return None


def failing_cell(nb_path: Path) -> dict[str, Any] | None:
    """The cell that failed (or was still running) in a (partially) executed notebook: index, exec_count, source
    line, ename, evalue; None when the notebook shows none."""
    try:
        import nbformat

        nb = nbformat.read(str(nb_path), as_version=4)
    except Exception:  # noqa: BLE001 - a half-written file: nothing to report
        return None
    running = None
    for index, cell in enumerate(nb.cells):
        pm = cell.get("metadata", {}).get("papermill", {})
        for out in cell.get("outputs", []):
            if out.get("output_type") == "error":
                return _cell_info(index, cell, out.get("ename", "Error"), out.get("evalue", ""))
        if pm.get("exception") is True:
            return _cell_info(index, cell, "CellExecutionError", "")
        if pm.get("status") == "running" and running is None:
            running = _cell_info(index, cell, "Timeout", "still running when the run was stopped")
    return running


def _cell_info(index: int, cell: Any, ename: str, evalue: str) -> dict[str, Any]:
    first = next((line.strip() for line in str(cell.get("source", "")).splitlines() if line.strip()), "")
    return {"cell_index": index, "exec_count": cell.get("execution_count"), "source": first[:80],
            "ename": str(ename), "evalue": str(evalue).splitlines()[0][:300] if str(evalue) else ""}


def _describe(entry: Entry, info: dict[str, Any] | None, output: Path, fallback: str) -> str:
    where = f"{entry.notebook.name} ({entry.name})"
    if info and info.get("cell_index") is not None:
        count = info.get("exec_count")
        cell = (f"In [{count}] (cell {info['cell_index']} of the executed notebook)" if count is not None
                else f"cell {info['cell_index']} of the executed notebook")
        src = f" `{info['source']}`" if info.get("source") else ""
        err = f"{info.get('ename', 'Error')}: {info.get('evalue', '')}".rstrip(": ")
        return f"FAILED {where} at {cell}{src}: {err} -- see {output}"
    return f"FAILED {where}: {fallback} -- see {output}"


def run_entry(entry: Entry, output: Path, parameters: dict[str, Any]) -> tuple[bool, str, float]:
    """Execute one notebook in a child process; returns (ok, message, seconds)."""
    if not entry.notebook.is_file():
        return False, f"FAILED {entry.notebook.name} ({entry.name}): notebook {entry.notebook} does not exist", 0.0
    output.parent.mkdir(parents=True, exist_ok=True)
    spec = {"input": str(entry.notebook), "output": str(output), "parameters": parameters, "kernel": entry.kernel,
            "cwd": str(entry.notebook.parent), "execution_timeout": entry.execution_timeout,
            "start_timeout": entry.start_timeout}
    with tempfile.TemporaryDirectory(prefix="clear-lab-figures-") as tmp:
        spec_path, result_path = Path(tmp) / "spec.json", Path(tmp) / "result.json"
        spec["result"] = str(result_path)
        spec_path.write_text(json.dumps(spec, default=str))
        env = dict(os.environ)
        env.setdefault("OMP_NUM_THREADS", "1")
        env.setdefault("MKL_NUM_THREADS", "1")
        t0 = time.perf_counter()
        proc = subprocess.Popen([sys.executable, "-m", "clear_lab.figures", "_run", str(spec_path)], env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
        try:
            log, _ = proc.communicate(timeout=entry.run_timeout)
        except subprocess.TimeoutExpired:
            _kill_group(proc)
            seconds = time.perf_counter() - t0
            info = failing_cell(output)
            if info is not None:
                info["ename"], info["evalue"] = "Timeout", f"the notebook ran past run_timeout={entry.run_timeout:g} s"
            return False, _describe(entry, info, output, f"ran past run_timeout={entry.run_timeout:g} s"), seconds
        seconds = time.perf_counter() - t0
        result = json.loads(result_path.read_text()) if result_path.is_file() else None
    if result is not None and result.get("status") == "ok" and proc.returncode == 0:
        return True, f"ok {entry.name} in {seconds:.0f} s -> {output}", seconds
    info = result if result and result.get("cell_index") is not None else (failing_cell(output) or result)
    tail = (log or "").strip().splitlines()
    fallback = (f"{result.get('ename')}: {result.get('evalue')}" if result else
                f"papermill exited with {proc.returncode}" + (f" ({tail[-1][:200]})" if tail else ""))
    return False, _describe(entry, info, output, fallback), seconds


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=10)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()


def run_figures(config: str | None = None, force: bool = False, only: list[str] | None = None,
                smoke: bool = False) -> int:
    """Run the notebooks of ``config`` (default ``notebooks/figures.yaml``); 0 when all ran or were skipped."""
    from tqdm.auto import tqdm

    cfg = load_config(config)
    entries = select(cfg.entries, only)
    failures, skipped = [], []
    t_all = time.perf_counter()
    bar = tqdm(entries, desc="figures", unit="notebook")
    for entry in bar:
        bar.set_postfix_str(entry.name)
        note = missing_data(entry)
        if note is not None:
            skipped.append(entry.name)
            tqdm.write(f"skip {entry.name}: {note}")
            continue
        params = dict(entry.parameters)
        if force:
            params["force_retrain"] = True
        if smoke:
            params["smoke"] = True
        output = cfg.executed_dir / f"{entry.name}{'-smoke' if smoke else ''}.ipynb"
        ok, message, _ = run_entry(entry, output, params)
        tqdm.write(message)
        if not ok:
            failures.append(entry.name)
    bar.close()
    ran = len(entries) - len(skipped)
    print(f"figures: {ran - len(failures)} of {ran} notebooks ran ({len(skipped)} skipped"
          f"{': ' + ', '.join(skipped) if skipped else ''}) in {time.perf_counter() - t_all:.0f} s"
          f"{'; failed: ' + ', '.join(failures) if failures else ''}")
    return 1 if failures else 0


def _run_child(spec_path: str) -> int:
    """The child process: one papermill run; writes {"status": ...} (and the failing cell) to spec["result"]."""
    spec = json.loads(Path(spec_path).read_text())
    result_path = Path(spec["result"])
    import papermill as pm
    from papermill.exceptions import PapermillExecutionError

    try:
        pm.execute_notebook(spec["input"], spec["output"], parameters=spec["parameters"],
                            kernel_name=spec["kernel"], cwd=spec["cwd"], progress_bar=False,
                            execution_timeout=spec["execution_timeout"], start_timeout=spec["start_timeout"])
    except PapermillExecutionError as exc:
        first = next((ln.strip() for ln in str(exc.source or "").splitlines() if ln.strip()), "")
        result = {"status": "error", "cell_index": exc.cell_index, "exec_count": exc.exec_count,
                  "source": first[:80], "ename": exc.ename,
                  "evalue": str(exc.evalue).splitlines()[0][:300] if exc.evalue else ""}
        result_path.write_text(json.dumps(result))
        return 1
    except Exception as exc:  # noqa: BLE001 - kernel died, cell timeout, bad notebook...: report it in one line
        info = failing_cell(Path(spec["output"])) or {}
        result = {"status": "error", **info, "ename": type(exc).__name__,
                  "evalue": (str(exc).strip().splitlines() or [""])[0][:300]}
        result_path.write_text(json.dumps(result))
        return 1
    result_path.write_text(json.dumps({"status": "ok"}))
    return 0


if __name__ == "__main__":  # pragma: no cover - the child process of run_entry
    if len(sys.argv) == 3 and sys.argv[1] == "_run":
        sys.exit(_run_child(sys.argv[2]))
    sys.exit("usage: python -m clear_lab.figures _run <spec.json> (internal; use `clear-lab figures`)")
