"""Hydra configs shipped with medseg (the repository's conf/ folder, installed as medseg.conf)."""
