"""Data: the VQARecord contract, readers of the real data sets, the synthetic set, prompts.

Readers (each a class with keyword-only arguments and `load() -> Splits`, built by Hydra from
conf/data/*.yaml):
    medr1.data.omnimedvqa.OmniMedVQA          raw OmniMedVQA + Med-R1's seeded 80/20 split per group
    medr1.data.medr1_splits.MedR1Splits       Med-R1's released split files
    medr1.data.medvlm_r1.MedVLMR1             MedVLM-R1: HuatuoGPT-Vision evaluation data + OmniMedVQA test
    medr1.data.synthetic.SyntheticMedVQA      offline synthetic set written in OmniMedVQA's format
Modules are imported on use, so `import medr1.data` stays cheap.
"""
