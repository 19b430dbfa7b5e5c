"""Train the CAB autoencoder with Accelerate.

    python train_autoencoder.py --config configs/autoencoder_quick.yaml
    accelerate launch train_autoencoder.py --config configs/autoencoder.yaml --train_batch_size 512

The logic is in pipeline/autoencoder_training.py; `--help` lists every option.
"""

from pipeline.autoencoder_training import main
from pipeline.errors import run_cli

if __name__ == "__main__":
    run_cli(main)
