"""Inference on any image (`predictor`) and exported artefacts (`export`)."""
