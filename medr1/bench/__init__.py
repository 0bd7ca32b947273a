"""`make bench`: medr1 against TRL's GRPOTrainer on the same checkpoint, data and GRPO settings.

- compare: the command line, the side-by-side table, the G x image-size sweep and the JSON file;
- common: the settings, data folder, bench reward, phase timer, FLOP counting and matmul peak;
- medr1_side / trl_side: one framework's training run, each in its own process (worker);
- shared_prompt: the shared-prompt rollout and training forward against repeated prompts.
TRL is a benchmark-only extra (`pip install -e ".[bench]"`); only trl_side imports it.
docs/bench.md says what is measured and how to read it.
"""
