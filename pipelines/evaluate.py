"""`medseg evaluate`: Hydra entry point of :func:`medseg.stages.evaluate_stage`."""

import hydra
from omegaconf import DictConfig

from medseg.config import register_configs
from pipelines import CONFIG_DIR
from medseg.stages import evaluate_stage, run_stage

register_configs()


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="config")
def main(cfg: DictConfig) -> None:
    """Run the evaluate stage."""
    run_stage(evaluate_stage, cfg)


if __name__ == "__main__":
    main()
