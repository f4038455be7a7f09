"""Sweeps as one command (docs/sweeps.md):

    python sweep.py NAME [overrides...] [--jobs N | --batched]   run conf/sweep/NAME.yaml, then summarize it
    python sweep.py summarize SWEEP_DIR [--no-wandb]     sweep_summary.csv, figures, table, W&B summary run
    python sweep.py wandb NAME [overrides...] [--agent]  the equivalent W&B sweep (YAML); --agent runs it
    python sweep.py reproduce NAME [overrides...]        a result of the literature (docs/results.md): a
                                                         named sweep as above, or a preset's run and its phases

Overrides are Hydra's, as for train.py: `epochs=500`, or a comma list to change an axis of the grid
(`train_frac=0.3,0.5`). Exit status: 0 when every job completed, 1 otherwise.
"""

import argparse
import sys
from pathlib import Path


def _summarize(sweep_dir: Path, log_wandb: bool) -> int:
    from grok.sweeps.summary import format_table, summarize

    summary = summarize(sweep_dir, log_wandb=log_wandb)
    print(format_table(summary))
    print(f"\nwrote {summary.sweep_dir / 'sweep_summary.csv'} and the figures beside it")
    failed = summary.failed()
    if failed:
        print(
            f"error: {len(failed)} of {len(summary.records)} jobs did not complete: "
            + ", ".join(f"job {r['job']} ({r['status']})" for r in failed),
            file=sys.stderr,
        )
    return 1 if failed else 0


def _reproduce(argv) -> int:
    from grok.sweeps.named import SweepError, sweep_names
    from grok.sweeps.reproduce import presets, report_run, reproductions, run_preset

    parser = argparse.ArgumentParser(prog="sweep.py reproduce", description=_reproduce.__doc__)
    parser.add_argument("name", help=f"one of: {', '.join(reproductions())}")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, as for train.py")
    args, rest = parser.parse_known_intermixed_args(argv)
    if args.name in sweep_names():
        return main([args.name, *args.overrides, *rest])
    try:
        if args.name not in presets() or rest:
            raise SweepError(f"reproduce {' '.join(argv)}: NAME must be one of {', '.join(reproductions())}"
                             + (f"; {' '.join(rest)} is for sweeps only" if rest else ""))  # fmt: skip
        print(report_run(run_preset(args.name, args.overrides)))
        return 0
    except SweepError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1


_reproduce.__doc__ = "Run a result of the literature: a named sweep, or a preset's run and the phases it went through."


def main(argv) -> int:
    from grok.sweeps.named import SweepError, sweep_names

    names = ", ".join(sweep_names())
    command = argv[0] if argv else None
    if command == "reproduce":
        return _reproduce(argv[1:])
    parser = argparse.ArgumentParser(
        prog=f"sweep.py {command}" if command in ("summarize", "wandb") else "sweep.py",
        description=__doc__ + f"\nsweeps: {names}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    if command == "summarize":
        parser.add_argument("sweep_dir", type=Path)
        parser.add_argument("--no-wandb", action="store_true", help="no W&B summary run")
        args = parser.parse_args(argv[1:])
    else:
        parser.add_argument("name", help=f"one of: {names}")
        parser.add_argument("overrides", nargs="*", help="Hydra overrides, as for train.py")
        if command == "wandb":
            parser.add_argument("--agent", action="store_true", help="create the sweep on W&B and run an agent")
            parser.add_argument(
                "--out", type=Path, help="where to write the YAML (default: outputs/sweeps/NAME/wandb_sweep.yaml)"
            )
        else:
            parser.add_argument("--jobs", type=int, help="run N jobs at once (hydra/launcher=joblib)")
            parser.add_argument(
                "--batched",
                action="store_true",
                help="train the jobs together in this process, as stacked models (hydra/launcher=batched)",
            )
        args = parser.parse_intermixed_args(argv[1:] if command == "wandb" else argv)
    try:
        if command == "summarize":
            return _summarize(args.sweep_dir, log_wandb=not args.no_wandb)
        if command == "wandb":
            from grok.sweeps.wandb_sweep import start_agent, wandb_sweep_config, write_sweep_yaml

            config = wandb_sweep_config(args.name, args.overrides)
            path = write_sweep_yaml(config, args.out or Path("outputs", "sweeps", args.name, "wandb_sweep.yaml"))
            print(f"wrote {path}:\n{path.read_text()}")
            if args.agent:
                start_agent(config)
            return 0
        from grok.sweeps.named import run_sweep

        if args.jobs is not None and args.jobs < 1:
            raise SweepError(f"--jobs={args.jobs}: must be >= 1")
        if args.jobs is not None and args.batched:
            raise SweepError("--jobs and --batched: choose one (a batched sweep runs in one process)")
        sweep_dir, returncode = run_sweep(args.name, args.overrides, args.jobs, args.batched)
        status = _summarize(sweep_dir, log_wandb=True)
        if returncode != 0 and status == 0:
            print(f"error: train.py exited with {returncode}; see {sweep_dir / 'multirun.log'}", file=sys.stderr)
        return 1 if returncode != 0 else status
    except (SweepError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    from grok.system.collector import skip_final_collections

    skip_final_collections()
    sys.exit(main(sys.argv[1:]))
