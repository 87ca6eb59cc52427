"""Using a trained model: a workdir's model read from its checkpoint (`trained_model`),
inference on any image (`predictor`) and exported artefacts (`export`)."""
