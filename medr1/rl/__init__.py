"""GRPO: rollout, rewards, advantages, loss and the Lightning module that ties them together."""
