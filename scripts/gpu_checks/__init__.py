"""The parts of `scripts/gpu_check.py`: the bundle it carries to a bare CUDA machine, its steps, their verdicts."""
