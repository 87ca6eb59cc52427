"""Using a trained model, one job a module:

- `trained_model`: a workdir's config and the variables of one of its checkpoints;
- `predictor`: the model on any image (`Predictor`), with `person` (the crop window, given or
  found) and `crop_scale` (the metres a window spans, the scale prior of 3D decoding);
- `image_file`: an image file read as the model takes it, or why it cannot be;
- `result_outputs`: a result's JSON fields and an image's panel of figures;
- `video`: a clip predicted frame by frame, with `video_file` (reading a video file, or telling
  it damaged or cut short) and `annotated_video` (the annotated mp4);
- `host_memory`: out of host memory while an input is read, probed or predicted (the command
  stops, naming it);
- `export`: the exported artefacts (StableHLO, SavedModel), with `export_meta` (what their
  hgmt.json says)."""
