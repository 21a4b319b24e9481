"""What evaluation and training both need, below both: the next-frame record (`NextFrame`) and the baselines'
predictions, the target codec (`TargetCodec`, `TargetStats`) and the reconstruction of a predicted frame."""
