"""GRPO: rewards, advantages, loss, and the Lightning module that runs them on each rollout (medr1.rollout)."""
