"""Sweeps, as a user runs them: `sweep.py NAME` and `train.py -m +sweep=NAME` in subprocesses, with
real W&B (offline) runs read back, Hydra's joblib launcher, a failing job, a damaged sweep directory,
the W&B sweep definition replayed through W&B's own argument builder, and an Optuna search."""

import csv
import itertools
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from omegaconf import OmegaConf

import grok
from grok.config import validate
from grok.errors import ConfigError
from grok.sweeps.named import claim_new_dir, sweep_names
from grok.sweeps.phase import is_log_spaced, median_epoch, over_seeds, phase
from grok.sweeps.summary import SweepSummary, summarize
from grok.sweeps.wandb_sweep import wandb_sweep_config
from tests.conftest import EARLY_EPOCHS, FLOAT32_ROUNDINGS, ROOT, cli_env, make_config, run_cli, wandb_records

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
EPOCHS = 40  # enough for p=11 to memorize in some cells
TINY = ["task.p=11", f"epochs={EPOCHS}", f"save_every={EPOCHS}", "figures=false"]
GRID = {"train_frac": ["0.3", "0.5"], "optimizer.weight_decay": ["0.1", "1"]}
GRID_ARGS = [f"{key}={','.join(values)}" for key, values in GRID.items()]


def overrides_of(job_dir) -> dict:
    return dict(item.split("=", 1) for item in OmegaConf.load(job_dir / ".hydra" / "overrides.yaml"))


def grid_point(job_dir) -> tuple:
    return tuple(overrides_of(job_dir)[key] for key in GRID)


def read_csv(path) -> list:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def as_csv(value) -> str:
    return "" if value is None else str(value)


@pytest.fixture(scope="module")
def grid_sweep(tmp_path_factory, worker_id):
    """`sweep.py phase_diagram_small` narrowed to a 2 x 2 grid of tiny runs, W&B on (offline); run
    once per session, also under pytest-xdist (whose workers share the session's temp root)."""
    from filelock import FileLock

    root = tmp_path_factory.getbasetemp() if worker_id == "master" else tmp_path_factory.getbasetemp().parent
    cwd = root / "grid_sweep"
    with FileLock(str(root / "grid_sweep.lock")):
        if not cwd.exists():
            cwd.mkdir()
            result = run_cli(["phase_diagram_small", *TINY, *GRID_ARGS], cwd=cwd, script="sweep.py", check=True)
            (cwd / "stdout.txt").write_text(result.stdout)
    (sweep_dir,) = (cwd / "outputs" / "sweeps" / "phase_diagram_small").iterdir()
    return sweep_dir, (cwd / "stdout.txt").read_text()


def test_a_named_sweep_runs_each_grid_point_once_as_its_own_wandb_run_in_one_group(grid_sweep):
    sweep_dir, _ = grid_sweep
    jobs = sorted(p for p in sweep_dir.iterdir() if p.name.isdigit())
    assert [p.name for p in jobs] == ["0", "1", "2", "3"]
    assert {grid_point(job) for job in jobs} == set(itertools.product(*GRID.values()))
    assert re.fullmatch(r"\d{4}-\d\d-\d\d_\d\d-\d\d-\d\d", sweep_dir.name), "the sweep dir is named by its start time"

    group = f"phase_diagram_small-{sweep_dir.name}"
    run_ids = set()
    for job in jobs:
        assert json.loads((job / "summary.json").read_text())["status"] == "completed"
        records = wandb_records(job)
        assert records["run"]["run_group"] == group and records["run"]["job_type"] == "train"
        config = records["summary"]["config"]
        assert str(config["train_frac"]) == overrides_of(job)["train_frac"]
        assert str(config["optimizer"]["weight_decay"]) == overrides_of(job)["optimizer.weight_decay"]
        assert config["progress"] is False and config["task"]["p"] == 11
        run_ids.add(records["run"]["run_id"])
    assert len(run_ids) == 4


