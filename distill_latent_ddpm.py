"""Consistency-distil a trained latent DDPM pipeline into a few-step student, with Accelerate.

    python distill_latent_ddpm.py --config configs/distill_quick.yaml --teacher runs/demo/pipeline --output_dir runs/demo/fast
    accelerate launch distill_latent_ddpm.py --config configs/distill_quick.yaml --teacher runs/demo/pipeline

The run folder ends up a complete pipeline folder with LCMScheduler (1 to num_ddim_timesteps steps), plus
samples_<n>_steps.png, denoising.png, loss.png, distillation.json (teacher, settings, scores), timings.json
and TensorBoard logs. The logic is in pipeline/distill.py.
"""

from pipeline.distill import main
from pipeline.errors import run_cli

if __name__ == "__main__":
    run_cli(main)
