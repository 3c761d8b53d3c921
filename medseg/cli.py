"""The ``medseg`` command (also ``python -m medseg``).

    medseg <stage> [hydra overrides...] [-m]   stage: prepare, train, evaluate, export, predict, run
    medseg <stage> --cfg job|hydra|all          print the composed config and exit
    medseg synth OUT_DIR [layout=msd|brats2021|brats2023|dicom|xray] [n=24] [n_test=6] [seed=0] [spacing=1.5]
    medseg compare RUN_A RUN_B [--out DIR]     paired per-case comparison of two evaluated runs

The configs are the package ``medseg.conf`` (the repository's ``conf/`` folder, shipped inside the
wheel), so the command works from any folder. The config is composed once, by Hydra, and checked
against the typed schema before the stage starts: a misspelt key or an invalid value is reported in
one line with the valid choices, and the exit status is 2. ``-m``/``--multirun`` runs a sweep
through Hydra's launcher (``hydra/launcher=slurm`` for Slurm).
"""

from __future__ import annotations

import difflib
import logging
import sys
from collections.abc import Callable
from typing import Any

STAGES = ("prepare", "train", "evaluate", "export", "predict", "run")
COMMANDS = (*STAGES, "synth", "compare")
#: The package holding the Hydra configs (``conf/`` in the repository).
CONFIG_MODULE = "medseg.conf"

USAGE = __doc__ or ""