def test_the_summary_csv_has_one_row_per_job_equal_to_its_summary_json(grid_sweep):
    sweep_dir, stdout = grid_sweep
    rows = read_csv(sweep_dir / "sweep_summary.csv")
    assert [row["job"] for row in rows] == ["0", "1", "2", "3"]
    assert list(rows[0])[:3] == ["job", "train_frac", "optimizer.weight_decay"]
    for row in rows:
        job = sweep_dir / row["job"]
        summary = json.loads((job / "summary.json").read_text())
        assert row["train_frac"] == overrides_of(job)["train_frac"]
        assert row["optimizer.weight_decay"] == overrides_of(job)["optimizer.weight_decay"]
        for key in ["status", "memorize_epoch", "grok_epoch", "epochs"]:
            assert row[key] == as_csv(summary[key]), key
        for key in ["train_loss", "train_acc", "test_loss", "test_acc", "wall_seconds"]:
            assert float(row[key]) == summary[key], key
        memorized, grokked = summary["memorize_epoch"], summary["grok_epoch"]
        assert row["delay"] == ("" if None in (memorized, grokked) else str(grokked - memorized))
        assert row["phase"] in ("comprehension", "grokking", "memorization", "confusion")
    for name in ["phase_diagram.png", "phase_map.png", "test_acc_curves.png"]:
        assert (sweep_dir / name).read_bytes()[:8] == PNG_MAGIC, name
    # two keys, neither a seed: no curve of epochs against one key, no medians over seeds
    assert not (sweep_dir / "epochs_curve.png").exists() and not (sweep_dir / "sweep_over_seeds.csv").exists()
    table = stdout.splitlines()
    assert table[1].split()[0] == "job" and [line.split()[0] for line in table[2:6]] == ["0", "1", "2", "3"]


def test_the_summary_is_its_own_wandb_run_in_the_sweeps_group(grid_sweep):
    sweep_dir, _ = grid_sweep
    records = wandb_records(sweep_dir)
    assert records["run"]["job_type"] == "summary"
    assert records["run"]["run_group"] == f"phase_diagram_small-{sweep_dir.name}"
    (logged,) = [row for row in records["history"] if "sweep_summary._type" in row]
    assert logged["sweep_summary._type"] == "table-file"
    (table_file,) = (sweep_dir / "wandb").glob(f"offline-run-*/files/{logged['sweep_summary.path']}")
    table = json.loads(table_file.read_text())
    rows = read_csv(sweep_dir / "sweep_summary.csv")
    assert table["columns"] == list(rows[0])
    assert [[as_csv(value) for value in row] for row in table["data"]] == [list(row.values()) for row in rows]
    for key in ["phase_diagram", "phase_map", "test_acc_curves"]:
        assert records["summary"]["summary"][key]["_type"] == "image-file", key


