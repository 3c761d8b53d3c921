"""The ``medseg`` command.

    medseg <stage> [hydra overrides...]     stage: prepare, train, evaluate, export, predict, run
    medseg synth OUT_DIR [layout=msd|brats2021|brats2023|dicom|xray] [n=24] [n_test=6] [seed=0] [spacing=1.5]
    medseg compare RUN_A RUN_B [--out DIR]   paired per-case comparison of two evaluated runs

Overrides are checked against the typed schema before the stage starts: a misspelt key or an
invalid value is reported in one line with the valid choices, and the exit status is 2.
"""

from __future__ import annotations

import difflib
import importlib
import logging
import sys

STAGES = ("prepare", "train", "evaluate", "export", "predict", "run")
from pipelines import CONFIG_DIR as CONF_DIR

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
        close = difflib.get_close_matches(command, STAGES + ("synth", "compare"), n=1)
        hint = f" Did you mean '{close[0]}'?" if close else ""
        sys.stderr.write(f"medseg: unknown command '{command}'; valid: "
                         f"{', '.join(STAGES + ('synth', 'compare'))}.{hint}\n")
        raise SystemExit(2)
    multirun = any(a in {"-m", "--multirun"} for a in rest)
    if not multirun and not any(a.startswith("-") for a in rest):
        message = check_overrides(rest)
        if message:
            sys.stderr.write(f"medseg {command}: error: {message}\n")
            raise SystemExit(2)
    module = importlib.import_module(f"pipelines.{command}")
    sys.argv = [f"medseg-{command}", *rest]
    module.main()


def check_overrides(overrides: list[str]) -> str | None:
    """Compose the config with ``overrides``; return a one-line explanation if that fails."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from omegaconf import OmegaConf

    from medseg.config import register_configs

    register_configs()
    plain = [o for o in overrides if not o.lstrip("+~").startswith("hydra")]
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            cfg = compose(config_name="config", overrides=plain)
            OmegaConf.to_container(cfg, resolve=False, throw_on_missing=False)
    except Exception as e:  # Hydra/OmegaConf raise many types; we only reformat them
        return explain(e, plain)
    finally:
        GlobalHydra.instance().clear()
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
