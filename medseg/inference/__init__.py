"""Prediction: sliding windows, the case predictor, target decoding, precision, and the Hydra-free
batch runtime (``medseg-predict``). Never imports the trainer (:mod:`medseg.engine`)."""