def main(argv: list[str] | None = None) -> None:
    """Dispatch ``medseg <command> ...``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in {"-h", "--help", "help"}:
        sys.stdout.write(USAGE.strip() + "\n")
        raise SystemExit(0 if argv else 2)
    command, rest = argv[0], argv[1:]
    if command == "synth":
        raise SystemExit(synth(rest))
    if command == "compare":
        raise SystemExit(compare(rest))
    if command not in STAGES:
        close = difflib.get_close_matches(command, COMMANDS, n=1)
        hint = f" Did you mean '{close[0]}'?" if close else ""
        _fail(f"medseg: unknown command '{command}'; valid: {', '.join(COMMANDS)}.{hint}")
    raise SystemExit(run_hydra(command, rest))


def _fail(message: str) -> None:
    sys.stderr.write(message + "\n")
    raise SystemExit(2)


def _parse_flags(stage: str, args: list[str]) -> tuple[list[str], bool, str | None]:
    """Split ``args`` into overrides, the multirun flag and a ``--cfg`` request."""
    overrides: list[str] = []
    multirun, show = False, None
    it = iter(args)
    for a in it:
        if a in {"-m", "--multirun"}:
            multirun = True
        elif a in {"-c", "--cfg"}:
            show = next(it, "job")
        elif a.startswith("--cfg="):
            show = a.split("=", 1)[1]
        elif a in {"-h", "--help"}:
            sys.stdout.write(USAGE.strip() + "\n")
            raise SystemExit(0)
        elif a.startswith("-"):
            _fail(f"medseg {stage}: error: unknown flag '{a}'; valid: -m/--multirun, --cfg job|hydra|all")
        else:
            overrides.append(a)
    if show not in (None, "job", "hydra", "all"):
        _fail(f"medseg {stage}: error: --cfg {show}: expected job, hydra or all")
    return overrides, multirun, show


def run_hydra(stage: str, args: list[str], task: Callable[[Any], Any] | None = None) -> int:
    """Compose the config once (``stage`` is Hydra's job name) and run the stage in Hydra's run
    folder, or a sweep with ``-m``. Returns the exit status."""
    from hydra._internal.hydra import Hydra
    from hydra._internal.utils import create_config_search_path
    from hydra.core.global_hydra import GlobalHydra

    from medseg.config import register_configs
    from medseg.stages import run_stage, stage_function

    overrides, multirun, show = _parse_flags(stage, args)
    register_configs()
    GlobalHydra.instance().clear()
    hydra = Hydra.create_main_hydra2(task_name=stage,
                                     config_search_path=create_config_search_path(f"pkg://{CONFIG_MODULE}"))
    fn = task or (lambda cfg: objective(cfg, run_stage(stage_function(stage), cfg), stage))
    try:
        if show:
            hydra.show_cfg(config_name="config", overrides=overrides, cfg_type=show, package=None)
        elif multirun:
            hydra.multirun(config_name="config", task_function=fn, overrides=overrides)
        else:
            hydra.run(config_name="config", task_function=fn, overrides=overrides)
    except Exception as e:  # Hydra/OmegaConf raise many types while composing; one line each
        if not _is_config_error(e):
            raise
        sys.stderr.write(f"medseg {stage}: error: {explain(e, overrides)}\n")
        return 2
    finally:
        GlobalHydra.instance().clear()
    return 0


def objective(cfg: Any, summary: dict[str, Any], stage: str) -> Any:
    """What the task function returns to Hydra: the stage's summary, or, when ``optimized_metric``
    names one of its keys (dots for nested keys; an ``hparams_search`` preset sets it), that value
    as a float, which a sweeper such as Optuna's optimises. A missing or empty value is a one-line
    error (exit status 2)."""
    key = cfg.get("optimized_metric") if hasattr(cfg, "get") else getattr(cfg, "optimized_metric", None)
    if not key:
        return summary
    value: Any = summary
    for part in str(key).split("."):
        value = value.get(part) if isinstance(value, dict) else None
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        keys = ", ".join(k for k, v in summary.items() if isinstance(v, (int, float)) and not isinstance(v, bool))
        sys.stderr.write(f"medseg {stage}: error: optimized_metric={key}: the {stage} summary holds no number "
                         f"there (got {value!r}); numeric keys: {keys}\n")
        raise SystemExit(2)
    return float(value)


def _is_config_error(error: BaseException) -> bool:
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    return isinstance(error, (HydraException, OmegaConfBaseException))


def compose_config(overrides: list[str] | None = None, return_hydra_config: bool = False) -> Any:
    """The composed config (a DictConfig) for ``overrides``, without running anything (tests, benches)."""
    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    from medseg.config import register_configs

    register_configs()
    GlobalHydra.instance().clear()
    try:
        with initialize_config_module(config_module=CONFIG_MODULE, version_base="1.3"):
            return compose(config_name="config", overrides=list(overrides or []),
                           return_hydra_config=return_hydra_config)
    finally:
        GlobalHydra.instance().clear()


def check_overrides(overrides: list[str]) -> str | None:
    """A one-line explanation of why ``overrides`` do not compose against the schema, else ``None``."""
    from omegaconf import OmegaConf

    plain_overrides = [o for o in overrides if not o.lstrip("+~").startswith("hydra")]
    try:
        cfg = compose_config(plain_overrides)
        OmegaConf.to_container(cfg, resolve=False, throw_on_missing=False)
    except Exception as e:  # noqa: BLE001 - reformatted, not swallowed
        if not _is_config_error(e):
            raise
        return explain(e, plain_overrides)
    return None


def explain(error: BaseException, overrides: list[str]) -> str:
    """One line from a Hydra/OmegaConf composition error, with valid keys where it helps."""
    from omegaconf import OmegaConf

    from medseg.config import MedsegConfig

    cause = error
    while cause.__cause__ is not None:
        cause = cause.__cause__
    text = " ".join(str(cause).split())
    full_key = getattr(cause, "full_key", None)
    if full_key and "not in" in text or "is not in struct" in text:
        key = str(full_key or "")
        parent, _, leaf = key.rpartition(".")
        node = OmegaConf.structured(MedsegConfig)
        try:
            sub = OmegaConf.select(node, parent) if parent else node
            valid = sorted(sub.keys()) if sub is not None and hasattr(sub, "keys") else []
        except Exception:  # the parent itself is unknown
            valid = []
        if valid:
            close = difflib.get_close_matches(leaf, valid, n=1)
            hint = f" Did you mean '{(parent + '.') if parent else ''}{close[0]}'?" if close else ""
            return f"unknown config key '{key}'.{hint} Valid keys under '{parent or '<root>'}': {', '.join(valid)}"
    first = str(error).split("\n")[0]
    return text if text.startswith(first[:20]) else f"{first} {text}"


def synth(args: list[str]) -> int:
    """``medseg synth OUT_DIR [key=value ...]``: write the built-in dataset."""
    from dataclasses import fields

    from medseg.data.synthetic import SynthConfig
    from medseg.data.synthetic_formats import LAYOUTS, write_dataset

    logging.basicConfig(level=logging.INFO, format="[%(asctime)s][%(name)s][%(levelname)s] - %(message)s")
    positional = [a for a in args if "=" not in a]
    if len(positional) != 1:
        sys.stderr.write("usage: medseg synth OUT_DIR [layout=msd] [n=24] [n_test=6] [seed=0] [spacing=1.5] "
                         "[tumour_free_fraction=0.15] [vary_grid=true]\n")
        return 2
    types = {f.name: f.type for f in fields(SynthConfig)}
    kwargs: dict[str, object] = {}
    layout = "msd"
    for a in args:
        if "=" not in a:
            continue
        key, value = a.split("=", 1)
        if key == "layout":
            if value not in LAYOUTS:
                sys.stderr.write(f"medseg synth: error: layout={value!r} is not known; valid: {', '.join(LAYOUTS)}\n")
                return 2
            layout = value
            continue
        if key not in types or key == "fov_mm":
            sys.stderr.write(f"medseg synth: error: unknown option '{key}'; valid: "
                             f"layout, {', '.join(k for k in types if k != 'fov_mm')}\n")
            return 2
        try:
            kwargs[key] = _parse(value, str(types[key]))
        except ValueError:
            sys.stderr.write(f"medseg synth: error: {key}={value!r} is not a valid {types[key]}\n")
            return 2
    from medseg.errors import MedsegError

    try:
        out = write_dataset(positional[0], SynthConfig(**kwargs), layout)
    except MedsegError as e:
        sys.stderr.write(f"medseg synth: error: {e}\n")
        return 2
    sys.stdout.write(f"wrote {out}\n")
    return 0


def compare(args: list[str]) -> int:
    """``medseg compare RUN_A RUN_B [--out DIR]`` (see :mod:`medseg.stages.compare`)."""
    import argparse
    from pathlib import Path

    from medseg.errors import MedsegError

    parser = argparse.ArgumentParser(prog="medseg compare", description="Paired per-case comparison of two "
                                     "evaluated runs (evaluate folders, run folders or metrics.json files).")
    parser.add_argument("run_a")
    parser.add_argument("run_b")
    parser.add_argument("--out", default="compare", help="output folder (default: ./compare)")
    parser.add_argument("--metrics", default="dice,iou,hd95,msd,nsd", help="comma-separated metric names")
    ns = parser.parse_args(args)
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s][%(name)s][%(levelname)s] - %(message)s")
    from medseg.stages.compare import compare_runs

    try:
        out = compare_runs(ns.run_a, ns.run_b, Path(ns.out), [m for m in ns.metrics.split(",") if m])
    except MedsegError as e:
        sys.stderr.write(f"medseg compare: error: {e}\n")
        return 2
    sys.stdout.write(f"{out['n_paired']} paired cases; wrote {out['compare']} and {out['report']}\n")
    return 0


def _parse(value: str, type_name: str) -> object:
    if type_name == "int":
        return int(value)
    if type_name == "float":
        return float(value)
    if type_name == "bool":
        if value.lower() not in {"true", "false", "1", "0"}:
            raise ValueError(value)
        return value.lower() in {"true", "1"}
    return value


if __name__ == "__main__":
    main()
