"""Train latent diffusion with Accelerate: from a folder of images in one command, or on a trained autoencoder.

    python train_latent_ddpm.py --train_data_dir DIR --output_dir runs/mine --student_steps 2
    accelerate launch train_latent_ddpm.py --dataset ID --output_dir runs/mine
    python train_latent_ddpm.py --config configs/latent_ddpm_quick.yaml --autoencoder runs/demo/autoencoder

Without --autoencoder it trains the autoencoder, the latent model and (with --student_steps) a few-step student,
into OUTPUT_DIR/autoencoder, OUTPUT_DIR/pipeline and OUTPUT_DIR/student (pipeline/stages.py). With --autoencoder it
trains the latent model on it into OUTPUT_DIR (pipeline/latent_training.py). A pipeline folder loads with plain
diffusers. `--help` lists every option.
"""

from pipeline.errors import run_cli
from pipeline.stages import main

if __name__ == "__main__":
    run_cli(main)