def _run_env_without_omp(args, cwd):
    env = cli_env()
    env.pop("OMP_NUM_THREADS")  # let the launcher decide threads per job
    return subprocess.run(
        [sys.executable, str(ROOT / "train.py"), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )


def test_joblib_with_two_workers_gives_each_job_the_sequential_metrics_and_its_own_wandb_run(grid_sweep, tmp_path):
    import os

    sweep_dir, _ = grid_sweep
    parallel = tmp_path / "parallel"
    result = _run_env_without_omp(
        [
            "-m",
            "+sweep=phase_diagram_small",
            *TINY,
            *GRID_ARGS,
            "threads=null",
            "hydra/launcher=joblib",
            "hydra.launcher.n_jobs=2",
            f"hydra.sweep.dir={parallel}",
        ],
        tmp_path,
    )
    assert result.returncode == 0, result.stderr
    sequential = {grid_point(job): job for job in sweep_dir.iterdir() if job.name.isdigit()}
    run_ids = set()
    for job in sorted(p for p in parallel.iterdir() if p.name.isdigit()):
        twin = sequential[grid_point(job)]
        ours, theirs = read_csv(job / "metrics.csv"), read_csv(twin / "metrics.csv")
        assert len(ours) == len(theirs) == EPOCHS
        summary = json.loads((job / "summary.json").read_text())
        if summary["threads"] == json.loads((twin / "summary.json").read_text())["threads"]:
            assert ours == theirs, "the same math on as many threads: equal bit for bit"
        else:  # other threads sum in another order: float32 agrees through the first epochs only
            for row, twin_row in zip(ours[:EARLY_EPOCHS], theirs[:EARLY_EPOCHS]):
                assert {k: float(v) for k, v in row.items()} == pytest.approx(
                    {k: float(v) for k, v in twin_row.items()}, rel=FLOAT32_ROUNDINGS
                )
        assert summary["threads"] == max(1, os.cpu_count() // 2), "joblib gives each of 2 jobs half the cores"
        records = wandb_records(job)
        assert records["run"]["run_group"] == f"phase_diagram_small-{parallel.name}"
        assert str(records["summary"]["config"]["train_frac"]) == overrides_of(job)["train_frac"]
        run_ids.add(records["run"]["run_id"])
    assert len(run_ids) == 4


def test_a_failing_job_is_recorded_the_others_complete_and_the_command_exits_nonzero(tmp_path):
    result = run_cli(
        [
            "phase_diagram_small",
            *TINY,
            "logger=none",
            "--jobs",
            "2",
            "train_frac=0.5",
            "optimizer=sgd",
            "optimizer.warmup_steps=0",
            "optimizer.lr=1e-3,1e30,1e-2",
            "optimizer.weight_decay=0.1",
            "hydra.sweep.dir=sweep",
        ],
        cwd=tmp_path,
        script="sweep.py",
    )
    assert result.returncode == 1
    assert "error: 1 of 3 jobs did not complete: job 1 (failed)" in result.stderr
    rows = read_csv(tmp_path / "sweep" / "sweep_summary.csv")
    assert [(row["optimizer.lr"], row["status"]) for row in rows] == [
        ("0.001", "completed"),
        ("1e+30", "failed"),
        ("0.01", "completed"),
    ]
    assert "diverged" in rows[1]["error"] and rows[1]["phase"] == ""
    assert re.search(r"failed: job 1 \(optimizer.lr=1e\+30\): .*diverged", result.stdout)


def test_summarize_reports_missing_and_truncated_job_files_instead_of_crashing(grid_sweep, tmp_path):
    damaged = tmp_path / "damaged"
    shutil.copytree(grid_sweep[0], damaged, ignore=shutil.ignore_patterns("wandb", "sweep_summary.csv"))
    running = damaged / "0" / "summary.json"  # a job still running has no summary.json yet
    finished = json.loads(running.read_text())
    running.unlink()
    summary = damaged / "1" / "summary.json"
    summary.write_text(summary.read_text()[:40])
    metrics = damaged / "2" / "metrics.csv"
    metrics.write_text(metrics.read_text()[:-25])
    missing = " ".join(OmegaConf.load(damaged / "3" / ".hydra" / "overrides.yaml"))
    shutil.rmtree(damaged / "3")

    result = run_cli(["summarize", str(damaged), "--no-wandb"], cwd=tmp_path, script="sweep.py")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "job 1: summary.json is unreadable" in result.stdout
    assert "job 2: metrics.csv: 1 unreadable row(s)" in result.stdout
    assert f"never started (no job dir has these overrides): {missing}" in result.stdout
    rows = read_csv(damaged / "sweep_summary.csv")
    assert [(row["job"], row["status"]) for row in rows] == [
        ("0", "incomplete"),
        ("1", "unreadable"),
        ("2", "completed"),
    ]
    assert rows[1]["epochs"] == str(EPOCHS), "an unreadable summary falls back on metrics.csv"
    assert finished["memorize_epoch"] is not None
    for key in ["memorize_epoch", "grok_epoch", "epochs", "test_acc"]:  # read off metrics.csv, as training saw them
        assert rows[0][key] == as_csv(finished[key]), key


def test_sweeps_and_reproductions_started_in_the_same_second_get_directories_of_their_own(tmp_path):
    """Their directories are named by the time to the second; four processes claiming one name at
    once get four directories, empty, one of them the name itself."""
    from concurrent.futures import ProcessPoolExecutor

    stamp = tmp_path / "outputs" / "sweeps" / "noise" / "2026-12-04_23-00-31"
    with ProcessPoolExecutor(4) as pool:
        claimed = list(pool.map(claim_new_dir, [stamp] * 4))
    assert sorted(path.name for path in claimed) == [stamp.name] + [f"{stamp.name}_{n}" for n in (2, 3, 4)]
    assert all(path.is_dir() and not any(path.iterdir()) for path in claimed)


def test_a_job_stopped_by_a_signal_is_summarized_as_interrupted_and_fails_the_exit_status(grid_sweep, tmp_path):
    """Ctrl-C during `sweep.py NAME`: the jobs it stopped write an 'interrupted' summary.json, and the
    summary that follows still draws every figure and names them."""
    stopped = tmp_path / "stopped"
    shutil.copytree(grid_sweep[0], stopped, ignore=shutil.ignore_patterns("wandb", "sweep_summary.csv", "*.png"))
    summary_file = stopped / "1" / "summary.json"
    summary = json.loads(summary_file.read_text())
    summary.update(status="interrupted", signal="SIGINT", error="interrupted by SIGINT at epoch 20")
    summary_file.write_text(json.dumps(summary))

    result = run_cli(["summarize", str(stopped), "--no-wandb"], cwd=tmp_path, script="sweep.py")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert re.search(r"^interrupted: job 1 \(.*\): interrupted by SIGINT at epoch 20$", result.stdout, re.M)
    assert "error: 1 of 4 jobs did not complete: job 1 (interrupted)" in result.stderr
    for name in ["phase_diagram.png", "phase_map.png", "test_acc_curves.png"]:
        assert (stopped / name).read_bytes()[:8] == PNG_MAGIC, name


def _agent_command(config: dict, point: dict) -> list:
    """The command line W&B's agent runs for one grid point, built by W&B's own code."""
    from wandb.sdk.launch.sweeps.utils import create_sweep_command_args

    args = create_sweep_command_args({"args": {key: {"value": value} for key, value in point.items()}})
    fill = {
        "${env}": [],
        "${interpreter}": [sys.executable],
        "${program}": [str(ROOT / config["program"])],
        "${args_no_hyphens}": args["args_no_hyphens"],
    }
    return [part for item in config["command"] for part in fill.get(item, [item])]


def test_the_wandb_sweep_is_the_hydra_grid_and_its_agent_commands_compose_the_same_configs(grid_sweep, tmp_path):
    sweep_dir, _ = grid_sweep
    run_cli(
        ["wandb", "phase_diagram_small", *TINY, *GRID_ARGS, "--out", "w.yaml"],
        cwd=tmp_path,
        script="sweep.py",
        check=True,
    )
    config = yaml.safe_load((tmp_path / "w.yaml").read_text())
    assert config["method"] == "grid" and config["program"] == "train.py"
    assert config["command"][-1] == "${args_no_hyphens}"
    keys = list(config["parameters"])
    grid = [dict(zip(keys, values)) for values in itertools.product(*(config["parameters"][k]["values"] for k in keys))]
    assert keys == list(GRID)
    jobs = {grid_point(job): job for job in sweep_dir.iterdir() if job.name.isdigit()}
    assert {tuple(str(point[key]) for key in GRID) for point in grid} == set(jobs)

    for point in grid:
        command = _agent_command(config, point)
        printed = subprocess.run(
            [*command, "--cfg", "job"], cwd=tmp_path, env=cli_env(), capture_output=True, text=True, check=True
        ).stdout
        job = jobs[tuple(str(point[key]) for key in GRID)]
        expected = OmegaConf.load(job / ".hydra" / "config.yaml")
        expected.logger.mode = "online"  # agent runs must report to W&B; all else is the multirun job's
        assert OmegaConf.create(printed) == expected


@pytest.mark.parametrize("name", [name for name in sweep_names() if name != "search"])
def test_each_presets_wandb_grid_is_what_hydras_basic_sweeper_expands(name):
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    params = yaml.safe_load((ROOT / "conf" / "sweep" / f"{name}.yaml").read_text())["hydra"]["sweeper"]["params"]
    (batch,) = BasicSweeper.split_arguments(
        OverridesParser.create().parse_overrides([f"{key}={value}" for key, value in params.items()]), None
    )
    parameters = wandb_sweep_config(name, [])["parameters"]
    wandb_jobs = [
        [f"{key}={value}" for key, value in zip(parameters, values)]
        for values in itertools.product(*(p["values"] for p in parameters.values()))
    ]
    assert wandb_jobs == batch and len(batch) > 1


def test_the_wandb_agent_without_a_login_says_so_in_one_line(tmp_path):
    env = {
        "HOME": str(tmp_path),
        "NETRC": str(tmp_path / "no-netrc"),
        "WANDB_API_KEY": "",
        "WANDB_CONFIG_DIR": str(tmp_path),
    }
    result = run_cli(["wandb", "seeds", "--agent", "--out", "w.yaml"], cwd=tmp_path, script="sweep.py", env=env)
    assert result.returncode == 1
    assert (
        result.stderr.strip().splitlines()[-1]
        == "error: --agent needs a W&B login: run `wandb login` (or set WANDB_API_KEY) first"
    )


def test_an_optuna_search_minimizes_the_objective_train_py_returns(tmp_path):
    run_cli(
        [
            "-m",
            "+sweep=search",
            "task.p=11",
            "epochs=20",
            "hydra.sweeper.n_trials=3",
            "logger=none",
            "hydra.sweep.dir=search",
        ],
        cwd=tmp_path,
        check=True,
    )
    scores = []
    for job in (tmp_path / "search").iterdir():
        if job.name.isdigit():
            summary = json.loads((job / "summary.json").read_text())
            scores.append(20 if summary["grok_epoch"] is None else summary["grok_epoch"])
    assert len(scores) == 3
    assert OmegaConf.load(tmp_path / "search" / "optimization_results.yaml").best_value == min(scores)


@pytest.mark.parametrize(
    "memorized,grokked,expected",
    [
        (100, 150, "comprehension"),
        (100, 200, "comprehension"),
        (None, 300, "comprehension"),
        (100, 201, "grokking"),
        (60, 840, "grokking"),
        (100, None, "memorization"),
        (None, None, "confusion"),
    ],
)
def test_phases_follow_the_documented_rule(memorized, grokked, expected):
    assert phase(memorized, grokked) == expected


def test_a_sweep_repeated_over_seeds_reports_each_values_median_over_them(tmp_path):
    """`seed=0,1,2 data_seed=${seed}`: three runs of each train_frac, each with its own initialisation
    and split. sweep_over_seeds.csv and the table give per train_frac how many memorized and grokked and
    the median epochs, a run that never got there counting as the latest (none where half never did);
    the summary's W&B run holds the same table and the curve."""
    sweep_dir = tmp_path / "sweep"
    result = run_cli(["phase_diagram_small", *TINY, "train_frac=0.3,0.6", "optimizer.weight_decay=1",
                      "seed=0,1,2", "data_seed=${seed}", f"hydra.sweep.dir={sweep_dir}"],
                     cwd=tmp_path, script="sweep.py", check=True)  # fmt: skip
    rows = read_csv(sweep_dir / "sweep_summary.csv")
    assert list(rows[0])[: list(rows[0]).index("status")] == ["job", "train_frac", "seed"]  # data_seed follows seed
    assert "never started" not in result.stdout
    for row in rows:
        config = OmegaConf.load(sweep_dir / row["job"] / "config.yaml")
        assert config.data_seed == config.seed == int(row["seed"])
    by_setting = read_csv(sweep_dir / "sweep_over_seeds.csv")
    assert [row["train_frac"] for row in by_setting] == ["0.3", "0.6"]
    for row in by_setting:
        runs = [r for r in rows if r["train_frac"] == row["train_frac"]]
        assert sorted(r["seed"] for r in runs) == ["0", "1", "2"] and (row["runs"], row["unfinished"]) == ("3", "0")
        for field, count in (("memorize_epoch", "memorized"), ("grok_epoch", "grokked")):
            reached = sorted(int(r[field]) for r in runs if r[field])
            assert row[count] == str(len(reached))
            median = row[f"median_{field}"]  # of 3 runs, the second earliest, which must have got there
            assert (float(median) if median else None) == (reached[1] if len(reached) >= 2 else None)
        assert sum(int(n) for n in re.findall(r":(\d+)", row["phases"])) == 3
    assert any(row["memorized"] != "0" for row in by_setting)  # the medians above were not all empty
    assert (sweep_dir / "epochs_curve.png").read_bytes()[:8] == PNG_MAGIC
    table = result.stdout[result.stdout.index("over the seeds, by train_frac") :].splitlines()
    assert table[1].split()[:5] == ["train_frac", "runs", "unfinished", "memorized", "grokked"]
    assert [line.split()[:2] for line in table[2:4]] == [["0.3", "3"], ["0.6", "3"]]
    records = wandb_records(sweep_dir)
    (logged,) = [row for row in records["history"] if "sweep_over_seeds._type" in row]
    (table_file,) = (sweep_dir / "wandb").glob(f"offline-run-*/files/{logged['sweep_over_seeds.path']}")
    logged_table = json.loads(table_file.read_text())
    assert logged_table["columns"] == list(by_setting[0])
    assert [[as_csv(value) for value in row] for row in logged_table["data"]] == [list(r.values()) for r in by_setting]
    assert records["summary"]["summary"]["epochs_curve"]["_type"] == "image-file"

    loaded = grok.load_sweep(sweep_dir)  # in a notebook: the same rows, as numbers
    assert [[as_csv(value) for value in row.values()] for row in loaded.over_seeds] == [
        list(row.values()) for row in by_setting
    ]

    # the same sweep as if its last job had not started yet: counted among 0.6's unfinished
    last = max(rows, key=lambda r: int(r["job"]))
    shutil.rmtree(sweep_dir / last["job"])
    partial = {row["train_frac"]: row for row in summarize(sweep_dir, log_wandb=False).seed_table}
    assert (partial["0.6"]["runs"], partial["0.6"]["unfinished"]) == (2, 1) and partial["0.3"]["unfinished"] == 0


def run_record(status="completed", memorized=None, grokked=None, **values) -> dict:
    return {**values, "status": status, "memorize_epoch": memorized, "grok_epoch": grokked,
            "phase": phase(memorized, grokked) if status == "completed" else None}  # fmt: skip


def test_over_seeds_groups_runs_by_their_setting_and_leaves_unfinished_ones_out_of_the_counts():
    records = [
        run_record(task="divide", memorized=50, grokked=100, seed="0"),
        run_record(task="divide", memorized=60, seed="1"),  # memorized, never grokked
        run_record(task="divide", memorized=70, grokked=300, seed="2"),
        run_record("failed", task="divide", seed="3"),
        run_record("incomplete", memorized=10, task="add", seed="0"),  # running: may grok yet
        run_record(task="add", memorized=40, grokked=50, seed="1"),
        run_record(task=None, memorized=1, grokked=2, seed="4"),  # its overrides are unknown
    ]
    divide, add = over_seeds(records, ["task"])  # in the order the values first appear
    assert divide == {"task": "divide", "runs": 3, "unfinished": 1, "memorized": 3, "grokked": 2,
                      "median_memorize_epoch": 60, "median_grok_epoch": 300,  # 100, 300, never: not 200
                      "phases": "comprehension:1 grokking:1 memorization:1"}  # fmt: skip
    assert (add["runs"], add["unfinished"], add["median_grok_epoch"], add["phases"]) == (1, 1, 50, "comprehension:1")
    (everything,) = over_seeds(records, [])  # a sweep over seeds alone: one row of every run
    assert (everything["runs"], everything["unfinished"], everything["grokked"]) == (5, 2, 4)


def test_a_search_that_drew_each_setting_once_has_no_table_over_seeds():
    records = [run_record(**{"optimizer.lr": lr, "seed": seed}) for lr, seed in (("0.0021", "3"), ("0.0107", "1"))]
    assert SweepSummary(Path("sweep"), ["optimizer.lr", "seed"], records, []).seed_table is None
    records.append(run_record(**{"optimizer.lr": "0.0021", "seed": "4"}))
    assert SweepSummary(Path("sweep"), ["optimizer.lr", "seed"], records, []).seed_table[0]["runs"] == 2


def test_over_seeds_orders_numeric_settings_by_value():
    records = [run_record(train_frac=f, seed=s) for f in ("0.5", "0.25", "0.75") for s in ("0", "1")]
    assert [row["train_frac"] for row in over_seeds(records, ["train_frac"])] == ["0.25", "0.5", "0.75"]


@pytest.mark.parametrize(
    "epochs,median",
    [
        ([300, 100, 200], 200),
        ([100, None, 200], 200),
        ([100, None, 300], 300),
        ([100, None, None], None),
        ([100, 200], 150),
        ([100, None], None),
        ([None], None),
        ([70], 70),
        ([], None),
    ],
)
def test_the_median_epoch_over_seeds_counts_a_run_that_never_got_there_as_the_latest(epochs, median):
    assert median_epoch(epochs) == median


@pytest.mark.parametrize(
    "values,log",
    [
        ([0, 0.01, 0.03, 0.1, 0.3, 1, 3, 10], True),
        ([1e-4, 1e-3, 1e-2], True),
        ([1, 2, 4, 8, 16], True),
        ([0.1, 0.2, 0.3, 0.5, 0.9], False),
        ([0, 1, 2, 3], False),
        ([1, 10, 20, 30, 40], False),
    ],
)
def test_axes_are_logarithmic_where_the_values_are_log_spaced(values, log):
    assert is_log_spaced(values) is log


@pytest.mark.parametrize(
    "override,message",
    [
        ("threads=0", "threads=0: must be >= 1, or null"),
        ("objective=wall_seconds", "objective=wall_seconds: must be one of grok_epoch, memorize_epoch,"),
    ],
)
def test_threads_and_objective_are_checked_in_one_line(override, message):
    with pytest.raises(ConfigError) as error:
        validate(make_config([override]))
    assert str(error.value).startswith(message)
