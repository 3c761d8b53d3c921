"""`medseg run`: Hydra entry point of :func:`medseg.stages.run_stage_all` (every stage in order)."""

import hydra
from omegaconf import DictConfig

from medseg.config import register_configs
from pipelines import CONFIG_DIR
from medseg.stages import run_stage, run_stage_all

register_configs()


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="config")
def main(cfg: DictConfig) -> None:
    """Run prepare, train, evaluate, export and predict."""
    run_stage(run_stage_all, cfg)


if __name__ == "__main__":
    main()
