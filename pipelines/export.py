"""`medseg export`: Hydra entry point of :func:`medseg.stages.export_stage`."""

import hydra
from omegaconf import DictConfig

from medseg.config import register_configs
from pipelines import CONFIG_DIR
from medseg.stages import export_stage, run_stage

register_configs()


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="config")
def main(cfg: DictConfig) -> None:
    """Run the export stage."""
    run_stage(export_stage, cfg)


if __name__ == "__main__":
    main()
