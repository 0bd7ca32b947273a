"""Code the tests share: the composed config (`config`), the DDP probe callback that `run.py` loads
in subprocess runs (`ddp_probe`), and a reader of offline W&B runs (`wandb_offline`)."""
